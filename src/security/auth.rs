//! Client authentication: bearer tokens with roles, or a client certificate.
//!
//! Tokens live in a TOML file named by `auth.tokens_file`:
//! ```toml
//! [[tokens]]
//! name = "ci"          # shown in logs and errors; the token never is
//! role = "write"       # read, write, admin or peer
//! token = "…"          # at least 16 characters
//! ```
//! A request sends `authorization: Bearer TOKEN`. The interceptors below
//! check it before a handler runs and leave the caller's [`Caller`] in the
//! request's extensions, so a handler that needs more than its service's
//! minimum (a write on `KV`) can check it with [`require`].

use std::{path::Path, sync::Arc};

use serde::{Deserialize, Serialize};
use tonic::{Request, Status};

use crate::{
    error::{Error, Result},
    security::accept::ConnInfo,
};

/// Shortest token accepted: guessing one must be hopeless.
pub const MIN_TOKEN_CHARS: usize = 16;

/// What a caller may do. Each client role includes the ones before it;
/// `Peer` stands apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// `Read`.
    Read,
    /// `Read`, `Write`, `Delete`, `WriteBatch`.
    Write,
    /// Every client call, including the `Admin` service (status, dump).
    Admin,
    /// The peer services (Replication, AntiEntropy) when TLS is off: nodes
    /// present this token to each other. It opens no client service, and
    /// no client role opens the peer services.
    Peer,
}

impl Role {
    /// Whether a caller with this role may make a call that needs `need`.
    pub fn allows(self, need: Role) -> bool {
        match (self, need) {
            (Role::Peer, _) | (_, Role::Peer) => self == need,
            (have, need) => have >= need,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
            Role::Peer => "peer",
        })
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    tokens: Vec<TokenEntry>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    role: Role,
    token: String,
}

/// The configured tokens. `Debug` shows names and roles only.
pub struct Tokens {
    entries: Vec<(Arc<str>, Role, Vec<u8>)>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|(n, r, _)| (n, r)))
            .finish()
    }
}

impl Tokens {
    /// Reads and checks a tokens file. Errors name the file and the entry,
    /// never a token.
    pub fn load(path: &Path) -> Result<Self> {
        super::private::check("auth.tokens_file", path)?;
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Config(format!(
                "auth.tokens_file: cannot read {}: {e}",
                path.display()
            ))
        })?;
        Self::parse(&text)
            .map_err(|why| Error::Config(format!("auth.tokens_file {}: {why}", path.display())))
    }

    /// Parses the text of a tokens file.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let file: TokensFile = toml::from_str(text).map_err(|e| {
            // toml's message quotes the offending line, which may hold a token.
            format!(
                "not a tokens file: {}",
                e.message().lines().next().unwrap_or("bad TOML")
            )
        })?;
        if file.tokens.is_empty() {
            return Err("lists no tokens".into());
        }
        let mut entries: Vec<(Arc<str>, Role, Vec<u8>)> = Vec::new();
        for (i, t) in file.tokens.into_iter().enumerate() {
            if t.name.is_empty() {
                return Err(format!("token #{} has an empty name", i + 1));
            }
            if t.token.chars().count() < MIN_TOKEN_CHARS {
                return Err(format!(
                    "token {:?} is shorter than {MIN_TOKEN_CHARS} characters",
                    t.name
                ));
            }
            if t.token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!(
                    "token {:?} holds white space or control characters",
                    t.name
                ));
            }
            if entries.iter().any(|(n, _, _)| **n == *t.name) {
                return Err(format!("name {:?} appears twice", t.name));
            }
            if entries.iter().any(|(_, _, tok)| *tok == t.token.as_bytes()) {
                return Err(format!("token {:?} repeats another's token", t.name));
            }
            entries.push((t.name.into(), t.role, t.token.into_bytes()));
        }
        Ok(Self { entries })
    }

    /// A tokens file with one fresh random token per role, for `meshkv certs`.
    pub fn generate() -> Result<String> {
        let mut tokens = Vec::new();
        for role in [Role::Admin, Role::Write, Role::Read, Role::Peer] {
            let mut bytes = [0u8; 24];
            rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut bytes)
                .map_err(|e| Error::Config(format!("no randomness from the OS: {e}")))?;
            let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            tokens.push(TokenEntry {
                name: role.to_string(),
                role,
                token,
            });
        }
        toml::to_string(&TokensFile { tokens })
            .map_err(|e| Error::Config(format!("tokens file: {e}")))
    }

    /// The first token with the `peer` role: what this node presents to its
    /// peers when TLS is off.
    pub fn peer_token(&self) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|(_, role, _)| *role == Role::Peer)
            .map(|(_, _, token)| token.as_slice())
    }

    /// The name and role of the token `presented`, if it is one. Every
    /// configured token is compared in full, so the time taken does not
    /// tell how much of a guess was right, nor which entry matched.
    pub fn authenticate(&self, presented: &[u8]) -> Option<(Arc<str>, Role)> {
        let mut found = None;
        for (name, role, token) in &self.entries {
            if constant_time_eq(presented, token) {
                found = Some((Arc::clone(name), *role));
            }
        }
        found
    }

    /// Who sent the `authorization` header value `value`.
    pub fn caller(&self, value: &[u8]) -> Result<Caller> {
        match self.authenticate(bearer(value)?) {
            Some((name, role)) => Ok(Caller { name, role }),
            None => Err(Error::Unauthenticated("unknown token".into())),
        }
    }
}

/// The token in an `authorization` header value: `Bearer TOKEN`.
fn bearer(value: &[u8]) -> Result<&[u8]> {
    value
        .strip_prefix(b"Bearer ")
        .or_else(|| value.strip_prefix(b"bearer "))
        .ok_or_else(|| {
            Error::Unauthenticated(
                "malformed authorization metadata; send `authorization: Bearer TOKEN`".into(),
            )
        })
}

/// Equality whose time depends on the lengths only, not on where the inputs
/// differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a
        .iter()
        .zip(b)
        .fold(0u8, |acc, (x, y)| acc | std::hint::black_box(x ^ y));
    std::hint::black_box(diff) == 0
}

/// Who a request proved to be, left in its extensions by the interceptor.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's name, or "client certificate", or "anyone" when the node
    /// checks nothing.
    pub name: Arc<str>,
    /// What the caller may do.
    pub role: Role,
}

/// How a listener's client services check callers.
#[derive(Debug, Clone)]
pub struct ClientAuth {
    /// `None`: no tokens are configured.
    pub tokens: Option<Arc<Tokens>>,
    /// A client certificate from the cluster's CA counts as `admin`. Only
    /// when TLS is on, where the handshake has verified it.
    pub certificates: bool,
}

impl ClientAuth {
    /// Anyone may do anything: no tokens and no TLS.
    pub fn open(&self) -> bool {
        self.tokens.is_none() && !self.certificates
    }

    /// An interceptor that lets through callers with at least `need`.
    pub fn interceptor(
        &self,
        need: Role,
    ) -> impl FnMut(Request<()>) -> std::result::Result<Request<()>, Status> + Clone {
        let auth = self.clone();
        move |mut req: Request<()>| {
            // A gate in front may have proved the caller already (KV
            // mutations); checking the token again would cost a second
            // constant-time scan of the tokens for nothing.
            let caller = match req.extensions().get::<Caller>() {
                Some(c) => c.clone(),
                None => auth.authenticate(
                    req.metadata().get("authorization").map(|v| v.as_bytes()),
                    req.extensions().get::<ConnInfo>(),
                )?,
            };
            if !caller.role.allows(need) {
                return Err(Error::PermissionDenied(format!(
                    "{} has the {} role; this call needs {need}",
                    caller.name, caller.role
                ))
                .into());
            }
            req.extensions_mut().insert(caller);
            Ok(req)
        }
    }

    /// Who presented the `authorization` header value `authorization` on the
    /// connection `conn`.
    pub fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        conn: Option<&ConnInfo>,
    ) -> std::result::Result<Caller, Status> {
        if self.open() {
            return Ok(Caller {
                name: "anyone".into(),
                role: Role::Admin,
            });
        }
        if let Some(value) = authorization {
            let Some(tokens) = &self.tokens else {
                return Err(Error::Unauthenticated(
                    "this node takes no tokens; present a client certificate".into(),
                )
                .into());
            };
            return tokens.caller(value).map_err(Status::from);
        }
        let verified_cert = conn.is_some_and(|c| c.client_cert.is_some());
        if self.certificates && verified_cert {
            return Ok(Caller {
                name: "client certificate".into(),
                role: Role::Admin,
            });
        }
        Err(Error::Unauthenticated(if self.tokens.is_some() {
            "no token; send `authorization: Bearer TOKEN` (meshkv --token, grpcurl -H)".into()
        } else {
            "no client certificate; present one from the cluster's CA".into()
        })
        .into())
    }
}

/// Checks that the caller an interceptor let through has at least `need`:
/// for calls that need more than their service's minimum.
pub fn require<T>(req: &Request<T>, need: Role) -> std::result::Result<(), Status> {
    match req.extensions().get::<Caller>() {
        Some(c) if c.role.allows(need) => Ok(()),
        Some(c) => Err(Error::PermissionDenied(format!(
            "{} has the {} role; this call needs {need}",
            c.name, c.role
        ))
        .into()),
        // No interceptor ran: a test serving the service bare.
        None => Ok(()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tonic::Code;

    /// One token of each role, for the tests of every gate.
    pub(crate) const FILE: &str = r#"
        [[tokens]]
        name = "reader"
        role = "read"
        token = "rrrrrrrrrrrrrrrrrrrr"
        [[tokens]]
        name = "writer"
        role = "write"
        token = "wwwwwwwwwwwwwwwwwwww"
        [[tokens]]
        name = "admin"
        role = "admin"
        token = "aaaaaaaaaaaaaaaaaaaa"
        [[tokens]]
        name = "nodes"
        role = "peer"
        token = "pppppppppppppppppppp"
    "#;

    fn auth() -> ClientAuth {
        ClientAuth {
            tokens: Some(Arc::new(Tokens::parse(FILE).unwrap())),
            certificates: false,
        }
    }

    fn call(auth: &ClientAuth, need: Role, header: Option<&str>) -> Result<Caller, Code> {
        let mut req = Request::new(());
        if let Some(h) = header {
            req.metadata_mut()
                .insert("authorization", h.parse().unwrap());
        }
        let mut f = auth.interceptor(need);
        f(req)
            .map(|r| r.extensions().get::<Caller>().unwrap().clone())
            .map_err(|s| s.code())
    }

    #[test]
    fn roles_include_the_lower_ones() {
        let a = auth();
        let read = Some("Bearer rrrrrrrrrrrrrrrrrrrr");
        let write = Some("Bearer wwwwwwwwwwwwwwwwwwww");
        assert_eq!(call(&a, Role::Read, read).unwrap().role, Role::Read);
        assert_eq!(
            call(&a, Role::Write, read).unwrap_err(),
            Code::PermissionDenied
        );
        assert_eq!(&*call(&a, Role::Read, write).unwrap().name, "writer");
        assert_eq!(
            call(&a, Role::Admin, write).unwrap_err(),
            Code::PermissionDenied
        );
    }

    #[test]
    fn missing_unknown_or_malformed_tokens_are_unauthenticated() {
        let a = auth();
        for h in [
            None,
            Some("Bearer nope-nope-nope-nope"),
            Some("rrrrrrrrrrrrrrrrrrrr"),
            Some("Basic rrrrrrrrrrrrrrrrrrrr"),
            Some("Bearer rrrrrrrrrrrrrrrrrrr"),
        ] {
            assert_eq!(
                call(&a, Role::Read, h).unwrap_err(),
                Code::Unauthenticated,
                "{h:?}"
            );
        }
    }

    #[test]
    fn no_tokens_and_no_tls_lets_everyone_in() {
        let a = ClientAuth {
            tokens: None,
            certificates: false,
        };
        assert_eq!(call(&a, Role::Admin, None).unwrap().role, Role::Admin);
    }

    #[test]
    fn certificates_only_need_a_verified_client_certificate() {
        let a = ClientAuth {
            tokens: None,
            certificates: true,
        };
        assert_eq!(
            call(&a, Role::Read, None).unwrap_err(),
            Code::Unauthenticated
        );
        let mut req = Request::new(());
        req.extensions_mut().insert(ConnInfo {
            remote: None,
            client_cert: Some(Arc::new(rustls_cert())),
        });
        let caller = a.interceptor(Role::Admin)(req).unwrap();
        assert_eq!(
            caller.extensions().get::<Caller>().unwrap().role,
            Role::Admin
        );
    }

    fn rustls_cert() -> tokio_rustls::rustls::pki_types::CertificateDer<'static> {
        tokio_rustls::rustls::pki_types::CertificateDer::from(vec![0u8; 4])
    }

    #[test]
    fn bad_files_are_refused_without_echoing_tokens() {
        let short = "[[tokens]]\nname = \"a\"\nrole = \"read\"\ntoken = \"short\"\n";
        let err = Tokens::parse(short).unwrap_err();
        assert!(err.contains("shorter"), "{err}");
        assert!(!err.contains("short\""), "{err}");
        let dup = format!("{FILE}\n[[tokens]]\nname = \"x\"\nrole = \"admin\"\ntoken = \"rrrrrrrrrrrrrrrrrrrr\"\n");
        let err = Tokens::parse(&dup).unwrap_err();
        assert!(err.contains("repeats"), "{err}");
        assert!(!err.contains("rrrr"), "{err}");
        let bad_role =
            "[[tokens]]\nname = \"a\"\nrole = \"root\"\ntoken = \"ssssssssssssssssssss\"\n";
        let err = Tokens::parse(bad_role).unwrap_err();
        assert!(!err.contains("ssss"), "{err}");
        assert!(Tokens::parse("tokens = []").is_err());
        assert!(!format!("{:?}", Tokens::parse(FILE).unwrap()).contains("rrrr"));
    }

    #[test]
    fn generated_files_parse_and_hold_one_token_per_role() {
        let text = Tokens::generate().unwrap();
        let t = Tokens::parse(&text).unwrap();
        let roles: Vec<Role> = t.entries.iter().map(|e| e.1).collect();
        assert_eq!(roles, [Role::Admin, Role::Write, Role::Read, Role::Peer]);
        assert!(t.peer_token().is_some(), "nodes without TLS need it");
        assert_ne!(Tokens::generate().unwrap(), text, "tokens are random");
    }

    #[test]
    fn the_peer_role_and_the_client_roles_open_nothing_of_each_other() {
        use Role::*;
        for (have, need, ok) in [
            (Admin, Read, true),
            (Admin, Write, true),
            (Write, Read, true),
            (Read, Write, false),
            (Write, Admin, false),
            (Admin, Peer, false),
            (Peer, Read, false),
            (Peer, Admin, false),
            (Peer, Peer, true),
        ] {
            assert_eq!(have.allows(need), ok, "{have} for {need}");
        }
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }
}
