//! `Accept-Signature`: parse, serialise, parse again: the same requests.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oba_httpsig::accept::{parse_accept_signature, serialize_accept_signature};

fuzz_target!(|data: &[u8]| {
    let Ok(Ok(requests)) = std::str::from_utf8(data).map(parse_accept_signature) else {
        return;
    };
    let wire = serialize_accept_signature(&requests);
    let again = parse_accept_signature(&wire).expect("serialised Accept-Signature parses");
    assert_eq!(again, requests, "field {wire:?}");
});
