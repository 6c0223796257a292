//! The audit key: the private JWK that signs the checkpoints of the registry's audit
//! trail, kept in a file (mode 0600, created on first start), and its public half,
//! published at [`AUDIT_KEYS_PATH`] for `oba audit verify --jwks`.
//!
//! The key never goes into the database: someone who can write the database can rewrite
//! the chain and recompute every hash, but cannot sign a checkpoint without this file.

use std::io::Write;
use std::path::{Path, PathBuf};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use oba_audit::CheckpointSigner;
use oba_httpsig::jwk::Jwk;
use oba_httpsig::Algorithm;

use crate::AppState;

/// Where the public key is published: a JWK Set (RFC 7517) of one key, its `kid` the
/// RFC 7638 thumbprint that every checkpoint names as `sig_keyid`.
pub const AUDIT_KEYS_PATH: &str = "/.well-known/audit-keys.json";

/// The media type of [`AUDIT_KEYS_PATH`].
pub const JWK_SET_MEDIA_TYPE: &str = "application/jwk-set+json";

/// Why the audit key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuditKeyError {
    /// The file could not be read or written.
    #[error("audit key {}: {message}", path.display())]
    Io {
        /// The key file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The file is not a usable private key.
    #[error("audit key {}: {message}", path.display())]
    Invalid {
        /// The key file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// Group or others may read or write the file.
    #[error("audit key {}: {message}", path.display())]
    Unsafe {
        /// The key file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// No key could be generated (the system's random source failed).
    #[error("cannot generate an audit key: {0}")]
    Generate(String),
}

/// The registry's audit key, ready to sign and to publish.
#[derive(Debug, Clone)]
pub struct AuditKey {
    /// Signs checkpoints.
    pub signer: CheckpointSigner,
    /// The public JWK (`kid` = thumbprint).
    pub public: Jwk,
    /// Where the private key is (`None`: generated for this process only).
    pub path: Option<PathBuf>,
}

impl AuditKey {
    /// The key id checkpoints carry (`sig_keyid`): the RFC 7638 thumbprint.
    pub fn keyid(&self) -> &str {
        self.signer.keyid()
    }

    /// The JWK Set served at [`AUDIT_KEYS_PATH`].
    pub fn jwk_set(&self) -> String {
        format!("{{\"keys\":[{}]}}", self.public.to_json())
    }

    /// From a private JWK (asymmetric: its public half is published).
    pub fn from_jwk(jwk: &Jwk, path: Option<PathBuf>) -> Result<Self, AuditKeyError> {
        let invalid = |message: String| AuditKeyError::Invalid {
            path: path.clone().unwrap_or_default(),
            message,
        };
        if !jwk.is_private() || jwk.kty == "oct" {
            return Err(invalid(
                "must be a private asymmetric JWK (its public half is published)".into(),
            ));
        }
        let signer = CheckpointSigner::from_jwk(jwk).map_err(|e| invalid(e.to_string()))?;
        let mut public = jwk.public().map_err(|e| invalid(e.to_string()))?;
        public.kid = Some(signer.keyid().to_owned());
        Ok(AuditKey {
            signer,
            public,
            path,
        })
    }

    /// A new Ed25519 key that lives as long as the process (for an in-memory database,
    /// whose trail does not outlive it either).
    pub fn ephemeral() -> Result<Self, AuditKeyError> {
        let jwk = Jwk::generate(Algorithm::Ed25519)
            .map_err(|e| AuditKeyError::Generate(e.to_string()))?;
        Self::from_jwk(&jwk, None)
    }
}

/// Where the key lives when none is configured: next to a SQLite file `DIR/NAME.db` as
/// `DIR/NAME-audit.jwk`; `registry-audit.jwk` in the working directory for
/// PostgreSQL. `None` for an in-memory SQLite database (an [`AuditKey::ephemeral`] key).
pub fn default_key_path(db_url: &str) -> Option<PathBuf> {
    if db_url.starts_with("postgres:") || db_url.starts_with("postgresql:") {
        return Some(PathBuf::from("registry-audit.jwk"));
    }
    let rest = db_url
        .strip_prefix("sqlite://")
        .or_else(|| db_url.strip_prefix("sqlite:"))
        .unwrap_or(db_url);
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() || path == ":memory:" || query.split('&').any(|p| p == "mode=memory") {
        return None;
    }
    let path = Path::new(path);
    let stem = path.file_stem()?.to_string_lossy();
    Some(path.with_file_name(format!("{stem}-audit.jwk")))
}

/// Reads the private JWK at `path`; when the file is missing, creates it: a new Ed25519
/// key, mode 0600, written to a temporary file and linked into place, so a reader never
/// sees half a key and two registries starting at once end up with the same one.
///
/// Refused: a file group or others may read or write (unix), a public or symmetric key.
pub fn load_or_create_key(path: &Path) -> Result<AuditKey, AuditKeyError> {
    match read_key(path)? {
        Some(key) => Ok(key),
        None => {
            create_key(path)?;
            read_key(path)?.ok_or_else(|| AuditKeyError::Io {
                path: path.to_owned(),
                message: "vanished right after it was created".into(),
            })
        }
    }
}

fn read_key(path: &Path) -> Result<Option<AuditKey>, AuditKeyError> {
    let io = |e: std::io::Error| AuditKeyError::Io {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).map_err(io)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(AuditKeyError::Unsafe {
                path: path.to_owned(),
                message: format!(
                    "mode {:o} lets group or others read or write it (chmod 600)",
                    mode & 0o777
                ),
            });
        }
    }
    let jwk = Jwk::parse(&text).map_err(|e| AuditKeyError::Invalid {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    AuditKey::from_jwk(&jwk, Some(path.to_owned())).map(Some)
}

fn create_key(path: &Path) -> Result<(), AuditKeyError> {
    let io = |e: std::io::Error| AuditKeyError::Io {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let jwk =
        Jwk::generate(Algorithm::Ed25519).map_err(|e| AuditKeyError::Generate(e.to_string()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", crate::auth::new_id()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let written = opts.open(&tmp).and_then(|mut f| {
        f.write_all(format!("{}\n", jwk.to_json()).as_bytes())?;
        f.sync_all()
    });
    // Linking fails if the name exists: the first of two concurrent starts wins.
    let linked = written.and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                if let Ok(d) = std::fs::File::open(dir) {
                    let _ = d.sync_all();
                }
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io(e)),
    }
}

/// `GET /.well-known/audit-keys.json`: the public key that verifies the audit trail's
/// checkpoints (public, cacheable).
pub(crate) async fn audit_keys(State(state): State<AppState>, headers: HeaderMap) -> Response {
    crate::public::cacheable(
        &headers,
        JWK_SET_MEDIA_TYPE,
        state.audit_keys.as_bytes().to_vec(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_paths() {
        assert_eq!(
            default_key_path("sqlite://data/registry.db"),
            Some(PathBuf::from("data/registry-audit.jwk"))
        );
        assert_eq!(
            default_key_path("sqlite:///var/lib/oba/r.db?mode=rwc"),
            Some(PathBuf::from("/var/lib/oba/r-audit.jwk"))
        );
        assert_eq!(
            default_key_path("sqlite:registry.db"),
            Some(PathBuf::from("registry-audit.jwk"))
        );
        assert_eq!(
            default_key_path("postgres://u@h/db"),
            Some(PathBuf::from("registry-audit.jwk"))
        );
        assert_eq!(default_key_path("sqlite::memory:"), None);
        assert_eq!(default_key_path("sqlite://x.db?mode=memory"), None);
    }

    #[test]
    fn a_key_is_created_0600_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.jwk");
        let first = load_or_create_key(&path).unwrap();
        let again = load_or_create_key(&path).unwrap();
        assert_eq!(first.keyid(), again.keyid());
        assert_eq!(first.public.kid.as_deref(), Some(first.keyid()));
        assert!(!first.public.is_private());
        assert!(!first.jwk_set().contains("\"d\""));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(matches!(
                load_or_create_key(&path),
                Err(AuditKeyError::Unsafe { .. })
            ));
        }
        // Only the key file is left (the temporary file is gone).
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn public_and_symmetric_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pub.jwk");
        let public = Jwk::generate(Algorithm::Ed25519).unwrap().public().unwrap();
        for text in [
            public.to_json(),
            r#"{"kty":"oct","k":"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0","kid":"h"}"#.to_owned(),
            "not json".to_owned(),
        ] {
            std::fs::write(&path, text).unwrap();
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            }
            assert!(matches!(
                load_or_create_key(&path),
                Err(AuditKeyError::Invalid { .. })
            ));
        }
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no/such/dir/k.jwk");
        assert!(matches!(
            load_or_create_key(&path),
            Err(AuditKeyError::Io { .. })
        ));
    }
}
