//! Events, records and their canonical form (what is hashed: see the crate docs).

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The record format version (`"v"`).
pub const FORMAT_VERSION: u64 = 1;

/// `prev` of the first record: 64 zeros.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Prefix of what a checkpoint signature covers: `SIGNING_CONTEXT || hash` (the
/// checkpoint's `hash`, 64 ASCII hex digits). The prefix keeps a checkpoint signature
/// from being mistaken for any other signature made with the same key.
pub const SIGNING_CONTEXT: &[u8] = b"oba-audit checkpoint v1\n";

/// What happened. Serialised as its dotted name; names this version does not know are
/// kept as [`Kind::Other`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kind {
    /// `auth.accepted`: a request was authenticated.
    AuthAccepted,
    /// `auth.rejected`: authentication failed.
    AuthRejected,
    /// `policy.denied`: an authenticated principal was refused by the policy.
    PolicyDenied,
    /// `key.created`: an API key was created.
    KeyCreated,
    /// `key.revoked`: an API key was revoked.
    KeyRevoked,
    /// `token.rejected`: a bearer token (OIDC JWT) was refused.
    TokenRejected,
    /// `memory.erased`: a principal's memory was erased.
    MemoryErased,
    /// `space.member_changed`: a memory space member was added, changed or removed.
    SpaceMemberChanged,
    /// `checkpoint`: a signed checkpoint, written by the writer only.
    Checkpoint,
    /// Any other name.
    Other(String),
}

impl Kind {
    /// The dotted name.
    pub fn as_str(&self) -> &str {
        match self {
            Kind::AuthAccepted => "auth.accepted",
            Kind::AuthRejected => "auth.rejected",
            Kind::PolicyDenied => "policy.denied",
            Kind::KeyCreated => "key.created",
            Kind::KeyRevoked => "key.revoked",
            Kind::TokenRejected => "token.rejected",
            Kind::MemoryErased => "memory.erased",
            Kind::SpaceMemberChanged => "space.member_changed",
            Kind::Checkpoint => "checkpoint",
            Kind::Other(s) => s,
        }
    }

    /// The kind named `name` (a known name gives its variant, never `Other`).
    pub fn parse(name: &str) -> Kind {
        match name {
            "auth.accepted" => Kind::AuthAccepted,
            "auth.rejected" => Kind::AuthRejected,
            "policy.denied" => Kind::PolicyDenied,
            "key.created" => Kind::KeyCreated,
            "key.revoked" => Kind::KeyRevoked,
            "token.rejected" => Kind::TokenRejected,
            "memory.erased" => Kind::MemoryErased,
            "space.member_changed" => Kind::SpaceMemberChanged,
            "checkpoint" => Kind::Checkpoint,
            other => Kind::Other(other.to_owned()),
        }
    }

    /// True for `checkpoint` (also when spelled as [`Kind::Other`]).
    pub fn is_checkpoint(&self) -> bool {
        self.as_str() == "checkpoint"
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for Kind {
    fn from(s: &str) -> Self {
        Kind::parse(s)
    }
}

/// What the gateway submits. Never a request or response body: [`AuditEvent::hashes`]
/// holds their SHA-256 instead.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    /// When it happened, unix milliseconds.
    pub time_ms: i64,
    /// What happened.
    pub kind: Kind,
    /// The principal (its stable id), when known.
    pub actor: Option<String>,
    /// How it authenticated (`api-key`, `oidc`, `web-bot-auth`, ...).
    pub auth_method: Option<String>,
    /// The key involved: API key id, signature `keyid`, token `kid`.
    pub key_id: Option<String>,
    /// Tenant.
    pub tenant: Option<String>,
    /// The route (`/v1/chat/completions`, ...).
    pub route: Option<String>,
    /// The gateway's request id.
    pub request_id: Option<String>,
    /// A reason code (`unknown_api_key`, `expired`, `no_rule`, ...).
    pub reason: Option<String>,
    /// Content hashes by name (`request_body` → lowercase hex SHA-256).
    pub hashes: BTreeMap<String, String>,
    /// Small structured details. Numbers that are not integers are stored as strings
    /// (see the crate docs).
    pub details: Map<String, Value>,
}

impl AuditEvent {
    /// An event of `kind` at `time_ms`, every other field empty.
    pub fn new(kind: Kind, time_ms: i64) -> Self {
        AuditEvent {
            time_ms,
            kind,
            actor: None,
            auth_method: None,
            key_id: None,
            tenant: None,
            route: None,
            request_id: None,
            reason: None,
            hashes: BTreeMap::new(),
            details: Map::new(),
        }
    }

    /// An event of `kind` now (the system clock).
    pub fn now(kind: Kind) -> Self {
        Self::new(kind, now_ms())
    }

    /// Sets the actor.
    pub fn with_actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = Some(actor.into());
        self
    }

    /// Sets the authentication method.
    pub fn with_auth_method(mut self, method: impl Into<String>) -> Self {
        self.auth_method = Some(method.into());
        self
    }

    /// Sets the key id.
    pub fn with_key_id(mut self, key_id: impl Into<String>) -> Self {
        self.key_id = Some(key_id.into());
        self
    }

    /// Sets the tenant.
    pub fn with_tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// Sets the route.
    pub fn with_route(mut self, route: impl Into<String>) -> Self {
        self.route = Some(route.into());
        self
    }

    /// Sets the request id.
    pub fn with_request_id(mut self, request_id: impl Into<String>) -> Self {
        self.request_id = Some(request_id.into());
        self
    }

    /// Sets the reason code.
    pub fn with_reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// Adds a content hash already computed (lowercase hex SHA-256).
    pub fn with_hash(mut self, name: impl Into<String>, hex: impl Into<String>) -> Self {
        self.hashes.insert(name.into(), hex.into());
        self
    }

    /// Adds the SHA-256 of `content` under `name` (the content itself is not kept).
    pub fn with_sha256(self, name: impl Into<String>, content: &[u8]) -> Self {
        let hex = sha256_hex(content);
        self.with_hash(name, hex)
    }

    /// Adds a detail.
    pub fn with_detail(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.details.insert(key.into(), value.into());
        self
    }

    /// What the writer does before sealing an event: NUL characters in the text fields
    /// become U+FFFD (PostgreSQL text cannot hold them) and non-integer numbers in
    /// `details` become strings (their shortest decimal form), so the canonical form is
    /// the same whichever parser reads it back.
    pub(crate) fn normalize(&mut self) {
        for field in [
            &mut self.actor,
            &mut self.auth_method,
            &mut self.key_id,
            &mut self.tenant,
            &mut self.route,
            &mut self.request_id,
            &mut self.reason,
        ]
        .into_iter()
        .flatten()
        {
            if field.contains('\0') {
                *field = field.replace('\0', "\u{fffd}");
            }
        }
        if let Kind::Other(name) = &self.kind {
            if name.contains('\0') {
                self.kind = Kind::parse(&name.replace('\0', "\u{fffd}"));
            }
        }
        for v in self.details.values_mut() {
            normalize_value(v);
        }
    }
}

fn normalize_value(v: &mut Value) {
    match v {
        Value::Number(n) if !(n.is_i64() || n.is_u64()) => *v = Value::String(n.to_string()),
        Value::Array(a) => a.iter_mut().for_each(normalize_value),
        Value::Object(o) => o.values_mut().for_each(normalize_value),
        _ => {}
    }
}

/// One link of the chain: an event with its position, its predecessor's hash, its own
/// hash and, for checkpoints, a signature.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    /// Position in the chain, from 1, contiguous.
    pub seq: u64,
    /// `hash` of the previous record ([`GENESIS`] for seq 1).
    pub prev: String,
    /// The event.
    pub event: AuditEvent,
    /// Checkpoints: the signature algorithm (`ed25519`, `ecdsa-p256-sha256`, ...).
    pub sig_alg: Option<String>,
    /// Checkpoints: the signing key's id (its RFC 7638 thumbprint).
    pub sig_keyid: Option<String>,
    /// Checkpoints: the signature over [`SIGNING_CONTEXT`] `||` `hash`, base64url
    /// without padding. Not covered by `hash`.
    pub sig: Option<String>,
    /// Lowercase hex SHA-256 of [`AuditRecord::canonical`].
    pub hash: String,
}

impl AuditRecord {
    /// A record with its hash computed (no signature).
    pub fn seal(seq: u64, prev: String, event: AuditEvent) -> Self {
        let mut r = AuditRecord {
            seq,
            prev,
            event,
            sig_alg: None,
            sig_keyid: None,
            sig: None,
            hash: String::new(),
        };
        r.hash = r.compute_hash();
        r
    }

    /// True for a checkpoint.
    pub fn is_checkpoint(&self) -> bool {
        self.event.kind.is_checkpoint()
    }

    /// The bytes that are hashed: every field but `sig` and `hash`, as one compact JSON
    /// object in a fixed member order (see the crate docs).
    pub fn canonical(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        self.write_canonical_body(&mut out);
        out.push(b'}');
        out
    }

    /// The SHA-256 of [`AuditRecord::canonical`], lowercase hex.
    pub fn compute_hash(&self) -> String {
        sha256_hex(&self.canonical())
    }

    /// True when `hash` is the hash of the content.
    pub fn hash_matches(&self) -> bool {
        self.compute_hash() == self.hash
    }

    /// What a checkpoint signature covers: [`SIGNING_CONTEXT`] followed by `hash`.
    pub fn signing_input(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(SIGNING_CONTEXT.len() + self.hash.len());
        m.extend_from_slice(SIGNING_CONTEXT);
        m.extend_from_slice(self.hash.as_bytes());
        m
    }

    /// The record as one JSON line (without the newline): the canonical object with
    /// `sig` and `hash` appended.
    pub fn to_line(&self) -> String {
        let mut out = Vec::with_capacity(640);
        self.write_line(&mut out);
        // Only UTF-8 is ever written.
        String::from_utf8(out).unwrap_or_default()
    }

    /// Appends the JSON line (without the newline) to `out`.
    pub fn write_line(&self, out: &mut Vec<u8>) {
        self.write_canonical_body(out);
        out.extend_from_slice(b",\"sig\":");
        write_opt_str(out, self.sig.as_deref());
        out.extend_from_slice(b",\"hash\":");
        write_str(out, &self.hash);
        out.push(b'}');
    }

    /// Parses one line, strictly: it must be exactly what [`AuditRecord::to_line`]
    /// writes for the record it decodes to (so no byte can change without changing the
    /// record). The hash is not checked here.
    pub fn parse_line(line: &[u8]) -> Result<Self, String> {
        let w: Wire = serde_json::from_slice(line).map_err(|e| format!("not a record: {e}"))?;
        if w.v != FORMAT_VERSION {
            return Err(format!("unsupported format version {}", w.v));
        }
        let r = AuditRecord {
            seq: w.seq,
            prev: w.prev,
            event: AuditEvent {
                time_ms: w.time_ms,
                kind: Kind::parse(&w.kind),
                actor: w.actor,
                auth_method: w.auth_method,
                key_id: w.key_id,
                tenant: w.tenant,
                route: w.route,
                request_id: w.request_id,
                reason: w.reason,
                hashes: w.hashes,
                details: w.details,
            },
            sig_alg: w.sig_alg,
            sig_keyid: w.sig_keyid,
            sig: w.sig,
            hash: w.hash,
        };
        let mut again = Vec::with_capacity(line.len());
        r.write_line(&mut again);
        if again != line {
            return Err("not in canonical form".into());
        }
        Ok(r)
    }

    fn write_canonical_body(&self, out: &mut Vec<u8>) {
        let e = &self.event;
        out.extend_from_slice(b"{\"v\":");
        out.extend_from_slice(FORMAT_VERSION.to_string().as_bytes());
        out.extend_from_slice(b",\"seq\":");
        out.extend_from_slice(self.seq.to_string().as_bytes());
        out.extend_from_slice(b",\"prev\":");
        write_str(out, &self.prev);
        out.extend_from_slice(b",\"time_ms\":");
        out.extend_from_slice(e.time_ms.to_string().as_bytes());
        out.extend_from_slice(b",\"kind\":");
        write_str(out, e.kind.as_str());
        for (name, value) in [
            ("actor", &e.actor),
            ("auth_method", &e.auth_method),
            ("key_id", &e.key_id),
            ("tenant", &e.tenant),
            ("route", &e.route),
            ("request_id", &e.request_id),
            ("reason", &e.reason),
        ] {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":");
            write_opt_str(out, value.as_deref());
        }
        out.extend_from_slice(b",\"hashes\":");
        write_string_map(out, &e.hashes);
        out.extend_from_slice(b",\"details\":");
        write_object(out, &e.details);
        out.extend_from_slice(b",\"sig_alg\":");
        write_opt_str(out, self.sig_alg.as_deref());
        out.extend_from_slice(b",\"sig_keyid\":");
        write_opt_str(out, self.sig_keyid.as_deref());
    }
}

/// The line as parsed (then re-serialised and compared byte for byte).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    v: u64,
    seq: u64,
    prev: String,
    time_ms: i64,
    kind: String,
    actor: Option<String>,
    auth_method: Option<String>,
    key_id: Option<String>,
    tenant: Option<String>,
    route: Option<String>,
    request_id: Option<String>,
    reason: Option<String>,
    hashes: BTreeMap<String, String>,
    details: Map<String, Value>,
    sig_alg: Option<String>,
    sig_keyid: Option<String>,
    sig: Option<String>,
    hash: String,
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// Unix milliseconds from the system clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A JSON string: `"` and `\` escaped, `\b \f \n \r \t` for those controls, `\u00xx`
/// (lowercase) for the other characters below U+0020, everything else as UTF-8.
fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x0c => b"\\f",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if esc.is_empty() {
            const DIGITS: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(DIGITS[usize::from(b >> 4)]);
            out.push(DIGITS[usize::from(b & 0x0f)]);
        } else {
            out.extend_from_slice(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

fn write_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => write_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// RFC 8785 member order: keys compared as UTF-16 code units.
fn sorted_keys<'a, I: Iterator<Item = &'a String>>(keys: I) -> Vec<&'a String> {
    let mut keys: Vec<&String> = keys.collect();
    keys.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
    keys
}

fn write_string_map(out: &mut Vec<u8>, map: &BTreeMap<String, String>) {
    out.push(b'{');
    for (i, k) in sorted_keys(map.keys()).into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, k);
        out.push(b':');
        write_str(out, &map[k]);
    }
    out.push(b'}');
}

fn write_object(out: &mut Vec<u8>, map: &Map<String, Value>) {
    out.push(b'{');
    for (i, k) in sorted_keys(map.keys()).into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, k);
        out.push(b':');
        if let Some(v) = map.get(k.as_str()) {
            write_value(out, v);
        }
    }
    out.push(b'}');
}

fn write_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        // Integers in decimal; a float (never written by this crate) as serde_json
        // prints it.
        Value::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
        Value::String(s) => write_str(out, s),
        Value::Array(a) => {
            out.push(b'[');
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, v);
            }
            out.push(b']');
        }
        Value::Object(o) => write_object(out, o),
    }
}

/// The canonical JSON text of a string map (the `hashes` column of a database).
pub(crate) fn canonical_string_map(map: &BTreeMap<String, String>) -> String {
    let mut out = Vec::new();
    write_string_map(&mut out, map);
    String::from_utf8(out).unwrap_or_default()
}

/// The canonical JSON text of an object (the `details` column of a database).
pub(crate) fn canonical_object(map: &Map<String, Value>) -> String {
    let mut out = Vec::new();
    write_object(&mut out, map);
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_escape_like_serde_json() {
        for s in [
            "plain",
            "quote \" backslash \\ slash /",
            "\u{0}\u{1}\u{8}\u{9}\u{a}\u{b}\u{c}\u{d}\u{1f}\u{7f}",
            "é ü 日本 🦀 \u{2028}",
        ] {
            let mut out = Vec::new();
            write_str(&mut out, s);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(s).unwrap()
            );
        }
    }

    #[test]
    fn keys_sort_by_utf16_code_units() {
        // U+FF61 sorts before U+1F600 in UTF-8 byte order, after it in UTF-16 (the
        // surrogate pair D83D DE00 is below FF61).
        let mut m = Map::new();
        m.insert("\u{1F600}".into(), Value::from(1));
        m.insert("\u{FF61}".into(), Value::from(2));
        m.insert("a".into(), Value::from(3));
        assert_eq!(
            canonical_object(&m),
            "{\"a\":3,\"\u{1F600}\":1,\"\u{FF61}\":2}"
        );
    }

    #[test]
    fn floats_become_strings_when_normalized() {
        let mut e = AuditEvent::new(Kind::AuthAccepted, 1)
            .with_detail("f", 1.5)
            .with_detail("n", serde_json::json!([2, 0.25, {"x": -3}]))
            .with_actor("a\0b");
        e.normalize();
        assert_eq!(e.details["f"], Value::from("1.5"));
        assert_eq!(e.details["n"], serde_json::json!([2, "0.25", {"x": -3}]));
        assert_eq!(e.actor.as_deref(), Some("a\u{fffd}b"));
    }

    #[test]
    fn kinds_round_trip() {
        for k in [
            Kind::AuthAccepted,
            Kind::AuthRejected,
            Kind::PolicyDenied,
            Kind::KeyCreated,
            Kind::KeyRevoked,
            Kind::TokenRejected,
            Kind::MemoryErased,
            Kind::SpaceMemberChanged,
            Kind::Checkpoint,
            Kind::Other("rate.limited".into()),
        ] {
            assert_eq!(Kind::parse(k.as_str()), k);
        }
        assert!(Kind::Other("checkpoint".into()).is_checkpoint());
    }
}
