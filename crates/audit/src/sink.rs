//! Where records go: the [`AuditSink`] trait and the JSON-lines [`FileSink`].

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::{AuditError, Result};
use crate::record::AuditRecord;

/// Durable, append-only storage for records. The writer task is its only caller
/// (one writer per chain).
#[async_trait::async_trait]
pub trait AuditSink: Send + Sync + 'static {
    /// The last record, if any, after checking that it matches its own hash
    /// ([`AuditError::Corrupt`] otherwise): the chain continues from it.
    async fn tail(&self) -> Result<Option<AuditRecord>>;

    /// Appends `records` (consecutive seqs) durably, all or nothing: on `Ok` they
    /// survive a crash; on `Err` none of them is kept (or, when that cannot be known,
    /// [`AuditSink::tail`] tells).
    async fn append(&self, records: &[AuditRecord]) -> Result<()>;
}

/// An append-only JSON-lines file, one record per line, synced (`fdatasync`) after
/// every batch.
///
/// On open, a last line without its newline (a write torn by a crash: it was never
/// synced, so never reported written) is cut off and kept in `<file>.torn`. A failed
/// write is truncated back to where the batch began. One process should write a file
/// at a time.
#[derive(Debug, Clone)]
pub struct FileSink {
    path: PathBuf,
    /// Lengths are read from the file, never cached: if it is cut or replaced behind
    /// the writer's back, a failed write still truncates to the right place.
    file: Arc<Mutex<File>>,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> AuditError + '_ {
    move |e| AuditError::Io(format!("{}: {e}", path.display()))
}

impl FileSink {
    /// Opens (creating it, mode 0600, if missing) the file at `path`.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        let existed = path.exists();
        let mut opts = OpenOptions::new();
        opts.read(true).append(true).create(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let file = opts.open(&path).map_err(io_err(&path))?;
        if !existed {
            sync_parent(&path);
        }
        let len = file.metadata().map_err(io_err(&path))?.len();
        cut_torn_tail(&path, &file, len).map_err(io_err(&path))?;
        Ok(FileSink {
            path,
            file: Arc::new(Mutex::new(file)),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Makes the new directory entry durable (best effort).
fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

/// Cuts a last line that lacks its newline, saving it to `<path>.torn`.
fn cut_torn_tail(path: &Path, file: &File, len: u64) -> std::io::Result<()> {
    if len == 0 || read_at(file, len - 1, 1)? == b"\n" {
        return Ok(());
    }
    let cut = match find_last_newline(file, len)? {
        Some(pos) => pos + 1,
        None => 0,
    };
    let torn = read_at(file, cut, usize::try_from(len - cut).unwrap_or(usize::MAX))?;
    let mut aside = path.as_os_str().to_owned();
    aside.push(".torn");
    let mut f = OpenOptions::new().create(true).append(true).open(aside)?;
    f.write_all(&torn)?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    file.set_len(cut)?;
    file.sync_all()
}

fn read_at(mut file: &File, pos: u64, n: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    file.seek(SeekFrom::Start(pos))?;
    file.read_exact(&mut buf)?;
    Ok(buf)
}

/// The position of the last `\n` before `end`.
fn find_last_newline(file: &File, end: u64) -> std::io::Result<Option<u64>> {
    const CHUNK: u64 = 8192;
    let mut hi = end;
    while hi > 0 {
        let lo = hi.saturating_sub(CHUNK);
        let buf = read_at(file, lo, usize::try_from(hi - lo).unwrap_or(0))?;
        if let Some(i) = buf.iter().rposition(|b| *b == b'\n') {
            return Ok(Some(lo + i as u64));
        }
        hi = lo;
    }
    Ok(None)
}

/// The last line of a file that ends with `\n` (without it).
fn last_line(file: &File, len: u64) -> std::io::Result<Option<Vec<u8>>> {
    if len == 0 {
        return Ok(None);
    }
    let start = match find_last_newline(file, len - 1)? {
        Some(pos) => pos + 1,
        None => 0,
    };
    read_at(file, start, usize::try_from(len - 1 - start).unwrap_or(0)).map(Some)
}

#[async_trait::async_trait]
impl AuditSink for FileSink {
    async fn tail(&self) -> Result<Option<AuditRecord>> {
        let file = self.file.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let file = file.lock().unwrap_or_else(|p| p.into_inner());
            let len = file.metadata().map_err(io_err(&path))?.len();
            let Some(line) = last_line(&file, len).map_err(io_err(&path))? else {
                return Ok(None);
            };
            let record = AuditRecord::parse_line(&line).map_err(|e| {
                AuditError::Corrupt(format!("the last line of {}: {e}", path.display()))
            })?;
            if !record.hash_matches() {
                return Err(AuditError::Corrupt(format!(
                    "the last record of {} (seq {}) does not match its hash",
                    path.display(),
                    record.seq
                )));
            }
            Ok(Some(record))
        })
        .await
        .map_err(|e| AuditError::Io(e.to_string()))?
    }

    async fn append(&self, records: &[AuditRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(records.len() * 600);
        for r in records {
            r.write_line(&mut buf);
            buf.push(b'\n');
        }
        let file = self.file.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut file = file.lock().unwrap_or_else(|p| p.into_inner());
            let before = file.metadata().map_err(io_err(&path))?.len();
            let written = file.write_all(&buf).and_then(|()| file.sync_data());
            written.map_err(|e| {
                // Nothing of a failed batch stays (a half line would break the file).
                let _ = file.set_len(before);
                let _ = file.sync_data();
                io_err(&path)(e)
            })
        })
        .await
        .map_err(|e| AuditError::Io(e.to_string()))?
    }
}
