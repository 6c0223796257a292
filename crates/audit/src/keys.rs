//! The key that signs checkpoints, and the keys a verifier trusts.

use std::fmt;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use oba_httpsig::jwk::{Jwk, JwkSet};
use oba_httpsig::{Algorithm, Signer, Verifier};

use crate::error::{AuditError, Result};
use crate::record::AuditRecord;

/// Signs checkpoints: any oba-httpsig [`Signer`] (a JWK, an HSM, a KMS) with the key id
/// written into each checkpoint (`sig_keyid`).
#[derive(Clone)]
pub struct CheckpointSigner {
    signer: Arc<dyn Signer>,
    keyid: String,
}

impl fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("CheckpointSigner")
            .field("algorithm", &self.signer.algorithm())
            .field("keyid", &self.keyid)
            .finish_non_exhaustive()
    }
}

impl CheckpointSigner {
    /// The private JWK of the gateway. The key id is the RFC 7638 thumbprint (for an
    /// `oct` key, whose thumbprint would publish a hash of the secret: its `kid`, which
    /// must be present).
    pub fn from_jwk(jwk: &Jwk) -> Result<Self> {
        let key = jwk.signing_key(None)?;
        let keyid = if key.algorithm().is_symmetric() {
            jwk.kid
                .clone()
                .ok_or_else(|| AuditError::Key("an oct JWK needs a \"kid\"".into()))?
        } else {
            jwk.thumbprint()?
        };
        Ok(Self::new(key, keyid))
    }

    /// Any signer with the key id verifiers will look it up by.
    pub fn new(signer: impl Signer + 'static, keyid: impl Into<String>) -> Self {
        CheckpointSigner {
            signer: Arc::new(signer),
            keyid: keyid.into(),
        }
    }

    /// The key id.
    pub fn keyid(&self) -> &str {
        &self.keyid
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.signer.algorithm()
    }

    /// Sets `sig_alg` and `sig_keyid`, computes the hash, then signs it.
    pub(crate) fn sign_checkpoint(&self, record: &mut AuditRecord) -> Result<()> {
        record.sig_alg = Some(self.algorithm().name().to_owned());
        record.sig_keyid = Some(self.keyid.clone());
        record.hash = record.compute_hash();
        let sig = self.signer.sign(&record.signing_input())?;
        record.sig = Some(B64URL.encode(sig));
        Ok(())
    }
}

/// Why a checkpoint did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SigFailure {
    /// No trusted key has that id.
    UnknownKey,
    /// Missing, undecodable or wrong signature, or an algorithm that is not the key's.
    Bad,
}

/// The public keys a verifier accepts checkpoint signatures from, looked up by
/// `sig_keyid` (a key's RFC 7638 thumbprint or its `kid`).
#[derive(Default)]
pub struct TrustedKeys {
    keys: Vec<(Vec<String>, Box<dyn Verifier>)>,
}

impl fmt::Debug for TrustedKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|(ids, _)| ids))
            .finish()
    }
}

impl TrustedKeys {
    /// No keys.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts a JWK (public, or private: only its public part is used), under its
    /// thumbprint and its `kid`.
    pub fn add_jwk(&mut self, jwk: &Jwk) -> Result<()> {
        let key = jwk.verifying_key(None)?;
        let mut ids = Vec::with_capacity(2);
        if !key.algorithm().is_symmetric() {
            ids.push(jwk.thumbprint()?);
        }
        if let Some(kid) = &jwk.kid {
            if !ids.contains(kid) {
                ids.push(kid.clone());
            }
        }
        if ids.is_empty() {
            return Err(AuditError::Key(
                "the key has neither a thumbprint nor a kid".into(),
            ));
        }
        self.keys.push((ids, Box::new(key)));
        Ok(())
    }

    /// Trusts every usable key of a JWK Set (e.g. the gateway's
    /// `/.well-known/jwks.json`); returns how many were added. Keys that cannot verify
    /// (an RSA key without `alg`, an unknown curve) are skipped.
    pub fn add_jwk_set(&mut self, set: &JwkSet) -> usize {
        set.keys.iter().filter(|k| self.add_jwk(k).is_ok()).count()
    }

    /// Trusts any verifier under `keyid`.
    pub fn add(&mut self, keyid: impl Into<String>, key: impl Verifier + 'static) {
        self.keys.push((vec![keyid.into()], Box::new(key)));
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when no key is trusted (every checkpoint is then an unknown key).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks a checkpoint's signature.
    pub(crate) fn check(&self, record: &AuditRecord) -> std::result::Result<(), SigFailure> {
        let keyid = record.sig_keyid.as_deref().ok_or(SigFailure::Bad)?;
        let key = self
            .keys
            .iter()
            .find(|(ids, _)| ids.iter().any(|id| id == keyid))
            .map(|(_, k)| k)
            .ok_or(SigFailure::UnknownKey)?;
        if record.sig_alg.as_deref() != Some(key.algorithm().name()) {
            return Err(SigFailure::Bad);
        }
        let sig = record
            .sig
            .as_deref()
            .and_then(|s| B64URL.decode(s).ok())
            .ok_or(SigFailure::Bad)?;
        key.verify(&record.signing_input(), &sig)
            .map_err(|_| SigFailure::Bad)
    }
}
