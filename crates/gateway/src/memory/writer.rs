//! The write path, off the request: turns go into a bounded queue; one task writes them
//! to the store in batches. When the store fails, or the queue is full, turns go to an
//! append-only journal (JSON lines, synced), replayed into the store once it answers
//! again and at start. Writes are idempotent by turn id, so a replay never duplicates.
//! Shutting down drains the queue.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use oba_memory::{MemoryStore, Turn};
use tokio::sync::{mpsc, Mutex};

use super::embed::Embedder;

/// Adds embeddings to the turns that lack one; on failure they are stored without (recall
/// then falls back to full-text ranking for them).
async fn embed(embedder: &Embedder, turns: &mut [Turn]) {
    let inputs: Vec<String> = turns
        .iter()
        .filter(|t| t.embedding.is_none())
        .map(|t| format!("{}\n{}", t.user, t.assistant))
        .collect();
    match embedder.embed(&inputs).await {
        Ok(vectors) => {
            let mut vectors = vectors.into_iter();
            for t in turns.iter_mut().filter(|t| t.embedding.is_none()) {
                t.embedding = vectors.next();
            }
        }
        Err(e) => crate::log(format_args!("memory: embeddings skipped: {e}")),
    }
}

/// Turns written per store call.
const BATCH: usize = 256;
/// How often a non-empty journal is retried.
const RETRY: Duration = Duration::from_millis(500);

/// The append-only journal.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    lock: Mutex<()>,
}

impl Journal {
    /// A journal at `path` (created on first write).
    pub fn new(path: PathBuf) -> Self {
        Journal {
            path,
            lock: Mutex::new(()),
        }
    }

    /// Appends and syncs `turns`.
    pub async fn append(&self, turns: Vec<Turn>) -> std::io::Result<()> {
        let _g = self.lock.lock().await;
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut text = Vec::new();
            for t in &turns {
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

    /// Moves the journal into the store; `Ok(n)` turns replayed, the journal emptied only
    /// after the store took them all. A line that does not parse is kept aside in
    /// `<journal>.bad` rather than retried forever.
    pub async fn replay(&self, store: &dyn MemoryStore) -> Result<usize, String> {
        let _g = self.lock.lock().await;
        let text = match tokio::fs::read(&self.path).await {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e.to_string()),
        };
        if text.is_empty() {
            return Ok(0);
        }
        let mut turns = Vec::new();
        let mut bad = Vec::new();
        for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            match serde_json::from_slice::<Turn>(line) {
                Ok(t) => turns.push(t),
                Err(_) => {
                    bad.extend_from_slice(line);
                    bad.push(b'\n');
                }
            }
        }
        for chunk in turns.chunks(BATCH) {
            store.append(chunk).await.map_err(|e| e.to_string())?;
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
        Ok(turns.len())
    }

    /// Bytes in the journal (0 when absent).
    pub async fn len(&self) -> u64 {
        tokio::fs::metadata(&self.path)
            .await
            .map(|m| m.len())
            .unwrap_or(0)
    }
}

/// Queue depth and journal state, for `/metrics` and tests.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Turns waiting in the queue.
    pub queued: AtomicI64,
    /// Turns written to the store.
    pub stored: AtomicI64,
    /// Turns written to the journal.
    pub journaled: AtomicI64,
    /// Turns replayed from the journal.
    pub replayed: AtomicI64,
}

impl WriterStats {
    /// The Prometheus text for these counters.
    pub fn render(&self) -> String {
        let get = |a: &AtomicI64| a.load(Ordering::Relaxed);
        format!(
            "# HELP attach_memory_queue_depth Turns waiting to be written.\n\
             # TYPE attach_memory_queue_depth gauge\n\
             attach_memory_queue_depth {}\n\
             # HELP attach_memory_turns_total Turns by where they were written.\n\
             # TYPE attach_memory_turns_total counter\n\
             attach_memory_turns_total{{to=\"store\"}} {}\n\
             attach_memory_turns_total{{to=\"journal\"}} {}\n\
             attach_memory_turns_total{{to=\"replayed\"}} {}\n",
            get(&self.queued),
            get(&self.stored),
            get(&self.journaled),
            get(&self.replayed),
        )
    }
}

/// The sending side, held by the request path.
#[derive(Debug, Clone)]
pub struct Writer {
    tx: mpsc::Sender<Turn>,
    journal: Arc<Journal>,
    /// Counters.
    pub stats: Arc<WriterStats>,
}

impl Writer {
    /// Starts the writer task; returns the writer and the task (it ends, drained, once
    /// every [`Writer`] clone is dropped).
    pub fn start(
        store: Arc<dyn MemoryStore>,
        journal: Arc<Journal>,
        capacity: usize,
        embedder: Option<Arc<Embedder>>,
    ) -> (Writer, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let stats = Arc::new(WriterStats::default());
        let task = tokio::spawn(run(store, journal.clone(), rx, stats.clone(), embedder));
        (Writer { tx, journal, stats }, task)
    }

    /// Queues a turn without waiting; when the queue is full it goes to the journal.
    pub fn write(&self, turn: Turn) {
        match self.tx.try_send(turn) {
            Ok(()) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(
                mpsc::error::TrySendError::Full(turn) | mpsc::error::TrySendError::Closed(turn),
            ) => {
                let (journal, stats) = (self.journal.clone(), self.stats.clone());
                tokio::spawn(async move {
                    match journal.append(vec![turn]).await {
                        Ok(()) => {
                            stats.journaled.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => crate::log(format_args!("memory: journal write failed: {e}")),
                    }
                });
            }
        }
    }
}

async fn run(
    store: Arc<dyn MemoryStore>,
    journal: Arc<Journal>,
    mut rx: mpsc::Receiver<Turn>,
    stats: Arc<WriterStats>,
    embedder: Option<Arc<Embedder>>,
) {
    // What a previous run left behind.
    let mut pending_journal = journal.len().await > 0;
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        if pending_journal {
            match journal.replay(store.as_ref()).await {
                Ok(n) => {
                    stats.replayed.fetch_add(n as i64, Ordering::Relaxed);
                    pending_journal = false;
                    if n > 0 {
                        crate::log(format_args!("memory: replayed {n} journaled turns"));
                    }
                }
                Err(_) => {}
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
        if let Some(e) = &embedder {
            embed(e, &mut batch).await;
        }
        // While the journal holds turns, new ones go after them (order kept).
        let stored = if pending_journal {
            false
        } else {
            match store.append(&batch).await {
                Ok(()) => true,
                Err(e) => {
                    crate::log(format_args!("memory: store write failed, journaling: {e}"));
                    false
                }
            }
        };
        if stored {
            stats.stored.fetch_add(got as i64, Ordering::Relaxed);
            continue;
        }
        match journal.append(std::mem::take(&mut batch)).await {
            Ok(()) => {
                stats.journaled.fetch_add(got as i64, Ordering::Relaxed);
                pending_journal = true;
            }
            Err(e) => crate::log(format_args!(
                "memory: journal write failed, {got} turns lost: {e}"
            )),
        }
    }
}
