//! `Signature`: parse; every member serialised again must parse to the same label and
//! bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oba_httpsig::{parse_signature, signature_member};

fuzz_target!(|data: &[u8]| {
    let Ok(parsed) = parse_signature(data) else {
        return;
    };
    let mut members = Vec::with_capacity(parsed.len());
    for (label, sig) in &parsed {
        let member = signature_member(label, sig);
        let again = parse_signature(member.as_bytes()).expect("serialised member parses");
        assert_eq!(again, [(label.clone(), sig.clone())], "member {member:?}");
        members.push(member);
    }
    let whole = members.join(", ");
    assert_eq!(
        parse_signature(whole.as_bytes()).ok(),
        Some(parsed),
        "field {whole:?}"
    );
});
