//! JSON Web Keys (RFC 7517, RFC 8037) as signing and verifying keys, and RFC 7638
//! thumbprints.
//!
//! ```
//! use oba_httpsig::jwk::Jwk;
//! use oba_httpsig::Algorithm;
//! let private = Jwk::generate(Algorithm::Ed25519)?;
//! assert_eq!(private.kid.as_deref(), Some(private.thumbprint()?.as_str()));
//! let public = private.public()?;
//! assert!(public.d.is_none());
//! let key = public.verifying_key(None)?; // decoded once; keep it
//! # let _ = key;
//! # Ok::<(), oba_httpsig::Error>(())
//! ```

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Reason};
use crate::{Algorithm, SigningKey, VerifyingKey};

/// A JSON Web Key. Unknown members are kept so a key round-trips unchanged.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Jwk {
    /// Key type: `OKP`, `EC`, `RSA` or `oct`.
    pub kty: String,
    /// Curve (`Ed25519`, `P-256`, `P-384`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    /// Key id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// JOSE algorithm (`EdDSA`, `ES256`, `ES384`, `PS512`, `RS256`, `HS256`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    /// Public key use.
    #[serde(rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
    /// Public x coordinate / OKP public key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    /// Public y coordinate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    /// RSA modulus.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    /// RSA public exponent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    /// Private key (EC scalar, OKP seed, RSA private exponent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub d: Option<String>,
    /// RSA first prime.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p: Option<String>,
    /// RSA second prime.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub q: Option<String>,
    /// RSA first CRT exponent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dp: Option<String>,
    /// RSA second CRT exponent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dq: Option<String>,
    /// RSA CRT coefficient.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qi: Option<String>,
    /// Symmetric key value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub k: Option<String>,
    /// Other members, kept as received.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

impl std::fmt::Debug for Jwk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Private members are never printed.
        f.debug_struct("Jwk")
            .field("kty", &self.kty)
            .field("crv", &self.crv)
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("private", &self.is_private())
            .finish_non_exhaustive()
    }
}

/// A JWK Set (`{"keys": [...]}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JwkSet {
    /// The keys.
    pub keys: Vec<Jwk>,
}

impl JwkSet {
    /// Parses a JWK Set document; a single JWK is accepted as a set of one.
    pub fn parse(json: &str) -> Result<Self, Error> {
        let v: serde_json::Value =
            serde_json::from_str(json).map_err(|e| Error::invalid_key(format!("not JSON: {e}")))?;
        if v.get("keys").is_some() {
            serde_json::from_value(v).map_err(|e| Error::invalid_key(format!("not a JWK Set: {e}")))
        } else {
            Ok(JwkSet {
                keys: vec![Jwk::from_value(v)?],
            })
        }
    }

    /// The key whose `kid` or thumbprint is `id`.
    pub fn find(&self, id: &str) -> Option<&Jwk> {
        self.keys
            .iter()
            .find(|k| k.kid.as_deref() == Some(id) || k.thumbprint().is_ok_and(|t| t == id))
    }
}

fn b64(field: &Option<String>, name: &str) -> Result<Vec<u8>, Error> {
    let v = field
        .as_deref()
        .ok_or_else(|| Error::invalid_key(format!("JWK member {name:?} missing")))?;
    B64URL
        .decode(v.trim_end_matches('='))
        .map_err(|_| Error::invalid_key(format!("JWK member {name:?} is not base64url")))
}

fn enc(b: &[u8]) -> Option<String> {
    Some(B64URL.encode(b))
}

impl Jwk {
    /// Parses a JWK document.
    pub fn parse(json: &str) -> Result<Self, Error> {
        let v: serde_json::Value =
            serde_json::from_str(json).map_err(|e| Error::invalid_key(format!("not JSON: {e}")))?;
        Self::from_value(v)
    }

    fn from_value(v: serde_json::Value) -> Result<Self, Error> {
        let jwk: Jwk =
            serde_json::from_value(v).map_err(|e| Error::invalid_key(format!("not a JWK: {e}")))?;
        match (jwk.kty.as_str(), jwk.crv.as_deref()) {
            ("OKP", Some("Ed25519"))
            | ("EC", Some("P-256" | "P-384"))
            | ("RSA", _)
            | ("oct", _) => Ok(jwk),
            (kty, crv) => Err(Error::new(
                Reason::UnsupportedAlgorithm,
                format!("unsupported JWK kty {kty:?} crv {crv:?}"),
            )),
        }
    }

    /// Serialises as compact JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// True when the JWK carries private (or symmetric) key material.
    pub fn is_private(&self) -> bool {
        self.d.is_some() || self.k.is_some() || self.p.is_some()
    }

    /// The RFC 9421 algorithm: from `kty`/`crv`, and for RSA and `oct` from the JOSE `alg`
    /// (`PS512`, `RS256`, `HS256`; the RFC 9421 names are accepted too). An `alg` that
    /// contradicts the key type is an error.
    pub fn algorithm(&self) -> Result<Algorithm, Error> {
        let alg = self.alg.as_deref();
        let mismatch = |want: &str| {
            Error::invalid_key(format!(
                "JWK alg {:?} does not fit a {want} key",
                alg.unwrap_or_default()
            ))
        };
        let check = |a: Algorithm| match alg {
            None => Ok(a),
            Some(x) if x == a.jose_name() || x == a.name() => Ok(a),
            Some(_) => Err(mismatch(a.name())),
        };
        match (self.kty.as_str(), self.crv.as_deref()) {
            ("OKP", Some("Ed25519")) => match alg {
                Some("Ed25519") => Ok(Algorithm::Ed25519),
                _ => check(Algorithm::Ed25519),
            },
            ("EC", Some("P-256")) => check(Algorithm::EcdsaP256Sha256),
            ("EC", Some("P-384")) => check(Algorithm::EcdsaP384Sha384),
            ("RSA", _) => match alg {
                Some("PS512" | "rsa-pss-sha512") => Ok(Algorithm::RsaPssSha512),
                Some("RS256" | "rsa-v1_5-sha256") => Ok(Algorithm::RsaV15Sha256),
                Some(_) => Err(mismatch("RSA")),
                None => Err(Error::invalid_key(
                    "an RSA JWK needs \"alg\" (PS512 or RS256), or give the algorithm explicitly",
                )),
            },
            ("oct", _) => check(Algorithm::HmacSha256),
            (kty, crv) => Err(Error::new(
                Reason::UnsupportedAlgorithm,
                format!("unsupported JWK kty {kty:?} crv {crv:?}"),
            )),
        }
    }

    /// The algorithm: `explicit` if given (it must fit the key type), else [`Jwk::algorithm`].
    fn resolve_alg(&self, explicit: Option<Algorithm>) -> Result<Algorithm, Error> {
        match explicit {
            None => self.algorithm(),
            Some(a) => {
                let fits = match a {
                    Algorithm::Ed25519 => {
                        self.kty == "OKP" && self.crv.as_deref() == Some("Ed25519")
                    }
                    Algorithm::EcdsaP256Sha256 => {
                        self.kty == "EC" && self.crv.as_deref() == Some("P-256")
                    }
                    Algorithm::EcdsaP384Sha384 => {
                        self.kty == "EC" && self.crv.as_deref() == Some("P-384")
                    }
                    Algorithm::RsaPssSha512 | Algorithm::RsaV15Sha256 => self.kty == "RSA",
                    Algorithm::HmacSha256 => self.kty == "oct",
                };
                if fits {
                    Ok(a)
                } else {
                    Err(Error::invalid_key(format!(
                        "a {} JWK cannot be used for {a}",
                        self.kty
                    )))
                }
            }
        }
    }

    /// The public JWK: private members removed. Fails for `oct` keys, which have no
    /// public part.
    pub fn public(&self) -> Result<Jwk, Error> {
        if self.kty == "oct" {
            return Err(Error::invalid_key(
                "a symmetric (oct) key has no public form",
            ));
        }
        let mut p = self.clone();
        p.d = None;
        p.p = None;
        p.q = None;
        p.dp = None;
        p.dq = None;
        p.qi = None;
        p.k = None;
        p.other.remove("oth");
        Ok(p)
    }

    /// The RFC 7638 thumbprint (SHA-256, base64url without padding).
    pub fn thumbprint(&self) -> Result<String, Error> {
        let req = |f: &Option<String>, n: &str| {
            f.clone()
                .ok_or_else(|| Error::invalid_key(format!("JWK member {n:?} missing")))
        };
        let members: Vec<(&str, String)> = match self.kty.as_str() {
            "EC" => vec![
                ("crv", req(&self.crv, "crv")?),
                ("kty", self.kty.clone()),
                ("x", req(&self.x, "x")?),
                ("y", req(&self.y, "y")?),
            ],
            "OKP" => vec![
                ("crv", req(&self.crv, "crv")?),
                ("kty", self.kty.clone()),
                ("x", req(&self.x, "x")?),
            ],
            "RSA" => vec![
                ("e", req(&self.e, "e")?),
                ("kty", self.kty.clone()),
                ("n", req(&self.n, "n")?),
            ],
            "oct" => vec![("k", req(&self.k, "k")?), ("kty", self.kty.clone())],
            other => return Err(Error::invalid_key(format!("unsupported kty {other:?}"))),
        };
        let mut json = String::from("{");
        for (i, (k, v)) in members.iter().enumerate() {
            if i > 0 {
                json.push(',');
            }
            json.push_str(&serde_json::to_string(k).unwrap_or_default());
            json.push(':');
            json.push_str(&serde_json::to_string(v).unwrap_or_default());
        }
        json.push('}');
        Ok(B64URL.encode(Sha256::digest(json.as_bytes())))
    }

    /// The signing key (its key id is the JWK's `kid`). The public members must match
    /// the private ones.
    pub fn signing_key(&self, alg: Option<Algorithm>) -> Result<SigningKey, Error> {
        let alg = self.resolve_alg(alg)?;
        let key = match alg {
            Algorithm::Ed25519 => SigningKey::ed25519(&b64(&self.d, "d")?)?,
            Algorithm::EcdsaP256Sha256 => SigningKey::ecdsa_p256(&b64(&self.d, "d")?)?,
            Algorithm::EcdsaP384Sha384 => SigningKey::ecdsa_p384(&b64(&self.d, "d")?)?,
            Algorithm::HmacSha256 => SigningKey::hmac_sha256(&b64(&self.k, "k")?)?,
            #[cfg(feature = "rsa")]
            Algorithm::RsaPssSha512 | Algorithm::RsaV15Sha256 => {
                use rsa::BigUint;
                let big =
                    |f: &Option<String>, n: &str| b64(f, n).map(|b| BigUint::from_bytes_be(&b));
                let mut k = rsa::RsaPrivateKey::from_components(
                    big(&self.n, "n")?,
                    big(&self.e, "e")?,
                    big(&self.d, "d")?,
                    vec![big(&self.p, "p")?, big(&self.q, "q")?],
                )
                .map_err(|_| Error::invalid_key("inconsistent RSA JWK"))?;
                k.precompute()
                    .map_err(|_| Error::invalid_key("inconsistent RSA JWK"))?;
                SigningKey::rsa(k, alg)?
            }
            #[allow(unreachable_patterns)]
            other => {
                return Err(Error::new(
                    Reason::UnsupportedAlgorithm,
                    format!("{other} not compiled in"),
                ))
            }
        };
        if alg != Algorithm::HmacSha256 {
            // The public members, when present, must describe the same key.
            let derived = Jwk::from_signing_key(&key)?;
            let given_public = (self.x.is_some() || self.n.is_some()).then(|| self.thumbprint());
            if let Some(t) = given_public {
                if t? != derived.thumbprint()? {
                    return Err(Error::invalid_key(
                        "the JWK's public and private members do not match",
                    ));
                }
            }
        }
        Ok(match &self.kid {
            Some(kid) => key.with_key_id(kid.clone()),
            None => key,
        })
    }

    /// The verifying key (its key id is the JWK's `kid`), decoded and validated once.
    pub fn verifying_key(&self, alg: Option<Algorithm>) -> Result<VerifyingKey, Error> {
        let alg = self.resolve_alg(alg)?;
        let ec = |len: usize| -> Result<Vec<u8>, Error> {
            let x = b64(&self.x, "x")?;
            let y = b64(&self.y, "y")?;
            if x.len() != len || y.len() != len {
                return Err(Error::invalid_key("EC coordinates have the wrong length"));
            }
            let mut sec1 = Vec::with_capacity(1 + 2 * len);
            sec1.push(4);
            sec1.extend_from_slice(&x);
            sec1.extend_from_slice(&y);
            Ok(sec1)
        };
        let key = match alg {
            Algorithm::Ed25519 => VerifyingKey::ed25519(&b64(&self.x, "x")?)?,
            Algorithm::EcdsaP256Sha256 => VerifyingKey::ecdsa_p256_sec1(&ec(32)?)?,
            Algorithm::EcdsaP384Sha384 => VerifyingKey::ecdsa_p384_sec1(&ec(48)?)?,
            Algorithm::HmacSha256 => VerifyingKey::hmac_sha256(&b64(&self.k, "k")?)?,
            #[cfg(feature = "rsa")]
            Algorithm::RsaPssSha512 | Algorithm::RsaV15Sha256 => {
                use rsa::BigUint;
                let n = BigUint::from_bytes_be(&b64(&self.n, "n")?);
                let e = BigUint::from_bytes_be(&b64(&self.e, "e")?);
                let k = rsa::RsaPublicKey::new(n, e)
                    .map_err(|_| Error::invalid_key("invalid RSA public key"))?;
                VerifyingKey::rsa(k, alg)?
            }
            #[allow(unreachable_patterns)]
            other => {
                return Err(Error::new(
                    Reason::UnsupportedAlgorithm,
                    format!("{other} not compiled in"),
                ))
            }
        };
        Ok(match &self.kid {
            Some(kid) => key.with_key_id(kid.clone()),
            None => key,
        })
    }

    /// The private JWK of a signing key, with `alg` set; `kid` is left empty.
    pub fn from_signing_key(key: &SigningKey) -> Result<Jwk, Error> {
        use crate::Signer;
        let alg = key.algorithm();
        let mut j = Jwk {
            alg: Some(alg.jose_name().to_owned()),
            ..Jwk::default()
        };
        if let Some(k) = key.ed25519_inner() {
            j.kty = "OKP".into();
            j.crv = Some("Ed25519".into());
            j.x = enc(k.verifying_key().as_bytes());
            j.d = enc(&k.to_bytes());
        } else if let Some(k) = key.p256_inner() {
            let p = k.verifying_key().to_encoded_point(false);
            j.kty = "EC".into();
            j.crv = Some("P-256".into());
            j.x = p.x().map(|x| B64URL.encode(x));
            j.y = p.y().map(|y| B64URL.encode(y));
            j.d = enc(&k.to_bytes());
        } else if let Some(k) = key.p384_inner() {
            let p = k.verifying_key().to_encoded_point(false);
            j.kty = "EC".into();
            j.crv = Some("P-384".into());
            j.x = p.x().map(|x| B64URL.encode(x));
            j.y = p.y().map(|y| B64URL.encode(y));
            j.d = enc(&k.to_bytes());
        } else if let Some(k) = key.hmac_inner() {
            j.kty = "oct".into();
            j.k = enc(k);
        } else {
            #[cfg(feature = "rsa")]
            if let Some(k) = key.rsa_inner() {
                use rsa::traits::{PrivateKeyParts, PublicKeyParts};
                j.kty = "RSA".into();
                j.n = enc(&k.n().to_bytes_be());
                j.e = enc(&k.e().to_bytes_be());
                j.d = enc(&k.d().to_bytes_be());
                let primes = k.primes();
                if primes.len() != 2 {
                    return Err(Error::invalid_key("multi-prime RSA keys are not supported"));
                }
                j.p = enc(&primes[0].to_bytes_be());
                j.q = enc(&primes[1].to_bytes_be());
                j.dp = k.dp().map(|v| B64URL.encode(v.to_bytes_be()));
                j.dq = k.dq().map(|v| B64URL.encode(v.to_bytes_be()));
                j.qi = k.qinv().map(|v| B64URL.encode(v.to_bytes_be().1));
                return Ok(j);
            }
            return Err(Error::invalid_key("key type cannot be exported"));
        }
        Ok(j)
    }

    /// Generates a private JWK for `alg`, with `alg` set and `kid` = its RFC 7638
    /// thumbprint — except for HMAC, whose `kid` is random: a thumbprint of a shared
    /// secret would publish a hash of the secret.
    pub fn generate(alg: Algorithm) -> Result<Jwk, Error> {
        let key = SigningKey::generate(alg)?;
        let mut j = Jwk::from_signing_key(&key)?;
        j.kid = Some(if alg.is_symmetric() {
            crate::random_nonce()
        } else {
            j.thumbprint()?
        });
        Ok(j)
    }
}
