//! The write path off the request, shared by memory turns and usage records: items go
//! into a bounded queue; one task writes them to their [`Sink`] in batches. When the
//! sink fails, or the queue is full, items go to an append-only journal (JSON lines,
//! synced), replayed into the sink once it answers again and at start. Sinks are
//! idempotent by item id, so a replay never duplicates. Shutting down drains the queue.

use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, Mutex};

/// Items written per sink call.
const BATCH: usize = 256;
/// How often a non-empty journal is retried.
const RETRY: Duration = Duration::from_millis(500);

/// Where a batch goes. Must be idempotent (an item written twice is stored once).
#[async_trait::async_trait]
pub trait Sink<T>: Send + Sync + 'static {
    /// Writes the batch (it may fill in fields first, e.g. embeddings).
    async fn write(&self, batch: &mut [T]) -> Result<(), String>;
}

/// The append-only journal.
#[derive(Debug)]
pub struct Journal<T> {
    path: PathBuf,
    lock: Mutex<()>,
    _items: PhantomData<fn(T)>,
}

impl<T: Serialize + DeserializeOwned + Send + 'static> Journal<T> {
    /// A journal at `path` (created on first write).
    pub fn new(path: PathBuf) -> Self {
        Journal {
            path,
            lock: Mutex::new(()),
            _items: PhantomData,
        }
    }

    /// Appends and syncs `items`.
    pub async fn append(&self, items: Vec<T>) -> std::io::Result<()> {
        let _g = self.lock.lock().await;
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut text = Vec::new();
            for t in &items {
                serde_json::to_writer(&mut text, t)?;
                text.push(b'\n');
            }
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            f.write_all(&text)?;
            f.sync_data()
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Moves the journal into `sink`; the journal is emptied only after the sink took
    /// everything. A line that does not parse is kept aside in `<journal>.bad` rather
    /// than retried forever.
    pub async fn replay(&self, sink: &dyn Sink<T>) -> Result<usize, String> {
        let _g = self.lock.lock().await;
        let text = match tokio::fs::read(&self.path).await {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e.to_string()),
        };
        if text.is_empty() {
            return Ok(0);
        }
        let mut items = Vec::new();
        let mut bad = Vec::new();
        for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            match serde_json::from_slice::<T>(line) {
                Ok(t) => items.push(t),
                Err(_) => {
                    bad.extend_from_slice(line);
                    bad.push(b'\n');
                }
            }
        }
        for chunk in items.chunks_mut(BATCH) {
            sink.write(chunk).await?;
        }
        if !bad.is_empty() {
            use tokio::io::AsyncWriteExt;
            let mut f = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.path.with_extension("bad"))
                .await
                .map_err(|e| e.to_string())?;
            f.write_all(&bad).await.map_err(|e| e.to_string())?;
        }
        let f = tokio::fs::File::create(&self.path)
            .await
            .map_err(|e| e.to_string())?;
        f.sync_all().await.map_err(|e| e.to_string())?;
        Ok(items.len())
    }

    /// Bytes in the journal (0 when absent).
    pub async fn bytes(&self) -> u64 {
        tokio::fs::metadata(&self.path)
            .await
            .map(|m| m.len())
            .unwrap_or(0)
    }
}

/// Queue depth and journal counters, for `/metrics` and tests.
#[derive(Debug, Default)]
pub struct Stats {
    /// Items waiting in the queue.
    pub queued: AtomicI64,
    /// Items written to the sink.
    pub stored: AtomicI64,
    /// Items written to the journal.
    pub journaled: AtomicI64,
    /// Items replayed from the journal.
    pub replayed: AtomicI64,
}

impl Stats {
    /// The Prometheus text for these counters, under `attach_<name>_...`.
    pub fn render(&self, name: &str, what: &str) -> String {
        let get = |a: &AtomicI64| a.load(Ordering::Relaxed);
        format!(
            "# HELP attach_{name}_queue_depth {what} waiting to be written.\n\
             # TYPE attach_{name}_queue_depth gauge\n\
             attach_{name}_queue_depth {}\n\
             # HELP attach_{name}_written_total {what} by where they were written.\n\
             # TYPE attach_{name}_written_total counter\n\
             attach_{name}_written_total{{to=\"store\"}} {}\n\
             attach_{name}_written_total{{to=\"journal\"}} {}\n\
             attach_{name}_written_total{{to=\"replayed\"}} {}\n",
            get(&self.queued),
            get(&self.stored),
            get(&self.journaled),
            get(&self.replayed),
        )
    }
}

/// The sending side, held by the request path.
pub struct Outbox<T> {
    tx: mpsc::Sender<T>,
    journal: Arc<Journal<T>>,
    /// Counters.
    pub stats: Arc<Stats>,
}

impl<T> Clone for Outbox<T> {
    fn clone(&self) -> Self {
        Outbox {
            tx: self.tx.clone(),
            journal: self.journal.clone(),
            stats: self.stats.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Outbox<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Outbox({})", self.journal.path.display())
    }
}

impl<T: Serialize + DeserializeOwned + Send + 'static> Outbox<T> {
    /// Starts the writer task; returns the outbox and the task (it ends, drained, once
    /// every [`Outbox`] clone is dropped).
    pub fn start(
        sink: Arc<dyn Sink<T>>,
        journal: PathBuf,
        capacity: usize,
    ) -> (Outbox<T>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let stats = Arc::new(Stats::default());
        let journal = Arc::new(Journal::new(journal));
        let task = tokio::spawn(run(sink, journal.clone(), rx, stats.clone()));
        (Outbox { tx, journal, stats }, task)
    }

    /// Queues an item without waiting; when the queue is full it goes to the journal.
    pub fn send(&self, item: T) {
        match self.tx.try_send(item) {
            Ok(()) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(
                mpsc::error::TrySendError::Full(item) | mpsc::error::TrySendError::Closed(item),
            ) => {
                let (journal, stats) = (self.journal.clone(), self.stats.clone());
                tokio::spawn(async move {
                    match journal.append(vec![item]).await {
                        Ok(()) => {
                            stats.journaled.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => crate::log(format_args!("outbox: journal write failed: {e}")),
                    }
                });
            }
        }
    }
}

async fn run<T: Serialize + DeserializeOwned + Send + 'static>(
    sink: Arc<dyn Sink<T>>,
    journal: Arc<Journal<T>>,
    mut rx: mpsc::Receiver<T>,
    stats: Arc<Stats>,
) {
    // What a previous run left behind.
    let mut pending_journal = journal.bytes().await > 0;
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        if pending_journal {
            if let Ok(n) = journal.replay(sink.as_ref()).await {
                stats.replayed.fetch_add(n as i64, Ordering::Relaxed);
                pending_journal = false;
                if n > 0 {
                    crate::log(format_args!("outbox: replayed {n} journaled items"));
                }
            }
        }
        batch.clear();
        let got = if pending_journal {
            match tokio::time::timeout(RETRY, rx.recv_many(&mut batch, BATCH)).await {
                Ok(n) => n,
                Err(_) => continue,
            }
        } else {
            rx.recv_many(&mut batch, BATCH).await
        };
        if got == 0 {
            // Closed and drained.
            return;
        }
        stats.queued.fetch_sub(got as i64, Ordering::Relaxed);
        // While the journal holds items, new ones go after them (order kept).
        if !pending_journal {
            match sink.write(&mut batch).await {
                Ok(()) => {
                    stats.stored.fetch_add(got as i64, Ordering::Relaxed);
                    continue;
                }
                Err(e) => crate::log(format_args!("outbox: write failed, journaling: {e}")),
            }
        }
        match journal.append(std::mem::take(&mut batch)).await {
            Ok(()) => {
                stats.journaled.fetch_add(got as i64, Ordering::Relaxed);
                pending_journal = true;
            }
            Err(e) => crate::log(format_args!(
                "outbox: journal write failed, {got} items lost: {e}"
            )),
        }
    }
}
