//! API keys for simple setups: named, scoped to a tenant, shown once, stored only as
//! SHA-256 in a JSON-lines file, compared in constant time.

use std::io::Write;
use std::path::Path;

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// One stored key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiKeyEntry {
    /// Name (the principal id is `key:<name>`).
    pub name: String,
    /// Tenant, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// SHA-256 of the key, hex.
    pub hash: String,
    /// Creation time, unix seconds.
    pub created_at: i64,
    /// Revoked?
    #[serde(default)]
    pub revoked: bool,
}

/// A new key: `oba_` + 256 random bits, base64url.
pub fn new_key() -> String {
    use rand_core::RngCore;
    let mut b = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut b);
    format!(
        "oba_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    )
}

fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The keys a gateway accepts.
#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    entries: Vec<(ApiKeyEntry, [u8; 32])>,
}

impl ApiKeys {
    /// Loads a key file (JSON lines; a later line for the same name replaces an earlier
    /// one, so revocation appends). A missing file is an empty set.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let mut by_name: Vec<ApiKeyEntry> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let e: ApiKeyEntry = serde_json::from_str(line)
                .map_err(|e| format!("{}:{}: {e}", path.display(), n + 1))?;
            by_name.retain(|x| x.name != e.name);
            by_name.push(e);
        }
        let mut entries = Vec::new();
        for e in by_name {
            let mut h = [0u8; 32];
            if e.hash.len() != 64 || !e.hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("{}: bad hash for {:?}", path.display(), e.name));
            }
            for (i, byte) in h.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&e.hash[2 * i..2 * i + 2], 16)
                    .map_err(|_| format!("bad hash for {:?}", e.name))?;
            }
            entries.push((e, h));
        }
        Ok(ApiKeys { entries })
    }

    /// The active entries.
    pub fn list(&self) -> impl Iterator<Item = &ApiKeyEntry> {
        self.entries.iter().map(|(e, _)| e)
    }

    /// The entry for a presented key. Every stored hash is compared, in constant time.
    pub fn check(&self, presented: &str) -> Option<&ApiKeyEntry> {
        let h = hash(presented);
        let mut found = None;
        for (e, stored) in &self.entries {
            if bool::from(stored.ct_eq(&h)) && !e.revoked {
                found = Some(e);
            }
        }
        found
    }
}

/// A key file's length and modification time (`None` when absent), to notice changes.
pub fn file_state(path: &Path) -> Option<(u64, Option<std::time::SystemTime>)> {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.len(), m.modified().ok()))
}

/// What changed between two loads of a key file: keys that became active, keys that were
/// revoked or removed.
pub fn changes<'a>(
    before: &'a ApiKeys,
    after: &'a ApiKeys,
) -> (Vec<&'a ApiKeyEntry>, Vec<&'a ApiKeyEntry>) {
    let active =
        |k: &'a ApiKeys| -> Vec<&'a ApiKeyEntry> { k.list().filter(|e| !e.revoked).collect() };
    let (old, new) = (active(before), active(after));
    let created = new
        .iter()
        .filter(|e| !old.iter().any(|o| o.name == e.name && o.hash == e.hash))
        .copied()
        .collect();
    let revoked = old
        .iter()
        .filter(|o| !new.iter().any(|e| e.name == o.name && e.hash == o.hash))
        .copied()
        .collect();
    (created, revoked)
}

/// Creates a key named `name`, appends its hash to `path` (created 0600), returns the key.
pub fn create(path: &Path, name: &str, tenant: Option<&str>, now: i64) -> Result<String, String> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err("a key name is letters, digits, '-', '_' or '.'".into());
    }
    let existing = ApiKeys::load(path)?;
    if existing.list().any(|e| e.name == name && !e.revoked) {
        return Err(format!("a key named {name:?} exists (revoke it first)"));
    }
    let key = new_key();
    let entry = ApiKeyEntry {
        name: name.to_owned(),
        tenant: tenant.map(str::to_owned),
        hash: hex::encode(hash(&key)),
        created_at: now,
        revoked: false,
    };
    append(path, &entry)?;
    Ok(key)
}

/// Revokes the key named `name` (appends a revocation line).
pub fn revoke(path: &Path, name: &str) -> Result<(), String> {
    let keys = ApiKeys::load(path)?;
    let mut e = keys
        .list()
        .find(|e| e.name == name && !e.revoked)
        .cloned()
        .ok_or_else(|| format!("no active key named {name:?}"))?;
    e.revoked = true;
    append(path, &e)
}

fn append(path: &Path, e: &ApiKeyEntry) -> Result<(), String> {
    let mut opts = std::fs::OpenOptions::new();
    opts.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let line = serde_json::to_string(e).map_err(|e| e.to_string())?;
    writeln!(f, "{line}")
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_that_is_not_hex_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        // 64 bytes, but multi-byte characters: slicing by byte would panic.
        let hash = "é".repeat(32);
        std::fs::write(
            &p,
            format!("{{\"name\":\"x\",\"hash\":\"{hash}\",\"created_at\":0}}\n"),
        )
        .unwrap();
        assert!(ApiKeys::load(&p).unwrap_err().contains("bad hash"));
    }

    #[test]
    fn create_check_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keys.jsonl");
        let k = create(&p, "ci", Some("acme"), 1).unwrap();
        assert!(k.starts_with("oba_"));
        let keys = ApiKeys::load(&p).unwrap();
        assert_eq!(keys.check(&k).unwrap().tenant.as_deref(), Some("acme"));
        assert!(keys.check("oba_wrong").is_none());
        assert!(
            !std::fs::read_to_string(&p).unwrap().contains(&k),
            "only the hash is stored"
        );
        assert!(create(&p, "ci", None, 2).is_err());
        revoke(&p, "ci").unwrap();
        assert!(ApiKeys::load(&p).unwrap().check(&k).is_none());
        assert!(create(&p, "bad name", None, 2).is_err());
    }
}
