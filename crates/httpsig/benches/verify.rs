//! Cost of our sign and verify paths against the raw signature primitives.
//!
//! `cargo bench -p oba-httpsig` runs the criterion benchmarks (one group per
//! algorithm, plus the pieces of the verify path: `parse_signature_input`,
//! `parse_signature`, `signatures`, `signature_base`, the Content-Digest check), then
//! prints `ours / raw` ratios twice: from criterion's estimates (one stack layout),
//! and from a plain loop that alternates raw and ours at 16 stack offsets and takes
//! the median over the offsets, which is what `BENCHMARKS.md` records (the speed of
//! the primitives themselves moves by up to 15 % with the stack offset, which ASLR
//! changes from one process to the next).
//!
//! The message is a realistic request, parsed once outside the timing loops:
//! `POST /api/v1/items?page=2&sort=desc` with a ~300-byte JSON body, `Content-Digest`
//! (sha-512), signed over `"@method" "@authority" "@path" "@query" "content-digest"
//! "content-type" "content-length"` with `created`, `expires`, `keyid` and `nonce`.
//! Keys are decoded once, as a verifier would. The timed sign path clones the
//! prepared `SignatureParams` (about 0.3 µs), signs, and builds both header members.
//!
//! Allocation and instruction counts (the workspace forbids `unsafe`, so no counting
//! allocator): `HTTPSIG_BENCH_ALLOC=<path>:<n>` makes the bench binary build its
//! fixtures, run only `<path>` `<n>` times and exit. Run it under
//! `valgrind --tool=dhat` (allocations) or `valgrind --tool=callgrind` (instructions)
//! for `none:0` and `<path>:100` and divide the difference by 100 (see
//! `BENCHMARKS.md`). Paths: `verify-ed25519`, `verify-p256`, `verify-digest-ed25519`,
//! `sign-ed25519`, `sign-p256`, `signatures`, `base`, `parse-input`,
//! `key-verify-ed25519` (our key's `Verifier::verify` alone), `raw-verify-ed25519`,
//! `raw-verify-base-ed25519`, `raw-verify-p256`, `raw-verify-base-p256`,
//! `raw-sign-ed25519`, `raw-sign-p256`, `raw-sign-base-ed25519`, `raw-sign-base-p256`,
//! `none`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use oba_httpsig::digest::{DigestAlgorithm, DigestField};
use oba_httpsig::{
    parse_signature, parse_signature_input, sign, signature_base, signatures, verify, Algorithm,
    Component, Derived, HttpMessage, Message, Policy, SignatureParams, SigningKey, VerifyingKey,
};

/// `created` of every signature; `NOW` is ten seconds later.
const CREATED: i64 = 1_700_000_000;
const NOW: i64 = CREATED + 10;
const LABEL: &str = "sig1";
const KEY_ID: &str = "bench-key-1";
const COMPONENTS: [&str; 7] = [
    "@method",
    "@authority",
    "@path",
    "@query",
    "content-digest",
    "content-type",
    "content-length",
];

/// A JSON body of about 300 bytes.
fn body() -> Vec<u8> {
    let body = br#"{"item":{"id":"3f7c9a52-1d4e-4b8a-9c61-0e2f5d7a8b19","name":"Widget, large (blue)","description":"A sturdy widget for benchmarking HTTP message signatures.","price":{"amount":"129.95","currency":"EUR"},"tags":["hardware","blue","large"],"stock":42,"created_by":"bench-bot"},"request_id":"req-000123"}"#;
    body.to_vec()
}

/// The request head without the signature fields (CRLF line ends, no blank line).
fn head(body: &[u8]) -> String {
    let digest = DigestField::compute(&[DigestAlgorithm::Sha512], body);
    format!(
        "POST /api/v1/items?page=2&sort=desc HTTP/1.1\r\n\
         Host: api.example.com\r\n\
         User-Agent: oba-bench/1.0 (+https://example.com/bot)\r\n\
         Accept: application/json\r\n\
         Date: Tue, 14 Nov 2023 22:13:20 GMT\r\n\
         Content-Type: application/json\r\n\
         Content-Length: {}\r\n\
         Content-Digest: {digest}\r\n",
        body.len()
    )
}

fn params() -> SignatureParams {
    let components = COMPONENTS
        .iter()
        .map(|c| c.parse())
        .collect::<Result<Vec<Component>, _>>()
        .expect("components");
    SignatureParams::new(components)
        .and_then(|p| p.with_created(CREATED))
        .and_then(|p| p.with_expires(CREATED + 300))
        .and_then(|p| p.with_keyid(KEY_ID))
        .and_then(|p| p.with_nonce("ZO3rMGxbnVWnSFPq0gLPvA"))
        .expect("params")
}

fn policy() -> Policy {
    Policy::default()
        .allow_algorithms(&[Algorithm::Ed25519, Algorithm::EcdsaP256Sha256])
        .require_component(Component::derived(Derived::Authority))
        .require_component("content-digest".parse().expect("component"))
        .max_age(300)
        .clock_skew(5)
        .require_keyid(true)
}

/// The raw primitive of one algorithm, keys decoded once.
enum Raw {
    Ed25519 {
        sk: Box<ed25519_dalek::SigningKey>,
        vk: ed25519_dalek::VerifyingKey,
    },
    P256 {
        sk: p256::ecdsa::SigningKey,
        vk: p256::ecdsa::VerifyingKey,
    },
}

impl Raw {
    fn sign(&self, msg: &[u8]) -> Vec<u8> {
        use signature::Signer as _;
        match self {
            Raw::Ed25519 { sk, .. } => sk.sign(msg).to_bytes().to_vec(),
            Raw::P256 { sk, .. } => {
                let s: p256::ecdsa::Signature = sk.sign(msg);
                s.to_bytes().to_vec()
            }
        }
    }

    /// Signs without the `Vec` the library needs for its `Signer` trait: the bare
    /// primitive, as the raw baseline.
    fn sign_bare(&self, msg: &[u8]) {
        use signature::Signer as _;
        match self {
            Raw::Ed25519 { sk, .. } => {
                black_box(sk.sign(msg));
            }
            Raw::P256 { sk, .. } => {
                let s: p256::ecdsa::Signature = sk.sign(msg);
                black_box(s);
            }
        }
    }

    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        use signature::Verifier as _;
        match self {
            Raw::Ed25519 { vk, .. } => {
                let s = ed25519_dalek::Signature::from_slice(sig).expect("sig");
                vk.verify_strict(msg, &s).is_ok()
            }
            Raw::P256 { vk, .. } => {
                let s = p256::ecdsa::Signature::from_slice(sig).expect("sig");
                vk.verify(msg, &s).is_ok()
            }
        }
    }
}

/// Everything one algorithm's benchmarks need, built outside the timing loops.
struct Fixture {
    name: &'static str,
    raw: Raw,
    /// 300 bytes and a raw signature over them.
    msg300: Vec<u8>,
    sig300: Vec<u8>,
    /// The request before signing (what `sign` sees).
    unsigned: Message,
    /// The request with `Signature-Input` and `Signature`, parsed from raw bytes.
    signed: Message,
    params: SignatureParams,
    key: SigningKey,
    public: VerifyingKey,
    policy: Policy,
    input_value: Vec<u8>,
    signature_value: Vec<u8>,
    /// The signature base and the signature over it.
    base: Vec<u8>,
    base_sig: Vec<u8>,
}

impl Fixture {
    fn new(alg: Algorithm) -> Self {
        let (name, raw, key, public) = match alg {
            Algorithm::Ed25519 => {
                let seed = [7u8; 32];
                let sk = ed25519_dalek::SigningKey::from_bytes(&seed);
                let vk = sk.verifying_key();
                let key = SigningKey::ed25519(&seed).expect("key").with_key_id(KEY_ID);
                let public = VerifyingKey::ed25519(vk.as_bytes())
                    .expect("public key")
                    .with_key_id(KEY_ID);
                let raw = Raw::Ed25519 {
                    sk: Box::new(sk),
                    vk,
                };
                ("ed25519", raw, key, public)
            }
            Algorithm::EcdsaP256Sha256 => {
                let d = [0x11u8; 32];
                let sk = p256::ecdsa::SigningKey::from_slice(&d).expect("scalar");
                let vk = *sk.verifying_key();
                let key = SigningKey::ecdsa_p256(&d).expect("key").with_key_id(KEY_ID);
                let public = VerifyingKey::ecdsa_p256_sec1(vk.to_encoded_point(false).as_bytes())
                    .expect("public key")
                    .with_key_id(KEY_ID);
                ("p256", Raw::P256 { sk, vk }, key, public)
            }
            other => panic!("no fixture for {other}"),
        };
        let msg300: Vec<u8> = (0..300u32).map(|i| (i * 31 % 251) as u8).collect();
        let sig300 = raw.sign(&msg300);
        assert!(raw.verify(&msg300, &sig300));

        let body = body();
        let head = head(&body);
        let mut unsigned_raw = format!("{head}\r\n").into_bytes();
        unsigned_raw.extend_from_slice(&body);
        let unsigned = Message::parse(&unsigned_raw).expect("unsigned request");
        let params = params();
        let sig = sign(&unsigned, None, LABEL, params.clone(), &key).expect("sign");
        let (input_value, signature_value) = (sig.signature_input(), sig.signature());
        let mut signed_raw =
            format!("{head}Signature-Input: {input_value}\r\nSignature: {signature_value}\r\n\r\n")
                .into_bytes();
        signed_raw.extend_from_slice(&body);
        let signed = Message::parse(&signed_raw).expect("signed request");

        let base = signature_base(&signed, None, &params).expect("base");
        let sigs = parse_signature(signature_value.as_bytes()).expect("Signature");
        let base_sig = sigs[0].1.clone();
        assert!(raw.verify(&base, &base_sig), "raw check of our signature");
        let policy = policy();
        verify(&signed, None, Some(LABEL), &public, &policy, NOW).expect("verify");

        Fixture {
            name,
            raw,
            msg300,
            sig300,
            unsigned,
            signed,
            params,
            key,
            public,
            policy,
            input_value: input_value.into_bytes(),
            signature_value: signature_value.into_bytes(),
            base,
            base_sig,
        }
    }

    fn raw_verify300(&self) {
        assert!(self
            .raw
            .verify(black_box(&self.msg300), black_box(&self.sig300)));
    }

    fn raw_verify_base(&self) {
        assert!(self
            .raw
            .verify(black_box(&self.base), black_box(&self.base_sig)));
    }

    fn raw_sign300(&self) {
        self.raw.sign_bare(black_box(&self.msg300));
    }

    fn raw_sign_base(&self) {
        self.raw.sign_bare(black_box(&self.base));
    }

    fn ours_verify(&self) {
        let v = verify(
            black_box(&self.signed),
            None,
            Some(LABEL),
            &self.public,
            &self.policy,
            NOW,
        )
        .expect("verify");
        black_box(v);
    }

    /// Our verify path plus the Content-Digest check of the body (RFC 9530).
    fn ours_verify_with_digest(&self) {
        self.ours_verify();
        let m = black_box(&self.signed);
        let field = m.header("content-digest").expect("Content-Digest");
        let alg = DigestField::parse(&field)
            .expect("digest field")
            .verify_with(m.body(), &[DigestAlgorithm::Sha512])
            .expect("digest matches");
        black_box(alg);
    }

    fn ours_sign(&self) {
        let sig = sign(
            black_box(&self.unsigned),
            None,
            LABEL,
            self.params.clone(),
            &self.key,
        )
        .expect("sign");
        black_box((sig.signature_input(), sig.signature()));
    }
}

fn bench_fixture(c: &mut Criterion, f: &Fixture) {
    let mut g = c.benchmark_group(f.name);
    g.bench_function("raw_verify_300B", |b| b.iter(|| f.raw_verify300()));
    g.bench_function(format!("raw_verify_base_{}B", f.base.len()), |b| {
        b.iter(|| f.raw_verify_base())
    });
    g.bench_function("ours_verify", |b| b.iter(|| f.ours_verify()));
    g.bench_function("ours_verify_and_content_digest", |b| {
        b.iter(|| f.ours_verify_with_digest())
    });
    g.bench_function("raw_sign_300B", |b| b.iter(|| f.raw_sign300()));
    g.bench_function(format!("raw_sign_base_{}B", f.base.len()), |b| {
        b.iter(|| f.raw_sign_base())
    });
    g.bench_function("ours_sign", |b| b.iter(|| f.ours_sign()));
    g.finish();
}

/// The pieces of the verify path, without the signature primitive.
fn bench_pieces(c: &mut Criterion, f: &Fixture) {
    let mut g = c.benchmark_group("pieces");
    g.bench_function("parse_signature_input", |b| {
        b.iter(|| parse_signature_input(black_box(&f.input_value)).expect("input"))
    });
    g.bench_function("parse_signature", |b| {
        b.iter(|| parse_signature(black_box(&f.signature_value)).expect("signature"))
    });
    g.bench_function("signatures", |b| {
        b.iter(|| signatures(black_box(&f.signed)).expect("signatures"))
    });
    g.bench_function("signature_base", |b| {
        b.iter(|| signature_base(black_box(&f.signed), None, &f.params).expect("base"))
    });
    g.bench_function("params_clone", |b| b.iter(|| black_box(&f.params).clone()));
    g.bench_function("params_build", |b| b.iter(params));
    g.bench_function("content_digest_check", |b| {
        b.iter(|| {
            let m = black_box(&f.signed);
            let field = m.header("content-digest").expect("Content-Digest");
            DigestField::parse(&field)
                .expect("digest field")
                .verify_with(m.body(), &[DigestAlgorithm::Sha512])
                .expect("digest matches")
        })
    });
    g.finish();
}

/// Criterion's point estimate for `group/bench` (the middle figure of its `time:`
/// line: the slope, or the mean where there is none), in nanoseconds, read back from
/// `<target>/criterion/<group>/<bench>/new/estimates.json` (absent when the benchmark
/// was filtered out).
fn criterion_estimate(group: &str, bench: &str) -> Option<f64> {
    let exe = std::env::current_exe().ok()?;
    // <target>/<profile>/deps/verify-<hash>
    let target = exe.ancestors().nth(3)?;
    let path = target
        .join("criterion")
        .join(group)
        .join(bench)
        .join("new")
        .join("estimates.json");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    json["slope"]["point_estimate"]
        .as_f64()
        .or_else(|| json["mean"]["point_estimate"].as_f64())
}

/// Prints the ratio of criterion's estimates for `ours` and `raw` in `group`.
fn criterion_ratio(what: &str, group: &str, raw: &str, ours: &str) {
    if let (Some(r), Some(o)) = (
        criterion_estimate(group, raw),
        criterion_estimate(group, ours),
    ) {
        println!(
            "{what:<42} raw {:>7.2} µs  ours {:>7.2} µs  ratio {:.3}",
            r / 1000.0,
            o / 1000.0,
            o / r
        );
    }
}

/// The median of `samples`.
fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    let n = samples.len();
    if n % 2 == 1 {
        samples[n / 2]
    } else {
        (samples[n / 2 - 1] + samples[n / 2]) / 2.0
    }
}

/// Nanoseconds per call of `f`, over `iters` calls.
fn time_round(iters: u32, f: &dyn Fn()) -> f64 {
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    t.elapsed().as_nanos() as f64 / f64::from(iters)
}

/// Rounds of each measurement in [`ratio`], at every stack offset.
const ROUNDS: usize = 15;

/// Times `iters` calls of `f` with the stack `N` bytes deeper.
///
/// The speed of the primitives themselves depends on where the stack lies (by up to
/// 15 % for Ed25519 on the machine of `BENCHMARKS.md`: same binary, same work, only
/// the stack offset changed), and ASLR moves the stack from one process to the next.
/// Timing at a spread of offsets measures the code rather than one layout.
#[inline(never)]
fn at_depth<const N: usize>(iters: u32, f: &dyn Fn()) -> f64 {
    let pad = black_box([0u8; N]);
    let t = time_round(iters, f);
    black_box(&pad);
    t
}

/// Times `iters` calls of a closure, at one stack offset.
type Timer = fn(u32, &dyn Fn()) -> f64;

/// Sixteen stack offsets spread over a 4 KiB page, 272 bytes (4¼ cache lines) apart.
const DEPTHS: [Timer; 16] = [
    at_depth::<0>,
    at_depth::<272>,
    at_depth::<544>,
    at_depth::<816>,
    at_depth::<1088>,
    at_depth::<1360>,
    at_depth::<1632>,
    at_depth::<1904>,
    at_depth::<2176>,
    at_depth::<2448>,
    at_depth::<2720>,
    at_depth::<2992>,
    at_depth::<3264>,
    at_depth::<3536>,
    at_depth::<3808>,
    at_depth::<4080>,
];

/// Times `raw` and `ours` alternately, `iters` calls at a time, at each of the
/// [`DEPTHS`], [`ROUNDS`] times over. Per depth it keeps the minimum of the rounds
/// (other processes only ever add time); it prints the median over the depths, the
/// ratio, and the range over the depths.
fn ratio(what: &str, iters: u32, raw: &dyn Fn(), ours: &dyn Fn()) {
    for _ in 0..iters {
        raw();
        ours();
    }
    let mut r = [f64::INFINITY; DEPTHS.len()];
    let mut o = [f64::INFINITY; DEPTHS.len()];
    for _ in 0..ROUNDS {
        for (i, depth) in DEPTHS.iter().enumerate() {
            r[i] = r[i].min(depth(iters, raw));
            o[i] = o[i].min(depth(iters, ours));
        }
    }
    let range = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(0.0, f64::max);
        format!("{:.1}–{:.1}", lo / 1000.0, hi / 1000.0)
    };
    let (r_range, o_range) = (range(&r), range(&o));
    let (r_med, o_med) = (median(r.to_vec()), median(o.to_vec()));
    println!(
        "{what:<42} raw {:>7.2} µs  ours {:>7.2} µs  ratio {:.3}   (over the stack offsets: raw {r_range} µs, ours {o_range} µs)",
        r_med / 1000.0,
        o_med / 1000.0,
        o_med / r_med,
    );
}

fn ratios(ed: &Fixture, p256: &Fixture) {
    println!();
    println!("== ours / raw: criterion estimates (the `time:` lines above; one stack layout) ==");
    for (f, group) in [(ed, "ed25519"), (p256, "p256")] {
        let base = format!("raw_verify_base_{}B", f.base.len());
        criterion_ratio(
            &format!("{group} verify"),
            group,
            "raw_verify_300B",
            "ours_verify",
        );
        criterion_ratio(
            &format!("{group} verify (raw over the same base)"),
            group,
            &base,
            "ours_verify",
        );
        criterion_ratio(
            &format!("{group} verify + content-digest check"),
            group,
            "raw_verify_300B",
            "ours_verify_and_content_digest",
        );
        criterion_ratio(
            &format!("{group} sign"),
            group,
            "raw_sign_300B",
            "ours_sign",
        );
        criterion_ratio(
            &format!("{group} sign (raw over the same base)"),
            group,
            &format!("raw_sign_base_{}B", f.base.len()),
            "ours_sign",
        );
    }
    println!();
    println!(
        "== ours / raw: interleaved loop, {} stack offsets × {ROUNDS} rounds, median over offsets of the per-offset minimum ==",
        DEPTHS.len()
    );
    println!(
        "raw = the bare primitive over a 300-byte message; \"same base\" = over our {}-byte signature base",
        ed.base.len()
    );
    ratio("ed25519 verify", 100, &|| ed.raw_verify300(), &|| {
        ed.ours_verify()
    });
    ratio(
        "ed25519 verify (raw over the same base)",
        100,
        &|| ed.raw_verify_base(),
        &|| ed.ours_verify(),
    );
    ratio(
        "ed25519 verify + content-digest check",
        100,
        &|| ed.raw_verify300(),
        &|| ed.ours_verify_with_digest(),
    );
    ratio("ed25519 sign", 200, &|| ed.raw_sign300(), &|| {
        ed.ours_sign()
    });
    ratio(
        "ed25519 sign (raw over the same base)",
        200,
        &|| ed.raw_sign_base(),
        &|| ed.ours_sign(),
    );
    ratio("p256 verify", 16, &|| p256.raw_verify300(), &|| {
        p256.ours_verify()
    });
    ratio(
        "p256 verify (raw over the same base)",
        16,
        &|| p256.raw_verify_base(),
        &|| p256.ours_verify(),
    );
    ratio("p256 sign", 28, &|| p256.raw_sign300(), &|| {
        p256.ours_sign()
    });
    ratio(
        "p256 sign (raw over the same base)",
        28,
        &|| p256.raw_sign_base(),
        &|| p256.ours_sign(),
    );
}

/// `HTTPSIG_BENCH_ALLOC=<path>:<n>`: run one path `n` times and nothing else (for
/// `valgrind --tool=dhat`).
fn alloc_mode(spec: &str, ed: &Fixture, p256: &Fixture) {
    let (path, n) = spec.split_once(':').unwrap_or((spec, "1"));
    let n: u32 = n.parse().expect("HTTPSIG_BENCH_ALLOC=<path>:<count>");
    let run: &dyn Fn() = match path {
        "verify-ed25519" => &|| ed.ours_verify(),
        "verify-p256" => &|| p256.ours_verify(),
        "verify-digest-ed25519" => &|| ed.ours_verify_with_digest(),
        "raw-verify-ed25519" => &|| ed.raw_verify300(),
        "raw-verify-base-ed25519" => &|| ed.raw_verify_base(),
        "raw-verify-p256" => &|| p256.raw_verify300(),
        "raw-verify-base-p256" => &|| p256.raw_verify_base(),
        "raw-sign-ed25519" => &|| ed.raw_sign300(),
        "raw-sign-p256" => &|| p256.raw_sign300(),
        "raw-sign-base-ed25519" => &|| ed.raw_sign_base(),
        "raw-sign-base-p256" => &|| p256.raw_sign_base(),
        "key-verify-ed25519" => &|| {
            oba_httpsig::Verifier::verify(&ed.public, black_box(&ed.base), black_box(&ed.base_sig))
                .expect("verify");
        },
        "signatures" => &|| {
            black_box(signatures(black_box(&ed.signed)).expect("signatures"));
        },
        "none" => &|| {},
        "sign-ed25519" => &|| ed.ours_sign(),
        "sign-p256" => &|| p256.ours_sign(),
        "base" => &|| {
            black_box(signature_base(black_box(&ed.signed), None, &ed.params).expect("base"));
        },
        "parse-input" => &|| {
            black_box(parse_signature_input(black_box(&ed.input_value)).expect("input"));
        },
        other => panic!("unknown path {other:?}"),
    };
    for _ in 0..n {
        run();
    }
    println!("ran {path} {n} times");
}

fn main() {
    let ed = Fixture::new(Algorithm::Ed25519);
    let p256 = Fixture::new(Algorithm::EcdsaP256Sha256);
    assert!(ed.signed.method() == Some("POST"));

    if let Ok(spec) = std::env::var("HTTPSIG_BENCH_ALLOC") {
        alloc_mode(&spec, &ed, &p256);
        return;
    }

    let mut c = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    bench_fixture(&mut c, &ed);
    bench_fixture(&mut c, &p256);
    bench_pieces(&mut c, &ed);
    c.final_summary();

    // Only under `cargo bench` (criterion's benchmark mode), not `cargo test --benches`.
    let args: Vec<String> = std::env::args().collect();
    let benchmarking = args.iter().any(|a| a == "--bench")
        && !args
            .iter()
            .any(|a| a == "--list" || a == "--test" || a.starts_with("--profile-time"));
    if benchmarking {
        ratios(&ed, &p256);
    }
}
