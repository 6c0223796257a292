//! `Content-Digest` / `Repr-Digest` and `Want-*-Digest`: parse, serialise, parse again:
//! the same value. Verifying the field against the input itself must not panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oba_httpsig::digest::{DigestField, WantDigest};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(field) = DigestField::parse(s) {
        let wire = field.to_header_value();
        assert_eq!(
            DigestField::parse(&wire).ok(),
            Some(field.clone()),
            "{wire:?}"
        );
        let _ = field.verify(data);
    }
    if let Ok(want) = WantDigest::parse(s) {
        let wire = want.to_header_value();
        assert_eq!(WantDigest::parse(&wire).ok(), Some(want), "{wire:?}");
    }
});
