//! `oba`: the OpenBotAuth command line.
//!
//! Keys (`keygen`, `jwk`), RFC 9421 signatures over raw HTTP/1.1 message files (`sign`,
//! `verify`, `base`). Exit codes: 0 success; for `verify`, 1 when no signature verifies
//! (or there is none); 2 on a usage error or input that cannot be read.

#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use oba_httpsig::digest::{DigestAlgorithm, DigestField};
use oba_httpsig::jwk::{Jwk, JwkSet};
use oba_httpsig::{
    Algorithm, Component, Derived, Error, HttpMessage, KeySource, Message, Policy, Reason,
    SignatureParams, Verifier, VerifyingKey,
};
use serde_json::json;

mod audit_cmd;
mod gateway_cmd;
mod memory_cmd;
mod registry_cmd;
mod up_cmd;
mod usage_cmd;
mod wba;

#[derive(Parser)]
#[command(
    name = "oba",
    version,
    about = "OpenBotAuth: keys and RFC 9421 HTTP Message Signatures"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a private JWK (kid = RFC 7638 thumbprint, alg set).
    Keygen {
        /// Algorithm.
        #[arg(long, default_value = "ed25519", value_parser = parse_alg)]
        alg: Algorithm,
        /// Write to FILE (mode 0600) instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Overwrite FILE if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Inspect a JWK.
    Jwk {
        #[command(subcommand)]
        command: JwkCommand,
    },
    /// Sign a raw HTTP message; prints it with Signature-Input and Signature added.
    Sign(SignArgs),
    /// Verify the signatures of a raw HTTP message.
    Verify(VerifyArgs),
    /// Print the signature base of one label (same options as verify).
    Base(VerifyArgs),
    /// Send a Web Bot Auth signed request and print the response (curl-like).
    Request(wba::RequestArgs),
    /// Key directories: serve one, check one.
    Directory {
        #[command(subcommand)]
        command: wba::DirectoryCommand,
    },
    /// The registry: run it, or manage agents and keys on one.
    Registry {
        #[command(subcommand)]
        command: registry_cmd::RegistryCommand,
    },
    /// One step for a new bot: a key, an agent, the key added, the Signature-Agent to use.
    Publish(registry_cmd::PublishArgs),
    /// Attach Gateway: run it, or manage its API keys.
    Gateway(gateway_cmd::GatewayArgs),
    /// The whole stack on this machine: registry and gateway, SQLite under a data directory.
    Up(up_cmd::UpArgs),
    /// Conversation memory on a gateway: list, search, delete (yours only).
    Memory(memory_cmd::MemoryArgs),
    /// Usage on a gateway: requests and tokens by principal, model, tenant or day.
    Usage(usage_cmd::UsageArgs),
    /// Audit trail: verify a file or a database table (hash chain, signed checkpoints), export.
    Audit(audit_cmd::AuditArgs),
}

#[derive(Subcommand)]
enum JwkCommand {
    /// Print the public JWK.
    Public {
        /// JWK file (`-` or absent: standard input).
        file: Option<PathBuf>,
    },
    /// Print the RFC 7638 thumbprint.
    Thumbprint {
        /// JWK file (`-` or absent: standard input).
        file: Option<PathBuf>,
    },
}

#[derive(Args)]
struct MessageArgs {
    /// The related request, for components with `;req` (when the message is a response).
    #[arg(long)]
    request: Option<PathBuf>,
    /// Scheme the message was received over.
    #[arg(long, default_value = "https", value_parser = ["http", "https"])]
    scheme: String,
    /// Raw HTTP/1.1 message file (`-` or absent: standard input).
    file: Option<PathBuf>,
}

#[derive(Args)]
struct SignArgs {
    /// Private JWK file.
    #[arg(long)]
    key: PathBuf,
    /// Signature label.
    #[arg(long, default_value = "sig1")]
    label: String,
    /// Component to cover, on-the-wire (`'"@query-param";name="Pet"'`) or bare (`@method`).
    #[arg(long = "component")]
    components: Vec<String>,
    /// `created` (default: now).
    #[arg(long, allow_hyphen_values = true)]
    created: Option<i64>,
    /// `expires`.
    #[arg(long, conflicts_with = "ttl", allow_hyphen_values = true)]
    expires: Option<i64>,
    /// `expires` = created + SECS.
    #[arg(long)]
    ttl: Option<u32>,
    /// `nonce`.
    #[arg(long, conflicts_with = "random_nonce")]
    nonce: Option<String>,
    /// A random 128-bit `nonce`.
    #[arg(long)]
    random_nonce: bool,
    /// `keyid` (default: the JWK's kid).
    #[arg(long)]
    keyid: Option<String>,
    /// Algorithm (needed for RSA JWKs without `alg`); also adds the `alg` parameter.
    #[arg(long, value_parser = parse_alg)]
    alg: Option<Algorithm>,
    /// `tag`.
    #[arg(long)]
    tag: Option<String>,
    /// Signature parameters exactly as on the wire, in that order (`created=1;keyid="k"`);
    /// replaces --created/--expires/--ttl/--nonce/--keyid/--tag and the `alg` parameter.
    #[arg(long, conflicts_with_all = ["created", "expires", "ttl", "nonce", "random_nonce", "keyid", "tag"])]
    params: Option<String>,
    /// Add a Content-Digest of the body first (and cover it by default).
    #[arg(long, value_parser = ["sha-256", "sha-512"])]
    content_digest: Option<String>,
    /// Apply the Web Bot Auth profile: keyid = thumbprint, tag="web-bot-auth", expires
    /// (--ttl, default 60 s), a random nonce, Content-Digest for a body, Signature-Agent.
    #[arg(long, conflicts_with_all = ["params", "keyid", "tag", "nonce", "expires", "content_digest", "created"])]
    web_bot_auth: bool,
    /// Where the bot's keys are (with --web-bot-auth): an https origin with a key directory.
    #[arg(long, requires = "web_bot_auth")]
    signature_agent: Option<String>,
    #[command(flatten)]
    message: MessageArgs,
}

#[derive(Args)]
pub(crate) struct VerifyArgs {
    /// JWK file (public or private) of the signer.
    #[arg(long, required_unless_present_any = ["jwks", "resolve"], conflicts_with = "jwks")]
    key: Option<PathBuf>,
    /// JWK Set file; the key is chosen by kid or thumbprint.
    #[arg(long)]
    jwks: Option<PathBuf>,
    /// Only this label (default: any signature that verifies).
    #[arg(long)]
    label: Option<String>,
    /// Current time (default: the system clock).
    #[arg(long, allow_hyphen_values = true)]
    now: Option<i64>,
    /// Maximum age of `created`, in seconds.
    #[arg(long)]
    max_age: Option<u32>,
    /// Tolerated clock skew, in seconds.
    #[arg(long, default_value_t = 60)]
    skew: u32,
    /// Component that must be covered.
    #[arg(long = "require-component")]
    require_components: Vec<String>,
    /// Allowed algorithm (repeatable); also selects the algorithm of an RSA JWK.
    #[arg(long = "alg", value_parser = parse_alg)]
    algs: Vec<Algorithm>,
    /// Required `tag`.
    #[arg(long)]
    tag: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Apply the Web Bot Auth profile (outcome verified / invalid / unverified).
    #[arg(long)]
    web_bot_auth: bool,
    /// Fetch the keys named by Signature-Agent through the directory client.
    #[arg(long, requires = "web_bot_auth")]
    resolve: bool,
    /// Accept the RFC 9421 example keys (for conformance vectors only).
    #[arg(long, requires = "web_bot_auth")]
    allow_test_keys: bool,
    /// Allow agents and key fetches on loopback over plain http (tests only).
    #[arg(long, requires = "web_bot_auth")]
    allow_loopback: bool,
    /// Longest accepted `expires - created`, seconds (with --web-bot-auth; default 24 h).
    #[arg(long, requires = "web_bot_auth")]
    max_validity: Option<u32>,
    #[command(flatten)]
    message: MessageArgs,
}

fn parse_alg(s: &str) -> Result<Algorithm, String> {
    s.parse::<Algorithm>().map_err(|e| e.to_string())
}

/// A failure with the exit code it maps to.
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) message: String,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure {
            code: 2,
            message: e.to_string(),
        }
    }
}

pub(crate) fn fail(message: impl Into<String>) -> Failure {
    Failure {
        code: 2,
        message: message.into(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Keygen { alg, out, force } => keygen(alg, out.as_deref(), force),
        Command::Jwk { command } => jwk(command),
        Command::Sign(args) => sign(args),
        Command::Verify(args) => verify(args, false),
        Command::Base(args) => verify(args, true),
        Command::Request(args) => wba::request(args),
        Command::Directory { command } => wba::directory(command),
        Command::Registry { command } => registry_cmd::registry(command),
        Command::Publish(args) => registry_cmd::publish(args),
        Command::Gateway(args) => gateway_cmd::gateway(args),
        Command::Up(args) => up_cmd::up(args),
        Command::Memory(args) => memory_cmd::memory(args),
        Command::Usage(args) => usage_cmd::usage(args),
        Command::Audit(args) => audit_cmd::audit(args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("oba: error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

pub(crate) fn read_input(path: Option<&Path>) -> Result<Vec<u8>, Failure> {
    match path {
        None => read_stdin(),
        Some(p) if p.as_os_str() == "-" => read_stdin(),
        Some(p) => std::fs::read(p).map_err(|e| fail(format!("cannot read {}: {e}", p.display()))),
    }
}

fn read_stdin() -> Result<Vec<u8>, Failure> {
    let mut buf = Vec::new();
    std::io::stdin()
        .read_to_end(&mut buf)
        .map_err(|e| fail(format!("cannot read standard input: {e}")))?;
    Ok(buf)
}

pub(crate) fn read_jwk(path: Option<&Path>) -> Result<Jwk, Failure> {
    let bytes = read_input(path)?;
    let text = String::from_utf8(bytes).map_err(|_| fail("the JWK file is not UTF-8"))?;
    Ok(Jwk::parse(&text)?)
}

pub(crate) fn write_stdout(bytes: &[u8]) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(|e| fail(format!("cannot write standard output: {e}")))
}

fn keygen(alg: Algorithm, out: Option<&Path>, force: bool) -> Result<u8, Failure> {
    let jwk = Jwk::generate(alg)?;
    let text = format!(
        "{}\n",
        serde_json::to_string_pretty(&jwk).map_err(|e| fail(e.to_string()))?
    );
    match out {
        None => write_stdout(text.as_bytes())?,
        Some(path) => write_private(path, text.as_bytes(), force)?,
    }
    Ok(0)
}

/// Writes a private key file readable by its owner only.
pub(crate) fn write_private(path: &Path, bytes: &[u8], force: bool) -> Result<(), Failure> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            fail(format!(
                "{} exists (use --force to overwrite)",
                path.display()
            ))
        } else {
            fail(format!("cannot write {}: {e}", path.display()))
        }
    })?;
    #[cfg(unix)]
    {
        // An existing file keeps its mode on truncate: tighten it.
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| fail(format!("cannot set the mode of {}: {e}", path.display())))?;
    }
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| fail(format!("cannot write {}: {e}", path.display())))
}

fn jwk(command: JwkCommand) -> Result<u8, Failure> {
    match command {
        JwkCommand::Public { file } => {
            let public = read_jwk(file.as_deref())?.public()?;
            let text = serde_json::to_string_pretty(&public).map_err(|e| fail(e.to_string()))?;
            write_stdout(format!("{text}\n").as_bytes())?;
        }
        JwkCommand::Thumbprint { file } => {
            let t = read_jwk(file.as_deref())?.thumbprint()?;
            write_stdout(format!("{t}\n").as_bytes())?;
        }
    }
    Ok(0)
}

pub(crate) fn load_message(args: &MessageArgs) -> Result<(Message, Option<Message>), Failure> {
    let raw = read_input(args.file.as_deref())?;
    let mut msg =
        Message::parse(&raw).map_err(|e| fail(format!("cannot read the message: {e}")))?;
    msg.set_scheme(&args.scheme);
    let related = match &args.request {
        Some(p) => {
            let raw = read_input(Some(p))?;
            let mut r = Message::parse(&raw)
                .map_err(|e| fail(format!("cannot read the related request: {e}")))?;
            r.set_scheme(&args.scheme);
            if !r.is_request() {
                return Err(fail("--request must be a request"));
            }
            Some(r)
        }
        None => None,
    };
    Ok((msg, related))
}

fn parse_components(ids: &[String]) -> Result<Vec<Component>, Failure> {
    ids.iter()
        .map(|s| s.parse::<Component>().map_err(Failure::from))
        .collect()
}

pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Replaces every line of a field by one line holding `existing, member`.
fn add_member(msg: &mut Message, name: &str, member: &str) {
    let value = match msg.header(name) {
        Some(existing) if !existing.is_empty() => format!("{existing}, {member}"),
        _ => member.to_owned(),
    };
    msg.remove_header(name);
    msg.append_header(name, value);
}

fn sign(args: SignArgs) -> Result<u8, Failure> {
    let jwk = read_jwk(Some(&args.key))?;
    let key = jwk.signing_key(args.alg)?;
    let (mut msg, related) = load_message(&args.message)?;

    if args.web_bot_auth {
        let mut signer = oba_webbotauth::WebBotAuthSigner::new(&jwk)
            .map_err(|e| fail(e.to_string()))?
            .with_label(&args.label)
            .map_err(|e| fail(e.to_string()))?
            .with_validity(args.ttl.unwrap_or(60))
            .map_err(|e| fail(e.to_string()))?;
        if let Some(sa) = &args.signature_agent {
            signer = signer
                .with_signature_agent(sa)
                .map_err(|e| fail(e.to_string()))?;
        }
        if !args.components.is_empty() {
            signer = signer.with_components(parse_components(&args.components)?);
        }
        let body = msg.body().to_vec();
        for (name, value) in signer
            .sign(&msg, &body, now())
            .map_err(|e| fail(e.to_string()))?
        {
            msg.append_header(name, value);
        }
        write_stdout(&msg.to_bytes())?;
        return Ok(0);
    }

    if let Some(alg) = &args.content_digest {
        let alg = DigestAlgorithm::from_name(alg).ok_or_else(|| fail("unknown digest"))?;
        let field = DigestField::compute(&[alg], msg.body());
        msg.remove_header("content-digest");
        msg.append_header("Content-Digest", field.to_header_value());
    }

    let components = if args.components.is_empty() {
        default_components(&msg)?
    } else {
        parse_components(&args.components)?
    };
    let mut params = SignatureParams::new(components)?;
    match &args.params {
        Some(wire) => params = params.with_params_str(wire)?,
        None => {
            let created = args.created.unwrap_or_else(now);
            params = params.with_created(created)?;
            let expires = match (args.expires, args.ttl) {
                (Some(e), _) => Some(e),
                (None, Some(ttl)) => Some(created.saturating_add(i64::from(ttl))),
                (None, None) => None,
            };
            if let Some(e) = expires {
                params = params.with_expires(e)?;
            }
            if let Some(n) = &args.nonce {
                params = params.with_nonce(n)?;
            } else if args.random_nonce {
                params = params.with_nonce(&oba_httpsig::random_nonce())?;
            }
            if let Some(alg) = args.alg {
                params = params.with_alg(alg)?;
            }
            if let Some(k) = args.keyid.as_deref().or(jwk.kid.as_deref()) {
                params = params.with_keyid(k)?;
            }
            if let Some(t) = &args.tag {
                params = params.with_tag(t)?;
            }
        }
    }
    let sig = oba_httpsig::sign(
        &msg,
        related.as_ref().map(|r| r as &dyn HttpMessage),
        &args.label,
        params,
        &key,
    )?;
    add_member(&mut msg, "Signature-Input", &sig.signature_input());
    add_member(&mut msg, "Signature", &sig.signature());
    write_stdout(&msg.to_bytes())?;
    Ok(0)
}

/// Requests: `@method @authority @path @query`; responses: `@status`; plus
/// `content-digest` when present.
fn default_components(msg: &Message) -> Result<Vec<Component>, Failure> {
    let mut c = if msg.is_request() {
        vec![
            Component::derived(Derived::Method),
            Component::derived(Derived::Authority),
            Component::derived(Derived::Path),
            Component::derived(Derived::Query),
        ]
    } else {
        vec![Component::derived(Derived::Status)]
    };
    if msg.header("content-digest").is_some() {
        c.push(Component::field("content-digest")?);
    }
    Ok(c)
}

/// Keys given on the command line: one JWK (`--key`) or a JWK Set (`--jwks`).
struct CliKeys {
    keys: Vec<(Jwk, String)>,
    single: bool,
    algs: Vec<Algorithm>,
    /// Decoded keys, one per (key index, algorithm), built on first use.
    decoded: Vec<(usize, Algorithm, VerifyingKey)>,
}

impl CliKeys {
    fn load(args: &VerifyArgs) -> Result<Self, Failure> {
        let (keys, single) = match (&args.key, &args.jwks) {
            (Some(k), _) => (vec![read_jwk(Some(k))?], true),
            (None, Some(set)) => {
                let bytes = read_input(Some(set))?;
                let text =
                    String::from_utf8(bytes).map_err(|_| fail("the JWKS file is not UTF-8"))?;
                (JwkSet::parse(&text)?.keys, false)
            }
            (None, None) => return Err(fail("give --key or --jwks")),
        };
        let keys = keys
            .into_iter()
            .map(|k| {
                let t = k.thumbprint()?;
                Ok((k, t))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let mut me = CliKeys {
            keys,
            single,
            algs: args.algs.clone(),
            decoded: Vec::new(),
        };
        // Decode every usable (key, algorithm) pair once, up front.
        for i in 0..me.keys.len() {
            for alg in me.candidate_algs(i) {
                if let Ok(k) = me.keys[i].0.verifying_key(Some(alg)) {
                    me.decoded.push((i, alg, k));
                }
            }
        }
        if me.single && me.decoded.is_empty() {
            let (jwk, _) = &me.keys[0];
            // Report why the one key is unusable.
            jwk.verifying_key(me.algs.first().copied())?;
            return Err(fail("the key cannot be used with the given --alg"));
        }
        Ok(me)
    }

    /// The algorithms a key may be used with: `--alg` values (that fit), else the JWK's own.
    fn candidate_algs(&self, i: usize) -> Vec<Algorithm> {
        let jwk = &self.keys[i].0;
        if self.algs.is_empty() {
            jwk.algorithm().into_iter().collect()
        } else {
            self.algs
                .iter()
                .copied()
                .filter(|a| jwk.verifying_key(Some(*a)).is_ok())
                .collect()
        }
    }
}

impl KeySource for CliKeys {
    fn key_for(&self, _label: &str, params: &SignatureParams) -> Result<&dyn Verifier, Error> {
        let index = if self.single {
            let (jwk, thumb) = &self.keys[0];
            if let (Some(kid), Some(want)) = (&jwk.kid, params.keyid()) {
                if want != kid && want != thumb {
                    return Err(Error::from_reason(
                        Reason::KeyIdMismatch,
                        format!(
                            "signature keyid {want:?} is neither the JWK's kid nor its thumbprint"
                        ),
                    ));
                }
            }
            0
        } else {
            match params.keyid() {
                Some(want) => self
                    .keys
                    .iter()
                    .position(|(k, t)| k.kid.as_deref() == Some(want) || t == want)
                    .ok_or_else(|| {
                        Error::from_reason(
                            Reason::UnknownKey,
                            format!("no key with kid or thumbprint {want:?}"),
                        )
                    })?,
                None if self.keys.len() == 1 => 0,
                None => {
                    return Err(Error::from_reason(
                        Reason::UnknownKey,
                        "signature has no keyid and the set has several keys",
                    ))
                }
            }
        };
        let declared = params.alg().and_then(|a| a.parse::<Algorithm>().ok());
        let mut found = self.decoded.iter().filter(|(i, _, _)| *i == index);
        let all: Vec<_> = found.by_ref().collect();
        let pick = declared
            .and_then(|d| all.iter().find(|(_, a, _)| *a == d))
            .or_else(|| all.first())
            .ok_or_else(|| {
                Error::from_reason(
                    Reason::UnknownKey,
                    "the key cannot be used with the allowed algorithms",
                )
            })?;
        Ok(&pick.2)
    }
}

fn verify(args: VerifyArgs, base_only: bool) -> Result<u8, Failure> {
    if args.web_bot_auth && !base_only {
        return wba::verify(&args);
    }
    let keys = if base_only {
        None
    } else {
        Some(CliKeys::load(&args)?)
    };
    let (msg, related) = load_message(&args.message)?;
    let related_dyn = related.as_ref().map(|r| r as &dyn HttpMessage);
    let now = args.now.unwrap_or_else(now);

    let mut policy = Policy::default().clock_skew(args.skew);
    if !args.algs.is_empty() {
        policy = policy.allow_algorithms(&args.algs);
    }
    if let Some(m) = args.max_age {
        policy = policy.max_age(m);
    }
    for c in parse_components(&args.require_components)? {
        policy = policy.require_component(c);
    }
    if let Some(t) = &args.tag {
        policy = policy.require_tag(t);
    }

    let found = match oba_httpsig::signatures(&msg) {
        Ok(f) => f,
        Err(e) if e.reason() == Reason::MissingSignature => Vec::new(),
        Err(e) => return Err(fail(format!("cannot read the signatures: {e}"))),
    };
    let selected: Vec<_> = found
        .into_iter()
        .filter(|(l, _)| args.label.as_ref().is_none_or(|want| want == l))
        .collect();

    if base_only {
        let (label, entry) = selected
            .into_iter()
            .next()
            .ok_or_else(|| fail("no signature (with that label) in the message"))?;
        let entry = entry.map_err(|e| fail(format!("{label}: {e}")))?;
        let base = oba_httpsig::signature_base(&msg, related_dyn, &entry.params)?;
        write_stdout(&base)?;
        write_stdout(b"\n")?;
        return Ok(0);
    }
    let keys = keys.expect("loaded above");

    let mut reports = Vec::new();
    let mut any_verified = false;
    for (label, entry) in &selected {
        let result = entry.clone().and_then(|e| {
            let v = oba_httpsig::verify_signature(&msg, related_dyn, &e, &keys, &policy, now)?;
            check_digest(&msg, related.as_ref(), &e.params)?;
            Ok(v)
        });
        any_verified |= result.is_ok();
        reports.push(report(
            label,
            entry.as_ref().ok().map(|e| &e.params),
            &result,
        ));
    }
    let outcome = if any_verified {
        "verified"
    } else if selected.iter().any(|(_, e)| e.is_ok()) {
        "invalid"
    } else {
        "unverified"
    };
    if args.json {
        let doc = json!({ "outcome": outcome, "signatures": reports });
        write_stdout(format!("{doc:#}\n").as_bytes())?;
    } else {
        let mut text = String::new();
        if reports.is_empty() {
            text.push_str("no signatures\n");
        }
        for r in &reports {
            text.push_str(&format!(
                "{}: {}{}\n  keyid: {}\n  alg: {}\n  covers: {}\n",
                r["label"].as_str().unwrap_or_default(),
                r["result"].as_str().unwrap_or_default(),
                r["reason"]
                    .as_str()
                    .map(|c| format!(" ({c}: {})", r["message"].as_str().unwrap_or_default()))
                    .unwrap_or_default(),
                r["keyid"].as_str().unwrap_or("-"),
                r["alg"].as_str().unwrap_or("-"),
                r["components"]
                    .as_array()
                    .map(|a| a
                        .iter()
                        .filter_map(|c| c.as_str())
                        .collect::<Vec<_>>()
                        .join(" "))
                    .unwrap_or_default(),
            ));
        }
        text.push_str(&format!("outcome: {outcome}\n"));
        write_stdout(text.as_bytes())?;
    }
    Ok(if any_verified { 0 } else { 1 })
}

/// When `content-digest` is covered, the digest must also match the body.
fn check_digest(
    msg: &Message,
    related: Option<&Message>,
    params: &SignatureParams,
) -> Result<(), Error> {
    for c in params.components() {
        if c.name_str() != "content-digest" || c.dict_key().is_some() {
            continue;
        }
        let target = if c.is_req() { related } else { Some(msg) };
        let Some(target) = target else { continue };
        if let Some(value) = target.header("content-digest") {
            DigestField::parse(&value)
                .and_then(|f| f.verify(target.body()))
                .map_err(|e| Error::from_reason(Reason::DigestMismatch, e.to_string()))?;
        }
    }
    Ok(())
}

fn report(
    label: &str,
    params: Option<&SignatureParams>,
    result: &Result<oba_httpsig::Verified, Error>,
) -> serde_json::Value {
    let mut r = json!({
        "label": label,
        "keyid": params.and_then(|p| p.keyid()),
        "alg": match result {
            Ok(v) => Some(v.algorithm.name().to_owned()),
            Err(_) => params.and_then(|p| p.alg()).map(str::to_owned),
        },
        "components": params.map(|p| p.components().iter().map(|c| c.to_string()).collect::<Vec<_>>()),
        "created": params.and_then(|p| p.created()),
        "expires": params.and_then(|p| p.expires()),
        "tag": params.and_then(|p| p.tag()),
        "result": if result.is_ok() { "verified" } else { "invalid" },
    });
    if let Err(e) = result {
        r["reason"] = json!(e.reason().code());
        r["message"] = json!(e.to_string());
    }
    r
}
