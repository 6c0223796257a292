//! Creating signatures (RFC 9421 section 3.1).

use crate::base::signature_base;
use crate::error::{Error, Reason};
use crate::key::Signer;
use crate::message::HttpMessage;
use crate::params::{
    check_label, parse_signature_input, signature_input_member, signature_member, SignatureParams,
};

/// A signature made by [`sign`]: what to add to the message.
#[derive(Debug, Clone, PartialEq)]
pub struct Signature {
    label: String,
    params: SignatureParams,
    bytes: Vec<u8>,
}

impl Signature {
    /// The label.
    pub fn label(&self) -> &str {
        &self.label
    }
    /// The covered components and parameters.
    pub fn params(&self) -> &SignatureParams {
        &self.params
    }
    /// The raw signature bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    /// The `Signature-Input` member to add (`label=(...);...`).
    pub fn signature_input(&self) -> String {
        signature_input_member(&self.label, &self.params)
    }
    /// The `Signature` member to add (`label=:...:`).
    pub fn signature(&self) -> String {
        signature_member(&self.label, &self.bytes)
    }
}

/// Signs `message` with `key`, covering `params` under `label`.
///
/// Adding the result as new `Signature-Input` and `Signature` field lines keeps any
/// signatures already present (field lines combine into one Dictionary). A label
/// already used in the message is refused, as is an `alg` parameter that names
/// another algorithm than the key's.
///
/// ```
/// use oba_httpsig::{sign, Component, Message, SignatureParams, SigningKey, Derived};
/// let key = SigningKey::generate(oba_httpsig::Algorithm::Ed25519)?.with_key_id("my-key");
/// let msg = Message::request("GET", "/items?page=2")?.with_header("Host", "api.example");
/// let params = SignatureParams::new(vec![
///     Component::derived(Derived::Method),
///     Component::derived(Derived::Authority),
///     Component::derived(Derived::Path),
///     Component::derived(Derived::Query),
/// ])?
/// .with_created(1_700_000_000)?
/// .with_keyid("my-key")?;
/// let sig = sign(&msg, None, "sig1", params, &key)?;
/// let signed = msg
///     .with_header("Signature-Input", sig.signature_input())
///     .with_header("Signature", sig.signature());
/// assert!(signed.header("signature-input").unwrap().starts_with("sig1=(\"@method\""));
/// # Ok::<(), oba_httpsig::Error>(())
/// ```
pub fn sign<M: HttpMessage + ?Sized>(
    message: &M,
    related: Option<&dyn HttpMessage>,
    label: &str,
    params: SignatureParams,
    key: &dyn Signer,
) -> Result<Signature, Error> {
    check_label(label)?;
    if let Some(alg) = params.alg() {
        if alg != key.algorithm().name() {
            return Err(Error::algorithm_mismatch(alg, key.algorithm()));
        }
    }
    let mut existing = Vec::new();
    message.field_lines("signature-input", &mut |v| {
        if !existing.is_empty() {
            existing.extend_from_slice(b", ");
        }
        existing.extend_from_slice(v);
    });
    if !existing.is_empty() {
        let present = parse_signature_input(&existing)?;
        if present.iter().any(|(l, _)| l == label) {
            return Err(Error::new(
                Reason::DuplicateLabel,
                format!("the message already has a signature labelled {label:?}"),
            ));
        }
    }
    let base = signature_base(message, related, &params)?;
    let bytes = key.sign(&base)?;
    Ok(Signature {
        label: label.to_owned(),
        params,
        bytes,
    })
}

/// A fresh random nonce: 128 bits, base64url without padding.
pub fn random_nonce() -> String {
    use base64::Engine;
    use rand_core::RngCore;
    let mut b = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}
