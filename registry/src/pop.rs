//! Proof of possession: a key may be added only by a request signed (RFC 9421) with that
//! very key.
//!
//! The signature must use `keyid` = the key's RFC 7638 thumbprint and
//! `tag="oba-registry-pop"`, cover `@method @authority @path content-digest`, carry
//! `created` (at most five minutes old) and a `nonce` (accepted once), and the
//! `Content-Digest` must match the body — so the signature binds this key, this agent,
//! this registry and this exact request, once.

use oba_httpsig::digest::DigestField;
use oba_httpsig::{Component, Derived, HttpMessage, Policy};
use oba_webbotauth::keys::AgentKey;

/// The `tag` of a proof-of-possession signature.
pub const POP_TAG: &str = "oba-registry-pop";
/// Oldest accepted proof, seconds.
pub const POP_MAX_AGE: u32 = 300;

/// Why a proof was refused.
#[derive(Debug, PartialEq, Eq)]
pub struct PopError {
    /// Machine-readable code.
    pub code: &'static str,
    /// Detail.
    pub message: String,
}

fn err(code: &'static str, message: impl Into<String>) -> PopError {
    PopError {
        code,
        message: message.into(),
    }
}

/// Checks that `request` (with `body`) is signed by `key` as a proof of possession.
/// Returns the nonce, which the caller must record (replay check) before accepting.
pub fn check<M: HttpMessage>(
    request: &M,
    body: &[u8],
    key: &AgentKey,
    now: i64,
) -> Result<String, PopError> {
    let entries = oba_httpsig::signatures(request).map_err(|e| {
        err(
            "proof_of_possession_missing",
            format!("the request must be signed by the key being added: {e}"),
        )
    })?;
    let entry = entries
        .into_iter()
        .filter_map(|(_, e)| e.ok())
        .find(|e| e.params.keyid() == Some(key.thumbprint.as_str()))
        .ok_or_else(|| {
            err(
                "proof_of_possession_missing",
                "no signature with keyid = the key's thumbprint",
            )
        })?;
    let policy = Policy::default()
        .require_tag(POP_TAG)
        .require_component(Component::derived(Derived::Method))
        .require_component(Component::derived(Derived::Authority))
        .require_component(Component::derived(Derived::Path))
        .require_component(
            Component::field("content-digest").map_err(|e| err("internal", e.to_string()))?,
        )
        .max_age(POP_MAX_AGE)
        .require_nonce(true)
        .clock_skew(60);
    oba_httpsig::verify_signature(request, None, &entry, &key.key, &policy, now)
        .map_err(|e| err("proof_of_possession_invalid", e.to_string()))?;
    let mut digest = None;
    request.field_lines("content-digest", &mut |v| {
        digest = Some(String::from_utf8_lossy(v).into_owned())
    });
    DigestField::parse(digest.as_deref().unwrap_or_default())
        .and_then(|f| f.verify(body))
        .map_err(|e| {
            err(
                "proof_of_possession_invalid",
                format!("Content-Digest: {e}"),
            )
        })?;
    Ok(entry.params.nonce().unwrap_or_default().to_owned())
}

/// The headers that make a request to add `jwk` a proof of possession: `Content-Digest`,
/// `Signature-Input` and `Signature` (keyid = thumbprint, tag `oba-registry-pop`, a fresh
/// nonce, `created` = `now`). `url` is the full request URL; `body` the exact body sent.
pub fn proof_headers(
    jwk: &oba_httpsig::jwk::Jwk,
    method: &str,
    url: &str,
    body: &[u8],
    now: i64,
) -> Result<Vec<(&'static str, String)>, oba_httpsig::Error> {
    use oba_httpsig::digest::{DigestAlgorithm, DigestField};
    use oba_httpsig::SignatureParams;
    let thumbprint = jwk.thumbprint()?;
    let alg = oba_webbotauth::keys::profile_algorithm(jwk);
    let key = jwk.signing_key(alg)?;
    let digest = DigestField::compute(&[DigestAlgorithm::Sha256], body).to_header_value();
    let msg = oba_httpsig::Message::request_to(method, url)?.with_header("Content-Digest", &digest);
    let params = SignatureParams::new(vec![
        Component::derived(Derived::Method),
        Component::derived(Derived::Authority),
        Component::derived(Derived::Path),
        Component::field("content-digest")?,
    ])?
    .with_created(now)?
    .with_keyid(&thumbprint)?
    .with_nonce(&oba_httpsig::random_nonce())?
    .with_tag(POP_TAG)?;
    let sig = oba_httpsig::sign(&msg, None, "pop", params, &key)?;
    Ok(vec![
        ("Content-Digest", digest),
        ("Signature-Input", sig.signature_input()),
        ("Signature", sig.signature()),
    ])
}
