//! Checks on a request's headers, before its body is read.
//!
//! tonic interceptors run before decoding too, but they see neither the
//! method (so KV could demand only `read`, and the write role was checked
//! after a WriteBatch had been decoded) nor a way to refuse peer calls
//! before the message that names the sender. [`Gate`] wraps a service with
//! a [`Rule`] on the path, the `authorization` header and the connection,
//! answers a refused call without reading a byte of its body, and meters
//! the body of every call it lets through against the node's receive
//! [`Budget`].
//!
//! What the handlers check after decoding stays: the origin a peer claims
//! against its certificate (`api::Membership`), the per-item limits.

use std::{
    convert::Infallible,
    sync::Arc,
    task::{Context, Poll},
};

use tonic::{
    body::Body,
    codegen::{http, BoxFuture, Service},
    server::NamedService,
    Status,
};

use crate::{
    error::Error,
    proto::kv_server,
    security::{
        accept::ConnInfo,
        auth::{Caller, ClientAuth, Role},
        budget::{Budget, Charge, Metered},
        tls::cert_names,
        Tokens,
    },
};

/// KV methods that change data: they need the `write` role.
const KV_MUTATIONS: [&str; 3] = ["Write", "Delete", "WriteBatch"];

/// Who may call the services behind a gate.
#[derive(Debug)]
pub enum Rule {
    /// Anyone; the services check callers themselves (Admin, through its
    /// interceptor, before decoding: its requests are empty).
    Open,
    /// KV: its interceptor requires `read`; mutations need `write`.
    Kv(ClientAuth),
    /// Replication and AntiEntropy.
    Peers(PeerAuth),
}

/// How peers prove they are peers before their messages are read.
#[derive(Debug, Clone)]
pub struct PeerAuth {
    /// TLS is on: a verified client certificate naming a configured peer.
    /// Which peer the request may speak for is checked once its `origin` is
    /// decoded.
    pub tls: bool,
    /// TLS is off and a tokens file is configured: a `peer` token.
    pub tokens: Option<Arc<Tokens>>,
    /// The configured peer ids.
    pub peers: Arc<[String]>,
}

impl PeerAuth {
    /// Whether a call with `authorization` on `conn` may reach a peer
    /// service.
    pub fn check(
        &self,
        authorization: Option<&[u8]>,
        conn: Option<&ConnInfo>,
    ) -> Result<(), Error> {
        if self.tls {
            let Some(cert) = conn.and_then(|c| c.client_cert.as_deref()) else {
                return Err(Error::Unauthenticated(
                    "peer calls need a client certificate from the cluster's CA".into(),
                ));
            };
            if !self.peers.iter().any(|p| cert_names(cert, p)) {
                return Err(Error::PermissionDenied(
                    "the client certificate names no configured peer of this node".into(),
                ));
            }
            return Ok(());
        }
        let Some(tokens) = &self.tokens else {
            // Neither TLS nor tokens: loopback only, and open.
            return Ok(());
        };
        let caller = authorization
            .ok_or_else(|| Error::Unauthenticated("no token".into()))
            .and_then(|value| tokens.caller(value))
            .map_err(|err| {
                Error::Unauthenticated(format!("peer calls need a peer token: {err}"))
            })?;
        if caller.role != Role::Peer {
            return Err(Error::PermissionDenied(format!(
                "{} has the {} role; peer calls need the peer role",
                caller.name, caller.role
            )));
        }
        Ok(())
    }
}

impl Rule {
    /// Refuses a call the rule does not allow; a KV mutation's proven
    /// caller is handed on, so the KV interceptor need not check again.
    fn check(&self, req: &http::Request<Body>) -> Result<Option<Caller>, Status> {
        let authorization = req.headers().get("authorization").map(|v| v.as_bytes());
        let conn = req.extensions().get::<ConnInfo>();
        match self {
            Rule::Open => Ok(None),
            Rule::Kv(auth) => {
                let method = req
                    .uri()
                    .path()
                    .strip_prefix(kv_prefix())
                    .unwrap_or_default();
                if !KV_MUTATIONS.contains(&method) {
                    return Ok(None);
                }
                let caller = auth.authenticate(authorization, conn)?;
                if !caller.role.allows(Role::Write) {
                    return Err(Error::PermissionDenied(format!(
                        "{} has the {} role; this call needs write",
                        caller.name, caller.role
                    ))
                    .into());
                }
                Ok(Some(caller))
            }
            Rule::Peers(peers) => peers.check(authorization, conn).map(|()| None).map_err(|err| {
                // Nothing the caller sent goes into the log: only where it
                // came from and why it was refused.
                tracing::debug!(remote = ?conn.and_then(|c| c.remote), error = %err, "refused a peer call before reading it");
                Status::from(err)
            }),
        }
    }
}

/// `/meshkv.v1.KV/`.
fn kv_prefix() -> &'static str {
    static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PREFIX.get_or_init(|| format!("/{}/", kv_server::SERVICE_NAME))
}

/// A service behind a [`Rule`], its request bodies metered by a [`Budget`].
#[derive(Debug, Clone)]
pub struct Gate<S> {
    inner: S,
    rule: Arc<Rule>,
    budget: Arc<Budget>,
    /// Methods whose requests are streams of messages.
    streaming: &'static [&'static str],
}

impl<S> Gate<S> {
    /// Puts `inner` behind `rule` and `budget`.
    pub fn new(inner: S, rule: Rule, budget: Arc<Budget>) -> Self {
        Self {
            inner,
            rule: Arc::new(rule),
            budget,
            streaming: &[],
        }
    }

    /// Names the methods (`ReplicateStream`) whose requests are streams:
    /// each of their messages is given back to the budget once decoded.
    pub fn streaming(mut self, methods: &'static [&'static str]) -> Self {
        self.streaming = methods;
        self
    }
}

impl<S: NamedService> NamedService for Gate<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<Body>> for Gate<S>
where
    S: Service<http::Request<Body>, Response = http::Response<B>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = prost::bytes::Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        match self.rule.check(&req) {
            Err(status) => return Box::pin(std::future::ready(Ok(status.into_http()))),
            Ok(Some(caller)) => {
                req.extensions_mut().insert(caller);
            }
            Ok(None) => {}
        }
        let method = req.uri().path().rsplit('/').next().unwrap_or_default();
        let streaming = self.streaming.contains(&method);
        let charge = Charge::new(Arc::clone(&self.budget));
        let body_charge = Arc::clone(&charge);
        let req = req.map(|body| Body::new(Metered::new(body, body_charge, streaming)));
        let answer = self.inner.call(req);
        // The call's future holds the charge until it answers: a unary
        // request stays charged while its handler works on it.
        Box::pin(crate::grpc_codec::charged(charge, async move {
            Ok(answer.await?.map(Body::new))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Arc<Tokens> {
        Arc::new(Tokens::parse(crate::security::auth::tests::FILE).unwrap())
    }

    fn request(path: &str, token: Option<&str>) -> http::Request<Body> {
        let mut b = http::Request::builder().uri(path);
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        b.body(Body::empty()).unwrap()
    }

    fn code(rule: &Rule, path: &str, token: Option<&str>) -> tonic::Code {
        match rule.check(&request(path, token)) {
            Ok(_) => tonic::Code::Ok,
            Err(s) => s.code(),
        }
    }

    #[test]
    fn kv_mutations_need_the_write_role_before_their_body_is_read() {
        use tonic::Code::*;
        let rule = Rule::Kv(ClientAuth {
            tokens: Some(tokens()),
            certificates: false,
        });
        let r = "rrrrrrrrrrrrrrrrrrrr";
        let w = "wwwwwwwwwwwwwwwwwwww";
        let p = "pppppppppppppppppppp";
        for (path, token, want) in [
            ("/meshkv.v1.KV/WriteBatch", Some(r), PermissionDenied),
            ("/meshkv.v1.KV/Write", Some(r), PermissionDenied),
            ("/meshkv.v1.KV/Delete", Some(r), PermissionDenied),
            ("/meshkv.v1.KV/WriteBatch", None, Unauthenticated),
            (
                "/meshkv.v1.KV/WriteBatch",
                Some("nonsense-nonsense"),
                Unauthenticated,
            ),
            ("/meshkv.v1.KV/WriteBatch", Some(p), PermissionDenied),
            ("/meshkv.v1.KV/WriteBatch", Some(w), Ok),
            ("/meshkv.v1.KV/WriteBatch", Some("aaaaaaaaaaaaaaaaaaaa"), Ok),
            // Reads are left to the KV interceptor.
            ("/meshkv.v1.KV/Read", None, Ok),
            ("/meshkv.v1.KV/Scan", Some(r), Ok),
        ] {
            assert_eq!(code(&rule, path, token), want, "{path} with {token:?}");
        }
    }

    #[test]
    fn without_tls_peer_services_need_the_peer_token_and_nothing_else() {
        use tonic::Code::*;
        let rule = Rule::Peers(PeerAuth {
            tls: false,
            tokens: Some(tokens()),
            peers: vec!["n2".to_string()].into(),
        });
        let path = "/meshkv.v1.Replication/Replicate";
        assert_eq!(code(&rule, path, Some("pppppppppppppppppppp")), Ok);
        assert_eq!(
            code(&rule, path, Some("aaaaaaaaaaaaaaaaaaaa")),
            PermissionDenied
        );
        assert_eq!(
            code(&rule, path, Some("rrrrrrrrrrrrrrrrrrrr")),
            PermissionDenied
        );
        assert_eq!(code(&rule, path, None), Unauthenticated);
        // No tokens and no TLS: a loopback node open to everyone.
        let open = Rule::Peers(PeerAuth {
            tls: false,
            tokens: None,
            peers: vec!["n2".to_string()].into(),
        });
        assert_eq!(code(&open, path, None), Ok);
    }

    #[test]
    fn with_tls_a_peer_call_needs_a_certificate_naming_a_configured_peer() {
        use crate::security::certs::DevCa;
        use tokio_rustls::rustls::pki_types::{pem::PemObject, CertificateDer};
        let ca = DevCa::generate().unwrap();
        let der = |name: &str| {
            let (cert, _) = ca.issue(name, &[]).unwrap();
            Arc::new(CertificateDer::from_pem_slice(cert.as_bytes()).unwrap())
        };
        let auth = PeerAuth {
            tls: true,
            tokens: Some(tokens()),
            peers: vec!["n2".to_string(), "n3".to_string()].into(),
        };
        let conn = |cert| ConnInfo {
            remote: None,
            client_cert: cert,
        };
        assert!(auth.check(None, Some(&conn(Some(der("n3"))))).is_ok());
        let err = auth
            .check(None, Some(&conn(Some(der("client")))))
            .unwrap_err();
        assert!(matches!(err, Error::PermissionDenied(_)), "{err}");
        let err = auth.check(None, Some(&conn(None))).unwrap_err();
        assert!(matches!(err, Error::Unauthenticated(_)), "{err}");
        // Under TLS a peer token opens nothing: certificates decide.
        let err = auth
            .check(Some(b"Bearer pppppppppppppppppppp"), Some(&conn(None)))
            .unwrap_err();
        assert!(matches!(err, Error::Unauthenticated(_)), "{err}");
    }
}
