//! Security at start-up: TLS material and tokens are loaded before storage
//! opens, so a bad file fails the start at once, and the node says in one
//! line how it is protected.

use std::sync::Arc;

use crate::{
    config::{Config, PeerConfig},
    error::Error,
    error::Result,
    node::seams::Seams,
    replication::{PeerChannel, PeerCredential},
    security::{gate::PeerAuth, tls, ClientAuth, TlsMaterial, Tokens},
};

/// Builds the channel to a peer, carrying this node's peer credential.
pub(super) type PeerConnector = dyn Fn(&PeerConfig) -> Result<PeerChannel> + Send + Sync;

/// What the rest of start-up needs from the security settings.
pub(super) struct Secured {
    /// Dials peers: over TLS, proving their ids, when TLS is on; with the
    /// peer token when TLS is off and tokens are configured.
    pub connect: Arc<PeerConnector>,
    /// Checks clients' tokens and certificates.
    pub client_auth: ClientAuth,
    /// Checks peers before their messages are read.
    pub peer_auth: PeerAuth,
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
        let tls_on = config.tls.enabled();
        // Without TLS, a tokens file must protect the peer services too,
        // or any local process could read and write everything through them.
        let peer_token = match &tokens {
            Some(t) if !tls_on => match t.peer_token() {
                Some(token) => Some(token.to_vec()),
                None if config.peers.is_empty() => None,
                None => {
                    return Err(Error::Config(
                        "auth.tokens_file: without TLS, the peer services need a token with \
                         role = \"peer\", which nodes present to each other; add one (the \
                         same on every node), or turn TLS on"
                            .into(),
                    ))
                }
            },
            _ => None,
        };
        let credential = PeerCredential::new(peer_token.as_deref())?;
        let words = security_words(config, tokens.is_some());
        if config.runs_insecure() {
            tracing::warn!(
                "INSECURE: {words}. Anyone who can reach this node can read and write \
                 every key and forge replication. Configure [tls] and [auth] (see `meshkv certs`)"
            );
        }
        let tokens = tokens.map(Arc::new);
        let client_auth = ClientAuth {
            tokens: tokens.clone(),
            certificates: tls_on,
        };
        let peer_auth = PeerAuth {
            tls: tls_on,
            tokens,
            peers: config.peers.iter().map(|p| p.id.clone()).collect(),
        };
        let connect: Arc<PeerConnector> = match tls {
            Some(m) => Arc::new(move |p: &PeerConfig| {
                Ok(credential.wrap(tls::peer_channel(Some(&m), &p.id, &p.url)?))
            }),
            None => {
                let base = Arc::clone(&seams.connect);
                Arc::new(move |p: &PeerConfig| Ok(credential.wrap(base(p)?)))
            }
        };
        Ok(Self {
            connect,
            client_auth,
            peer_auth,
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
        "loopback only, no TLS; clients need a token, peers the peer token".into()
    } else {
        "loopback only, no TLS, no authentication".into()
    }
}
