//! RFC 9530 Digest Fields checked against every digest vector in
//! `test-vectors/rfc9421-vectors.json`: one named test per
//! `digest.content_digest_examples` entry, one per `Want-*-Digest` example
//! line, and the `Content-Digest` headers of the RFC 9421 example messages.
//!
//! The deprecated algorithms of RFC 9530 Appendix D (`md5`, `sha`,
//! `unixsum`, `unixcksum`, `adler`, `crc32c`) are not implemented by the
//! crate. Their vectors are checked with small reference implementations in
//! this file, and the crate is checked to keep but ignore such members.

use std::sync::OnceLock;

use base64::Engine as _;
use oba_httpsig::digest::{
    Digest, DigestAlgorithm, DigestError, DigestField, MultiHasher, WantDigest,
};
use serde_json::Value;

const VECTORS_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../test-vectors/rfc9421-vectors.json"
);

fn vectors() -> &'static Value {
    static VECTORS: OnceLock<Value> = OnceLock::new();
    VECTORS.get_or_init(|| {
        let text = std::fs::read_to_string(VECTORS_PATH)
            .unwrap_or_else(|e| panic!("reading {VECTORS_PATH}: {e}"));
        serde_json::from_str(&text).expect("vectors file is valid JSON")
    })
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn hex_decode(s: &str) -> Vec<u8> {
    assert_eq!(s.len() % 2, 0, "odd-length hex {s:?}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("valid hex"))
        .collect()
}

fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string in {v}"))
}

/// A printed or computed value, with or without the Byte Sequence colons.
fn bare_base64(v: &str) -> &str {
    v.strip_prefix(':')
        .and_then(|v| v.strip_suffix(':'))
        .unwrap_or(v)
}

// ---------------------------------------------------------------------------
// Reference implementations of the deprecated Appendix D algorithms.
// ---------------------------------------------------------------------------

fn md_pad(data: &[u8], big_endian_len: bool) -> Vec<u8> {
    let bits = (data.len() as u64).wrapping_mul(8);
    let mut m = data.to_vec();
    m.push(0x80);
    while m.len() % 64 != 56 {
        m.push(0);
    }
    m.extend_from_slice(&if big_endian_len {
        bits.to_be_bytes()
    } else {
        bits.to_le_bytes()
    });
    m
}

fn md5(data: &[u8]) -> Vec<u8> {
    const S: [u32; 16] = [7, 12, 17, 22, 5, 9, 14, 20, 4, 11, 16, 23, 6, 10, 15, 21];
    let k: Vec<u32> = (0..64)
        .map(|i| (f64::from(i + 1).sin().abs() * 4_294_967_296.0) as u32)
        .collect();
    let mut h: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];
    for chunk in md_pad(data, false).chunks(64) {
        let m: Vec<u32> = chunk
            .chunks(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect();
        let [mut a, mut b, mut c, mut d] = h;
        for i in 0..64 {
            let (f, g) = match i / 16 {
                0 => ((b & c) | (!b & d), i),
                1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
                2 => (b ^ c ^ d, (3 * i + 5) % 16),
                _ => (c ^ (b | !d), (7 * i) % 16),
            };
            let f = f.wrapping_add(a).wrapping_add(k[i]).wrapping_add(m[g]);
            a = d;
            d = c;
            c = b;
            b = b.wrapping_add(f.rotate_left(S[(i / 16) * 4 + i % 4]));
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d]) {
            *x = x.wrapping_add(y);
        }
    }
    h.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn sha1(data: &[u8]) -> Vec<u8> {
    let mut h: [u32; 5] = [
        0x6745_2301,
        0xEFCD_AB89,
        0x98BA_DCFE,
        0x1032_5476,
        0xC3D2_E1F0,
    ];
    for chunk in md_pad(data, true).chunks(64) {
        let mut w = [0u32; 80];
        for (i, word) in chunk.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i / 20 {
                0 => ((b & c) | (!b & d), 0x5A82_7999),
                1 => (b ^ c ^ d, 0x6ED9_EBA1),
                2 => ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC),
                _ => (b ^ c ^ d, 0xCA62_C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    h.iter().flat_map(|x| x.to_be_bytes()).collect()
}

/// BSD `sum`: 16-bit rotating checksum.
fn unixsum(data: &[u8]) -> Vec<u8> {
    let mut s: u16 = 0;
    for &b in data {
        s = s.rotate_right(1).wrapping_add(u16::from(b));
    }
    s.to_be_bytes().to_vec()
}

/// POSIX `cksum`: CRC-32 (0x04C11DB7, MSB first) over the data and its length.
fn unixcksum(data: &[u8]) -> Vec<u8> {
    fn step(crc: u32, byte: u8) -> u32 {
        let mut crc = crc ^ (u32::from(byte) << 24);
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04C1_1DB7
            } else {
                crc << 1
            };
        }
        crc
    }
    let mut crc = data.iter().fold(0, |crc, &b| step(crc, b));
    let mut len = data.len();
    while len != 0 {
        crc = step(crc, (len & 0xff) as u8);
        len >>= 8;
    }
    (!crc).to_be_bytes().to_vec()
}

fn adler32(data: &[u8]) -> Vec<u8> {
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in data {
        a = (a + u32::from(byte)) % 65521;
        b = (b + a) % 65521;
    }
    ((b << 16) | a).to_be_bytes().to_vec()
}

fn crc32c(data: &[u8]) -> Vec<u8> {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    (!crc).to_be_bytes().to_vec()
}

/// The Appendix D reference implementation for a deprecated algorithm name.
fn deprecated_digest(name: &str, data: &[u8]) -> Vec<u8> {
    match name {
        "md5" => md5(data),
        "sha" => sha1(data),
        "unixsum" => unixsum(data),
        "unixcksum" => unixcksum(data),
        "adler" => adler32(data),
        "crc32c" => crc32c(data),
        other => panic!("no reference implementation for {other:?}"),
    }
}

#[test]
fn reference_implementations_known_answers() {
    let hex = |v: Vec<u8>| v.iter().map(|b| format!("{b:02x}")).collect::<String>();
    assert_eq!(hex(md5(b"")), "d41d8cd98f00b204e9800998ecf8427e");
    assert_eq!(
        hex(md5(b"The quick brown fox jumps over the lazy dog")),
        "9e107d9d372bb6826bd81d3542a419d6"
    );
    assert_eq!(
        hex(sha1(b"abc")),
        "a9993e364706816aba3e25717850c26c9cd0d89d"
    );
    assert_eq!(
        hex(sha1(&[b'a'; 1000])),
        "291e9a6c66994949b57ba5e650361e98fc36b1ba"
    );
    assert_eq!(hex(crc32c(b"123456789")), "e3069283");
    assert_eq!(hex(adler32(b"Wikipedia")), "11e60398");
    assert_eq!(hex(unixcksum(b"")), "ffffffff");
    assert_eq!(
        u32::from_str_radix(&hex(unixcksum(b"123456789")), 16),
        Ok(930_766_865)
    );
}

// ---------------------------------------------------------------------------
// digest.content_digest_examples
// ---------------------------------------------------------------------------

fn content_digest_example(id: &str) -> &'static Value {
    vectors()["digest"]["content_digest_examples"]
        .as_array()
        .expect("content_digest_examples is an array")
        .iter()
        .find(|e| e["id"] == id)
        .unwrap_or_else(|| panic!("no content_digest_examples entry with id {id:?}"))
}

fn example_input(example: &Value) -> Vec<u8> {
    let input = if let Some(s) = example["input_utf8"].as_str() {
        s.as_bytes().to_vec()
    } else {
        hex_decode(str_field(example, "input_hex"))
    };
    if let Some(len) = example["input_length"].as_u64() {
        assert_eq!(input.len() as u64, len, "input_length");
    }
    input
}

fn check_content_digest_example(id: &str) {
    let example = content_digest_example(id);
    let input = example_input(example);
    // "sha-512", or "md5 (deprecated)" and the like.
    let name = str_field(example, "algorithm")
        .split_whitespace()
        .next()
        .expect("algorithm name");
    let computed_value = bare_base64(str_field(example, "computed_value"));
    let printed_value = bare_base64(str_field(example, "printed_value"));
    let matches = example["matches"].as_bool().expect("matches is a boolean");

    let supported = DigestAlgorithm::from_name(name);
    let ours = match supported {
        Some(alg) => {
            assert_eq!(alg.name(), name);
            let one_shot = alg.digest(&input);
            // Incremental hashing, split in the middle, gives the same.
            let mut multi = MultiHasher::new(&[alg]);
            let (head, tail) = input.split_at(input.len() / 2);
            multi.update(head);
            multi.update(tail);
            assert_eq!(multi.finalize(), [Digest::new(alg, one_shot.clone())]);
            one_shot
        }
        None => deprecated_digest(name, &input),
    };
    let ours = b64(&ours);
    assert_eq!(ours, computed_value, "{id}: digest of the input");

    let printed_field = format!("{name}=:{printed_value}:");
    if matches {
        assert_eq!(ours, printed_value, "{id}: digest equals the printed value");
        let field = DigestField::parse(&printed_field)
            .unwrap_or_else(|e| panic!("{id}: {printed_field:?} does not parse: {e}"));
        assert_eq!(field.to_header_value(), printed_field, "{id}: round trip");
        match supported {
            Some(alg) => {
                assert_eq!(field.verify(&input), Ok(alg), "{id}");
                assert_eq!(field, DigestField::compute(&[alg], &input), "{id}");
            }
            None => {
                // Kept, but a field with only a deprecated algorithm cannot
                // be verified.
                assert_eq!(field.get(name).map(b64).as_deref(), Some(printed_value));
                assert_eq!(
                    field.verify(&input),
                    Err(DigestError::NoSupportedAlgorithm),
                    "{id}"
                );
            }
        }
    } else {
        assert_ne!(ours, printed_value, "{id}: the printed value is an erratum");
        match DigestField::parse(&printed_field) {
            // For example the "==" padding typo on a 32-byte value.
            Err(DigestError::Malformed { .. }) => {}
            Err(e) => panic!("{id}: unexpected error {e:?}"),
            Ok(field) => {
                let alg = supported.expect("errata vectors use supported algorithms");
                assert_eq!(
                    field.verify(&input),
                    Err(DigestError::Mismatch { algorithm: alg }),
                    "{id}: the printed value must not verify"
                );
            }
        }
    }
}

/// One `#[test]` for one `content_digest_examples` id.
macro_rules! vector_test {
    ($name:ident, $id:literal) => {
        #[test]
        fn $name() {
            check_content_digest_example($id);
        }
    };
}

/// Expands each `name => "id"` into a [`vector_test!`] and records the ids.
macro_rules! vector_tests {
    ($($name:ident => $id:literal,)+) => {
        $(vector_test!($name, $id);)+
        const LISTED_IDS: &[&str] = &[$($id),+];
    };
}

vector_tests! {
    rfc9530_2_a_sha512 => "9530-2-a",
    rfc9530_2_b_sha256_erratum => "9530-2-b",
    rfc9530_b1 => "9530-B.1",
    rfc9530_b2_empty => "9530-B.2",
    rfc9530_b3_partial => "9530-B.3",
    rfc9530_b4_br_erratum => "9530-B.4-br",
    rfc9530_b6_br_512_erratum => "9530-B.6-br-512",
    rfc9530_b7_req => "9530-B.7-req",
    rfc9530_b7_res => "9530-B.7-res",
    rfc9530_b8_res => "9530-B.8-res",
    rfc9530_b10 => "9530-B.10",
    rfc9530_padding_typo => "9530-padding-typo",
    rfc9530_d_sha512 => "9530-D-sha-512",
    rfc9530_d_sha256 => "9530-D-sha-256",
    rfc9530_d_md5 => "9530-D-md5",
    rfc9530_d_sha => "9530-D-sha",
    rfc9530_d_unixsum => "9530-D-unixsum",
    rfc9530_d_unixcksum => "9530-D-unixcksum",
    rfc9530_d_adler => "9530-D-adler",
    rfc9530_d_crc32c => "9530-D-crc32c",
}

#[test]
fn every_content_digest_example_has_a_test() {
    let ids: Vec<&str> = vectors()["digest"]["content_digest_examples"]
        .as_array()
        .expect("content_digest_examples is an array")
        .iter()
        .map(|e| str_field(e, "id"))
        .collect();
    assert_eq!(ids, LISTED_IDS);
}

#[test]
fn padding_typo_is_rejected_by_the_parser() {
    let example = content_digest_example("9530-padding-typo");
    let printed = bare_base64(str_field(example, "printed_value"));
    assert!(printed.ends_with("=="));
    assert!(matches!(
        DigestField::parse(&format!("sha-256=:{printed}:")),
        Err(DigestError::Malformed { .. })
    ));
}

#[test]
fn section_2_two_member_example() {
    // RFC 9530 section 2 prints sha-256 (the Brotli digest) next to sha-512
    // of the identity content: as a whole it does not verify, but a policy
    // that only accepts sha-512 sees a good digest.
    let input = example_input(content_digest_example("9530-2-a"));
    let sha256 = bare_base64(str_field(
        content_digest_example("9530-2-b"),
        "printed_value",
    ));
    let sha512 = bare_base64(str_field(
        content_digest_example("9530-2-a"),
        "printed_value",
    ));
    let field = DigestField::parse(&format!("sha-256=:{sha256}:,sha-512=:{sha512}:")).unwrap();
    assert_eq!(field.len(), 2);
    assert_eq!(
        field.verify(&input),
        Err(DigestError::Mismatch {
            algorithm: DigestAlgorithm::Sha256
        })
    );
    assert_eq!(
        field.verify_with(&input, &[DigestAlgorithm::Sha512]),
        Ok(DigestAlgorithm::Sha512)
    );
}

// ---------------------------------------------------------------------------
// digest.want_digest_examples.lines
// ---------------------------------------------------------------------------

fn check_want_line(index: usize, expected: Option<DigestAlgorithm>) {
    let line = vectors()["digest"]["want_digest_examples"]["lines"][index]
        .as_str()
        .unwrap_or_else(|| panic!("no want_digest_examples line {index}"));
    let (name, value) = line.split_once(": ").expect("Name: value");
    assert!(
        name == "Want-Content-Digest" || name == "Want-Repr-Digest",
        "{name}"
    );
    let want = WantDigest::parse(value).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    assert_eq!(want.to_header_value(), value, "round trip");
    assert_eq!(want.preferred(DigestAlgorithm::ALL), expected, "{line:?}");
    for (alg_name, weight) in want.prefs() {
        assert!(weight <= 10);
        // Offering only one algorithm: it is chosen when its weight is not 0.
        if let Some(alg) = DigestAlgorithm::from_name(alg_name) {
            assert_eq!(
                want.preferred(&[alg]),
                (weight > 0).then_some(alg),
                "{line:?}"
            );
        }
    }
}

/// One `#[test]` for one `want_digest_examples.lines` entry.
macro_rules! want_test {
    ($name:ident, $index:literal, $expected:expr) => {
        #[test]
        fn $name() {
            check_want_line($index, $expected);
        }
    };
}

want_test!(want_repr_digest_sha256, 0, Some(DigestAlgorithm::Sha256));
want_test!(want_repr_digest_weighted, 1, Some(DigestAlgorithm::Sha256));
want_test!(want_content_digest_sha256, 2, Some(DigestAlgorithm::Sha256));
want_test!(
    want_content_digest_weighted,
    3,
    Some(DigestAlgorithm::Sha256)
);

#[test]
fn every_want_line_has_a_test() {
    let lines = vectors()["digest"]["want_digest_examples"]["lines"]
        .as_array()
        .expect("lines is an array");
    assert_eq!(lines.len(), 4);
}

#[test]
fn want_weighted_example_details() {
    let want = WantDigest::parse("sha-512=3, sha-256=10, unixsum=0").unwrap();
    assert_eq!(want.weight("unixsum"), Some(0));
    assert_eq!(
        want.preferred(&[DigestAlgorithm::Sha512]),
        Some(DigestAlgorithm::Sha512)
    );
}

// ---------------------------------------------------------------------------
// RFC 9421 messages and digest.rfc9421_uses
// ---------------------------------------------------------------------------

fn header<'a>(message: &'a Value, name: &str) -> Option<&'a str> {
    message["headers"]
        .as_array()?
        .iter()
        .find(|h| h[0].as_str().is_some_and(|n| n.eq_ignore_ascii_case(name)))
        .and_then(|h| h[1].as_str())
}

fn message(name: &str) -> &'static Value {
    let m = &vectors()["messages"][name];
    assert!(m.is_object(), "no message {name:?}");
    m
}

/// Checks the message's Content-Digest against its body, in one shot and
/// streamed; returns the header value.
fn assert_content_digest_verifies(message: &Value) -> &str {
    let value = header(message, "Content-Digest").expect("Content-Digest header");
    let body = str_field(message, "body").as_bytes();
    let field = DigestField::parse(value).unwrap_or_else(|e| panic!("{value:?}: {e}"));
    assert_eq!(field.verify(body), Ok(DigestAlgorithm::Sha512), "{value}");
    let mut hasher = MultiHasher::for_field(&field).unwrap();
    for chunk in body.chunks(5) {
        hasher.update(chunk);
    }
    assert_eq!(
        field.verify_digests(&hasher.finalize()),
        Ok(DigestAlgorithm::Sha512)
    );
    assert_eq!(field.to_header_value(), value, "round trip");
    value
}

#[test]
fn test_request_content_digest_verifies() {
    assert_content_digest_verifies(message("test-request"));
}

#[test]
fn test_response_content_digest_verifies() {
    assert_content_digest_verifies(message("test-response"));
}

#[test]
fn test_response_draft_19_content_digest_does_not_verify() {
    let m = message("test-response");
    let printed = str_field(m, "content_digest_as_printed_in_draft_19");
    let field = DigestField::parse(printed).unwrap();
    assert_eq!(
        field.verify(str_field(m, "body").as_bytes()),
        Err(DigestError::Mismatch {
            algorithm: DigestAlgorithm::Sha512
        })
    );
}

/// Every message in the file that carries a Content-Digest and a body.
fn messages_with_content_digest() -> Vec<(String, &'static Value)> {
    let v = vectors();
    let mut out = Vec::new();
    for key in ["messages", "extra_messages"] {
        for (name, m) in v[key].as_object().expect("object of messages") {
            out.push((format!("{key}.{name}"), m));
        }
    }
    for (i, sv) in v["signature_vectors"]
        .as_array()
        .expect("array")
        .iter()
        .enumerate()
    {
        for key in ["message", "related_request"] {
            if sv[key].is_object() {
                out.push((format!("signature_vectors[{i}].{key}"), &sv[key]));
            }
        }
    }
    out.retain(|(_, m)| header(m, "Content-Digest").is_some());
    out
}

#[test]
fn every_message_content_digest_verifies() {
    let messages = messages_with_content_digest();
    assert!(messages.len() >= 3, "found {}", messages.len());
    for (name, m) in messages {
        assert!(
            m["body"].is_string(),
            "{name} has a Content-Digest but no body"
        );
        assert_content_digest_verifies(m);
    }
}

#[test]
fn rfc9421_uses_are_all_checked() {
    let verified: Vec<&str> = messages_with_content_digest()
        .into_iter()
        .map(|(_, m)| assert_content_digest_verifies(m))
        .collect();
    let uses = vectors()["digest"]["rfc9421_uses"]
        .as_array()
        .expect("rfc9421_uses is an array");
    assert_eq!(uses.len(), 3);
    for u in uses {
        // "... sha-512 of ...: WZDP...wew== (checked)"
        let u = u.as_str().expect("string");
        let abbreviated = u
            .rsplit(": ")
            .next()
            .and_then(|s| s.split_whitespace().next())
            .expect("abbreviated digest");
        let (head, tail) = abbreviated.split_once("...").expect("head...tail");
        assert!(
            verified
                .iter()
                .any(|v| v.contains(&format!("=:{head}")) && v.contains(&format!("{tail}:"))),
            "{u:?} does not match any verified Content-Digest"
        );
    }
}
