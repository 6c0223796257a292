//! # The manual: design decisions and the attacks this library prevents
//!
//! This page is documentation only. It records what the library does where RFC 9421
//! leaves room, where other implementations disagree, and which attacks each choice
//! closes. Each point names the test that holds it in place.
//!
//! ## Security decisions
//!
//! **Parameters are covered in the order received.** `@signature-params` is rebuilt by
//! re-serialising the received inner list, never by writing parameters in a canonical
//! order. A verifier that reorders cannot verify signatures made elsewhere (RFC 4.3 uses
//! `created;keyid;alg;expires`, 2.3 uses `keyid;alg;created;expires`). Tests: the
//! `sig_4_3_proxy_sig` and `comp_2_3_sig_params` vectors.
//!
//! **Duplicates are errors, not "last one wins".** RFC 8941 lets a repeated dictionary
//! key silently replace the earlier one. For `Signature-Input` and `Signature` that would
//! let an attacker who can append a field line swap the parameters of a label while the
//! application logs the first. We parse through `sfv`'s visitor API to see every member
//! and refuse duplicate labels ([`Reason::DuplicateLabel`]), duplicate signature
//! parameters ([`Reason::DuplicateParameter`]) and duplicate covered components
//! ([`Reason::DuplicateComponent`]). Duplicate component parameters (`"x";sf;sf`) are
//! invalid too.
//!
//! **A covered field that is absent is an error, never an empty value.** Treating a
//! missing field as `""` would let a signature over `"x-header": ` (present, empty) verify
//! for a message without the header, and vice versa. A present empty field gives
//! `"x-empty-header": ` (vector `comp_2_1_empty`); an absent one gives
//! [`Reason::MissingComponent`]. The same holds for a missing `key` member, a missing
//! `@query-param`, and `;req` without a related request.
//!
//! **`@authority` comes from `Host` / `:authority`, normalised.** Lower-cased, with the
//! default port of the scheme removed, userinfo dropped. A server that signs an empty
//! `@authority` because its URI is in origin form signs nothing useful; we fail with
//! [`Reason::MissingComponent`] when there is no authority at all.
//!
//! **`@scheme` is never guessed.** The `http` adapter takes it from the URI or from a
//! [`crate::http::Scheme`] extension set by the server; with neither, covering `@scheme`
//! or `@target-uri` fails.
//!
//! **`@method` keeps its case**, as the RFC says (methods are case-sensitive).
//!
//! **Line breaks cannot enter the base.** A component value containing CR or LF is
//! refused, so a crafted field value cannot forge extra base lines. `@query-param`
//! values are re-encoded (the RFC's 2.2.8 rule), so `%0A` stays `%0A`; the vector
//! `comp_2_2_8_query_param_unencoded_invalid` checks the raw form is never produced.
//!
//! **Integers are bounded.** `created` and `expires` are RFC 8941 integers (at most 15
//! digits), parsed by `sfv` into `i64`; arithmetic on them saturates. `created=-1`,
//! `expires` in the far future, and 16-digit values are handled without panics (unit test
//! `extreme_integers_do_not_panic`, fuzz target `signature_input`).
//!
//! **Time is an input.** No function reads the clock; `verify` takes `now`. A policy
//! enforces `expires` always, refuses `created` in the future beyond the skew, and
//! optionally a maximum age and maximum validity.
//!
//! **The nonce check runs after the signature verified.** Otherwise an attacker could
//! burn a legitimate client's nonce with an unsigned or forged request. See
//! [`crate::NonceCheck`].
//!
//! **No oracle.** Every cryptographic failure is [`Reason::BadSignature`] with no detail:
//! wrong length, bad encoding, wrong point, wrong tag all look the same.
//!
//! **HMAC is compared in constant time** (`hmac`'s `verify_slice`, built on `subtle`),
//! and secrets shorter than 32 bytes are refused. A generated HMAC key gets a random
//! `kid`, never its thumbprint (a thumbprint of a secret is a hash of the secret).
//!
//! **ECDSA signatures are `r‖s`** (64 bytes for P-256, 96 for P-384), not DER, as RFC
//! 9421 3.3.4 and 3.3.5 require. DER input is rejected as a bad signature.
//!
//! **Ed25519 uses strict verification** (`verify_strict`): non-canonical `R`, and public
//! keys of small order, are refused, which closes signature malleability.
//!
//! **The algorithm is bound to the key.** The key decides the algorithm; an `alg`
//! parameter naming another one is [`Reason::AlgorithmMismatch`], and the policy's
//! allow-list is checked against the key's algorithm. A public key can never be used as
//! an HMAC secret: HMAC keys are a different type ([`crate::VerifyingKey::hmac_sha256`]),
//! and JWKs decide by `kty`.
//!
//! **Keys are decoded once.** [`crate::VerifyingKey`] holds the decompressed point or
//! RSA modulus; verifying does not re-parse key material.
//!
//! **Key material is never printed.** `Debug` of keys and JWKs shows algorithm and key
//! id only; private scalars are zeroised on drop where the underlying crates allow.
//!
//! ## Where implementations disagree, and what we follow
//!
//! * **Dot segments in `@path`.** Some libraries remove `.` and `..` segments, some do
//!   not. RFC 9421 2.2.6 only prescribes that an empty path becomes `/`; we take the
//!   path exactly as received (percent-encoding untouched, no dot-segment removal), so
//!   signer and verifier agree on the bytes that were actually sent.
//! * **`@query-param` encoding.** We decode as `application/x-www-form-urlencoded`
//!   (`+` is a space) and re-encode every byte outside `A-Z a-z 0-9 * - . _` as upper-case
//!   `%XX` (space as `%20`), which reproduces all three RFC 2.2.8 lines. A `%` that does
//!   not start a valid escape is kept as a literal `%` and encoded as `%25`. The `name`
//!   parameter is compared with the re-encoded name. A name that occurs several times
//!   is refused ([`Reason::InvalidComponent`]), for signer and verifier alike: RFC 9421
//!   2.2.8 says such a parameter MUST NOT be covered (some drafts said "one line per
//!   occurrence", and implementations that parse queries into maps disagree on which
//!   occurrence wins, which is exactly the ambiguity an attacker needs). Cover `@query`.
//! * **Duplicate labels.** Refused (see above) rather than last-one-wins.
//! * **Parameter order.** Received order (see above).
//! * **`sf` on a field of unknown type.** Parsed as a List, then a Dictionary, then an
//!   Item. Where a value parses as several types the serialisations agree, except that a
//!   Dictionary drops repeated keys; the List reading keeps them, so a member added to a
//!   List field is never left uncovered (found by the property tests).
//! * **`@target-uri` of an absolute-form request** is the request target as received;
//!   for origin form it is `scheme://authority` + path + query.
//! * **`@authority` of an absolute-form request** is the target's authority, which
//!   RFC 9112 3.2.2 says wins over `Host`.
//! * **Errata.** The RFC 9421 B.2 response's printed `Content-Digest` is stale; the
//!   vectors (and tests) use the corrected value, and the test
//!   `erratum_b_2_response_digest_as_printed_fails_b_2_4` checks the printed value
//!   does not verify. The 7.2.8 example prints `@signature-input`; only its first two
//!   lines are used as data. The 4.2 signature has no message and is parse-only.
//!
//! [`Reason::DuplicateLabel`]: crate::Reason::DuplicateLabel
//! [`Reason::DuplicateParameter`]: crate::Reason::DuplicateParameter
//! [`Reason::DuplicateComponent`]: crate::Reason::DuplicateComponent
//! [`Reason::MissingComponent`]: crate::Reason::MissingComponent
//! [`Reason::BadSignature`]: crate::Reason::BadSignature
//! [`Reason::AlgorithmMismatch`]: crate::Reason::AlgorithmMismatch
//! [`Reason::InvalidComponent`]: crate::Reason::InvalidComponent
