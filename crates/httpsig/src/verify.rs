//! Verifying signatures under a policy (RFC 9421 section 3.2).

use std::fmt;
use std::sync::Arc;

use crate::base::signature_base;
use crate::component::Component;
use crate::error::{Error, Reason};
use crate::key::Verifier;
use crate::message::HttpMessage;
use crate::params::{parse_signature, parse_signature_input, SignatureParams};
use crate::Algorithm;

/// Finds the key for a signature, from its label and parameters.
pub trait KeySource {
    /// The key to verify the signature labelled `label` with.
    ///
    /// Return [`Reason::UnknownKey`] when there is none, [`Reason::KeyIdMismatch`] when
    /// the `keyid` names another key than the one that must be used.
    fn key_for(&self, label: &str, params: &SignatureParams) -> Result<&dyn Verifier, Error>;
}

/// A single key: a signature whose `keyid` names another key is refused.
impl<V: Verifier> KeySource for V {
    fn key_for(&self, _label: &str, params: &SignatureParams) -> Result<&dyn Verifier, Error> {
        match (params.keyid(), self.key_id()) {
            (Some(want), Some(have)) if want != have => Err(Error::new(
                Reason::KeyIdMismatch,
                format!("signature keyid {want:?} is not the key's {have:?}"),
            )),
            _ => Ok(self),
        }
    }
}

/// Replay protection: called with the nonce only after the signature verified.
pub trait NonceCheck: Send + Sync {
    /// Records `nonce` and returns `true` if it was not seen before (atomically).
    fn check_and_record(&self, nonce: &str, params: &SignatureParams) -> bool;
}

/// What a verifier accepts. The default accepts every algorithm and every component set,
/// enforces `expires`, refuses `created` in the future, and allows 60 s of clock skew.
///
/// ```
/// use oba_httpsig::{Algorithm, Component, Derived, Policy};
/// let policy = Policy::default()
///     .allow_algorithms(&[Algorithm::Ed25519])
///     .require_component(Component::derived(Derived::Authority))
///     .require_tag("web-bot-auth")
///     .max_age(300)
///     .clock_skew(5);
/// # let _ = policy;
/// ```
#[derive(Clone)]
pub struct Policy {
    allowed: Vec<Algorithm>,
    required_components: Vec<Component>,
    required_tag: Option<String>,
    max_age: Option<i64>,
    max_validity: Option<i64>,
    skew: i64,
    require_created: bool,
    require_expires: bool,
    require_nonce: bool,
    require_keyid: bool,
    nonce_check: Option<Arc<dyn NonceCheck>>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            allowed: Algorithm::ALL.to_vec(),
            required_components: Vec::new(),
            required_tag: None,
            max_age: None,
            max_validity: None,
            skew: 60,
            require_created: false,
            require_expires: false,
            require_nonce: false,
            require_keyid: false,
            nonce_check: None,
        }
    }
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("allowed", &self.allowed)
            .field("required_components", &self.required_components)
            .field("required_tag", &self.required_tag)
            .field("max_age", &self.max_age)
            .field("max_validity", &self.max_validity)
            .field("skew", &self.skew)
            .field("require_created", &self.require_created)
            .field("require_expires", &self.require_expires)
            .field("require_nonce", &self.require_nonce)
            .field("nonce_check", &self.nonce_check.is_some())
            .finish()
    }
}

impl Policy {
    /// Only these algorithms are accepted.
    pub fn allow_algorithms(mut self, algs: &[Algorithm]) -> Self {
        self.allowed = algs.to_vec();
        self
    }
    /// The signature must cover this component.
    pub fn require_component(mut self, c: Component) -> Self {
        self.required_components.push(c);
        self
    }
    /// The signature must carry this `tag`.
    pub fn require_tag(mut self, tag: &str) -> Self {
        self.required_tag = Some(tag.to_owned());
        self
    }
    /// `created` must be present and at most this many seconds old.
    pub fn max_age(mut self, secs: u32) -> Self {
        self.max_age = Some(i64::from(secs));
        self.require_created = true;
        self
    }
    /// `created` and `expires` must be present and at most this many seconds apart.
    pub fn max_validity(mut self, secs: u32) -> Self {
        self.max_validity = Some(i64::from(secs));
        self.require_created = true;
        self.require_expires = true;
        self
    }
    /// Tolerated clock difference, in seconds, for `created` and `expires`.
    pub fn clock_skew(mut self, secs: u32) -> Self {
        self.skew = i64::from(secs);
        self
    }
    /// `created` must be present.
    pub fn require_created(mut self, yes: bool) -> Self {
        self.require_created = yes;
        self
    }
    /// `expires` must be present.
    pub fn require_expires(mut self, yes: bool) -> Self {
        self.require_expires = yes;
        self
    }
    /// `keyid` must be present.
    pub fn require_keyid(mut self, yes: bool) -> Self {
        self.require_keyid = yes;
        self
    }
    /// `nonce` must be present (and passes through `check`, when given).
    pub fn require_nonce(mut self, yes: bool) -> Self {
        self.require_nonce = yes;
        self
    }
    /// Replay check for nonces, run only after the signature verified.
    pub fn nonce_check(mut self, check: Arc<dyn NonceCheck>) -> Self {
        self.nonce_check = Some(check);
        self
    }

    /// Checks everything that does not need the key or the signature base.
    fn check_params(&self, p: &SignatureParams, now: i64) -> Result<(), Error> {
        for c in &self.required_components {
            if !p.covers(c) {
                return Err(Error::new(
                    Reason::RequiredComponentMissing,
                    format!("{c} must be covered"),
                ));
            }
        }
        if let Some(tag) = &self.required_tag {
            match p.tag() {
                Some(t) if t == tag => {}
                Some(t) => {
                    return Err(Error::new(
                        Reason::TagMismatch,
                        format!("tag {t:?}, expected {tag:?}"),
                    ))
                }
                None => {
                    return Err(Error::new(
                        Reason::TagMismatch,
                        format!("no tag, expected {tag:?}"),
                    ))
                }
            }
        }
        let need = |yes: bool, has: bool, name: &str| {
            if yes && !has {
                Err(Error::new(
                    Reason::MissingParameter,
                    format!("{name} is required"),
                ))
            } else {
                Ok(())
            }
        };
        need(self.require_created, p.created().is_some(), "created")?;
        need(self.require_expires, p.expires().is_some(), "expires")?;
        need(self.require_nonce, p.nonce().is_some(), "nonce")?;
        need(self.require_keyid, p.keyid().is_some(), "keyid")?;
        if let Some(created) = p.created() {
            if created > now.saturating_add(self.skew) {
                return Err(Error::new(
                    Reason::NotYetValid,
                    format!("created {created} is in the future"),
                ));
            }
            if let Some(max) = self.max_age {
                if now.saturating_sub(created) > max.saturating_add(self.skew) {
                    return Err(Error::new(
                        Reason::TooOld,
                        format!("created {created} is older than {max} s"),
                    ));
                }
            }
        }
        if let Some(expires) = p.expires() {
            if now > expires.saturating_add(self.skew) {
                return Err(Error::new(Reason::Expired, format!("expired at {expires}")));
            }
            if let Some(created) = p.created() {
                if expires < created {
                    return Err(Error::malformed("expires is before created"));
                }
                if let Some(max) = self.max_validity {
                    if expires.saturating_sub(created) > max {
                        return Err(Error::new(
                            Reason::TooOld,
                            format!(
                                "validity {} s exceeds {max} s",
                                expires.saturating_sub(created)
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// A signature that verified.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// Its label.
    pub label: String,
    /// Its covered components and parameters.
    pub params: SignatureParams,
    /// The algorithm of the key that verified it.
    pub algorithm: Algorithm,
}

/// One signature found in a message: its label, parameters and bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct SignatureEntry {
    /// The label.
    pub label: String,
    /// The covered components and parameters, as received.
    pub params: SignatureParams,
    /// The signature bytes.
    pub signature: Vec<u8>,
}

/// A label and either its signature or why it cannot be used.
pub type LabelledEntry = (String, Result<SignatureEntry, Error>);

/// The signatures found in a message, label by label, in `Signature-Input` order.
///
/// A label present in `Signature-Input` but not in `Signature` carries
/// [`Reason::MissingSignature`].
pub fn signatures<M: HttpMessage + ?Sized>(message: &M) -> Result<Vec<LabelledEntry>, Error> {
    let input = combined(message, "signature-input");
    let sigs = combined(message, "signature");
    let (Some(input), Some(sigs)) = (input, sigs) else {
        return Err(Error::new(
            Reason::MissingSignature,
            "no Signature-Input / Signature fields",
        ));
    };
    let inputs = parse_signature_input(&input)?;
    let mut sigs = parse_signature(&sigs)?;
    Ok(inputs
        .into_iter()
        .map(|(label, params)| {
            // At most MAX_SIGNATURES labels: a linear search is cheapest.
            let found = sigs.iter().position(|(l, _)| *l == label);
            let r = match found.map(|i| sigs.swap_remove(i).1) {
                Some(signature) => Ok(SignatureEntry {
                    label: label.clone(),
                    params,
                    signature,
                }),
                None => Err(Error::new(
                    Reason::MissingSignature,
                    format!("no Signature member for label {label:?}"),
                )),
            };
            (label, r)
        })
        .collect())
}

fn combined<M: HttpMessage + ?Sized>(m: &M, name: &str) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    m.field_lines(name, &mut |v| match &mut out {
        Some(o) => {
            o.extend_from_slice(b", ");
            o.extend_from_slice(v);
        }
        None => out = Some(v.to_vec()),
    });
    out
}

/// Verifies one signature of `message`, already split out (see [`signatures`]).
pub fn verify_signature<M: HttpMessage + ?Sized>(
    message: &M,
    related: Option<&dyn HttpMessage>,
    entry: &SignatureEntry,
    keys: &dyn KeySource,
    policy: &Policy,
    now: i64,
) -> Result<Verified, Error> {
    let algorithm = check_entry(message, related, entry, keys, policy, now)?;
    Ok(Verified {
        label: entry.label.clone(),
        params: entry.params.clone(),
        algorithm,
    })
}

/// Everything [`verify_signature`] checks; returns the key's algorithm.
fn check_entry<M: HttpMessage + ?Sized>(
    message: &M,
    related: Option<&dyn HttpMessage>,
    entry: &SignatureEntry,
    keys: &dyn KeySource,
    policy: &Policy,
    now: i64,
) -> Result<Algorithm, Error> {
    let SignatureEntry {
        label,
        params,
        signature,
    } = entry;
    let declared = params.alg().map(str::parse::<Algorithm>).transpose()?;
    policy.check_params(params, now)?;
    let key = keys.key_for(label, params)?;
    let alg = key.algorithm();
    if let Some(d) = declared {
        if d != alg {
            return Err(Error::algorithm_mismatch(d.name(), alg));
        }
    }
    if !policy.allowed.contains(&alg) {
        return Err(Error::new(
            Reason::AlgorithmNotAllowed,
            format!("{alg} is not allowed"),
        ));
    }
    let base = signature_base(message, related, params)?;
    key.verify(&base, signature)?;
    if let Some(nonce) = params.nonce() {
        if let Some(check) = &policy.nonce_check {
            if !check.check_and_record(nonce, params) {
                return Err(Error::new(Reason::Replay, "nonce seen before"));
            }
        }
    }
    Ok(alg)
}

/// Verifies the signature labelled `label` — or, with `None`, the first signature
/// that verifies — under `policy` at time `now` (seconds since the epoch).
///
/// With `None` and no signature verifying, the error of the first signature is returned.
///
/// ```
/// use oba_httpsig::*;
/// let key = SigningKey::generate(Algorithm::Ed25519)?;
/// let msg = Message::request("GET", "/")?.with_header("Host", "example.com");
/// let params = SignatureParams::new(vec![Component::derived(Derived::Authority)])?
///     .with_created(1000)?;
/// let sig = sign(&msg, None, "sig1", params, &key)?;
/// let msg = msg
///     .with_header("Signature-Input", sig.signature_input())
///     .with_header("Signature", sig.signature());
/// let policy = Policy::default().max_age(300);
/// let ok = verify(&msg, None, Some("sig1"), &key.verifying_key(), &policy, 1010)?;
/// assert_eq!(ok.algorithm, Algorithm::Ed25519);
/// let late = verify(&msg, None, Some("sig1"), &key.verifying_key(), &policy, 9999);
/// assert_eq!(late.unwrap_err().reason(), Reason::TooOld);
/// # Ok::<(), oba_httpsig::Error>(())
/// ```
pub fn verify<M: HttpMessage + ?Sized>(
    message: &M,
    related: Option<&dyn HttpMessage>,
    label: Option<&str>,
    keys: &dyn KeySource,
    policy: &Policy,
    now: i64,
) -> Result<Verified, Error> {
    let all = signatures(message)?;
    let mut first_err = None;
    for (l, entry) in all {
        if label.is_some_and(|want| want != l) {
            continue;
        }
        // The entries are ours: move them into the result instead of cloning.
        let r = entry.and_then(|e| {
            check_entry(message, related, &e, keys, policy, now).map(|algorithm| Verified {
                label: e.label,
                params: e.params,
                algorithm,
            })
        });
        match r {
            Ok(v) => return Ok(v),
            Err(e) if label.is_some() => return Err(e),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    Err(first_err.unwrap_or_else(|| match label {
        Some(l) => Error::new(
            Reason::MissingSignature,
            format!("no signature labelled {l:?}"),
        ),
        None => Error::new(Reason::MissingSignature, "no signatures"),
    }))
}
