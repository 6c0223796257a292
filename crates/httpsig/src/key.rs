//! Signing and verifying keys.
//!
//! [`SigningKey`] and [`VerifyingKey`] hold decoded key material for every registered
//! algorithm, parsed once (a public key is never re-decoded per verification). Any
//! other implementation — an HSM, a cloud KMS — plugs in through the [`Signer`] and
//! [`Verifier`] traits, or through [`ExternalSigner`] / [`ExternalVerifier`], which wrap
//! any `signature::Signer` / `signature::Verifier`.

use std::fmt;
use std::marker::PhantomData;

use hmac::{Mac, SimpleHmac};
use sha2::Sha256;
use signature::{SignatureEncoding, Signer as _, Verifier as _};
use zeroize::Zeroizing;

use crate::error::{Error, Reason};
use crate::Algorithm;

/// Produces signatures over a signature base.
pub trait Signer: Send + Sync {
    /// The algorithm this key signs with.
    fn algorithm(&self) -> Algorithm;
    /// The key identifier, if the key has one.
    fn key_id(&self) -> Option<&str> {
        None
    }
    /// Signs the signature base.
    fn sign(&self, base: &[u8]) -> Result<Vec<u8>, Error>;
}

/// Checks signatures over a signature base.
pub trait Verifier: Send + Sync {
    /// The algorithm this key verifies.
    fn algorithm(&self) -> Algorithm;
    /// The key identifier, if the key has one.
    fn key_id(&self) -> Option<&str> {
        None
    }
    /// Verifies `signature` over `base`; any failure is [`Reason::BadSignature`].
    fn verify(&self, base: &[u8], signature: &[u8]) -> Result<(), Error>;
}

enum SigningInner {
    Ed25519(Box<ed25519_dalek::SigningKey>),
    P256(p256::ecdsa::SigningKey),
    P384(p384::ecdsa::SigningKey),
    Hmac(Zeroizing<Vec<u8>>),
    #[cfg(feature = "rsa")]
    RsaPss(Box<rsa::pss::SigningKey<sha2::Sha512>>),
    #[cfg(feature = "rsa")]
    RsaV15(Box<rsa::pkcs1v15::SigningKey<Sha256>>),
}

/// A private (or, for HMAC, shared) key with its algorithm and optional key id.
pub struct SigningKey {
    inner: SigningInner,
    key_id: Option<String>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("SigningKey")
            .field("algorithm", &self.algorithm())
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// An Ed25519 key from its 32-byte seed.
    pub fn ed25519(seed: &[u8]) -> Result<Self, Error> {
        let seed: [u8; 32] = seed
            .try_into()
            .map_err(|_| Error::invalid_key("an Ed25519 private key is 32 bytes"))?;
        Ok(Self::from_inner(SigningInner::Ed25519(Box::new(
            ed25519_dalek::SigningKey::from_bytes(&seed),
        ))))
    }

    /// A P-256 key from its 32-byte scalar.
    pub fn ecdsa_p256(d: &[u8]) -> Result<Self, Error> {
        let k = p256::ecdsa::SigningKey::from_slice(d)
            .map_err(|_| Error::invalid_key("invalid P-256 private scalar"))?;
        Ok(Self::from_inner(SigningInner::P256(k)))
    }

    /// A P-384 key from its 48-byte scalar.
    pub fn ecdsa_p384(d: &[u8]) -> Result<Self, Error> {
        let k = p384::ecdsa::SigningKey::from_slice(d)
            .map_err(|_| Error::invalid_key("invalid P-384 private scalar"))?;
        Ok(Self::from_inner(SigningInner::P384(k)))
    }

    /// An HMAC-SHA256 shared secret (at least 32 bytes, RFC 9421 3.3.3 / RFC 2104).
    pub fn hmac_sha256(secret: &[u8]) -> Result<Self, Error> {
        if secret.len() < 32 {
            return Err(Error::invalid_key(
                "an hmac-sha256 secret must be at least 32 bytes",
            ));
        }
        Ok(Self::from_inner(SigningInner::Hmac(Zeroizing::new(
            secret.to_vec(),
        ))))
    }

    /// An RSA key for `rsa-pss-sha512` or `rsa-v1_5-sha256`.
    #[cfg(feature = "rsa")]
    pub fn rsa(key: rsa::RsaPrivateKey, alg: Algorithm) -> Result<Self, Error> {
        use rsa::traits::PublicKeyParts;
        if key.size() < 256 {
            return Err(Error::invalid_key("RSA keys must be at least 2048 bits"));
        }
        key.validate()
            .map_err(|_| Error::invalid_key("inconsistent RSA private key"))?;
        let inner = match alg {
            Algorithm::RsaPssSha512 => {
                SigningInner::RsaPss(Box::new(
                    rsa::pss::SigningKey::<sha2::Sha512>::new_with_salt_len(key, 64),
                ))
            }
            Algorithm::RsaV15Sha256 => {
                SigningInner::RsaV15(Box::new(rsa::pkcs1v15::SigningKey::<Sha256>::new(key)))
            }
            other => {
                return Err(Error::invalid_key(format!(
                    "an RSA key cannot be used for {other}"
                )))
            }
        };
        Ok(Self::from_inner(inner))
    }

    /// Parses a PEM private key: PKCS#8 (`PRIVATE KEY`: Ed25519, P-256, P-384, RSA),
    /// SEC1 (`EC PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`). RSA keys need `alg`
    /// (`rsa-pss-sha512` or `rsa-v1_5-sha256`); for the others `alg` must match if given.
    pub fn from_pem(pem: &str, alg: Option<Algorithm>) -> Result<Self, Error> {
        use p256::pkcs8::DecodePrivateKey;
        let check = |k: Self| match alg {
            Some(a) if a != k.algorithm() => Err(Error::invalid_key(format!(
                "the PEM key is {} but {a} was asked for",
                k.algorithm()
            ))),
            _ => Ok(k),
        };
        let pem = pem.trim();
        if pem.contains("BEGIN EC PRIVATE KEY") {
            if let Ok(k) = p256::SecretKey::from_sec1_pem(pem) {
                return check(Self::from_inner(SigningInner::P256(k.into())));
            }
            if let Ok(k) = p384::SecretKey::from_sec1_pem(pem) {
                return check(Self::from_inner(SigningInner::P384(k.into())));
            }
            return Err(Error::invalid_key("unsupported or invalid EC private key"));
        }
        #[cfg(feature = "rsa")]
        if pem.contains("BEGIN RSA PRIVATE KEY") {
            use rsa::pkcs1::DecodeRsaPrivateKey;
            let k = rsa::RsaPrivateKey::from_pkcs1_pem(pem)
                .map_err(|_| Error::invalid_key("invalid PKCS#1 RSA private key"))?;
            return Self::rsa(k, rsa_alg(alg)?);
        }
        if let Ok(k) = ed25519_dalek::SigningKey::from_pkcs8_pem(pem) {
            return check(Self::from_inner(SigningInner::Ed25519(Box::new(k))));
        }
        if let Ok(k) = p256::ecdsa::SigningKey::from_pkcs8_pem(pem) {
            return check(Self::from_inner(SigningInner::P256(k)));
        }
        if let Ok(k) = p384::ecdsa::SigningKey::from_pkcs8_pem(pem) {
            return check(Self::from_inner(SigningInner::P384(k)));
        }
        #[cfg(feature = "rsa")]
        if let Ok(k) = rsa::RsaPrivateKey::from_pkcs8_pem(pem) {
            return Self::rsa(k, rsa_alg(alg)?);
        }
        Err(Error::invalid_key(
            "unsupported private key PEM (an id-RSASSA-PSS PKCS#8 key must be given as a JWK)",
        ))
    }

    fn from_inner(inner: SigningInner) -> Self {
        SigningKey {
            inner,
            key_id: None,
        }
    }

    /// Sets the key identifier (builder style).
    pub fn with_key_id(mut self, key_id: impl Into<String>) -> Self {
        self.key_id = Some(key_id.into());
        self
    }

    /// The matching verifying key (for HMAC: the same secret).
    pub fn verifying_key(&self) -> VerifyingKey {
        let inner = match &self.inner {
            SigningInner::Ed25519(k) => VerifyingInner::Ed25519(Box::new(k.verifying_key())),
            SigningInner::P256(k) => VerifyingInner::P256(*k.verifying_key()),
            SigningInner::P384(k) => VerifyingInner::P384(*k.verifying_key()),
            SigningInner::Hmac(s) => VerifyingInner::Hmac(s.clone()),
            #[cfg(feature = "rsa")]
            SigningInner::RsaPss(k) => {
                use signature::Keypair;
                VerifyingInner::RsaPss(Box::new(k.verifying_key()))
            }
            #[cfg(feature = "rsa")]
            SigningInner::RsaV15(k) => {
                use signature::Keypair;
                VerifyingInner::RsaV15(Box::new(k.verifying_key()))
            }
        };
        VerifyingKey {
            inner,
            key_id: self.key_id.clone(),
        }
    }

    /// Generates a new random key for `alg` (RSA: 2048 bits; HMAC: 32 bytes).
    pub fn generate(alg: Algorithm) -> Result<Self, Error> {
        use rand_core::{OsRng, RngCore};
        Ok(match alg {
            Algorithm::Ed25519 => Self::from_inner(SigningInner::Ed25519(Box::new(
                ed25519_dalek::SigningKey::generate(&mut OsRng),
            ))),
            Algorithm::EcdsaP256Sha256 => Self::from_inner(SigningInner::P256(
                p256::ecdsa::SigningKey::random(&mut OsRng),
            )),
            Algorithm::EcdsaP384Sha384 => Self::from_inner(SigningInner::P384(
                p384::ecdsa::SigningKey::random(&mut OsRng),
            )),
            Algorithm::HmacSha256 => {
                let mut s = Zeroizing::new(vec![0u8; 32]);
                OsRng.fill_bytes(&mut s);
                Self::from_inner(SigningInner::Hmac(s))
            }
            #[cfg(feature = "rsa")]
            Algorithm::RsaPssSha512 | Algorithm::RsaV15Sha256 => {
                let k = rsa::RsaPrivateKey::new(&mut OsRng, 2048)
                    .map_err(|e| Error::invalid_key(format!("RSA key generation failed: {e}")))?;
                Self::rsa(k, alg)?
            }
            #[allow(unreachable_patterns)]
            other => {
                return Err(Error::new(
                    Reason::UnsupportedAlgorithm,
                    format!("{other} is not compiled in"),
                ))
            }
        })
    }

    pub(crate) fn ed25519_inner(&self) -> Option<&ed25519_dalek::SigningKey> {
        match &self.inner {
            SigningInner::Ed25519(k) => Some(k),
            _ => None,
        }
    }
    pub(crate) fn p256_inner(&self) -> Option<&p256::ecdsa::SigningKey> {
        match &self.inner {
            SigningInner::P256(k) => Some(k),
            _ => None,
        }
    }
    pub(crate) fn p384_inner(&self) -> Option<&p384::ecdsa::SigningKey> {
        match &self.inner {
            SigningInner::P384(k) => Some(k),
            _ => None,
        }
    }
    pub(crate) fn hmac_inner(&self) -> Option<&[u8]> {
        match &self.inner {
            SigningInner::Hmac(k) => Some(k),
            _ => None,
        }
    }
    #[cfg(feature = "rsa")]
    pub(crate) fn rsa_inner(&self) -> Option<&rsa::RsaPrivateKey> {
        match &self.inner {
            SigningInner::RsaPss(k) => Some(k.as_ref().as_ref()),
            SigningInner::RsaV15(k) => Some(k.as_ref().as_ref()),
            _ => None,
        }
    }
}

#[cfg(feature = "rsa")]
fn rsa_alg(alg: Option<Algorithm>) -> Result<Algorithm, Error> {
    match alg {
        Some(a @ (Algorithm::RsaPssSha512 | Algorithm::RsaV15Sha256)) => Ok(a),
        Some(a) => Err(Error::invalid_key(format!(
            "an RSA key cannot be used for {a}"
        ))),
        None => Err(Error::invalid_key(
            "an RSA key needs an algorithm: rsa-pss-sha512 or rsa-v1_5-sha256",
        )),
    }
}

impl Signer for SigningKey {
    fn algorithm(&self) -> Algorithm {
        match self.inner {
            SigningInner::Ed25519(_) => Algorithm::Ed25519,
            SigningInner::P256(_) => Algorithm::EcdsaP256Sha256,
            SigningInner::P384(_) => Algorithm::EcdsaP384Sha384,
            SigningInner::Hmac(_) => Algorithm::HmacSha256,
            #[cfg(feature = "rsa")]
            SigningInner::RsaPss(_) => Algorithm::RsaPssSha512,
            #[cfg(feature = "rsa")]
            SigningInner::RsaV15(_) => Algorithm::RsaV15Sha256,
        }
    }

    fn key_id(&self) -> Option<&str> {
        self.key_id.as_deref()
    }

    fn sign(&self, base: &[u8]) -> Result<Vec<u8>, Error> {
        let failed = |_| Error::new(Reason::SigningFailed, "");
        Ok(match &self.inner {
            SigningInner::Ed25519(k) => k.sign(base).to_vec(),
            SigningInner::P256(k) => {
                let s: p256::ecdsa::Signature = k.try_sign(base).map_err(failed)?;
                s.to_vec()
            }
            SigningInner::P384(k) => {
                let s: p384::ecdsa::Signature = k.try_sign(base).map_err(failed)?;
                s.to_vec()
            }
            SigningInner::Hmac(secret) => {
                let mut mac = <SimpleHmac<Sha256> as Mac>::new_from_slice(secret)
                    .map_err(|_| Error::new(Reason::SigningFailed, ""))?;
                mac.update(base);
                mac.finalize().into_bytes().to_vec()
            }
            #[cfg(feature = "rsa")]
            SigningInner::RsaPss(k) => {
                use signature::RandomizedSigner;
                k.try_sign_with_rng(&mut rand_core::OsRng, base)
                    .map_err(failed)?
                    .to_vec()
            }
            #[cfg(feature = "rsa")]
            SigningInner::RsaV15(k) => k.try_sign(base).map_err(failed)?.to_vec(),
        })
    }
}

enum VerifyingInner {
    Ed25519(Box<ed25519_dalek::VerifyingKey>),
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    Hmac(Zeroizing<Vec<u8>>),
    #[cfg(feature = "rsa")]
    RsaPss(Box<rsa::pss::VerifyingKey<sha2::Sha512>>),
    #[cfg(feature = "rsa")]
    RsaV15(Box<rsa::pkcs1v15::VerifyingKey<Sha256>>),
}

/// A decoded public key (or, for HMAC, the shared secret) with its algorithm.
pub struct VerifyingKey {
    inner: VerifyingInner,
    key_id: Option<String>,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("algorithm", &self.algorithm())
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl VerifyingKey {
    /// An Ed25519 public key from its 32 bytes (small-order points refused).
    pub fn ed25519(public: &[u8]) -> Result<Self, Error> {
        let bytes: [u8; 32] = public
            .try_into()
            .map_err(|_| Error::invalid_key("an Ed25519 public key is 32 bytes"))?;
        let k = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map_err(|_| Error::invalid_key("invalid Ed25519 public key"))?;
        if k.is_weak() {
            return Err(Error::invalid_key("Ed25519 public key of small order"));
        }
        Ok(Self::from_inner(VerifyingInner::Ed25519(Box::new(k))))
    }

    /// A P-256 public key from its SEC1 encoding (compressed or not).
    pub fn ecdsa_p256_sec1(sec1: &[u8]) -> Result<Self, Error> {
        let k = p256::ecdsa::VerifyingKey::from_sec1_bytes(sec1)
            .map_err(|_| Error::invalid_key("invalid P-256 public key"))?;
        Ok(Self::from_inner(VerifyingInner::P256(k)))
    }

    /// A P-384 public key from its SEC1 encoding (compressed or not).
    pub fn ecdsa_p384_sec1(sec1: &[u8]) -> Result<Self, Error> {
        let k = p384::ecdsa::VerifyingKey::from_sec1_bytes(sec1)
            .map_err(|_| Error::invalid_key("invalid P-384 public key"))?;
        Ok(Self::from_inner(VerifyingInner::P384(k)))
    }

    /// An HMAC-SHA256 shared secret (at least 32 bytes).
    pub fn hmac_sha256(secret: &[u8]) -> Result<Self, Error> {
        SigningKey::hmac_sha256(secret).map(|k| k.verifying_key())
    }

    /// An RSA public key for `rsa-pss-sha512` or `rsa-v1_5-sha256`.
    #[cfg(feature = "rsa")]
    pub fn rsa(key: rsa::RsaPublicKey, alg: Algorithm) -> Result<Self, Error> {
        use rsa::traits::PublicKeyParts;
        if key.size() < 256 {
            return Err(Error::invalid_key("RSA keys must be at least 2048 bits"));
        }
        let inner = match alg {
            Algorithm::RsaPssSha512 => {
                VerifyingInner::RsaPss(Box::new(rsa::pss::VerifyingKey::<sha2::Sha512>::new(key)))
            }
            Algorithm::RsaV15Sha256 => {
                VerifyingInner::RsaV15(Box::new(rsa::pkcs1v15::VerifyingKey::<Sha256>::new(key)))
            }
            other => {
                return Err(Error::invalid_key(format!(
                    "an RSA key cannot be used for {other}"
                )))
            }
        };
        Ok(Self::from_inner(inner))
    }

    /// Parses a PEM public key: SPKI (`PUBLIC KEY`: Ed25519, P-256, P-384, RSA) or PKCS#1
    /// (`RSA PUBLIC KEY`). RSA keys need `alg`; for the others `alg` must match if given.
    pub fn from_pem(pem: &str, alg: Option<Algorithm>) -> Result<Self, Error> {
        use p256::pkcs8::DecodePublicKey;
        let check = |k: Self| match alg {
            Some(a) if a != k.algorithm() => Err(Error::invalid_key(format!(
                "the PEM key is {} but {a} was asked for",
                k.algorithm()
            ))),
            _ => Ok(k),
        };
        let pem = pem.trim();
        #[cfg(feature = "rsa")]
        if pem.contains("BEGIN RSA PUBLIC KEY") {
            use rsa::pkcs1::DecodeRsaPublicKey;
            let k = rsa::RsaPublicKey::from_pkcs1_pem(pem)
                .map_err(|_| Error::invalid_key("invalid PKCS#1 RSA public key"))?;
            return Self::rsa(k, rsa_alg(alg)?);
        }
        if let Ok(k) = ed25519_dalek::VerifyingKey::from_public_key_pem(pem) {
            return check(Self::ed25519(k.as_bytes())?);
        }
        if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_pem(pem) {
            return check(Self::from_inner(VerifyingInner::P256(k)));
        }
        if let Ok(k) = p384::ecdsa::VerifyingKey::from_public_key_pem(pem) {
            return check(Self::from_inner(VerifyingInner::P384(k)));
        }
        #[cfg(feature = "rsa")]
        if let Ok(k) = rsa::RsaPublicKey::from_public_key_pem(pem) {
            return Self::rsa(k, rsa_alg(alg)?);
        }
        Err(Error::invalid_key("unsupported public key PEM"))
    }

    fn from_inner(inner: VerifyingInner) -> Self {
        VerifyingKey {
            inner,
            key_id: None,
        }
    }

    /// Sets the key identifier (builder style).
    pub fn with_key_id(mut self, key_id: impl Into<String>) -> Self {
        self.key_id = Some(key_id.into());
        self
    }
}

impl Verifier for VerifyingKey {
    fn algorithm(&self) -> Algorithm {
        match self.inner {
            VerifyingInner::Ed25519(_) => Algorithm::Ed25519,
            VerifyingInner::P256(_) => Algorithm::EcdsaP256Sha256,
            VerifyingInner::P384(_) => Algorithm::EcdsaP384Sha384,
            VerifyingInner::Hmac(_) => Algorithm::HmacSha256,
            #[cfg(feature = "rsa")]
            VerifyingInner::RsaPss(_) => Algorithm::RsaPssSha512,
            #[cfg(feature = "rsa")]
            VerifyingInner::RsaV15(_) => Algorithm::RsaV15Sha256,
        }
    }

    fn key_id(&self) -> Option<&str> {
        self.key_id.as_deref()
    }

    fn verify(&self, base: &[u8], sig: &[u8]) -> Result<(), Error> {
        let bad = |_| Error::bad_signature();
        match &self.inner {
            VerifyingInner::Ed25519(k) => {
                let s = ed25519_dalek::Signature::from_slice(sig).map_err(bad)?;
                k.verify_strict(base, &s).map_err(bad)
            }
            VerifyingInner::P256(k) => {
                let s = p256::ecdsa::Signature::from_slice(sig).map_err(bad)?;
                k.verify(base, &s).map_err(bad)
            }
            VerifyingInner::P384(k) => {
                let s = p384::ecdsa::Signature::from_slice(sig).map_err(bad)?;
                k.verify(base, &s).map_err(bad)
            }
            VerifyingInner::Hmac(secret) => {
                let mut mac = <SimpleHmac<Sha256> as Mac>::new_from_slice(secret)
                    .map_err(|_| Error::bad_signature())?;
                mac.update(base);
                // Constant-time comparison (hmac's verify_slice uses subtle).
                mac.verify_slice(sig).map_err(|_| Error::bad_signature())
            }
            #[cfg(feature = "rsa")]
            VerifyingInner::RsaPss(k) => {
                let s = rsa::pss::Signature::try_from(sig).map_err(bad)?;
                k.verify(base, &s).map_err(bad)
            }
            #[cfg(feature = "rsa")]
            VerifyingInner::RsaV15(k) => {
                let s = rsa::pkcs1v15::Signature::try_from(sig).map_err(bad)?;
                k.verify(base, &s).map_err(bad)
            }
        }
    }
}

/// Wraps any `signature::Signer` (an HSM, a KMS client, a smart card) as a [`Signer`].
///
/// `S` is the signature type; its `to_bytes()` must be the RFC 9421 wire form (for
/// ECDSA that is `r‖s`, which is what `p256::ecdsa::Signature` produces).
pub struct ExternalSigner<T, S> {
    signer: T,
    algorithm: Algorithm,
    key_id: Option<String>,
    _sig: PhantomData<fn() -> S>,
}

impl<T, S> ExternalSigner<T, S>
where
    T: signature::Signer<S> + Send + Sync,
    S: SignatureEncoding,
{
    /// Wraps `signer`, which signs with `algorithm`.
    pub fn new(signer: T, algorithm: Algorithm, key_id: Option<String>) -> Self {
        ExternalSigner {
            signer,
            algorithm,
            key_id,
            _sig: PhantomData,
        }
    }
}

impl<T, S> Signer for ExternalSigner<T, S>
where
    T: signature::Signer<S> + Send + Sync,
    S: SignatureEncoding,
{
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
    fn key_id(&self) -> Option<&str> {
        self.key_id.as_deref()
    }
    fn sign(&self, base: &[u8]) -> Result<Vec<u8>, Error> {
        self.signer
            .try_sign(base)
            .map(|s| s.to_vec())
            .map_err(|_| Error::new(Reason::SigningFailed, ""))
    }
}

/// Wraps any `signature::Verifier` as a [`Verifier`].
pub struct ExternalVerifier<T, S> {
    verifier: T,
    algorithm: Algorithm,
    key_id: Option<String>,
    _sig: PhantomData<fn() -> S>,
}

impl<T, S> ExternalVerifier<T, S>
where
    T: signature::Verifier<S> + Send + Sync,
    S: for<'a> TryFrom<&'a [u8]>,
{
    /// Wraps `verifier`, which verifies `algorithm`.
    pub fn new(verifier: T, algorithm: Algorithm, key_id: Option<String>) -> Self {
        ExternalVerifier {
            verifier,
            algorithm,
            key_id,
            _sig: PhantomData,
        }
    }
}

impl<T, S> Verifier for ExternalVerifier<T, S>
where
    T: signature::Verifier<S> + Send + Sync,
    S: for<'a> TryFrom<&'a [u8]>,
{
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
    fn key_id(&self) -> Option<&str> {
        self.key_id.as_deref()
    }
    fn verify(&self, base: &[u8], sig: &[u8]) -> Result<(), Error> {
        let s = S::try_from(sig).map_err(|_| Error::bad_signature())?;
        self.verifier
            .verify(base, &s)
            .map_err(|_| Error::bad_signature())
    }
}

impl<T: Signer + ?Sized> Signer for &T {
    fn algorithm(&self) -> Algorithm {
        (**self).algorithm()
    }
    fn key_id(&self) -> Option<&str> {
        (**self).key_id()
    }
    fn sign(&self, base: &[u8]) -> Result<Vec<u8>, Error> {
        (**self).sign(base)
    }
}

impl<T: Verifier + ?Sized> Verifier for &T {
    fn algorithm(&self) -> Algorithm {
        (**self).algorithm()
    }
    fn key_id(&self) -> Option<&str> {
        (**self).key_id()
    }
    fn verify(&self, base: &[u8], sig: &[u8]) -> Result<(), Error> {
        (**self).verify(base, sig)
    }
}
