//! `meshkv certs`: a development CA and one certificate per node, so that a
//! TLS cluster is two commands away. Production clusters should use their
//! own PKI; these certificates are for development and tests.
//!
//! Each node certificate names the node id (what peers check), `localhost`,
//! `127.0.0.1` and `::1` (what a client on the same machine dials), plus any
//! `--host` given. It is valid for both server and client use, since a node
//! is the server of its listeners and the client of its peers.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::error::{Error, Result};

/// A certificate authority held in memory.
pub struct DevCa {
    params: CertificateParams,
    key: KeyPair,
    cert_pem: String,
}

fn bad(e: rcgen::Error) -> Error {
    Error::Config(format!("certificate generation: {e}"))
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
}

/// The CA's parameters. Fixed, so that a CA this command made can be
/// rebuilt from its saved key: certificates it issues then carry the same
/// issuer name and key identifier, and chain to the saved CA certificate.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "meshkv development CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

impl DevCa {
    /// A new CA, valid for ten years.
    pub fn generate() -> Result<Self> {
        let mut params = ca_params();
        validity(&mut params, 3650);
        let key = KeyPair::generate().map_err(bad)?;
        let cert_pem = params.self_signed(&key).map_err(bad)?.pem();
        Ok(Self {
            params,
            key,
            cert_pem,
        })
    }

    /// A CA this command made before, from its PEM certificate and key.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self> {
        let key = KeyPair::from_pem(key_pem).map_err(bad)?;
        Ok(Self {
            params: ca_params(),
            key,
            cert_pem: cert_pem.to_string(),
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A certificate and key (PEM) for `name`, valid for two years.
    pub fn issue(&self, name: &str, hosts: &[String]) -> Result<(String, String)> {
        let mut sans = vec![
            name.to_string(),
            "localhost".into(),
            "127.0.0.1".into(),
            "::1".into(),
        ];
        for h in hosts {
            if !sans.contains(h) {
                sans.push(h.clone());
            }
        }
        let mut params = CertificateParams::new(sans).map_err(bad)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        validity(&mut params, 730);
        let key = KeyPair::generate().map_err(bad)?;
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).map_err(bad)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// Writes `text` to `path`; keys are readable by their owner only.
fn write(path: &Path, text: &str, secret: bool) -> Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        // A new file only: `create_new` never follows a symlink planted
        // where the key goes, and so never writes the key elsewhere.
        opts.create_new(true);
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    }
    let _ = secret;
    let mut f = opts
        .open(path)
        .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
    f.write_all(text.as_bytes())
        .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))
}

/// What `meshkv certs` wrote, for its report.
#[derive(Debug, Default)]
pub struct Written {
    /// Files created.
    pub created: Vec<PathBuf>,
    /// Files that existed and were kept.
    pub kept: Vec<PathBuf>,
}

/// Makes (or reuses) `dir/ca.pem` and `dir/ca.key`, then `dir/NAME.pem` and
/// `dir/NAME.key` for every name that lacks them, and `tokens` (a tokens
/// file with one random token per role) if given and missing. Existing
/// files are kept, so running it again, as a container does at each start,
/// changes nothing.
pub fn make(
    dir: &Path,
    names: &[String],
    hosts: &[String],
    tokens: Option<&Path>,
) -> Result<Written> {
    // Every certificate carries every --host: one that names a node would
    // let every node pass as that node.
    if let Some(h) = hosts
        .iter()
        .find(|h| names.iter().any(|n| n.eq_ignore_ascii_case(h)))
    {
        return Err(Error::Config(format!(
            "--host {h:?} is a node id: every certificate would name it, so every node \
             could pass as {h:?}. Each node's certificate already names its own id"
        )));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    let mut out = Written::default();
    let (ca_cert, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
    let ca = if ca_cert.exists() && ca_key.exists() {
        let read = |p: &Path| {
            std::fs::read_to_string(p)
                .map_err(|e| Error::io(format!("cannot read {}", p.display()), e))
        };
        out.kept.extend([ca_cert.clone(), ca_key.clone()]);
        DevCa::load(&read(&ca_cert)?, &read(&ca_key)?)?
    } else {
        let ca = DevCa::generate()?;
        write(&ca_key, &ca.key.serialize_pem(), true)?;
        write(&ca_cert, ca.cert_pem(), false)?;
        out.created.extend([ca_cert, ca_key]);
        ca
    };
    for name in names {
        if !crate::config::valid_id(name) {
            return Err(Error::Config(format!(
                "{name:?} is no node id: 1..=64 characters of [A-Za-z0-9._-]"
            )));
        }
        let (cert, key) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        if cert.exists() && key.exists() {
            out.kept.extend([cert, key]);
            continue;
        }
        let (c, k) = ca.issue(name, hosts)?;
        write(&key, &k, true)?;
        write(&cert, &c, false)?;
        out.created.extend([cert, key]);
    }
    if let Some(path) = tokens {
        if path.exists() {
            out.kept.push(path.to_path_buf());
        } else {
            write(path, &crate::security::auth::Tokens::generate()?, true)?;
            out.created.push(path.to_path_buf());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_that_names_a_node_is_refused() {
        // Issue 24 item 4: `--host node2` put node2 into every node's
        // certificate, so every node could pass as node2.
        let dir = tempfile::tempdir().unwrap();
        let nodes = ["n1".to_string(), "n2".to_string()];
        let err = make(dir.path(), &nodes, &["N2".into()], None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("is a node id"), "{err}");
        assert!(!dir.path().join("ca.key").exists(), "nothing written");
        assert!(make(dir.path(), &nodes, &["lb.example".into()], None).is_ok());
    }

    #[test]
    fn a_second_run_keeps_every_file() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["n1".to_string(), "n2".to_string()];
        let tokens = dir.path().join("tokens.toml");
        let first = make(dir.path(), &names, &[], Some(&tokens)).unwrap();
        assert_eq!(first.created.len(), 7);
        let ca = std::fs::read(dir.path().join("ca.pem")).unwrap();
        let again = make(dir.path(), &names, &[], Some(&tokens)).unwrap();
        assert!(again.created.is_empty());
        assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca);
        // A new node later is issued by the same, reloaded CA, and its
        // certificate passes a real handshake against the saved CA.
        let more = make(dir.path(), &["n3".to_string()], &[], None).unwrap();
        assert_eq!(more.created.len(), 2);
        let p = |n: &str| dir.path().join(n);
        let n3 =
            crate::security::tls::TlsMaterial::from_files(&p("n3.pem"), &p("n3.key"), &p("ca.pem"))
                .unwrap();
        let n1 =
            crate::security::tls::TlsMaterial::from_files(&p("n1.pem"), &p("n1.key"), &p("ca.pem"))
                .unwrap();
        crate::security::tls::tests::handshake(&n1, &n3, "n3").expect("n1 trusts n3's certificate");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("n1.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "keys are private");
        }
        assert!(make(dir.path(), &["bad name".to_string()], &[], None).is_err());
    }
}
