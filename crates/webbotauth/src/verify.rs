//! Verifying bot requests: the three outcomes of the Web Bot Auth profile.

use oba_httpsig::{
    Component, Derived, HttpMessage, KeySource, LabelledEntry, Policy, Reason, SignatureEntry,
    SignatureParams, Verifier,
};

use crate::agent::{AgentRef, SignatureAgent};
use crate::keys::{is_known_test_key, AgentKey, KeyLookup, LookupError};
use crate::nonce::NonceStore;
use crate::TAG;

/// What a verifier requires. Defaults: 60 s clock skew, signatures valid at most
/// 24 hours (`expires - created`), test keys refused, http agents refused.
#[derive(Debug, Clone)]
pub struct VerifyPolicy {
    /// Tolerated clock difference, seconds.
    pub skew: u32,
    /// Longest accepted `expires - created`, seconds.
    pub max_validity: u32,
    /// Accept the RFC 9421 example keys (for conformance vectors only).
    pub allow_test_keys: bool,
    /// Accept `http://` agents on loopback (for tests only).
    pub allow_http_loopback: bool,
    /// A signature must carry a usable `Signature-Agent` member.
    pub require_signature_agent: bool,
}

impl Default for VerifyPolicy {
    fn default() -> Self {
        VerifyPolicy {
            skew: 60,
            max_validity: 24 * 60 * 60,
            allow_test_keys: false,
            allow_http_loopback: false,
            require_signature_agent: false,
        }
    }
}

/// Who signed a verified request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAgent {
    /// The signature label.
    pub label: String,
    /// Where the key was published (`None` for locally configured keys).
    pub agent: Option<AgentRef>,
    /// The key's RFC 7638 thumbprint (= `keyid`).
    pub thumbprint: String,
    /// The algorithm.
    pub algorithm: oba_httpsig::Algorithm,
    /// `created`, `expires` of the signature.
    pub created: i64,
    /// See `created`.
    pub expires: i64,
    /// The nonce, if any.
    pub nonce: Option<String>,
}

/// Why a request was not verified; `code()` is stable for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Machine-readable reason.
    pub code: &'static str,
    /// Human-readable detail.
    pub message: String,
    /// The label concerned, if any.
    pub label: Option<String>,
}

impl Rejection {
    /// True when the signature fields were malformed (a `400` rather than a `401`).
    pub fn is_malformed(&self) -> bool {
        Reason::from_code(self.code).is_some_and(Reason::is_malformed_input)
    }
}

/// The outcome of verifying a request, three cases kept distinct.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A Web Bot Auth signature verified.
    Verified(VerifiedAgent),
    /// A Web Bot Auth signature was present and failed (bad signature, expired,
    /// replayed, profile violated, ...).
    Invalid(Rejection),
    /// No usable signature: none present, or its key could not be resolved.
    Unverified(Rejection),
}

impl Outcome {
    /// `verified`, `invalid` or `unverified`.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Verified(_) => "verified",
            Outcome::Invalid(_) => "invalid",
            Outcome::Unverified(_) => "unverified",
        }
    }
}

fn reject(code: &'static str, message: impl Into<String>, label: &str) -> Rejection {
    Rejection {
        code,
        message: message.into(),
        label: Some(label.to_owned()),
    }
}

/// Verifies the Web Bot Auth signatures of `request` at time `now`.
///
/// Only signatures tagged `web-bot-auth` are considered; the first that verifies wins.
/// The key is looked up by (resolved `Signature-Agent` member, `keyid`) and its thumbprint
/// must equal the `keyid`. The nonce goes to `nonces` only after the signature verified.
pub fn verify_request<M: HttpMessage + ?Sized>(
    request: &M,
    keys: &dyn KeyLookup,
    nonces: Option<&dyn NonceStore>,
    policy: &VerifyPolicy,
    now: i64,
) -> Outcome {
    match parse_signatures(request) {
        Ok(entries) => verify_entries(request, entries, keys, nonces, policy, now),
        Err(outcome) => *outcome,
    }
}

/// The signatures of `request`, parsed once; the outcome to report when there are none
/// or the fields are malformed.
pub fn parse_signatures<M: HttpMessage + ?Sized>(
    request: &M,
) -> Result<Vec<LabelledEntry>, Box<Outcome>> {
    oba_httpsig::signatures(request).map_err(|e| {
        Box::new(if e.reason() == Reason::MissingSignature {
            Outcome::Unverified(Rejection {
                code: "no_signature",
                message: "no Signature-Input / Signature".into(),
                label: None,
            })
        } else {
            Outcome::Invalid(Rejection {
                code: e.reason().code(),
                message: e.to_string(),
                label: None,
            })
        })
    })
}

/// The combined `Signature-Agent` field of a request, if any.
pub(crate) fn signature_agent_field<M: HttpMessage + ?Sized>(request: &M) -> Option<String> {
    let mut field: Option<Vec<u8>> = None;
    request.field_lines("signature-agent", &mut |v| match &mut field {
        Some(a) => {
            a.extend_from_slice(b", ");
            a.extend_from_slice(v);
        }
        None => field = Some(v.to_vec()),
    });
    field.map(|v| String::from_utf8_lossy(&v).into_owned())
}

/// The agent a signature names through `Signature-Agent` (`field`): `Ok(None)` when
/// there is no field or its member cannot be used (unparseable, not https, not an
/// origin for a directory: the key must then be known locally; the signature still
/// covers the field as sent). A field the signature does not cover (or covers twice)
/// is a profile violation: `Err((code, message))`.
pub(crate) fn agent_of(
    params: &SignatureParams,
    field: Option<&str>,
    allow_http_loopback: bool,
) -> Result<Option<AgentRef>, (&'static str, &'static str)> {
    let Some(value) = field else {
        return Ok(None);
    };
    let mut covered = params
        .components()
        .iter()
        .filter(|c| c.name_str() == "signature-agent" && !c.is_req());
    let member_key = match (covered.next(), covered.next()) {
        (None, _) => {
            return Err((
                "signature_agent_not_covered",
                "Signature-Agent is present but this signature does not cover it",
            ))
        }
        (Some(c), None) => c.dict_key(),
        (Some(_), Some(_)) => {
            return Err(("signature_agent_ambiguous", "Signature-Agent covered twice"))
        }
    };
    Ok(SignatureAgent::parse(value)
        .ok()
        .and_then(|sa| sa.member_for(member_key).cloned())
        .and_then(|m| m.resolve(allow_http_loopback).ok()))
}

/// [`verify_request`] over signatures already parsed with [`parse_signatures`].
pub fn verify_entries<M: HttpMessage + ?Sized>(
    request: &M,
    entries: Vec<LabelledEntry>,
    keys: &dyn KeyLookup,
    nonces: Option<&dyn NonceStore>,
    policy: &VerifyPolicy,
    now: i64,
) -> Outcome {
    let agent_header = signature_agent_field(request);

    let mut invalid: Option<Rejection> = None;
    let mut unverified: Option<Rejection> = None;
    let mut saw_tagged = false;
    for (label, entry) in entries {
        let entry = match entry {
            Ok(e) if e.params.tag() == Some(TAG) => e,
            Ok(_) => continue,
            Err(e) => {
                invalid.get_or_insert(reject(e.reason().code(), e.to_string(), &label));
                continue;
            }
        };
        saw_tagged = true;
        match verify_one(
            request,
            &entry,
            agent_header.as_deref(),
            keys,
            nonces,
            policy,
            now,
        ) {
            Ok(v) => return Outcome::Verified(v),
            Err(Failure::Invalid(r)) => {
                invalid.get_or_insert(r);
            }
            Err(Failure::Unverified(r)) => {
                unverified.get_or_insert(r);
            }
        }
    }
    if let Some(r) = invalid {
        return Outcome::Invalid(r);
    }
    Outcome::Unverified(unverified.unwrap_or_else(|| Rejection {
        code: if saw_tagged {
            "unverified"
        } else {
            "no_web_bot_auth_signature"
        },
        message: "no signature tagged web-bot-auth".into(),
        label: None,
    }))
}

enum Failure {
    Invalid(Rejection),
    Unverified(Rejection),
}

struct OneKey<'a>(&'a AgentKey);

impl KeySource for OneKey<'_> {
    fn key_for(
        &self,
        _label: &str,
        _params: &SignatureParams,
    ) -> Result<&dyn Verifier, oba_httpsig::Error> {
        Ok(&self.0.key)
    }
}

fn verify_one<M: HttpMessage + ?Sized>(
    request: &M,
    entry: &SignatureEntry,
    agent_header: Option<&str>,
    keys: &dyn KeyLookup,
    nonces: Option<&dyn NonceStore>,
    policy: &VerifyPolicy,
    now: i64,
) -> Result<VerifiedAgent, Failure> {
    let label = entry.label.as_str();
    let p = &entry.params;
    let invalid = |code, msg: String| Failure::Invalid(reject(code, msg, label));
    let unverified = |code, msg: String| Failure::Unverified(reject(code, msg, label));

    // The profile.
    let (Some(created), Some(expires)) = (p.created(), p.expires()) else {
        return Err(invalid(
            "missing_parameter",
            "created and expires are required".into(),
        ));
    };
    if expires < created || expires - created > i64::from(policy.max_validity) {
        return Err(invalid(
            "validity_too_long",
            format!(
                "expires - created must be within 0..={} s",
                policy.max_validity
            ),
        ));
    }
    let covers = |d| p.covers(&Component::derived(d));
    if !covers(Derived::Authority) && !covers(Derived::TargetUri) {
        return Err(invalid(
            "required_component_missing",
            "@authority or @target-uri must be covered".into(),
        ));
    }
    let Some(keyid) = p.keyid() else {
        return Err(invalid("missing_parameter", "keyid is required".into()));
    };

    // Which Signature-Agent member belongs to this signature.
    let agent = agent_of(p, agent_header, policy.allow_http_loopback)
        .map_err(|(code, msg)| invalid(code, msg.into()))?;
    if policy.require_signature_agent && agent.is_none() {
        return Err(unverified(
            "no_signature_agent",
            "no usable Signature-Agent member".into(),
        ));
    }

    // The key, by (agent, thumbprint).
    if is_known_test_key(keyid) && !policy.allow_test_keys {
        return Err(invalid(
            "test_key",
            "the RFC 9421 example keys prove nothing".into(),
        ));
    }
    let key = keys.lookup(agent.as_ref(), keyid).map_err(|e| match e {
        LookupError::NotFound => {
            unverified("unknown_key", format!("no key {keyid} for this agent"))
        }
        LookupError::Unavailable(m) => unverified("keys_unavailable", m),
    })?;
    if key.thumbprint != keyid {
        return Err(invalid(
            "keyid_mismatch",
            "keyid is not the key's thumbprint".into(),
        ));
    }

    // RFC 9421 verification, then the nonce.
    let http_policy = Policy::default()
        .clock_skew(policy.skew)
        .max_validity(policy.max_validity)
        .require_keyid(true)
        .require_tag(TAG);
    let verified =
        oba_httpsig::verify_signature(request, None, entry, &OneKey(&key), &http_policy, now)
            .map_err(|e| invalid(e.reason().code(), e.to_string()))?;
    if let (Some(store), Some(nonce)) = (nonces, p.nonce()) {
        let scope = format!(
            "{}#{}",
            agent.as_ref().map(|a| a.url.as_str()).unwrap_or_default(),
            key.thumbprint
        );
        if !store.check_and_record(
            &scope,
            nonce,
            expires.saturating_add(i64::from(policy.skew)),
            now,
        ) {
            return Err(invalid("replay", "nonce seen before".into()));
        }
    }
    Ok(VerifiedAgent {
        label: label.to_owned(),
        agent,
        thumbprint: key.thumbprint.clone(),
        algorithm: verified.algorithm,
        created,
        expires,
        nonce: p.nonce().map(str::to_owned),
    })
}
