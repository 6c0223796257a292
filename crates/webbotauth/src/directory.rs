//! HTTP Message Signatures Directories: the key set an agent publishes at
//! `/.well-known/http-message-signatures-directory`, how to serve it signed, and how to
//! check one.

use std::sync::Arc;

use oba_httpsig::digest::{DigestAlgorithm, DigestField};
use oba_httpsig::jwk::Jwk;
use oba_httpsig::{Component, HttpMessage, Message, SignatureParams};

use crate::keys::AgentKey;
use crate::Error;

/// The well-known path of a key directory.
pub const WELL_KNOWN_PATH: &str = "/.well-known/http-message-signatures-directory";
/// The media type of a key directory.
pub const MEDIA_TYPE: &str = "application/http-message-signatures-directory+json";
/// The `tag` of a directory response signature.
pub const DIRECTORY_TAG: &str = "http-message-signatures-directory";
/// Most keys accepted from one directory.
pub const MAX_KEYS: usize = 64;

/// A parsed key directory.
#[derive(Debug, Clone)]
pub struct Directory {
    /// The usable keys (validated, `kid` = thumbprint).
    pub keys: Vec<Arc<AgentKey>>,
    /// Keys that were skipped, with why.
    pub problems: Vec<String>,
}

impl Directory {
    /// Parses a directory body. Each key must be a valid public key whose `kid` is its
    /// RFC 7638 thumbprint; other keys are skipped (and listed in `problems`). More than
    /// [`MAX_KEYS`] keys, or none usable, is an error.
    pub fn parse(body: &[u8]) -> Result<Self, Error> {
        #[derive(serde::Deserialize)]
        struct Doc {
            keys: Vec<serde_json::Value>,
        }
        let doc: Doc = serde_json::from_slice(body)
            .map_err(|e| Error::Directory(format!("not a JWK Set: {e}")))?;
        if doc.keys.len() > MAX_KEYS {
            return Err(Error::Directory(format!("more than {MAX_KEYS} keys")));
        }
        let mut keys = Vec::new();
        let mut problems = Vec::new();
        for (i, v) in doc.keys.into_iter().enumerate() {
            let parsed = serde_json::from_value::<Jwk>(v)
                .map_err(|e| Error::Key(e.to_string()))
                .and_then(|j| AgentKey::from_public_jwk(&j, true));
            match parsed {
                Ok(k) => keys.push(Arc::new(k)),
                Err(e) => problems.push(format!("key {i}: {e}")),
            }
        }
        if keys.is_empty() {
            return Err(Error::Directory(format!(
                "no usable key{}",
                if problems.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", problems.join("; "))
                }
            )));
        }
        Ok(Directory { keys, problems })
    }

    /// The key with this thumbprint.
    pub fn key(&self, thumbprint: &str) -> Option<&Arc<AgentKey>> {
        self.keys.iter().find(|k| k.thumbprint == thumbprint)
    }

    /// Checks the signatures of a directory response (`response`, fetched by `request`):
    /// every signature tagged `http-message-signatures-directory` must be by a key of the
    /// directory, cover `"@authority";req` and `content-digest`, verify, and the
    /// `Content-Digest` must match the body. Returns the thumbprints that signed.
    pub fn verify_response(
        &self,
        response: &Message,
        request: &dyn HttpMessage,
        now: i64,
    ) -> Result<Vec<String>, Error> {
        let entries = match oba_httpsig::signatures(response) {
            Ok(e) => e,
            Err(e) if e.reason() == oba_httpsig::Reason::MissingSignature => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let authority_req = Component::derived(oba_httpsig::Derived::Authority).req()?;
        let digest = Component::field("content-digest")?;
        let policy = oba_httpsig::Policy::default()
            .require_tag(DIRECTORY_TAG)
            .require_component(authority_req)
            .require_component(digest)
            .require_created(true);
        let mut signed_by = Vec::new();
        for (label, entry) in entries {
            let entry = entry?;
            if entry.params.tag() != Some(DIRECTORY_TAG) {
                continue;
            }
            let keyid = entry.params.keyid().unwrap_or_default();
            let key = self.key(keyid).ok_or_else(|| {
                Error::Directory(format!(
                    "{label}: signed by {keyid:?}, which is not in the directory"
                ))
            })?;
            oba_httpsig::verify_signature(response, Some(request), &entry, &key.key, &policy, now)
                .map_err(|e| Error::Directory(format!("{label}: {e}")))?;
            signed_by.push(key.thumbprint.clone());
        }
        if !signed_by.is_empty() {
            let value = response
                .header("content-digest")
                .ok_or_else(|| Error::Directory("Content-Digest missing".into()))?;
            DigestField::parse(&value)
                .and_then(|f| f.verify(response.body()))
                .map_err(|e| Error::Directory(format!("Content-Digest: {e}")))?;
        }
        Ok(signed_by)
    }
}

/// Builds a signed directory response for `keys` (private JWKs), answering `request`
/// (whose authority is covered with `;req`): the public keys with `kid` = thumbprint, a
/// sha-256 `Content-Digest`, and one signature per key (labels `binding0`, `binding1`, ...)
/// over `("@authority";req "content-digest")` with `created`, `expires`, `keyid` and
/// `tag="http-message-signatures-directory"`.
pub fn signed_directory_response(
    keys: &[Jwk],
    request: &dyn HttpMessage,
    now: i64,
    validity_secs: u32,
) -> Result<Message, Error> {
    if keys.is_empty() || keys.len() > MAX_KEYS {
        return Err(Error::Directory(format!(
            "a directory holds 1..={MAX_KEYS} keys"
        )));
    }
    let mut public = Vec::with_capacity(keys.len());
    let mut signers = Vec::with_capacity(keys.len());
    for jwk in keys {
        if jwk.kty == "oct" {
            return Err(Error::Key(
                "a directory cannot publish a symmetric key".into(),
            ));
        }
        let thumbprint = jwk.thumbprint()?;
        let mut p = jwk.public()?;
        p.kid = Some(thumbprint.clone());
        p.use_ = Some("sig".into());
        AgentKey::from_public_jwk(&p, true)?;
        let alg = crate::keys::profile_algorithm(jwk);
        signers.push((thumbprint, jwk.signing_key(alg)?));
        public.push(p);
    }
    let body = serde_json::to_vec(&serde_json::json!({ "keys": public }))
        .map_err(|e| Error::Directory(e.to_string()))?;
    let mut response = Message::response(200)?
        .with_header("Content-Type", MEDIA_TYPE)
        .with_header(
            "Cache-Control",
            format!("max-age={}", validity_secs.min(86_400) / 2),
        )
        .with_header(
            "Content-Digest",
            DigestField::compute(&[DigestAlgorithm::Sha256], &body).to_header_value(),
        )
        .with_body(body);
    let mut inputs = Vec::new();
    let mut sigs = Vec::new();
    for (i, (thumbprint, key)) in signers.iter().enumerate() {
        let params = SignatureParams::new(vec![
            Component::derived(oba_httpsig::Derived::Authority).req()?,
            Component::field("content-digest")?,
        ])?
        .with_created(now)?
        .with_expires(now.saturating_add(i64::from(validity_secs)))?
        .with_keyid(thumbprint)?
        .with_tag(DIRECTORY_TAG)?;
        let label = format!("binding{i}");
        let sig = oba_httpsig::sign(&response, Some(request), &label, params, key)?;
        inputs.push(sig.signature_input());
        sigs.push(sig.signature());
    }
    response.append_header("Signature-Input", inputs.join(", "));
    response.append_header("Signature", sigs.join(", "));
    Ok(response)
}
