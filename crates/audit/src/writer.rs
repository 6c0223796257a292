//! The writer: [`AuditLog::record`] queues an event without waiting; one background task
//! chains, batches, writes and checkpoints.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::chain::ChainHead;
use crate::error::{AuditError, Result};
use crate::keys::CheckpointSigner;
use crate::record::{AuditEvent, AuditRecord};
use crate::sink::AuditSink;

/// Writer settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// Events the queue holds; beyond that [`AuditLog::record`] drops (and counts).
    pub queue_capacity: usize,
    /// Most events per write (1 to 1000).
    pub batch_size: usize,
    /// A checkpoint after this many records since the last one (at least 1).
    pub checkpoint_every: u64,
    /// A checkpoint at most this long after the first record it will sign.
    pub checkpoint_interval: Duration,
    /// Attempts per batch before its events are dropped (at least 1).
    pub write_attempts: u32,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            queue_capacity: 8192,
            batch_size: 256,
            checkpoint_every: 1000,
            checkpoint_interval: Duration::from_secs(60),
            write_attempts: 5,
        }
    }
}

/// Counters, for `/metrics`.
#[derive(Debug, Default)]
struct Counters {
    written: AtomicU64,
    checkpoints: AtomicU64,
    dropped: AtomicU64,
    write_errors: AtomicU64,
    last_seq: AtomicU64,
}

/// A snapshot of the writer's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AuditStats {
    /// Events written (checkpoints not included).
    pub written: u64,
    /// Checkpoints written.
    pub checkpoints: u64,
    /// Events lost: the queue was full, the writer had stopped, a batch still failed
    /// after [`AuditConfig::write_attempts`], or the event claimed the reserved kind
    /// `checkpoint`.
    pub dropped: u64,
    /// Failed write attempts (each retried or, at the last attempt, dropped).
    pub write_errors: u64,
    /// Events waiting in the queue.
    pub queued: u64,
    /// Seq of the last record written.
    pub last_seq: u64,
}

impl AuditStats {
    /// The Prometheus text exposition of these counters.
    pub fn render(&self) -> String {
        format!(
            "# HELP attach_audit_records_total Audit records written, by kind of record.\n\
             # TYPE attach_audit_records_total counter\n\
             attach_audit_records_total{{record=\"event\"}} {}\n\
             attach_audit_records_total{{record=\"checkpoint\"}} {}\n\
             # HELP attach_audit_dropped_total Audit events lost (queue full, writer stopped, write failed).\n\
             # TYPE attach_audit_dropped_total counter\n\
             attach_audit_dropped_total {}\n\
             # HELP attach_audit_write_errors_total Failed audit write attempts.\n\
             # TYPE attach_audit_write_errors_total counter\n\
             attach_audit_write_errors_total {}\n\
             # HELP attach_audit_queue_depth Audit events waiting to be written.\n\
             # TYPE attach_audit_queue_depth gauge\n\
             attach_audit_queue_depth {}\n\
             # HELP attach_audit_last_seq Seq of the last audit record written.\n\
             # TYPE attach_audit_last_seq gauge\n\
             attach_audit_last_seq {}\n",
            self.written,
            self.checkpoints,
            self.dropped,
            self.write_errors,
            self.queued,
            self.last_seq,
        )
    }
}

enum Ctl {
    /// Write everything queued before; with `checkpoint`, then sign what is unsigned.
    Flush {
        checkpoint: bool,
        done: oneshot::Sender<Result<()>>,
    },
    /// Stop taking events, drain, write a final checkpoint, end the task.
    Shutdown(oneshot::Sender<Result<()>>),
}

/// The handle the request path holds. Cloning is cheap (two channel senders and an
/// `Arc`); every clone feeds the same chain.
#[derive(Clone)]
pub struct AuditLog {
    events: mpsc::Sender<AuditEvent>,
    ctl: mpsc::Sender<Ctl>,
    counters: Arc<Counters>,
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Reads the sink's last record (the chain continues from it: seq + 1, its hash as
    /// `prev`) and starts the writer task on the current tokio runtime (which needs its
    /// time driver).
    pub async fn start(
        sink: impl AuditSink,
        signer: CheckpointSigner,
        config: AuditConfig,
    ) -> Result<AuditLog> {
        if config.batch_size == 0 || config.batch_size > 1000 {
            return Err(AuditError::Invalid("batch_size: 1 to 1000".into()));
        }
        if config.checkpoint_every == 0 || config.write_attempts == 0 {
            return Err(AuditError::Invalid(
                "checkpoint_every and write_attempts must be at least 1".into(),
            ));
        }
        if config.checkpoint_interval.is_zero() {
            return Err(AuditError::Invalid(
                "checkpoint_interval must not be zero".into(),
            ));
        }
        let tail = sink.tail().await?;
        let counters = Arc::new(Counters::default());
        let head = match &tail {
            Some(t) => {
                counters.last_seq.store(t.seq, Ordering::Relaxed);
                // An unsigned tail left by a crash is signed by the next checkpoint.
                ChainHead::after(t, u64::from(!t.is_checkpoint()))
            }
            None => ChainHead::new(),
        };
        let (events_tx, events_rx) = mpsc::channel(config.queue_capacity.max(1));
        let (ctl_tx, ctl_rx) = mpsc::channel(16);
        let deadline = (head.unsigned() > 0).then(|| Instant::now() + config.checkpoint_interval);
        let task = Task {
            sink: Box::new(sink),
            signer,
            config,
            counters: counters.clone(),
            head,
            deadline,
            dropped_signed: 0,
        };
        let handle = tokio::spawn(task.run(events_rx, ctl_rx));
        Ok(AuditLog {
            events: events_tx,
            ctl: ctl_tx,
            counters,
            task: Arc::new(Mutex::new(Some(handle))),
        })
    }

    /// Queues `event` without waiting: O(1), no lock, no allocation beyond the
    /// channel's (one block per 32 events, recycled; the event's strings were built by
    /// the caller).
    ///
    /// Returns false when the event was dropped instead — the queue is full, the writer
    /// has stopped, or the kind is the reserved `checkpoint` — and counts it in
    /// [`AuditStats::dropped`].
    ///
    /// Trade-off: the request path never waits for the audit trail. Under overload or
    /// while the sink is failing, events are lost rather than slowing requests; the
    /// loss is visible in the `dropped` counter and recorded, as a count, in the next
    /// checkpoint's `details.dropped`.
    pub fn record(&self, event: AuditEvent) -> bool {
        if event.kind.is_checkpoint() || self.events.try_send(event).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// The counters now.
    pub fn stats(&self) -> AuditStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        AuditStats {
            written: get(&self.counters.written),
            checkpoints: get(&self.counters.checkpoints),
            dropped: get(&self.counters.dropped),
            write_errors: get(&self.counters.write_errors),
            queued: (self.events.max_capacity() - self.events.capacity()) as u64,
            last_seq: get(&self.counters.last_seq),
        }
    }

    /// Waits until every event recorded before the call is written (synced).
    pub async fn flush(&self) -> Result<()> {
        self.control(false).await
    }

    /// Like [`AuditLog::flush`], then writes a checkpoint if any record is unsigned.
    pub async fn checkpoint(&self) -> Result<()> {
        self.control(true).await
    }

    async fn control(&self, checkpoint: bool) -> Result<()> {
        let (done, rx) = oneshot::channel();
        self.ctl
            .send(Ctl::Flush { checkpoint, done })
            .await
            .map_err(|_| AuditError::Closed)?;
        rx.await.map_err(|_| AuditError::Closed)?
    }

    /// Stops taking events (later [`AuditLog::record`] calls, from any clone, drop),
    /// writes what is queued and a final checkpoint, and ends the task. Returns the
    /// final counters.
    pub async fn shutdown(self) -> Result<AuditStats> {
        let (done, rx) = oneshot::channel();
        self.ctl
            .send(Ctl::Shutdown(done))
            .await
            .map_err(|_| AuditError::Closed)?;
        let result = rx.await.map_err(|_| AuditError::Closed)?;
        let handle = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.await;
        }
        result.map(|()| self.stats())
    }
}

struct Task {
    sink: Box<dyn AuditSink>,
    signer: CheckpointSigner,
    config: AuditConfig,
    counters: Arc<Counters>,
    /// The chain as written: the last record and the records since the last checkpoint.
    head: ChainHead,
    /// When the unsigned records must be signed.
    deadline: Option<Instant>,
    /// `dropped` as reported by the last checkpoint written.
    dropped_signed: u64,
}

/// A batch ready to write, and the chain state once it is written.
struct Built {
    records: Vec<AuditRecord>,
    head: ChainHead,
    events: u64,
    checkpoints: u64,
    dropped_signed: u64,
}

impl Built {
    fn into_events(self) -> Vec<AuditEvent> {
        self.records
            .into_iter()
            .filter(|r| !r.is_checkpoint())
            .map(|r| r.event)
            .collect()
    }
}

impl Task {
    async fn run(mut self, mut events: mpsc::Receiver<AuditEvent>, mut ctl: mpsc::Receiver<Ctl>) {
        let batch = self.config.batch_size;
        let mut buf: Vec<AuditEvent> = Vec::with_capacity(batch);
        let mut ctl_open = true;
        loop {
            let deadline = self.deadline;
            tokio::select! {
                biased;
                msg = ctl.recv(), if ctl_open => match msg {
                    Some(Ctl::Flush { checkpoint, done }) => {
                        let r = self.drain(&mut events, &mut buf, checkpoint).await;
                        let _ = done.send(r);
                    }
                    Some(Ctl::Shutdown(done)) => {
                        events.close();
                        let r = self.drain(&mut events, &mut buf, true).await;
                        let _ = done.send(r);
                        return;
                    }
                    None => ctl_open = false,
                },
                n = events.recv_many(&mut buf, batch) => {
                    if n == 0 {
                        // Every handle is gone: sign what is left and stop.
                        let _ = self.write(Vec::new(), true).await;
                        return;
                    }
                    let taken = std::mem::replace(&mut buf, Vec::with_capacity(batch));
                    let _ = self.write(taken, false).await;
                }
                () = sleep_until(deadline), if deadline.is_some() => {
                    let _ = self.write(Vec::new(), true).await;
                    if self.deadline.is_some_and(|d| d <= Instant::now()) {
                        // Signing or writing failed: try again one interval later.
                        self.deadline = Some(Instant::now() + self.config.checkpoint_interval);
                    }
                }
            }
        }
    }

    /// Writes every event queued now, in batches; then a checkpoint if asked.
    async fn drain(
        &mut self,
        events: &mut mpsc::Receiver<AuditEvent>,
        buf: &mut Vec<AuditEvent>,
        checkpoint: bool,
    ) -> Result<()> {
        let batch = self.config.batch_size;
        let mut result = Ok(());
        loop {
            while buf.len() < batch {
                match events.try_recv() {
                    Ok(e) => buf.push(e),
                    Err(_) => break,
                }
            }
            if buf.is_empty() {
                break;
            }
            let taken = std::mem::replace(buf, Vec::with_capacity(batch));
            if let Err(e) = self.write(taken, false).await {
                result = Err(e);
            }
        }
        if checkpoint {
            if let Err(e) = self.write(Vec::new(), true).await {
                result = Err(e);
            }
        }
        result
    }

    /// Chains `events` after the last record written, with a checkpoint after every
    /// `checkpoint_every` unsigned records and, with `force_checkpoint`, at the end if
    /// anything is unsigned.
    fn build(&self, events: Vec<AuditEvent>, force_checkpoint: bool) -> Built {
        let mut b = Built {
            records: Vec::with_capacity(events.len() + 1),
            head: self.head.clone(),
            events: 0,
            checkpoints: 0,
            dropped_signed: self.dropped_signed,
        };
        for event in events {
            match b.head.seal(event) {
                Ok(r) => {
                    b.records.push(r);
                    b.events += 1;
                }
                // Only a `checkpoint` kind, which `record` already refuses.
                Err(_) => {
                    self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
            if b.head.unsigned() >= self.config.checkpoint_every {
                self.push_checkpoint(&mut b);
            }
        }
        if force_checkpoint && b.head.unsigned() > 0 {
            self.push_checkpoint(&mut b);
        }
        b
    }

    fn push_checkpoint(&self, b: &mut Built) {
        let dropped = self.counters.dropped.load(Ordering::Relaxed);
        match b
            .head
            .checkpoint(&self.signer, dropped.saturating_sub(b.dropped_signed))
        {
            Ok(r) => {
                b.records.push(r);
                b.checkpoints += 1;
                b.dropped_signed = dropped;
            }
            // Unsigned records stay unsigned; the next checkpoint covers them.
            Err(_) => {
                self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Builds and appends a batch, retrying with back-off. After a failure the sink's
    /// tail decides: the batch is there after all (a lost acknowledgement), or another
    /// writer moved the chain on (the batch is re-chained after it), or nothing changed
    /// (the same batch is tried again). After the last attempt the events are dropped
    /// (counted) and the chain stays where it was.
    async fn write(&mut self, events: Vec<AuditEvent>, force_checkpoint: bool) -> Result<()> {
        let mut events = events;
        let mut attempt = 0;
        loop {
            let built = self.build(events, force_checkpoint);
            if built.records.is_empty() {
                return Ok(());
            }
            let err = match self.sink.append(&built.records).await {
                Ok(()) => {
                    self.commit(built);
                    return Ok(());
                }
                Err(e) => e,
            };
            self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
            attempt += 1;
            if let Ok(Some(tail)) = self.sink.tail().await {
                let last = built.records.last();
                if last.is_some_and(|l| l.seq == tail.seq && l.hash == tail.hash) {
                    self.commit(built);
                    return Ok(());
                }
                if tail.seq > self.head.last_seq() {
                    // Only ever forwards: a tail behind us (a truncated sink) is left
                    // for the verifier to report as removed records.
                    self.head = ChainHead::after(&tail, self.head.unsigned());
                    self.counters.last_seq.store(tail.seq, Ordering::Relaxed);
                }
            }
            events = built.into_events();
            if attempt >= self.config.write_attempts {
                self.counters
                    .dropped
                    .fetch_add(events.len() as u64, Ordering::Relaxed);
                return Err(err);
            }
            let backoff = Duration::from_millis(100u64 << attempt.min(6));
            tokio::time::sleep(backoff).await;
        }
    }

    fn commit(&mut self, b: Built) {
        self.head = b.head;
        self.dropped_signed = b.dropped_signed;
        self.counters.written.fetch_add(b.events, Ordering::Relaxed);
        self.counters
            .checkpoints
            .fetch_add(b.checkpoints, Ordering::Relaxed);
        self.counters
            .last_seq
            .store(self.head.last_seq(), Ordering::Relaxed);
        if self.head.unsigned() == 0 {
            self.deadline = None;
        } else if self.deadline.is_none() {
            self.deadline = Some(Instant::now() + self.config.checkpoint_interval);
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
