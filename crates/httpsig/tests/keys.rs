//! Keys: any `signature::Signer` / `Verifier` plugs in (HSM/KMS), PEM and JWK forms of
//! every algorithm agree, and invalid key material is refused.

use oba_httpsig::jwk::Jwk;
use oba_httpsig::*;

fn msg() -> Message {
    Message::request("GET", "/x?y=1")
        .unwrap()
        .with_header("Host", "example.com")
}

fn params() -> SignatureParams {
    SignatureParams::new(vec![
        Component::derived(Derived::Authority),
        Component::derived(Derived::Query),
    ])
    .unwrap()
    .with_created(1000)
    .unwrap()
}

#[test]
fn external_signer_and_verifier_interoperate_with_built_in_keys() {
    // An "HSM" signer: any signature::Signer.
    let dalek = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let hsm = ExternalSigner::<_, ed25519_dalek::Signature>::new(
        dalek.clone(),
        Algorithm::Ed25519,
        Some("hsm-1".into()),
    );
    let sig = sign(&msg(), None, "sig1", params(), &hsm).unwrap();
    let m = msg()
        .with_header("Signature-Input", sig.signature_input())
        .with_header("Signature", sig.signature());
    // Verified by the built-in key ...
    let builtin = SigningKey::ed25519(&[7u8; 32]).unwrap().verifying_key();
    verify(&m, None, Some("sig1"), &builtin, &Policy::default(), 1000).unwrap();
    // ... and by an external verifier.
    let ext = ExternalVerifier::<_, ed25519_dalek::Signature>::new(
        dalek.verifying_key(),
        Algorithm::Ed25519,
        None,
    );
    verify(&m, None, Some("sig1"), &ext, &Policy::default(), 1000).unwrap();

    // ECDSA through the traits: r‖s on the wire, not DER.
    let p = p256::ecdsa::SigningKey::from_slice(&[9u8; 32]).unwrap();
    let hsm = ExternalSigner::<_, p256::ecdsa::Signature>::new(
        p.clone(),
        Algorithm::EcdsaP256Sha256,
        None,
    );
    let sig = sign(&msg(), None, "sig1", params(), &hsm).unwrap();
    assert_eq!(sig.bytes().len(), 64);
    let m = msg()
        .with_header("Signature-Input", sig.signature_input())
        .with_header("Signature", sig.signature());
    let ext = ExternalVerifier::<_, p256::ecdsa::Signature>::new(
        *p.verifying_key(),
        Algorithm::EcdsaP256Sha256,
        None,
    );
    verify(&m, None, Some("sig1"), &ext, &Policy::default(), 1000).unwrap();
    // A DER signature is refused as a bad signature.
    let der: p256::ecdsa::DerSignature = p256::ecdsa::Signature::from_slice(sig.bytes())
        .unwrap()
        .to_der();
    let base = signature_base(&msg(), None, sig.params()).unwrap();
    let point = p.verifying_key().to_encoded_point(false);
    let builtin = VerifyingKey::ecdsa_p256_sec1(point.as_bytes()).unwrap();
    assert!(builtin
        .verify(&base, der.as_bytes())
        .unwrap_err()
        .is_bad_signature());
}

#[test]
fn every_algorithm_round_trips_through_jwk_and_pem() {
    use p256::pkcs8::{EncodePrivateKey, EncodePublicKey};
    let rfc: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../test-vectors/rfc9421-vectors.json"
        ))
        .unwrap(),
    )
    .unwrap();
    for alg in Algorithm::ALL {
        // RSA key generation is slow in debug builds: use the RFC's RSA keys.
        let jwk = match alg {
            Algorithm::RsaPssSha512 | Algorithm::RsaV15Sha256 => {
                let mut j =
                    Jwk::parse(&rfc["keys"]["test-key-rsa-pss"]["jwk"].to_string()).unwrap();
                j.alg = Some(alg.jose_name().into());
                j
            }
            _ => Jwk::generate(alg).unwrap(),
        };
        let key = jwk.signing_key(None).unwrap();
        assert_eq!(key.algorithm(), alg);
        let base = b"signature base";
        let s = key.sign(base).unwrap();
        let verifying = if alg == Algorithm::HmacSha256 {
            jwk.verifying_key(None).unwrap()
        } else {
            jwk.public().unwrap().verifying_key(None).unwrap()
        };
        verifying.verify(base, &s).unwrap();
        assert!(verifying.verify(b"other base", &s).is_err());
        // PEM of the same key (asymmetric ones).
        let pems: Option<(String, String)> = match alg {
            Algorithm::Ed25519 => {
                let d = ed25519_dalek::SigningKey::from_bytes(&to32(&jwk.d));
                Some((
                    d.to_pkcs8_pem(Default::default()).unwrap().to_string(),
                    d.verifying_key()
                        .to_public_key_pem(Default::default())
                        .unwrap(),
                ))
            }
            Algorithm::EcdsaP256Sha256 => {
                let d = p256::ecdsa::SigningKey::from_slice(&b64(&jwk.d)).unwrap();
                Some((
                    d.to_pkcs8_pem(Default::default()).unwrap().to_string(),
                    d.verifying_key()
                        .to_public_key_pem(Default::default())
                        .unwrap(),
                ))
            }
            Algorithm::EcdsaP384Sha384 => {
                let d = p384::ecdsa::SigningKey::from_slice(&b64(&jwk.d)).unwrap();
                Some((
                    d.to_pkcs8_pem(Default::default()).unwrap().to_string(),
                    d.verifying_key()
                        .to_public_key_pem(Default::default())
                        .unwrap(),
                ))
            }
            _ => None,
        };
        if let Some((private_pem, public_pem)) = pems {
            let k = SigningKey::from_pem(&private_pem, None).unwrap();
            assert_eq!(k.algorithm(), alg);
            let v = VerifyingKey::from_pem(&public_pem, None).unwrap();
            v.verify(base, &k.sign(base).unwrap()).unwrap();
            v.verify(base, &s).unwrap();
            // A PEM asked for as another algorithm is refused.
            assert!(VerifyingKey::from_pem(&public_pem, Some(Algorithm::RsaPssSha512)).is_err());
        }
    }
}

fn b64(v: &Option<String>) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(v.as_ref().unwrap())
        .unwrap()
}

fn to32(v: &Option<String>) -> [u8; 32] {
    b64(v).try_into().unwrap()
}

#[test]
fn invalid_key_material_is_refused() {
    assert_eq!(
        SigningKey::ed25519(&[1u8; 31]).unwrap_err().reason(),
        Reason::InvalidKey
    );
    assert!(SigningKey::ecdsa_p256(&[0u8; 32]).is_err(), "zero scalar");
    assert!(
        SigningKey::hmac_sha256(&[1u8; 16]).is_err(),
        "short HMAC secret"
    );
    assert!(
        VerifyingKey::ed25519(&[0u8; 32]).is_err(),
        "small-order point"
    );
    assert!(
        VerifyingKey::ecdsa_p256_sec1(&[4u8; 65]).is_err(),
        "not on the curve"
    );
    assert!(VerifyingKey::from_pem(
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----",
        None
    )
    .is_err());
    // A JWK whose public and private halves disagree.
    let mut a = Jwk::generate(Algorithm::Ed25519).unwrap();
    let b = Jwk::generate(Algorithm::Ed25519).unwrap();
    a.x = b.x.clone();
    assert!(a.signing_key(None).is_err());
    // Keys never print their material.
    let k = SigningKey::hmac_sha256(&[0x41u8; 32]).unwrap();
    assert!(!format!("{k:?}").contains("AAAA"));
    assert!(!format!("{:?}", Jwk::generate(Algorithm::Ed25519).unwrap()).contains("\"d\""));
}
