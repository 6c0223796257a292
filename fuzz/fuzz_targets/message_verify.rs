//! Arbitrary HTTP/1.1 messages: parse; for every signature found, verifying it (with the
//! RFC 9421 B.1.4 Ed25519 key and the B.1.5 HMAC secret, default policy, fixed time) and
//! building its signature base must return, never panic.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use oba_httpsig::{signature_base, signatures, verify, Message, Policy, VerifyingKey};

/// Seven seconds after `created` of the RFC 9421 appendix B vectors.
const NOW: i64 = 1_618_884_480;

/// test-key-ed25519 (RFC 9421 B.1.4), raw public key.
const ED25519: [u8; 32] = [
    0x26, 0xb4, 0x0b, 0x8f, 0x93, 0xff, 0xf3, 0xd8, 0x97, 0x11, 0x2f, 0x7e, 0xbc, 0x58, 0x2b, 0x23,
    0x2d, 0xbd, 0x72, 0x51, 0x7d, 0x08, 0x2f, 0xe8, 0x3c, 0xfb, 0x30, 0xdd, 0xce, 0x43, 0xd1, 0xbb,
];

/// test-shared-secret (RFC 9421 B.1.5).
const SECRET: [u8; 64] = [
    0xbb, 0x3b, 0xc9, 0x7c, 0x1e, 0x2e, 0xdc, 0xdd, 0x09, 0xcb, 0x84, 0xfb, 0x35, 0x9e, 0xf9, 0x30,
    0x35, 0x5c, 0xaf, 0xcc, 0xd2, 0x4c, 0x89, 0xde, 0x74, 0x9b, 0x64, 0x81, 0xcb, 0xb8, 0xe9, 0x85,
    0xb8, 0x5c, 0x1c, 0xb3, 0x34, 0x98, 0xf1, 0x05, 0xdb, 0x63, 0x52, 0x47, 0x49, 0x3c, 0x1b, 0x5b,
    0x98, 0x78, 0x48, 0x0e, 0x2e, 0xa9, 0x72, 0x5f, 0x23, 0xb1, 0xab, 0x23, 0x95, 0x33, 0x2d, 0x0d,
];

static KEYS: LazyLock<[VerifyingKey; 2]> = LazyLock::new(|| {
    [
        VerifyingKey::ed25519(&ED25519).expect("RFC Ed25519 key"),
        VerifyingKey::hmac_sha256(&SECRET).expect("RFC HMAC secret"),
    ]
});

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = Message::parse(data) else {
        return;
    };
    let Ok(entries) = signatures(&msg) else {
        return;
    };
    let policy = Policy::default();
    for (label, entry) in &entries {
        for key in KEYS.iter() {
            let _ = verify(&msg, None, Some(label), key, &policy, NOW);
            let _ = verify(&msg, Some(&msg), Some(label), key, &policy, NOW);
        }
        if let Ok(e) = entry {
            let _ = signature_base(&msg, None, &e.params);
            let _ = signature_base(&msg, Some(&msg), &e.params);
        }
    }
});
