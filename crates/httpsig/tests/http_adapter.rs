//! The `http::Request` / `http::Response` adapters give the same signature bases as the
//! raw-message parser, and sign / verify end to end.

use oba_httpsig::http::{add_signature, Scheme};
use oba_httpsig::*;

fn params(ids: &[&str]) -> SignatureParams {
    SignatureParams::new(ids.iter().map(|c| c.parse().unwrap()).collect())
        .unwrap()
        .with_created(1618884473)
        .unwrap()
}

#[test]
fn request_base_matches_the_raw_message() {
    let raw = b"POST /foo?param=Value&Pet=dog HTTP/1.1\r\nHost: Example.com:443\r\nContent-Type: application/json\r\nX-Two: a\r\nX-Two: b\r\n\r\n";
    let msg = Message::parse(raw).unwrap();
    let mut req = ::http::Request::post("/foo?param=Value&Pet=dog")
        .header("host", "Example.com:443")
        .header("content-type", "application/json")
        .header("x-two", "a")
        .header("x-two", "b")
        .body(())
        .unwrap();
    req.extensions_mut().insert(Scheme("https".into()));
    let p = params(&[
        "@method",
        "@authority",
        "@scheme",
        "@target-uri",
        "@request-target",
        "@path",
        "@query",
        r#""@query-param";name="Pet""#,
        "content-type",
        "x-two",
    ]);
    let a = signature_base(&msg, None, &p).unwrap();
    let b = signature_base(&req, None, &p).unwrap();
    assert_eq!(
        String::from_utf8(a).unwrap(),
        String::from_utf8(b.clone()).unwrap()
    );
    let b = String::from_utf8(b).unwrap();
    assert!(b.contains("\"@authority\": example.com\n"), "{b}");
    assert!(
        b.contains("\"@target-uri\": https://example.com/foo?param=Value&Pet=dog\n"),
        "{b}"
    );
    assert!(b.contains("\"x-two\": a, b\n"), "{b}");
}

#[test]
fn scheme_is_never_guessed() {
    let req = ::http::Request::get("/x")
        .header("host", "a.example")
        .body(())
        .unwrap();
    let err = signature_base(&req, None, &params(&["@scheme"])).unwrap_err();
    assert_eq!(err.reason(), Reason::MissingComponent);
    let http_req = ::http::Request::get("http://a.example:80/x")
        .body(())
        .unwrap();
    let base = signature_base(&http_req, None, &params(&["@scheme", "@authority"])).unwrap();
    assert!(String::from_utf8(base)
        .unwrap()
        .starts_with("\"@scheme\": http\n\"@authority\": a.example\n"));
}

#[test]
fn response_with_related_request_signs_and_verifies() {
    let key = SigningKey::generate(Algorithm::EcdsaP256Sha256).unwrap();
    let req = ::http::Request::post("https://example.com/foo")
        .body(())
        .unwrap();
    let mut resp = ::http::Response::builder()
        .status(503)
        .header("content-type", "application/json")
        .body(())
        .unwrap();
    let p = params(&[
        "@status",
        "content-type",
        r#""@method";req"#,
        r#""@authority";req"#,
    ]);
    let sig = sign(&resp, Some(&req), "reqres", p, &key).unwrap();
    add_signature(resp.headers_mut(), &sig).unwrap();
    let ok = verify(
        &resp,
        Some(&req),
        Some("reqres"),
        &key.verifying_key(),
        &Policy::default(),
        1618884473,
    )
    .unwrap();
    assert_eq!(ok.algorithm, Algorithm::EcdsaP256Sha256);
    // Without the request the `;req` components cannot be rebuilt.
    let err = verify(
        &resp,
        None,
        Some("reqres"),
        &key.verifying_key(),
        &Policy::default(),
        1618884473,
    )
    .unwrap_err();
    assert_eq!(err.reason(), Reason::MissingComponent);
    // Another request (different method) breaks it.
    let other = ::http::Request::get("https://example.com/foo")
        .body(())
        .unwrap();
    let err = verify(
        &resp,
        Some(&other),
        Some("reqres"),
        &key.verifying_key(),
        &Policy::default(),
        1618884473,
    )
    .unwrap_err();
    assert_eq!(err.reason(), Reason::BadSignature);
    // @status on a request, @method on a response: invalid components.
    assert_eq!(
        signature_base(&req, None, &params(&["@status"]))
            .unwrap_err()
            .reason(),
        Reason::InvalidComponent
    );
    assert_eq!(
        signature_base(&resp, None, &params(&["@method"]))
            .unwrap_err()
            .reason(),
        Reason::InvalidComponent
    );
}
