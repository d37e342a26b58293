//! Secrets on disk (private keys, the tokens file) stay readable by their
//! owner only: checked when they are loaded, kept when they are made.

use std::path::Path;

use crate::error::{Error, Result};

/// Refuses a secret that every user of the machine can read; warns about
/// one its group can. `what` names the config key. Postgres refuses such a
/// server key too; a Kubernetes secret volume gets `defaultMode: 0400`.
pub fn check(what: &str, path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path)
            .map_err(|e| Error::Config(format!("{what}: cannot read {}: {e}", path.display())))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o004 != 0 {
            return Err(Error::Config(format!(
                "{what}: {} is readable by every user (mode {mode:04o}); it holds a \
                 secret: chmod 600 it",
                path.display()
            )));
        }
        if mode & 0o040 != 0 {
            tracing::warn!(
                file = %path.display(),
                mode = format!("{mode:04o}"),
                "{what} is readable by its group; chmod 600 it unless that is meant"
            );
        }
    }
    #[cfg(not(unix))]
    let _ = (what, path);
    Ok(())
}

/// Reads the secret in `path` (checked as [`check`] does), without the
/// whitespace around it; refuses one shorter than `min` bytes.
pub fn read_secret(what: &str, path: &Path, min: usize) -> Result<Vec<u8>> {
    check(what, path)?;
    let bytes = std::fs::read(path)
        .map_err(|e| Error::Config(format!("{what}: cannot read {}: {e}", path.display())))?;
    let secret = bytes.trim_ascii();
    if secret.len() < min {
        return Err(Error::Config(format!(
            "{what}: {} holds {} bytes; a secret needs at least {min}",
            path.display(),
            secret.len()
        )));
    }
    Ok(secret.to_vec())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_secret_every_user_can_read_is_refused_naming_the_fix() {
        // Issue 24 item 8: nothing checked the mode of keys and tokens.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        std::fs::write(&path, "secret").unwrap();
        let set = |mode| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode));
        set(0o644).unwrap();
        let err = check("tls.key", &path).unwrap_err().to_string();
        assert!(
            err.contains("tls.key") && err.contains("0644") && err.contains("chmod 600"),
            "{err}"
        );
        set(0o640).unwrap();
        assert!(check("tls.key", &path).is_ok(), "group-readable only warns");
        set(0o600).unwrap();
        assert!(check("tls.key", &path).is_ok());
        assert!(check("tls.key", &dir.path().join("missing")).is_err());
        std::fs::write(&path, " short\n").unwrap();
        let err = read_secret("k", &path, 16).unwrap_err().to_string();
        assert!(err.contains("holds 5 bytes") && err.contains("16"), "{err}");
        std::fs::write(&path, "0123456789abcdef0123\n").unwrap();
        assert_eq!(
            read_secret("k", &path, 16).unwrap(),
            b"0123456789abcdef0123"
        );
    }
}
