//! Security at start-up: TLS material and tokens are loaded before storage
//! opens, so a bad file fails the start at once, and the node says in one
//! line how it is protected.

use std::sync::Arc;

use crate::{
    config::{Config, PeerConfig},
    error::Result,
    node::seams::{Connector, Seams},
    security::{tls, ClientAuth, TlsMaterial, Tokens},
};

/// What the rest of start-up needs from the security settings.
pub(super) struct Secured {
    /// Dials peers: over TLS, proving their ids, when TLS is on.
    pub connect: Arc<Connector>,
    /// Checks clients' tokens and certificates.
    pub client_auth: ClientAuth,
    /// How the node is protected, in words.
    pub words: String,
}

impl Secured {
    /// Loads the TLS material and the tokens file, and warns if the node
    /// runs insecure.
    pub(super) fn load(config: &Config, seams: &Seams) -> Result<Self> {
        let tls = TlsMaterial::load(&config.tls)?;
        let tokens = config
            .auth
            .tokens_file
            .as_deref()
            .map(Tokens::load)
            .transpose()?;
        let words = security_words(config, tokens.is_some());
        if config.runs_insecure() {
            tracing::warn!(
                "INSECURE: {words}. Anyone who can reach this node can read and write \
                 every key and forge replication. Configure [tls] and [auth] (see `meshkv certs`)"
            );
        }
        let client_auth = ClientAuth {
            tokens: tokens.map(Arc::new),
            certificates: config.tls.enabled(),
        };
        let connect: Arc<Connector> = match tls {
            Some(m) => Arc::new(move |p: &PeerConfig| tls::peer_channel(Some(&m), &p.id, &p.url)),
            None => Arc::clone(&seams.connect),
        };
        Ok(Self {
            connect,
            client_auth,
            words,
        })
    }
}

/// How the node is protected, in words, for the log and `meshkv status`.
fn security_words(config: &Config, tokens: bool) -> String {
    if config.tls.enabled() {
        format!(
            "TLS; peers on {} need certificates naming them; clients need {}",
            config.peer_listen.map_or("-".into(), |a| a.to_string()),
            if tokens {
                "a token or a client certificate"
            } else {
                "a client certificate"
            }
        )
    } else if config.runs_insecure() {
        format!(
            "INSECURE: no TLS on {}{}{}",
            config.listen,
            config
                .peer_listen
                .map_or(String::new(), |a| format!(" and {a}")),
            if tokens {
                "; tokens travel in clear text"
            } else {
                "; no authentication"
            }
        )
    } else if tokens {
        "loopback only, no TLS; clients need a token".into()
    } else {
        "loopback only, no TLS, no authentication".into()
    }
}
