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

/// Why a sink did not take a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkError {
    /// The store is not answering: retry later (the batch is journaled).
    Unavailable(String),
    /// The store refused the content: retrying the same items will not help. The batch
    /// is retried item by item and the items refused alone are set aside.
    Rejected(String),
}

impl std::fmt::Display for SinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SinkError::Unavailable(m) => write!(f, "unavailable: {m}"),
            SinkError::Rejected(m) => write!(f, "rejected: {m}"),
        }
    }
}

/// Where a batch goes. Must be idempotent (an item written twice is stored once).
#[async_trait::async_trait]
pub trait Sink<T>: Send + Sync + 'static {
    /// Writes the batch (it may fill in fields first, e.g. embeddings).
    async fn write(&self, batch: &mut [T]) -> Result<(), SinkError>;
}

/// Writes `batch`; when the sink rejects it, item by item, returning the items it
/// refused alone (to set aside). `Err` only when the sink is unavailable.
async fn write_or_split<T: Send + 'static>(
    sink: &dyn Sink<T>,
    batch: &mut [T],
) -> Result<Vec<usize>, SinkError> {
    match sink.write(batch).await {
        Ok(()) => Ok(Vec::new()),
        Err(SinkError::Unavailable(m)) => Err(SinkError::Unavailable(m)),
        Err(SinkError::Rejected(_)) if batch.len() == 1 => Ok(vec![0]),
        Err(SinkError::Rejected(_)) => {
            let mut refused = Vec::new();
            for i in 0..batch.len() {
                match sink.write(&mut batch[i..=i]).await {
                    Ok(()) => {}
                    Err(SinkError::Rejected(_)) => refused.push(i),
                    Err(e) => return Err(e),
                }
            }
            Ok(refused)
        }
    }
}

/// Creates (0600: journals hold conversation text) or opens for appending.
fn open_private(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o.open(path)
}

/// The append-only journal.
#[derive(Debug)]
pub struct Journal<T> {
    path: PathBuf,
    lock: Mutex<()>,
    /// Set by every append: the writer task then replays.
    dirty: std::sync::atomic::AtomicBool,
    _items: PhantomData<fn(T)>,
}

impl<T: Serialize + DeserializeOwned + Send + 'static> Journal<T> {
    /// A journal at `path` (created on first write).
    pub fn new(path: PathBuf) -> Self {
        Journal {
            path,
            lock: Mutex::new(()),
            dirty: std::sync::atomic::AtomicBool::new(false),
            _items: PhantomData,
        }
    }

    /// Appends and syncs `items`.
    pub async fn append(&self, items: Vec<T>) -> std::io::Result<()> {
        let _g = self.lock.lock().await;
        self.dirty.store(true, Ordering::Relaxed);
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut text = Vec::new();
            for t in &items {
                serde_json::to_writer(&mut text, t)?;
                text.push(b'\n');
            }
            let mut f = open_private(&path)?;
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
            for i in write_or_split(sink, chunk)
                .await
                .map_err(|e| e.to_string())?
            {
                serde_json::to_writer(&mut bad, &chunk[i]).map_err(|e| e.to_string())?;
                bad.push(b'\n');
            }
        }
        if !bad.is_empty() {
            self.set_aside(bad).await.map_err(|e| e.to_string())?;
        }
        let f = tokio::fs::File::create(&self.path)
            .await
            .map_err(|e| e.to_string())?;
        f.sync_all().await.map_err(|e| e.to_string())?;
        Ok(items.len())
    }

    /// Appends lines the store refused (or that do not parse) to `<journal>.bad`, for a
    /// person to look at; they are never retried.
    async fn set_aside(&self, lines: Vec<u8>) -> std::io::Result<()> {
        let path = self.path.with_extension("bad");
        crate::log(format_args!(
            "outbox: items the store refused were set aside in {}",
            path.display()
        ));
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut f = open_private(&path)?;
            f.write_all(&lines)?;
            f.sync_data()
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Bytes in the journal (0 when absent).
    pub async fn bytes(&self) -> u64 {
        tokio::fs::metadata(&self.path)
            .await
            .map(|m| m.len())
            .unwrap_or(0)
    }
}

/// The file a SQLite store URL names (`sqlite:PATH` or `sqlite://PATH`, without its
/// `?query`), or `None` (`sqlite::memory:`, another database).
pub fn sqlite_file(store: &str) -> Option<&str> {
    let p = store.strip_prefix("sqlite:")?;
    let p = p.strip_prefix("//").unwrap_or(p);
    let p = p.split('?').next().unwrap_or(p);
    (!p.is_empty() && p != ":memory:").then_some(p)
}

/// The journal of a store's outbox: `PATH.journal` next to a SQLite file, else
/// `fallback` in the working directory.
pub fn default_journal(store: &str, fallback: &str) -> PathBuf {
    sqlite_file(store).map_or_else(
        || PathBuf::from(fallback),
        |p| PathBuf::from(format!("{p}.journal")),
    )
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
    /// Items that found the queue full, waiting for one journal append, and whether a
    /// flusher is running (at most one, so the journal keeps their order).
    overflow: Arc<std::sync::Mutex<(Vec<T>, bool)>>,
    /// Counters.
    pub stats: Arc<Stats>,
}

impl<T> Clone for Outbox<T> {
    fn clone(&self) -> Self {
        Outbox {
            tx: self.tx.clone(),
            journal: self.journal.clone(),
            overflow: self.overflow.clone(),
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
        let overflow = Arc::default();
        (
            Outbox {
                tx,
                journal,
                overflow,
                stats,
            },
            task,
        )
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
                // Group commit: items that overflow while an append runs join the next
                // one (one fsync), written by the one flusher task.
                let start = {
                    let mut o = self.overflow.lock().unwrap_or_else(|e| e.into_inner());
                    o.0.push(item);
                    !std::mem::replace(&mut o.1, true)
                };
                if start {
                    let (overflow, journal, stats) = (
                        self.overflow.clone(),
                        self.journal.clone(),
                        self.stats.clone(),
                    );
                    tokio::spawn(async move {
                        loop {
                            let items = {
                                let mut o = overflow.lock().unwrap_or_else(|e| e.into_inner());
                                if o.0.is_empty() {
                                    o.1 = false;
                                    return;
                                }
                                std::mem::take(&mut o.0)
                            };
                            let n = items.len();
                            match journal.append(items).await {
                                Ok(()) => {
                                    stats.journaled.fetch_add(n as i64, Ordering::Relaxed);
                                }
                                Err(e) => crate::log(format_args!(
                                    "outbox: journal write failed, {n} items lost: {e}"
                                )),
                            }
                        }
                    });
                }
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
        // Items the request path journaled itself (queue full).
        pending_journal |= journal.dirty.swap(false, Ordering::Relaxed);
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
            match write_or_split(sink.as_ref(), &mut batch).await {
                Ok(refused) => {
                    let mut lines = Vec::new();
                    for i in &refused {
                        if serde_json::to_writer(&mut lines, &batch[*i]).is_ok() {
                            lines.push(b'\n');
                        }
                    }
                    if !lines.is_empty() {
                        if let Err(e) = journal.set_aside(lines).await {
                            crate::log(format_args!("outbox: refused items lost: {e}"));
                        }
                    }
                    stats
                        .stored
                        .fetch_add((got - refused.len()) as i64, Ordering::Relaxed);
                    continue;
                }
                Err(e) => crate::log(format_args!("outbox: write failed, journaling: {e}")),
            }
        }
        match journal.append(std::mem::take(&mut batch)).await {
            Ok(()) => {
                stats.journaled.fetch_add(got as i64, Ordering::Relaxed);
                // Our own append: the replay below takes it.
                journal.dirty.store(false, Ordering::Relaxed);
                pending_journal = true;
            }
            Err(e) => crate::log(format_args!(
                "outbox: journal write failed, {got} items lost: {e}"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// Stores strings; refuses any containing "bad"; can be made unavailable.
    #[derive(Default)]
    struct Fake {
        stored: std::sync::Mutex<Vec<String>>,
        down: AtomicBool,
    }

    #[async_trait::async_trait]
    impl Sink<String> for Fake {
        async fn write(&self, batch: &mut [String]) -> Result<(), SinkError> {
            if self.down.load(Ordering::Relaxed) {
                return Err(SinkError::Unavailable("down".into()));
            }
            if batch.iter().any(|s| s.contains("bad")) {
                return Err(SinkError::Rejected("bad item".into()));
            }
            self.stored.lock().unwrap().extend(batch.iter().cloned());
            Ok(())
        }
    }

    async fn until(f: impl Fn() -> bool) {
        for _ in 0..200 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("condition never met");
    }

    #[test]
    fn store_urls_name_their_sqlite_file_and_journal() {
        for (url, file) in [
            ("sqlite:m.db", Some("m.db")),
            ("sqlite://m.db", Some("m.db")),
            ("sqlite:///var/m.db?mode=rwc", Some("/var/m.db")),
            ("sqlite::memory:", None),
            ("postgres://db/x", None),
        ] {
            assert_eq!(sqlite_file(url), file, "{url}");
        }
        assert_eq!(
            default_journal("sqlite://m.db", "j"),
            PathBuf::from("m.db.journal")
        );
        assert_eq!(default_journal("postgres://db/x", "j"), PathBuf::from("j"));
    }

    #[tokio::test]
    async fn a_refused_item_is_set_aside_and_never_blocks_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(Fake::default());
        let journal = dir.path().join("j");
        // The store is down first: everything is journaled, the poison item included.
        sink.down.store(true, Ordering::Relaxed);
        let (outbox, task) = Outbox::start(sink.clone(), journal.clone(), 16);
        for s in ["a", "bad", "b"] {
            outbox.send(s.to_owned());
        }
        until(|| outbox.stats.journaled.load(Ordering::Relaxed) == 3).await;
        sink.down.store(false, Ordering::Relaxed);
        until(|| sink.stored.lock().unwrap().len() == 2).await;
        outbox.send("c".into());
        drop(outbox);
        task.await.unwrap();
        assert_eq!(*sink.stored.lock().unwrap(), ["a", "b", "c"]);
        assert_eq!(
            std::fs::read_to_string(journal.with_extension("bad")).unwrap(),
            "\"bad\"\n"
        );
        assert_eq!(
            std::fs::read_to_string(&journal).unwrap(),
            "",
            "the journal emptied"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&journal).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "journals hold conversation text");
        }
    }

    #[tokio::test]
    async fn items_that_overflowed_the_queue_are_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(Fake::default());
        let (outbox, task) = Outbox::start(sink.clone(), dir.path().join("j"), 1);
        // A queue of one: most of these go to the journal from the request path.
        for i in 0..50 {
            outbox.send(format!("item-{i}"));
        }
        until(|| sink.stored.lock().unwrap().len() == 50).await;
        drop(outbox);
        task.await.unwrap();
        let mut got = sink.stored.lock().unwrap().clone();
        got.sort();
        got.dedup();
        assert_eq!(got.len(), 50, "each item stored");
    }
}
