//! The head of a chain: the sans-IO core every writer shares — [`crate::AuditLog`]'s
//! task, and any caller that appends records in its own database transactions (see
//! [`crate::sql`]).

use crate::error::{AuditError, Result};
use crate::keys::CheckpointSigner;
use crate::record::{now_ms, AuditEvent, AuditRecord, Kind, GENESIS};

/// Where a chain stands: the seq and `prev` its next record gets, and how many records
/// follow its last checkpoint.
///
/// [`ChainHead::seal`] turns an event into the next record and moves the head past it;
/// [`ChainHead::checkpoint`] does the same with a signed checkpoint. Nothing is written:
/// the caller stores the records, in order, and keeps the moved head only once they are
/// stored (on a failed write, it keeps the head it had — a clone — or reads the tail
/// again and resumes with [`ChainHead::after`]).
///
/// ```
/// use oba_audit::{AuditEvent, ChainHead, CheckpointSigner, Kind, TrustedKeys, GENESIS};
/// use oba_httpsig::{jwk::Jwk, Algorithm};
///
/// let key = Jwk::generate(Algorithm::Ed25519).unwrap();
/// let signer = CheckpointSigner::from_jwk(&key).unwrap();
///
/// let mut head = ChainHead::new();
/// let first = head
///     .seal(AuditEvent::new(Kind::KeyCreated, 1_700_000_000_000).with_key_id("ci"))
///     .unwrap();
/// assert_eq!((first.seq, first.prev.as_str()), (1, GENESIS));
/// let second = head.seal(AuditEvent::new(Kind::KeyRevoked, 1_700_000_000_001)).unwrap();
/// assert_eq!(second.prev, first.hash);
/// assert_eq!(head.unsigned(), 2);
/// let checkpoint = head.checkpoint(&signer, 0).unwrap();
/// assert_eq!((checkpoint.seq, head.unsigned()), (3, 0));
///
/// // Later (another process, after a restart): resume from the stored tail.
/// let again = ChainHead::after(&checkpoint, 0);
/// assert_eq!(again.next_seq(), 4);
///
/// let mut trusted = TrustedKeys::new();
/// trusted.add_jwk(&key.public().unwrap()).unwrap();
/// let report = oba_audit::verify([first, second, checkpoint].map(Ok), &trusted);
/// assert_eq!(report.summary(), "ok: 3 records, 1 checkpoints, 0 unsigned at the end");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    /// Seq of the last record (0: none yet).
    last_seq: u64,
    /// Its hash ([`GENESIS`] for none).
    last_hash: String,
    /// Records after the last checkpoint.
    unsigned: u64,
}

impl Default for ChainHead {
    fn default() -> Self {
        Self::new()
    }
}

impl ChainHead {
    /// An empty chain: the next record is seq 1, its `prev` [`GENESIS`].
    pub fn new() -> Self {
        ChainHead {
            last_seq: 0,
            last_hash: GENESIS.to_owned(),
            unsigned: 0,
        }
    }

    /// The chain continued after `tail`, its last stored record, with `unsigned` records
    /// since its last checkpoint (0 when `tail` is one).
    ///
    /// `tail.hash` is taken as it is. A caller that must not continue a trail whose last
    /// record was changed checks [`AuditRecord::hash_matches`] first (continuing one hides
    /// nothing: the verifier still names the altered record).
    pub fn after(tail: &AuditRecord, unsigned: u64) -> Self {
        ChainHead {
            last_seq: tail.seq,
            last_hash: tail.hash.clone(),
            unsigned,
        }
    }

    /// The head of a stored chain: after `tail`, its last record (`None`: the chain is
    /// empty), with the records since `last_checkpoint_seq` (its last checkpoint's seq,
    /// `None` when it has none) unsigned. What a writer that keeps no state between
    /// appends reads back from its table (see [`crate::sql`]).
    pub fn resume(tail: Option<&AuditRecord>, last_checkpoint_seq: Option<u64>) -> Self {
        match tail {
            None => Self::new(),
            Some(t) => Self::after(t, t.seq.saturating_sub(last_checkpoint_seq.unwrap_or(0))),
        }
    }

    /// Seq of the last record (0 for an empty chain).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Seq the next record gets (saturating: a chain at `u64::MAX` cannot grow).
    pub fn next_seq(&self) -> u64 {
        self.last_seq.saturating_add(1)
    }

    /// Hash of the last record, the next record's `prev`.
    pub fn last_hash(&self) -> &str {
        &self.last_hash
    }

    /// Records after the last checkpoint.
    pub fn unsigned(&self) -> u64 {
        self.unsigned
    }

    /// True when this head is right after `tail`: same seq, same hash. A cached head
    /// that does not follow the stored tail is stale (another writer appended, or a
    /// write this one did not see committed did): resume from the tail instead.
    pub fn follows(&self, tail: &AuditRecord) -> bool {
        self.last_seq == tail.seq && self.last_hash == tail.hash
    }

    /// The next record: `event` normalised (see [`AuditEvent`]: NUL characters and
    /// non-integer numbers), given the next seq and `prev`, and hashed. The head moves
    /// past it.
    ///
    /// Errors: the kind `checkpoint` is reserved for [`ChainHead::checkpoint`]
    /// ([`AuditError::Invalid`]); a chain at `u64::MAX` is full.
    pub fn seal(&mut self, mut event: AuditEvent) -> Result<AuditRecord> {
        if event.kind.is_checkpoint() {
            return Err(AuditError::Invalid(
                "the kind \"checkpoint\" is reserved for signed checkpoints".into(),
            ));
        }
        event.normalize();
        let seq = self.seq_after()?;
        let record = AuditRecord::seal(seq, self.last_hash.clone(), event);
        self.advance(&record);
        self.unsigned += 1;
        Ok(record)
    }

    /// A checkpoint now: `details` `{"dropped": dropped}` (events the writer lost since
    /// its previous checkpoint; 0 for a writer that never drops), signed by `signer`
    /// over its hash, which covers every record before it. The head moves past it and
    /// nothing is unsigned any more. On an error (the signer failed) the head does not
    /// move.
    pub fn checkpoint(&mut self, signer: &CheckpointSigner, dropped: u64) -> Result<AuditRecord> {
        let seq = self.seq_after()?;
        let event = AuditEvent::new(Kind::Checkpoint, now_ms()).with_detail("dropped", dropped);
        let mut record = AuditRecord::seal(seq, self.last_hash.clone(), event);
        signer.sign_checkpoint(&mut record)?;
        self.advance(&record);
        self.unsigned = 0;
        Ok(record)
    }

    fn seq_after(&self) -> Result<u64> {
        self.last_seq
            .checked_add(1)
            .ok_or_else(|| AuditError::Invalid("the chain is full (seq u64::MAX)".into()))
    }

    fn advance(&mut self, record: &AuditRecord) {
        self.last_seq = record.seq;
        self.last_hash.clone_from(&record.hash);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::TrustedKeys;
    use oba_httpsig::jwk::Jwk;
    use oba_httpsig::Algorithm;

    fn signer() -> (CheckpointSigner, TrustedKeys) {
        let key = Jwk::generate(Algorithm::Ed25519).unwrap();
        let mut trusted = TrustedKeys::new();
        trusted.add_jwk(&key.public().unwrap()).unwrap();
        (CheckpointSigner::from_jwk(&key).unwrap(), trusted)
    }

    #[test]
    fn sealed_records_link_and_verify() {
        let (signer, trusted) = signer();
        let mut head = ChainHead::new();
        let mut records = Vec::new();
        for i in 0..5 {
            records.push(
                head.seal(AuditEvent::new(Kind::KeyCreated, i).with_key_id(format!("k{i}")))
                    .unwrap(),
            );
        }
        records.push(head.checkpoint(&signer, 0).unwrap());
        assert_eq!(head.last_seq(), 6);
        assert_eq!(head.last_hash(), records[5].hash);
        let report = crate::verify(records.into_iter().map(Ok), &trusted);
        assert_eq!(
            report.summary(),
            "ok: 6 records, 1 checkpoints, 0 unsigned at the end"
        );
    }

    #[test]
    fn the_checkpoint_kind_is_refused_and_the_head_stays() {
        let mut head = ChainHead::new();
        let before = head.clone();
        assert!(matches!(
            head.seal(AuditEvent::new(Kind::Checkpoint, 1)),
            Err(AuditError::Invalid(_))
        ));
        assert!(matches!(
            head.seal(AuditEvent::new(Kind::Other("checkpoint".into()), 1)),
            Err(AuditError::Invalid(_))
        ));
        assert_eq!(head, before);
    }

    #[test]
    fn a_full_chain_is_an_error_not_a_wrap() {
        let (signer, _) = signer();
        let mut tail = AuditRecord::seal(
            u64::MAX,
            GENESIS.into(),
            AuditEvent::new(Kind::KeyCreated, 1),
        );
        tail.hash = tail.compute_hash();
        let mut head = ChainHead::after(&tail, 1);
        assert_eq!(head.next_seq(), u64::MAX);
        assert!(head.seal(AuditEvent::new(Kind::KeyCreated, 2)).is_err());
        assert!(head.checkpoint(&signer, 0).is_err());
        assert!(head.follows(&tail));
    }

    #[test]
    fn events_are_normalised_before_hashing() {
        let mut head = ChainHead::new();
        let r = head
            .seal(
                AuditEvent::new(Kind::KeyCreated, 1)
                    .with_actor("a\0b")
                    .with_detail("f", 0.5),
            )
            .unwrap();
        assert_eq!(r.event.actor.as_deref(), Some("a\u{fffd}b"));
        assert_eq!(r.event.details["f"], serde_json::Value::from("0.5"));
        assert!(r.hash_matches());
    }

    #[test]
    fn resume_counts_the_records_after_the_last_checkpoint() {
        let (signer, _) = signer();
        assert_eq!(ChainHead::resume(None, None), ChainHead::new());
        let mut head = ChainHead::new();
        head.seal(AuditEvent::new(Kind::KeyCreated, 1)).unwrap();
        let cp = head.checkpoint(&signer, 0).unwrap();
        assert_eq!(ChainHead::resume(Some(&cp), Some(2)), head);
        let r = head.seal(AuditEvent::new(Kind::KeyCreated, 2)).unwrap();
        head.seal(AuditEvent::new(Kind::KeyCreated, 3)).unwrap();
        let tail = head.seal(AuditEvent::new(Kind::KeyCreated, 4)).unwrap();
        assert_eq!(ChainHead::resume(Some(&tail), Some(2)), head);
        assert_eq!(head.unsigned(), 3);
        assert_eq!(ChainHead::resume(Some(&r), None).unsigned(), 3);
    }

    #[test]
    fn follows_compares_seq_and_hash() {
        let mut head = ChainHead::new();
        let r = head.seal(AuditEvent::new(Kind::KeyCreated, 1)).unwrap();
        assert!(head.follows(&r));
        let mut other = r.clone();
        other.hash = GENESIS.into();
        assert!(!head.follows(&other));
        assert!(!ChainHead::new().follows(&r));
    }
}
