//! TLS on both listeners and on every outgoing connection: the material,
//! the server and client configurations, and the name checks. The
//! listeners run handshakes themselves (`security::accept`).

use std::{path::Path, sync::Arc, time::Duration};

use tokio_rustls::rustls::{
    self,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName},
    server::{ParsedCertificate, WebPkiClientVerifier},
    RootCertStore, ServerConfig,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::{
    config::TlsConfig,
    error::{Error, Result},
};

/// The PEM files of a node: its certificate chain, its key, and the
/// cluster's CA. `Debug` leaves the key out.
#[derive(Clone)]
pub struct TlsMaterial {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Vec<u8>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("cert_bytes", &self.cert.len())
            .field("key", &"<redacted>")
            .field("ca_bytes", &self.ca.len())
            .finish()
    }
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| Error::Config(format!("tls.{key}: cannot read {}: {e}", path.display())))
}

impl TlsMaterial {
    /// Reads the configured files; `None` when TLS is off.
    pub fn load(cfg: &TlsConfig) -> Result<Option<Self>> {
        let (Some(cert), Some(key), Some(ca)) = (&cfg.cert, &cfg.key, &cfg.ca) else {
            return Ok(None);
        };
        Self::from_files(cert, key, ca).map(Some)
    }

    /// Reads three PEM files.
    pub fn from_files(cert: &Path, key: &Path, ca: &Path) -> Result<Self> {
        super::private::check("tls.key", key)?;
        let m = Self {
            cert: read("cert", cert)?,
            key: read("key", key)?,
            ca: read("ca", ca)?,
        };
        // Fail at start-up, naming the file, rather than at the first handshake.
        m.certs()
            .map_err(|e| Error::Config(format!("tls.cert {}: {e}", cert.display())))?;
        PrivateKeyDer::from_pem_slice(&m.key)
            .map_err(|e| Error::Config(format!("tls.key {}: {e}", key.display())))?;
        m.roots()
            .map_err(|e| Error::Config(format!("tls.ca {}: {e}", ca.display())))?;
        Ok(m)
    }

    fn certs(&self) -> std::result::Result<Vec<CertificateDer<'static>>, String> {
        let certs = CertificateDer::pem_slice_iter(&self.cert)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        if certs.is_empty() {
            return Err("holds no PEM certificate".into());
        }
        Ok(certs)
    }

    fn roots(&self) -> std::result::Result<Arc<RootCertStore>, String> {
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&self.ca) {
            roots
                .add(c.map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        }
        if roots.is_empty() {
            return Err("holds no PEM certificate".into());
        }
        Ok(Arc::new(roots))
    }

    /// The server side of a listener. With `require_client_cert` (the peer
    /// listener) a handshake without a certificate from the CA fails;
    /// otherwise one is verified if presented and the request may
    /// authenticate with a token instead.
    pub fn server_config(&self, require_client_cert: bool) -> Result<Arc<ServerConfig>> {
        let bad = |e: String| Error::Config(format!("tls: {e}"));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(
            self.roots().map_err(bad)?,
            provider.clone(),
        );
        let verifier = if require_client_cert {
            verifier.build()
        } else {
            verifier.allow_unauthenticated().build()
        }
        .map_err(|e| bad(e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(&self.key).map_err(|e| bad(e.to_string()))?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.certs().map_err(bad)?, key)
            .map_err(|e| bad(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    /// A lazy channel to `url` that trusts only the cluster's CA, presents
    /// this node's certificate, and requires the server's certificate to
    /// name `name` (a peer's id, or a host name).
    pub fn channel(&self, url: &str, name: &str) -> Result<Endpoint> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(Identity::from_pem(&self.cert, &self.key))
            .domain_name(name);
        Endpoint::from_shared(url.to_string())
            .map_err(|e| Error::Config(format!("url {url:?}: {e}")))?
            .tls_config(tls)
            .map_err(|e| Error::Config(format!("tls for {url}: {e}")))
    }
}

/// Whether `cert` is valid for the name `name`, by its subject alternative
/// names. The chain was verified during the handshake.
pub fn cert_names(cert: &CertificateDer<'_>, name: &str) -> bool {
    let (Ok(parsed), Ok(server_name)) = (
        ParsedCertificate::try_from(cert),
        ServerName::try_from(name.to_string()),
    ) else {
        return false;
    };
    rustls::client::verify_server_name(&parsed, &server_name).is_ok()
}

/// A channel to a peer: TLS with this node's certificate when `tls` is set
/// (the peer's certificate must name `peer_id`), plain otherwise.
pub fn peer_channel(tls: Option<&TlsMaterial>, peer_id: &str, url: &str) -> Result<Channel> {
    let endpoint = match tls {
        Some(m) => m.channel(url, peer_id)?,
        None => Endpoint::from_shared(url.to_string())
            .map_err(|e| Error::Config(format!("peer url {url:?}: {e}")))?,
    };
    Ok(endpoint
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::security::certs::DevCa;

    /// A real handshake over memory: `client` (presenting its certificate
    /// when `present`) dials `server`'s peer listener as `name`.
    pub(crate) fn handshake_as(
        client: &TlsMaterial,
        present: bool,
        server: &TlsMaterial,
        name: &str,
    ) -> std::result::Result<(), String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(client.roots()?);
        let config = if present {
            builder
                .with_client_auth_cert(
                    client.certs()?,
                    PrivateKeyDer::from_pem_slice(&client.key).map_err(|e| e.to_string())?,
                )
                .map_err(|e| e.to_string())?
        } else {
            builder.with_no_client_auth()
        };
        let server = server.server_config(true).map_err(|e| e.to_string())?;
        let name = ServerName::try_from(name.to_string()).map_err(|e| e.to_string())?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (a, b) = tokio::io::duplex(64 * 1024);
            let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
            let acceptor = tokio_rustls::TlsAcceptor::from(server);
            let (c, s) = tokio::join!(connector.connect(name, a), acceptor.accept(b));
            // Each side's own verdict; the other side then only sees an alert.
            match (c, s) {
                (Ok(_), Ok(_)) => Ok(()),
                (c, s) => Err(format!(
                    "client: {}; server: {}",
                    c.err().map_or("ok".into(), |e| e.to_string()),
                    s.err().map_or("ok".into(), |e| e.to_string())
                )),
            }
        })
    }

    pub(crate) fn handshake(
        client: &TlsMaterial,
        server: &TlsMaterial,
        name: &str,
    ) -> std::result::Result<(), String> {
        handshake_as(client, true, server, name)
    }

    fn material(ca: &DevCa, name: &str) -> TlsMaterial {
        let (cert, key) = ca.issue(name, &[]).unwrap();
        TlsMaterial {
            cert: cert.into_bytes(),
            key: key.into_bytes(),
            ca: ca.cert_pem().as_bytes().to_vec(),
        }
    }

    #[test]
    fn the_peer_listener_refuses_another_ca_a_missing_certificate_and_a_wrong_name() {
        let ca = DevCa::generate().unwrap();
        let (n1, n2) = (material(&ca, "n1"), material(&ca, "n2"));
        handshake(&n2, &n1, "n1").expect("same CA");
        // The other CA's node trusts its own CA only, so also refuses n1's
        // certificate; what matters is that n1 refuses it.
        let mut other = material(&DevCa::generate().unwrap(), "n2");
        other.ca = n1.ca.clone();
        let err = handshake(&other, &n1, "n1").unwrap_err();
        assert!(err.contains("server: invalid peer certificate"), "{err}");
        let err = handshake_as(&n2, false, &n1, "n1").unwrap_err();
        assert!(err.contains("server: peer sent no certificates"), "{err}");
        let err = handshake(&n2, &n1, "n3").unwrap_err();
        assert!(
            err.contains("client: invalid peer certificate: certificate not valid for name"),
            "{err}"
        );
    }

    #[test]
    fn a_certificate_names_its_node_and_no_other() {
        let ca = DevCa::generate().unwrap();
        let (cert, _key) = ca.issue("n2", &[]).unwrap();
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        assert!(cert_names(&der, "n2"));
        assert!(cert_names(&der, "localhost"));
        assert!(!cert_names(&der, "n3"));
        assert!(!cert_names(&der, "n2.evil"));
        assert!(!cert_names(&der, ""));
    }

    #[test]
    fn material_loads_and_builds_both_kinds_of_listener() {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::generate().unwrap();
        let (cert, key) = ca.issue("n1", &[]).unwrap();
        let p = |n: &str| dir.path().join(n);
        std::fs::write(p("ca.pem"), ca.cert_pem()).unwrap();
        std::fs::write(p("n1.pem"), cert).unwrap();
        std::fs::write(p("n1.key"), key).unwrap();
        #[cfg(unix)]
        std::fs::set_permissions(
            p("n1.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let m = TlsMaterial::from_files(&p("n1.pem"), &p("n1.key"), &p("ca.pem")).unwrap();
        m.server_config(true).unwrap();
        m.server_config(false).unwrap();
        // A key where the certificate should be is named in the error.
        let err = TlsMaterial::from_files(&p("n1.key"), &p("n1.key"), &p("ca.pem"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("tls.cert"), "{err}");
    }
}
