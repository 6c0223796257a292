//! The algorithms of the HTTP Signature Algorithms registry (RFC 9421 section 6.2.2).

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Reason};

/// A registered signature algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Algorithm {
    /// `rsa-pss-sha512` (RFC 9421 3.3.1): RSASSA-PSS, SHA-512, MGF1-SHA-512, 64-byte salt.
    RsaPssSha512,
    /// `rsa-v1_5-sha256` (3.3.2): RSASSA-PKCS1-v1_5 with SHA-256.
    RsaV15Sha256,
    /// `hmac-sha256` (3.3.3): HMAC with SHA-256, compared in constant time.
    HmacSha256,
    /// `ecdsa-p256-sha256` (3.3.4): ECDSA on P-256 with SHA-256, signature `r‖s`.
    EcdsaP256Sha256,
    /// `ecdsa-p384-sha384` (3.3.5): ECDSA on P-384 with SHA-384, signature `r‖s`.
    EcdsaP384Sha384,
    /// `ed25519` (3.3.6): EdDSA on edwards25519.
    Ed25519,
}

impl Algorithm {
    /// Every algorithm, in registry order.
    pub const ALL: [Algorithm; 6] = [
        Algorithm::RsaPssSha512,
        Algorithm::RsaV15Sha256,
        Algorithm::HmacSha256,
        Algorithm::EcdsaP256Sha256,
        Algorithm::EcdsaP384Sha384,
        Algorithm::Ed25519,
    ];

    /// The registered name, as used in the `alg` parameter.
    pub const fn name(self) -> &'static str {
        match self {
            Algorithm::RsaPssSha512 => "rsa-pss-sha512",
            Algorithm::RsaV15Sha256 => "rsa-v1_5-sha256",
            Algorithm::HmacSha256 => "hmac-sha256",
            Algorithm::EcdsaP256Sha256 => "ecdsa-p256-sha256",
            Algorithm::EcdsaP384Sha384 => "ecdsa-p384-sha384",
            Algorithm::Ed25519 => "ed25519",
        }
    }

    /// The JOSE `alg` name of the same algorithm (RFC 7518 / RFC 8037).
    pub const fn jose_name(self) -> &'static str {
        match self {
            Algorithm::RsaPssSha512 => "PS512",
            Algorithm::RsaV15Sha256 => "RS256",
            Algorithm::HmacSha256 => "HS256",
            Algorithm::EcdsaP256Sha256 => "ES256",
            Algorithm::EcdsaP384Sha384 => "ES384",
            Algorithm::Ed25519 => "EdDSA",
        }
    }

    /// True for the symmetric algorithm (`hmac-sha256`).
    pub const fn is_symmetric(self) -> bool {
        matches!(self, Algorithm::HmacSha256)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Algorithm {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                Error::new(
                    Reason::UnsupportedAlgorithm,
                    format!("unknown algorithm {s:?}"),
                )
            })
    }
}
