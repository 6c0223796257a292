//! `Signature-Input`: parse; every member serialised again must parse to the same
//! label and parameters, and so must the whole field.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oba_httpsig::{parse_signature_input, signature_input_member, SignatureParams};

fuzz_target!(|data: &[u8]| {
    let Ok(parsed) = parse_signature_input(data) else {
        return;
    };
    let mut members = Vec::with_capacity(parsed.len());
    for (label, params) in &parsed {
        let member = signature_input_member(label, params);
        let again = parse_signature_input(member.as_bytes()).expect("serialised member parses");
        assert_eq!(
            again,
            [(label.clone(), params.clone())],
            "member {member:?}"
        );
        let alone: SignatureParams = params.as_str().parse().expect("as_str() parses");
        assert_eq!(&alone, params, "params {:?}", params.as_str());
        members.push(member);
    }
    let whole = members.join(", ");
    assert_eq!(
        parse_signature_input(whole.as_bytes()).ok(),
        Some(parsed),
        "field {whole:?}"
    );
});
