//! The verifier: walks a chain from seq 1 and reports the first problem.

use std::fmt;
use std::io::BufRead;
use std::path::Path;

use serde::Serialize;

use crate::error::{AuditError, Result};
use crate::keys::{SigFailure, TrustedKeys};
use crate::record::{AuditRecord, GENESIS};

/// The first thing wrong with a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Problem {
    /// The record at position `seq` does not match its hash: a field (or the hash) was
    /// changed.
    Altered {
        /// The position of the record (the seq it should have).
        seq: u64,
    },
    /// Records are missing: after `after_seq` the next record is not `expected_seq`, and
    /// `expected_seq` appears nowhere later.
    Removed {
        /// The last record before the gap (0: the start of the chain is missing).
        after_seq: u64,
        /// The first missing seq.
        expected_seq: u64,
    },
    /// Record `seq` is out of place: it comes before a record that should precede it,
    /// repeats an earlier seq, or does not link to its predecessor's hash.
    Reordered {
        /// The record found out of place.
        seq: u64,
    },
    /// Checkpoint `seq` has a missing or wrong signature (or an algorithm that is not
    /// its key's).
    BadSignature {
        /// The checkpoint.
        seq: u64,
    },
    /// Checkpoint `seq` is signed by a key that is not trusted.
    UnknownKey {
        /// The checkpoint.
        seq: u64,
    },
    /// Line `line` (file) or row `line` in seq order (database) is not a record.
    Malformed {
        /// 1-based.
        line: u64,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Altered { seq } => write!(f, "record {seq} was altered"),
            Problem::Removed {
                after_seq,
                expected_seq,
            } => write!(
                f,
                "record {expected_seq} was removed (after record {after_seq})"
            ),
            Problem::Reordered { seq } => write!(f, "record {seq} is out of order"),
            Problem::BadSignature { seq } => write!(f, "checkpoint {seq} has a bad signature"),
            Problem::UnknownKey { seq } => {
                write!(f, "checkpoint {seq} is signed by an unknown key")
            }
            Problem::Malformed { line } => write!(f, "line {line} is not a valid record"),
        }
    }
}

/// What the verifier found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Records verified (all of them when intact; those before the problem otherwise).
    pub records: u64,
    /// Checkpoints whose signature verified.
    pub checkpoints: u64,
    /// Records after the last verified checkpoint: their chain is intact but nothing
    /// signs them yet (reported, not a problem — see the crate docs on truncation).
    pub unsigned_tail: u64,
    /// Seq of the last verified record (0 for an empty chain).
    pub last_seq: u64,
    /// Hash of the last verified record ([`GENESIS`] for an empty chain).
    pub last_hash: String,
    /// Seq of the last verified checkpoint.
    pub last_checkpoint_seq: Option<u64>,
    /// The first problem, if any.
    pub problem: Option<Problem>,
    /// More about the problem (a parse error, ...).
    pub detail: Option<String>,
}

impl Report {
    /// True when no problem was found.
    pub fn is_intact(&self) -> bool {
        self.problem.is_none()
    }

    /// One line: `ok: N records, C checkpoints, T unsigned at the end`, or
    /// `TAMPERED: record 17 was altered` (and so on).
    pub fn summary(&self) -> String {
        match &self.problem {
            None => format!(
                "ok: {} records, {} checkpoints, {} unsigned at the end",
                self.records, self.checkpoints, self.unsigned_tail
            ),
            Some(p) => format!("TAMPERED: {p}"),
        }
    }
}

/// A line (or row) that is not a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// 1-based line (or row) number.
    pub line: u64,
    /// Why.
    pub message: String,
}

enum State {
    Walking,
    /// A record jumped ahead: the rest is scanned for the missing seq (found: the chain
    /// was reordered; not found: records were removed).
    Gap {
        after_seq: u64,
        expected_seq: u64,
        found_seq: u64,
    },
    Done(Problem, Option<String>),
}

/// A streaming verifier: feed it every record in order with [`ChainVerifier::push`],
/// then [`ChainVerifier::finish`]. Memory use does not grow with the chain.
pub struct ChainVerifier<'k> {
    keys: &'k TrustedKeys,
    next_seq: u64,
    last_hash: String,
    records: u64,
    checkpoints: u64,
    unsigned: u64,
    last_checkpoint: Option<u64>,
    state: State,
}

impl<'k> ChainVerifier<'k> {
    /// A verifier for a chain starting at seq 1.
    pub fn new(keys: &'k TrustedKeys) -> Self {
        ChainVerifier {
            keys,
            next_seq: 1,
            last_hash: GENESIS.to_owned(),
            records: 0,
            checkpoints: 0,
            unsigned: 0,
            last_checkpoint: None,
            state: State::Walking,
        }
    }

    /// True once the outcome is known (the rest need not be read).
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Done(..))
    }

    /// The next record (or line that is not one).
    pub fn push(&mut self, entry: std::result::Result<AuditRecord, Malformed>) {
        match &self.state {
            State::Done(..) => return,
            State::Gap {
                expected_seq,
                found_seq,
                ..
            } => {
                if matches!(&entry, Ok(r) if r.seq == *expected_seq) {
                    self.state = State::Done(Problem::Reordered { seq: *found_seq }, None);
                }
                return;
            }
            State::Walking => {}
        }
        let record = match entry {
            Ok(r) => r,
            Err(m) => {
                self.state = State::Done(Problem::Malformed { line: m.line }, Some(m.message));
                return;
            }
        };
        let expected = self.next_seq;
        if !record.hash_matches() {
            let detail = if record.seq == expected {
                None
            } else {
                Some(format!("it claims seq {}", record.seq))
            };
            self.state = State::Done(Problem::Altered { seq: expected }, detail);
            return;
        }
        if record.seq > expected {
            self.state = State::Gap {
                after_seq: expected - 1,
                expected_seq: expected,
                found_seq: record.seq,
            };
            return;
        }
        if record.seq < expected {
            self.state = State::Done(
                Problem::Reordered { seq: record.seq },
                Some(format!("expected seq {expected}")),
            );
            return;
        }
        if record.prev != self.last_hash {
            self.state = State::Done(
                Problem::Reordered { seq: record.seq },
                Some("prev is not the hash of the record before".into()),
            );
            return;
        }
        if record.is_checkpoint() {
            match self.keys.check(&record) {
                Ok(()) => {
                    self.checkpoints += 1;
                    self.unsigned = 0;
                    self.last_checkpoint = Some(record.seq);
                }
                Err(SigFailure::UnknownKey) => {
                    self.state = State::Done(
                        Problem::UnknownKey { seq: record.seq },
                        record.sig_keyid.as_ref().map(|k| format!("keyid {k}")),
                    );
                    return;
                }
                Err(SigFailure::Bad) => {
                    self.state = State::Done(Problem::BadSignature { seq: record.seq }, None);
                    return;
                }
            }
        } else {
            self.unsigned += 1;
        }
        self.records += 1;
        self.next_seq += 1;
        self.last_hash = record.hash;
    }

    /// The report.
    pub fn finish(self) -> Report {
        let (problem, detail) = match self.state {
            State::Walking => (None, None),
            State::Gap {
                after_seq,
                expected_seq,
                ..
            } => (
                Some(Problem::Removed {
                    after_seq,
                    expected_seq,
                }),
                None,
            ),
            State::Done(p, d) => (Some(p), d),
        };
        Report {
            records: self.records,
            checkpoints: self.checkpoints,
            unsigned_tail: self.unsigned,
            last_seq: self.next_seq - 1,
            last_hash: self.last_hash,
            last_checkpoint_seq: self.last_checkpoint,
            problem,
            detail,
        }
    }
}

/// Verifies a whole chain, in order, against the trusted keys.
pub fn verify<I>(entries: I, keys: &TrustedKeys) -> Report
where
    I: IntoIterator<Item = std::result::Result<AuditRecord, Malformed>>,
{
    let mut v = ChainVerifier::new(keys);
    for e in entries {
        v.push(e);
        if v.is_finished() {
            break;
        }
    }
    v.finish()
}

/// Verifies a JSON-lines file, streaming. An I/O error is an error; a line that is not
/// a record is [`Problem::Malformed`].
pub fn verify_file(path: &Path, keys: &TrustedKeys) -> Result<Report> {
    let file = open(path)?;
    verify_reader(std::io::BufReader::with_capacity(64 * 1024, file), keys)
        .map_err(|e| AuditError::Io(format!("{}: {e}", path.display())))
}

/// Verifies JSON lines from any reader (a file, standard input, bytes in memory).
pub fn verify_reader(reader: impl BufRead, keys: &TrustedKeys) -> std::io::Result<Report> {
    let mut v = ChainVerifier::new(keys);
    for_each_line(reader, |entry| {
        v.push(entry);
        !v.is_finished()
    })?;
    Ok(v.finish())
}

/// Reads every line of a JSON-lines file (see [`AuditRecord::parse_line`]).
pub fn read_file(path: &Path) -> Result<Vec<std::result::Result<AuditRecord, Malformed>>> {
    let file = open(path)?;
    let mut all = Vec::new();
    for_each_line(std::io::BufReader::new(file), |entry| {
        all.push(entry);
        true
    })
    .map_err(|e| AuditError::Io(format!("{}: {e}", path.display())))?;
    Ok(all)
}

fn open(path: &Path) -> Result<std::fs::File> {
    std::fs::File::open(path).map_err(|e| AuditError::Io(format!("{}: {e}", path.display())))
}

/// Calls `f` with each line (split on `\n` only, so a stray `\r` is part of the line)
/// until it returns false.
fn for_each_line(
    mut reader: impl BufRead,
    mut f: impl FnMut(std::result::Result<AuditRecord, Malformed>) -> bool,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut line = 0u64;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            return Ok(());
        }
        line += 1;
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        let entry = if buf.is_empty() {
            Err(Malformed {
                line,
                message: "empty line".into(),
            })
        } else {
            AuditRecord::parse_line(&buf).map_err(|message| Malformed { line, message })
        };
        if !f(entry) {
            return Ok(());
        }
    }
}
