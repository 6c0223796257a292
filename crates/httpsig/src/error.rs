//! Typed errors.
//!
//! Every rejection has a [`Reason`] that a gateway can map to a status code, a log field
//! and a metric label. The cryptographic failure itself is deliberately opaque: a bad
//! signature is [`Reason::BadSignature`] whatever the underlying cause, so a caller cannot
//! be turned into an oracle.

use std::fmt;

use crate::Algorithm;

/// Why an operation failed; stable, machine-readable, cheap to match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// A `Signature-Input`, `Signature` or `Accept-Signature` field (or a component
    /// identifier) does not parse, or has the wrong types.
    MalformedHeader,
    /// The message carries no `Signature-Input` / `Signature` (or not the label asked for).
    MissingSignature,
    /// The same label appears twice in `Signature-Input` or `Signature`.
    DuplicateLabel,
    /// The same component identifier is covered twice.
    DuplicateComponent,
    /// A signature parameter is repeated.
    DuplicateParameter,
    /// A component identifier names something that does not exist (unknown derived
    /// component, parameter that does not apply, `@status` on a request, ...).
    InvalidComponent,
    /// A covered component is absent from the message.
    MissingComponent,
    /// The verification policy requires a component that the signature does not cover.
    RequiredComponentMissing,
    /// The `alg` parameter names an algorithm this library does not implement.
    UnsupportedAlgorithm,
    /// The algorithm is not in the policy's allow-list.
    AlgorithmNotAllowed,
    /// The `alg` parameter names another algorithm than the key's.
    AlgorithmMismatch,
    /// The `keyid` parameter does not name the key that was supplied.
    KeyIdMismatch,
    /// No key could be found for the signature.
    UnknownKey,
    /// The key material is invalid or does not fit the algorithm.
    InvalidKey,
    /// A parameter the policy requires (`created`, `expires`, `nonce`, `keyid`, `tag`) is absent.
    MissingParameter,
    /// `expires` is in the past.
    Expired,
    /// `created` is in the future (beyond the allowed clock skew).
    NotYetValid,
    /// `created` is older than the policy's maximum age.
    TooOld,
    /// The `tag` is not the one the policy requires.
    TagMismatch,
    /// The cryptographic check failed. Deliberately carries no detail.
    BadSignature,
    /// The nonce was seen before (reported by the nonce check, after the signature verified).
    Replay,
    /// The signer failed to produce a signature.
    SigningFailed,
    /// A covered `Content-Digest` does not match the content.
    DigestMismatch,
}

impl Reason {
    /// A stable snake-case code for logs, metrics and JSON bodies.
    pub const fn code(self) -> &'static str {
        match self {
            Reason::MalformedHeader => "malformed_header",
            Reason::MissingSignature => "missing_signature",
            Reason::DuplicateLabel => "duplicate_label",
            Reason::DuplicateComponent => "duplicate_component",
            Reason::DuplicateParameter => "duplicate_parameter",
            Reason::InvalidComponent => "invalid_component",
            Reason::MissingComponent => "missing_component",
            Reason::RequiredComponentMissing => "required_component_missing",
            Reason::UnsupportedAlgorithm => "unsupported_algorithm",
            Reason::AlgorithmNotAllowed => "algorithm_not_allowed",
            Reason::AlgorithmMismatch => "algorithm_mismatch",
            Reason::KeyIdMismatch => "keyid_mismatch",
            Reason::UnknownKey => "unknown_key",
            Reason::InvalidKey => "invalid_key",
            Reason::MissingParameter => "missing_parameter",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::TooOld => "too_old",
            Reason::TagMismatch => "tag_mismatch",
            Reason::BadSignature => "bad_signature",
            Reason::Replay => "replay",
            Reason::SigningFailed => "signing_failed",
            Reason::DigestMismatch => "digest_mismatch",
        }
    }
}

impl Reason {
    /// The reason whose [`Reason::code`] is `code`.
    pub fn from_code(code: &str) -> Option<Self> {
        Some(match code {
            "malformed_header" => Reason::MalformedHeader,
            "missing_signature" => Reason::MissingSignature,
            "duplicate_label" => Reason::DuplicateLabel,
            "duplicate_component" => Reason::DuplicateComponent,
            "duplicate_parameter" => Reason::DuplicateParameter,
            "invalid_component" => Reason::InvalidComponent,
            "missing_component" => Reason::MissingComponent,
            "required_component_missing" => Reason::RequiredComponentMissing,
            "unsupported_algorithm" => Reason::UnsupportedAlgorithm,
            "algorithm_not_allowed" => Reason::AlgorithmNotAllowed,
            "algorithm_mismatch" => Reason::AlgorithmMismatch,
            "keyid_mismatch" => Reason::KeyIdMismatch,
            "unknown_key" => Reason::UnknownKey,
            "invalid_key" => Reason::InvalidKey,
            "missing_parameter" => Reason::MissingParameter,
            "expired" => Reason::Expired,
            "not_yet_valid" => Reason::NotYetValid,
            "too_old" => Reason::TooOld,
            "tag_mismatch" => Reason::TagMismatch,
            "bad_signature" => Reason::BadSignature,
            "replay" => Reason::Replay,
            "signing_failed" => Reason::SigningFailed,
            "digest_mismatch" => Reason::DigestMismatch,
            _ => return None,
        })
    }

    /// True when the client sent malformed signature fields: a `400`, where the other
    /// reasons are a `401`.
    pub const fn is_malformed_input(self) -> bool {
        matches!(
            self,
            Reason::MalformedHeader
                | Reason::DuplicateLabel
                | Reason::DuplicateParameter
                | Reason::DuplicateComponent
                | Reason::InvalidComponent
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// An error from signing, verifying or parsing: a [`Reason`] plus a human-readable detail.
///
/// The detail never contains key material or the signature base; for
/// [`Reason::BadSignature`] it is empty.
#[derive(Clone, PartialEq, Eq)]
pub struct Error {
    reason: Reason,
    detail: Box<str>,
}

impl Error {
    /// An error with this reason and detail, for [`crate::KeySource`] implementations and
    /// other extensions. Never put key material or secrets in the detail.
    pub fn from_reason(reason: Reason, detail: impl Into<String>) -> Self {
        Self::new(reason, detail)
    }

    pub(crate) fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Error {
            reason,
            detail: detail.into().into_boxed_str(),
        }
    }

    pub(crate) fn malformed(detail: impl Into<String>) -> Self {
        Error::new(Reason::MalformedHeader, detail)
    }

    pub(crate) fn bad_signature() -> Self {
        Error::new(Reason::BadSignature, "")
    }

    pub(crate) fn invalid_key(detail: impl Into<String>) -> Self {
        Error::new(Reason::InvalidKey, detail)
    }

    pub(crate) fn algorithm_mismatch(declared: &str, key: Algorithm) -> Self {
        Error::new(
            Reason::AlgorithmMismatch,
            format!("signature says alg=\"{declared}\" but the key is {key}"),
        )
    }

    /// The machine-readable reason.
    pub fn reason(&self) -> Reason {
        self.reason
    }

    /// The human-readable detail (may be empty).
    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// True when a signature was present and the cryptographic check failed.
    pub fn is_bad_signature(&self) -> bool {
        self.reason == Reason::BadSignature
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Error({}: {:?})", self.reason.code(), self.detail)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self.reason {
            Reason::MalformedHeader => "malformed signature field",
            Reason::MissingSignature => "no signature",
            Reason::DuplicateLabel => "duplicate signature label",
            Reason::DuplicateComponent => "duplicate covered component",
            Reason::DuplicateParameter => "duplicate signature parameter",
            Reason::InvalidComponent => "invalid component identifier",
            Reason::MissingComponent => "covered component missing from the message",
            Reason::RequiredComponentMissing => "signature does not cover a required component",
            Reason::UnsupportedAlgorithm => "unsupported algorithm",
            Reason::AlgorithmNotAllowed => "algorithm not allowed",
            Reason::AlgorithmMismatch => "algorithm mismatch",
            Reason::KeyIdMismatch => "keyid mismatch",
            Reason::UnknownKey => "unknown key",
            Reason::InvalidKey => "invalid key",
            Reason::MissingParameter => "missing signature parameter",
            Reason::Expired => "signature expired",
            Reason::NotYetValid => "signature not yet valid",
            Reason::TooOld => "signature too old",
            Reason::TagMismatch => "tag mismatch",
            Reason::BadSignature => "signature verification failed",
            Reason::Replay => "nonce replayed",
            Reason::SigningFailed => "signing failed",
            Reason::DigestMismatch => "content digest mismatch",
        };
        if self.detail.is_empty() {
            f.write_str(text)
        } else {
            write!(f, "{text}: {}", self.detail)
        }
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for r in [
            Reason::MalformedHeader,
            Reason::BadSignature,
            Reason::Replay,
            Reason::DigestMismatch,
            Reason::KeyIdMismatch,
        ] {
            assert_eq!(Reason::from_code(r.code()), Some(r));
        }
        assert_eq!(Reason::from_code("nope"), None);
        assert!(Reason::DuplicateLabel.is_malformed_input());
        assert!(!Reason::BadSignature.is_malformed_input());
    }
}
