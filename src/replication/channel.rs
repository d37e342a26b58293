//! The channel a node calls a peer through: a tonic channel whose calls
//! carry this node's peer token when there is one.
//!
//! With TLS the certificate proves who is calling and no token is sent.
//! Without TLS but with a tokens file, the peer services accept only calls
//! that present a token with the `peer` role (`security::gate`), so every
//! outgoing peer call carries it.

use tonic::{
    metadata::{Ascii, MetadataValue},
    service::{interceptor::InterceptedService, Interceptor},
    transport::Channel,
    Request, Status,
};

use crate::error::{Error, Result};

/// A channel to one peer.
pub type PeerChannel = InterceptedService<Channel, PeerCredential>;

/// What every call to a peer presents: nothing, or `authorization: Bearer`
/// with the peer token. `Debug` never shows the token.
#[derive(Clone, Default)]
pub struct PeerCredential(Option<MetadataValue<Ascii>>);

impl std::fmt::Debug for PeerCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "PeerCredential(<token>)"
        } else {
            "PeerCredential(none)"
        })
    }
}

impl PeerCredential {
    /// Calls present `token` (a `peer` token of the tokens file), or nothing.
    pub fn new(token: Option<&[u8]>) -> Result<Self> {
        let Some(token) = token else {
            return Ok(Self(None));
        };
        let mut header = b"Bearer ".to_vec();
        header.extend_from_slice(token);
        let mut value = MetadataValue::try_from(header).map_err(|_| {
            Error::Config("auth.tokens_file: the peer token is not a valid header value".into())
        })?;
        value.set_sensitive(true);
        Ok(Self(Some(value)))
    }

    /// `channel`, its calls carrying this credential.
    pub fn wrap(&self, channel: Channel) -> PeerChannel {
        InterceptedService::new(channel, self.clone())
    }
}

impl Interceptor for PeerCredential {
    fn call(&mut self, mut req: Request<()>) -> std::result::Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_carry_the_token_and_debug_hides_it() {
        let mut c = PeerCredential::new(Some(b"pppppppppppppppppppp")).unwrap();
        assert_eq!(format!("{c:?}"), "PeerCredential(<token>)");
        let req = c.call(Request::new(())).unwrap();
        assert_eq!(
            req.metadata()
                .get("authorization")
                .unwrap()
                .to_str()
                .unwrap(),
            "Bearer pppppppppppppppppppp"
        );
        let mut none = PeerCredential::new(None).unwrap();
        assert!(none
            .call(Request::new(()))
            .unwrap()
            .metadata()
            .get("authorization")
            .is_none());
    }
}
