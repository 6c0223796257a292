//! # oba-audit
//!
//! A tamper-evident audit trail for Attach Gateway: who authenticated how, what was
//! refused and why, which keys were created or revoked, whose memory was erased. Every
//! record carries the SHA-256 of its predecessor, so changing, removing or reordering
//! one breaks the chain from there on; every so often a **checkpoint** record signs the
//! chain so far with the gateway's key, so rewriting the chain (and every hash after
//! the change) is detected too.
//!
//! * [`AuditLog::record`] queues an [`AuditEvent`] without waiting (a bounded queue;
//!   when it is full the event is dropped and counted). One background task gives each
//!   event its `seq`, `prev` and `hash`, writes batches, and checkpoints every
//!   [`AuditConfig::checkpoint_every`] records or [`AuditConfig::checkpoint_interval`].
//! * Sinks ([`AuditSink`]): a JSON-lines file ([`FileSink`], synced per batch) or a
//!   database table ([`DbLog`]: SQLite or PostgreSQL). Both continue the chain after a
//!   restart from their last record, after checking its hash.
//! * [`verify`] / [`verify_file`] / [`DbLog::verify`] walk a chain and name the first
//!   [`Problem`]; `oba audit verify` is the command line for it.
//! * Synchronous, transactional appends for a service whose changes must not go
//!   unrecorded (the registry): [`ChainHead`], the sans-IO core every writer shares
//!   (seq, `prev`, hash, signed checkpoints), and [`sql`], the `audit_log` table as SQL,
//!   so the record is written in the same database transaction as the change it records
//!   — same table and rows as [`DbLog`], so the same verifier reads them.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use oba_audit::{AuditConfig, AuditEvent, AuditLog, CheckpointSigner, FileSink, Kind, TrustedKeys};
//! use oba_httpsig::{jwk::Jwk, Algorithm};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("audit.jsonl");
//! let key = Jwk::generate(Algorithm::Ed25519).unwrap(); // the gateway's key
//!
//! let log = AuditLog::start(
//!     FileSink::open(&path).unwrap(),
//!     CheckpointSigner::from_jwk(&key).unwrap(),
//!     AuditConfig { checkpoint_every: 2, ..AuditConfig::default() },
//! )
//! .await
//! .unwrap();
//! log.record(
//!     AuditEvent::new(Kind::AuthAccepted, 1_700_000_000_000)
//!         .with_actor("user:alice")
//!         .with_auth_method("api-key")
//!         .with_key_id("ci")
//!         .with_tenant("acme")
//!         .with_route("/v1/chat/completions")
//!         .with_request_id("req-1")
//!         .with_sha256("request_body", br#"{"model":"m"}"#),
//! );
//! log.record(AuditEvent::new(Kind::AuthRejected, 1_700_000_000_001).with_reason("unknown_api_key"));
//! log.record(AuditEvent::new(Kind::KeyRevoked, 1_700_000_000_002).with_key_id("ci"));
//! let stats = log.shutdown().await.unwrap(); // drains, then a final checkpoint
//! assert_eq!((stats.written, stats.checkpoints, stats.dropped), (3, 2, 0));
//!
//! let mut trusted = TrustedKeys::new();
//! trusted.add_jwk(&key.public().unwrap()).unwrap();
//! let report = oba_audit::verify_file(&path, &trusted).unwrap();
//! assert_eq!(report.summary(), "ok: 5 records, 2 checkpoints, 0 unsigned at the end");
//! # });
//! ```
//!
//! ## The record format
//!
//! A file holds one record per line (`\n`-terminated, UTF-8). A line is a compact JSON
//! object whose members always appear, in this order:
//!
//! | member | value |
//! |---|---|
//! | `v` | format version, `1` |
//! | `seq` | position in the chain: 1, 2, 3, ... without gaps |
//! | `prev` | `hash` of record `seq - 1`; for seq 1, 64 zeros ([`GENESIS`]) |
//! | `time_ms` | unix milliseconds (integer) |
//! | `kind` | `auth.accepted`, `auth.rejected`, `policy.denied`, `key.created`, `key.revoked`, `token.rejected`, `memory.erased`, `space.member_changed`, `checkpoint`, or any other name |
//! | `actor`, `auth_method`, `key_id`, `tenant`, `route`, `request_id`, `reason` | string or `null` |
//! | `hashes` | object: name → lowercase hex SHA-256 (e.g. `request_body`); never bodies |
//! | `details` | object, small |
//! | `sig_alg`, `sig_keyid` | checkpoints: the algorithm (`ed25519`, ...) and the key's RFC 7638 thumbprint; otherwise `null` |
//! | `sig` | checkpoints: the signature, base64url without padding; otherwise `null` |
//! | `hash` | lowercase hex SHA-256 of the record's canonical form |
//!
//! ### What is hashed (exactly)
//!
//! `hash` = lowercase hex of SHA-256 over the UTF-8 bytes of the **canonical form**:
//! the line's JSON object without its `sig` and `hash` members — i.e. the members `v`
//! through `sig_keyid` above, in that order, then `}`. Precisely:
//!
//! * no whitespace anywhere; members separated by `,`, names and values by `:`;
//! * absent optional values are `null` (never omitted);
//! * integers in plain decimal (no `+`, no leading zeros, no exponent);
//! * strings: `"` and `\` escaped as `\"` and `\\`; U+0008, U+000C, U+000A, U+000D,
//!   U+0009 as `\b \f \n \r \t`; the other characters below U+0020 as `\u00xx` with
//!   lowercase hex; every other character (including `/`, U+007F and non-ASCII) as is,
//!   in UTF-8;
//! * `hashes` and `details` (recursively) as RFC 8785 (JCS) objects: members sorted by
//!   their names compared as UTF-16 code units; arrays keep their order. The writer
//!   stores non-integer numbers in `details` as strings (their shortest decimal form),
//!   so no floating-point formatting is ever needed to recompute a hash.
//!
//! The line itself is the canonical form with `,"sig":SIG,"hash":"HASH"}` in place of
//! the final `}`. So another implementation can verify a line by parsing it,
//! re-serialising it with these rules (or, equivalently, cutting the line before
//! `,"sig":` and appending `}`), hashing, and comparing. This crate's reader is strict:
//! a line must be byte for byte the serialisation of what it decodes to, so even an
//! alteration that would not change the decoded record (an escape spelled differently)
//! is reported ([`Problem::Malformed`]).
//!
//! A database row holds the same fields in columns (`hashes` and `details` as their
//! canonical JSON text) and hashes the same way.
//!
//! ### Checkpoints
//!
//! A checkpoint is a record of kind `checkpoint` in the same chain (its `details`:
//! `{"dropped": N}`, the events this writer lost since its previous checkpoint). Its
//! `hash` covers `sig_alg` and `sig_keyid` like every other field; `sig` is the
//! signature over [`SIGNING_CONTEXT`] (`oba-audit checkpoint v1` and a newline)
//! followed by the 64 ASCII hex digits of its `hash`. Since the hash covers `prev`, the
//! signature vouches for every record before it. Any oba-httpsig algorithm can sign
//! ([`CheckpointSigner`]); verifiers look the key up by `sig_keyid`
//! ([`TrustedKeys`], e.g. from the gateway's `/.well-known/jwks.json`). After a key
//! rotation, verify with the old and the new public keys: each checkpoint names its
//! own.
//!
//! ## The writer
//!
//! [`AuditLog::record`] is a `try_send` on a bounded tokio channel: O(1), no lock,
//! never waiting, no allocation beyond the channel's (one block per 32 events, and
//! recycled). The trade-off is deliberate: when the queue is
//! full (a burst beyond what the sink absorbs, or a sink that is down) the event is
//! **dropped rather than slowing the request**, and the loss is made visible three
//! ways — `record` returns false, [`AuditStats::dropped`] counts it (exported as
//! `attach_audit_dropped_total` by [`AuditStats::render`]), and the next checkpoint
//! records the number lost since the previous one in its signed `details.dropped`.
//! A deployment that must never lose an event sizes the queue for its worst burst
//! and alerts on that counter.
//!
//! One task owns the chain, so chain order is write order. It takes up to
//! [`AuditConfig::batch_size`] events at a time, seals them (`seq`, `prev`, `hash`),
//! adds a checkpoint when due, and appends the batch (one `fdatasync` or one
//! transaction). A failed append is retried with back-off; the sink's tail then tells
//! whether the batch landed after all (a lost acknowledgement is not written twice).
//! After [`AuditConfig::write_attempts`] the batch's events are dropped (counted) and
//! the chain stays where it was, so a failure never leaves a gap.
//! [`AuditLog::shutdown`] drains the queue and writes a final checkpoint.
//!
//! ## Verification
//!
//! [`ChainVerifier`] reads records in order from seq 1 and stops at the first problem:
//!
//! 1. the record must match its `hash`, else [`Problem::Altered`] (at the position
//!    where the record stands: the seq expected there);
//! 2. its `seq` must be the next one: a jump ahead is [`Problem::Removed`] unless the
//!    missing seq turns up later ([`Problem::Reordered`] for the record found out of
//!    place); a seq going backwards is [`Problem::Reordered`];
//! 3. `prev` must be the previous record's `hash`, else [`Problem::Reordered`];
//! 4. a checkpoint's key must be trusted ([`Problem::UnknownKey`]) and its signature
//!    valid ([`Problem::BadSignature`]);
//! 5. a line that is not a record is [`Problem::Malformed`].
//!
//! **Truncation.** Records cut from the middle are a gap ([`Problem::Removed`]). Records
//! cut from the *end* leave a chain that is valid as far as it goes: that is not
//! reported as tampering, because a chain cannot know records that were never written
//! after it. What the [`Report`] does say is how many records follow the last valid
//! checkpoint ([`Report::unsigned_tail`]) and where the chain ends
//! ([`Report::last_seq`], [`Report::last_hash`]): a gateway that shut down cleanly
//! ends its trail with a checkpoint, so an unsigned tail means a crash, a trail still
//! being written, or a cut that removed the final checkpoint (`oba audit verify
//! --require-signed-tail` fails on it). A cut exactly after a checkpoint is only
//! detectable against an outside reference: the gateway's `last_seq` counter, or a
//! checkpoint hash kept elsewhere.
//!
//! ## Known limits
//!
//! * Records after the last checkpoint are protected only by the hash chain: someone
//!   who can write the file can rewrite them (and recompute their hashes) without
//!   detection until a checkpoint signs them. Keep the interval short.
//! * A writer signs whatever tail it finds at start (after checking only the last
//!   record's hash): verify a trail before restarting on it if it may have been
//!   touched while the gateway was down.
//! * The writer is one process per chain. Two processes appending to one file corrupt
//!   it; two on one table serialise through the primary key (the loser re-chains after
//!   the winner) but their checkpoints then interleave. Writers appending through
//!   [`sql`] in their own transactions serialise explicitly (an advisory lock on
//!   PostgreSQL) and read the tail each time, so any number of them share one chain.
//! * No rotation or retention: a trail grows until an operator archives it.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod chain;
mod db;
mod error;
mod keys;
mod record;
mod sink;
pub mod sql;
mod verify;
mod writer;

pub use chain::ChainHead;
pub use db::DbLog;
pub use error::{AuditError, Result};
pub use keys::{CheckpointSigner, TrustedKeys};
pub use record::{
    now_ms, sha256_hex, AuditEvent, AuditRecord, Kind, FORMAT_VERSION, GENESIS, SIGNING_CONTEXT,
};
pub use sink::{AuditSink, FileSink};
pub use verify::{
    read_file, verify, verify_file, verify_reader, ChainVerifier, Malformed, Problem, Report,
};
pub use writer::{AuditConfig, AuditLog, AuditStats};
