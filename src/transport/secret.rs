//! The cluster secret (the "cookie"): what every node of one cluster shares.
//!
//! It authenticates peer connections when peer TLS is off (the challenge–
//! response of [`super::handshake`]) and the sessions of the worker network
//! (ractor_cluster's own cookie check, in both modes).
//!
//! # Invariants
//!
//! * A secret is at least [`MIN_SECRET_BYTES`] bytes long; shorter ones are
//!   refused when the configuration is read, naming where it came from.
//! * It is never printed: `Debug` shows its length only.
//! * It never comes from a command line, where every local user can read it
//!   (`ps`, `/proc/<pid>/cmdline`): the agent takes it from the environment
//!   (`KAIROS_CLUSTER_COOKIE`), a file (`--cluster-cookie-file`) or the
//!   `--config` file.
//!
//! # IMPLEMENTATION CAVEATS
//!
//! * One trailing newline of a secret file is dropped (so `echo secret >
//!   file` works); any other whitespace is part of the secret.
//! * A secret file readable by group or others is used, with a warning.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::error::{Error, Result};

/// The shortest cluster secret a node accepts, bytes.
pub const MIN_SECRET_BYTES: usize = 16;

/// The shared secret of one cluster.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret(String);

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterSecret({} bytes)", self.0.len())
    }
}

impl ClusterSecret {
    /// A secret from `value`, refused (naming `source`) when shorter than
    /// [`MIN_SECRET_BYTES`].
    pub fn new(value: String, source: &str) -> Result<ClusterSecret> {
        if value.len() < MIN_SECRET_BYTES {
            return Err(Error::InvalidArgument(format!(
                "{source}: the cluster cookie is {} bytes long; it must have at least {MIN_SECRET_BYTES} \
                 (e.g. `head -c 32 /dev/urandom | base64`)",
                value.len()
            )));
        }
        Ok(ClusterSecret(value))
    }

    /// Reads a secret from the file at `path` (one trailing newline dropped).
    pub fn from_file(path: &Path) -> Result<ClusterSecret> {
        let source = format!("--cluster-cookie-file {}", path.display());
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::InvalidArgument(format!("{source}: {e}")))?;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    file = %path.display(),
                    "the cluster cookie file is readable by other users; make it 0600"
                );
            }
        }
        let value = text
            .strip_suffix("\r\n")
            .or_else(|| text.strip_suffix('\n'))
            .unwrap_or(&text);
        ClusterSecret::new(value.to_string(), &source)
    }

    /// The secret's bytes, for the handshake's MACs.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The secret as ractor_cluster takes its cookie.
    pub fn to_cookie(&self) -> String {
        self.0.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_secret_is_refused_naming_its_source_and_the_minimum() {
        let err = ClusterSecret::new("fifteen-bytes!!".into(), "KAIROS_CLUSTER_COOKIE")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "KAIROS_CLUSTER_COOKIE: the cluster cookie is 15 bytes long; it must have at least 16"
            ),
            "{err}"
        );
        assert!(ClusterSecret::new("sixteen-bytes!!!".into(), "x").is_ok());
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let secret = ClusterSecret::new("a-very-secret-cookie".into(), "x").unwrap();
        assert_eq!(format!("{secret:?}"), "ClusterSecret(20 bytes)");
    }

    #[test]
    fn a_secret_file_loses_one_trailing_newline_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cookie");
        std::fs::write(&path, "0123456789abcdef \n").unwrap();
        let secret = ClusterSecret::from_file(&path).unwrap();
        assert_eq!(secret.as_bytes(), b"0123456789abcdef ");
        let err = ClusterSecret::from_file(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("--cluster-cookie-file "), "{err}");
    }
}
