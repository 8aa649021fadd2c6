//! The writer: a bounded queue in front of one dedicated thread that chains,
//! writes, rotates and syncs.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::files;
use crate::record::{AuditEvent, AuditRecord, Digest, RecordError};
use crate::verify::Head;

/// When the writer thread calls `fdatasync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// After every record.
    EachRecord,
    /// After `max_records` unsynced records, or once the oldest unsynced
    /// record is `max_delay` old (checked when a record is written), and
    /// always when the queue runs empty. Because of the last rule no record
    /// waits for `max_delay` when the writer is idle.
    Batched {
        /// Records per sync at most (0 counts as 1).
        max_records: u32,
        /// Age of the oldest unsynced record that forces a sync.
        max_delay: Duration,
    },
    /// Only on [`AuditLog::flush`], [`AuditLog::close`] and when a file is
    /// rotated; otherwise the OS writes back when it likes.
    Never,
}

impl Default for FsyncPolicy {
    /// `Batched { max_records: 64, max_delay: 50 ms }`.
    fn default() -> Self {
        Self::Batched {
            max_records: 64,
            max_delay: Duration::from_millis(50),
        }
    }
}

/// What [`AuditLog::append`] does when the queue is full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OverflowPolicy {
    /// Wait for room: a dropped audit record is a lost record.
    #[default]
    Wait,
    /// Drop the record, count it in [`AuditStats::dropped`], return `Ok`.
    Drop,
}

/// The writer's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditConfig {
    /// A record that would make the current file larger starts a new file
    /// (a record larger than this still goes, alone, into a file). Default
    /// 64 MiB.
    pub max_file_bytes: u64,
    /// Events the queue holds at most; at least 1. Default 4096.
    pub queue_capacity: usize,
    /// What a full queue does. Default [`OverflowPolicy::Wait`].
    pub overflow: OverflowPolicy,
    /// When to sync. Default [`FsyncPolicy::Batched`] (64 records, 50 ms).
    pub fsync: FsyncPolicy,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            max_file_bytes: 64 * 1024 * 1024,
            queue_capacity: 4096,
            overflow: OverflowPolicy::Wait,
            fsync: FsyncPolicy::default(),
        }
    }
}

/// Errors of [`AuditWriter::open`].
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// `queue_capacity` is 0.
    #[error("queue_capacity must be at least 1")]
    ZeroCapacity,
    /// The directory cannot be created or listed.
    #[error("cannot list {path}")]
    List {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A log file cannot be read or opened for appending.
    #[error("cannot open {path}")]
    File {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The last complete line of the log is not a v1 record: the writer does
    /// not guess where the chain goes on.
    #[error("last line of {path} is not a v1 record")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: RecordError,
    },
    /// The writer thread cannot be started.
    #[error("cannot start the writer thread")]
    Spawn(#[source] io::Error),
}

/// Why the writer thread stopped; kept by the log and returned (shared) to
/// every later caller inside [`AuditError::Failed`].
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A new file cannot be created (or a torn-only file with its name cannot
    /// be moved aside).
    #[error("cannot create {path}")]
    Create {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A file with the next file's name already holds records.
    #[error("{path} already holds records")]
    Occupied {
        /// The file.
        path: PathBuf,
    },
    /// A line cannot be written.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A file (or the directory) cannot be synced.
    #[error("cannot sync {path}")]
    Sync {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A record cannot be encoded (never expected: events are checked on
    /// append).
    #[error("cannot encode record {seq}")]
    Encode {
        /// The record's seq.
        seq: u64,
        /// The cause.
        #[source]
        source: RecordError,
    },
}

/// Errors of appending, flushing and closing.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    /// The writer thread stopped on a write error; nothing more is written.
    #[error("audit writer failed")]
    Failed(#[source] Arc<WriteError>),
    /// The log was closed.
    #[error("audit log is closed")]
    Closed,
    /// The event cannot be recorded as given.
    #[error("invalid audit event")]
    InvalidEvent(#[source] Arc<RecordError>),
}

/// Counters, for export as metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditStats {
    /// Records whose line was written to the file (not necessarily synced).
    pub records_written: u64,
    /// Bytes written, newlines included.
    pub bytes_written: u64,
    /// `fdatasync` calls on log files plus `fsync` calls on the directory.
    pub fsyncs: u64,
    /// Events dropped by [`OverflowPolicy::Drop`].
    pub dropped: u64,
    /// Events in the queue now.
    pub queue_depth: u64,
    /// Write, sync or create errors (at most 1: the first stops the writer).
    pub write_errors: u64,
    /// Events accepted by `append` but never (fully) written because the
    /// writer failed first: those of the batch in hand and those still
    /// queued.
    pub lost: u64,
}

#[derive(Debug, Default)]
struct Counters {
    records_written: AtomicU64,
    bytes_written: AtomicU64,
    fsyncs: AtomicU64,
    dropped: AtomicU64,
    write_errors: AtomicU64,
    lost: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<AuditEvent>,
    /// Events ever queued; the n-th has ticket n (1-based).
    enqueued: u64,
    /// Events written.
    processed: u64,
    /// Events written and synced.
    synced: u64,
    /// The ticket a flusher waits to see synced.
    flush_target: u64,
    closing: bool,
    exited: bool,
    failed: Option<Arc<WriteError>>,
    head: Option<Head>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// The writer thread waits here for events, flushes and close.
    work: Condvar,
    /// Blocking appenders wait here for room.
    space: Condvar,
    /// Blocking flushers wait here for syncs.
    done: Condvar,
    space_async: Notify,
    done_async: Notify,
    capacity: usize,
    overflow: OverflowPolicy,
    counters: Counters,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; if something did, the state
        // is still consistent enough to report on.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wake_appenders(&self) {
        self.space.notify_all();
        self.space_async.notify_waiters();
    }

    fn wake_flushers(&self) {
        self.done.notify_all();
        self.done_async.notify_waiters();
    }

    /// Queues `event` (the caller checked for room) and wakes the writer.
    fn push(&self, mut st: MutexGuard<'_, State>, event: AuditEvent) {
        // The writer only sleeps on an empty queue and takes the whole queue
        // when it wakes, so only the push that ends the emptiness needs to
        // wake it (a notify is a futex syscall).
        let wake = st.queue.is_empty();
        st.queue.push_back(event);
        st.enqueued += 1;
        drop(st);
        if wake {
            self.work.notify_one();
        }
    }

    /// Queues the event, or hands it back when the queue is full and the
    /// policy is to wait.
    fn try_push(&self, event: AuditEvent) -> Result<Option<AuditEvent>, AuditError> {
        let st = self.lock();
        if let Some(failed) = &st.failed {
            return Err(AuditError::Failed(failed.clone()));
        }
        if st.closing {
            return Err(AuditError::Closed);
        }
        if st.queue.len() < self.capacity {
            self.push(st, event);
            return Ok(None);
        }
        match self.overflow {
            OverflowPolicy::Drop => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                Ok(None)
            }
            OverflowPolicy::Wait => Ok(Some(event)),
        }
    }

    /// `Ok(true)` once every event queued before `target` is synced.
    fn flushed(&self, st: &mut State, target: u64) -> Result<bool, AuditError> {
        if let Some(failed) = &st.failed {
            return Err(AuditError::Failed(failed.clone()));
        }
        if st.synced >= target {
            return Ok(true);
        }
        if st.exited {
            // Only reachable if the thread ended without failing or syncing,
            // which it does not; report it rather than wait forever.
            return Err(AuditError::Closed);
        }
        if st.flush_target < target {
            st.flush_target = target;
            self.work.notify_one();
        }
        Ok(false)
    }
}

/// Blocks the thread in `f`; on a tokio multi-thread runtime, inside
/// `block_in_place` so the worker's other tasks move to another thread.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

fn wait<'a>(cv: &Condvar, guard: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
    blocking(|| cv.wait(guard).unwrap_or_else(PoisonError::into_inner))
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Inner {
    /// Stops accepting events, lets the thread write and sync the queue, and
    /// joins it.
    fn close(&self) -> Result<(), AuditError> {
        let shared = &self.shared;
        let mut st = shared.lock();
        st.closing = true;
        shared.work.notify_one();
        shared.wake_appenders();
        while !st.exited {
            st = wait(&shared.done, st);
        }
        let failed = st.failed.clone();
        drop(st);
        let handle = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            // The thread does not panic; a join error has nothing to add.
            let _ = blocking(|| handle.join());
        }
        match failed {
            Some(f) => Err(AuditError::Failed(f)),
            None => Ok(()),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle went away without close(): still write out and sync
        // what was accepted. Errors are in the counters; nobody is left to
        // tell.
        let _ = self.close();
    }
}

/// Opens audit logs; see [`AuditWriter::open`].
#[derive(Debug, Clone, Copy, Default)]
pub struct AuditWriter;

impl AuditWriter {
    /// Opens (creating it if needed) the log in `dir`, continues its chain,
    /// and starts the writer thread.
    ///
    /// The chain continues from the last complete line of the newest file
    /// holding one. If that file ends with a complete line the writer appends
    /// to it; if it ends with a torn line the writer never appends after it:
    /// the next record starts a new file.
    pub fn open(dir: impl AsRef<Path>, config: AuditConfig) -> Result<AuditLog, OpenError> {
        let dir = dir.as_ref().to_owned();
        if config.queue_capacity == 0 {
            return Err(OpenError::ZeroCapacity);
        }
        let list_err = |source| OpenError::List {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(list_err)?;
        let listed = files::list(&dir).map_err(list_err)?;

        let mut next_seq = 0;
        let mut prev = Digest::ZERO;
        let mut current = None;
        for (i, (_, path)) in listed.iter().enumerate().rev() {
            let file_err = |source| OpenError::File {
                path: path.clone(),
                source,
            };
            let tail = files::read_tail(path).map_err(file_err)?;
            let Some(line) = tail.last_line else {
                continue;
            };
            let record = AuditRecord::from_line(&line).map_err(|source| OpenError::Malformed {
                path: path.clone(),
                source,
            })?;
            next_seq = record.seq.wrapping_add(1);
            prev = Digest::of(&line);
            // Append only to the newest file, and only after a complete line.
            if i + 1 == listed.len() && tail.torn_bytes == 0 {
                let file = OpenOptions::new()
                    .append(true)
                    .open(path)
                    .map_err(file_err)?;
                current = Some((file, path.clone(), tail.len));
            }
            break;
        }
        let head = next_seq.checked_sub(1).map(|seq| Head { seq, hash: prev });

        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                head,
                ..State::default()
            }),
            work: Condvar::new(),
            space: Condvar::new(),
            done: Condvar::new(),
            space_async: Notify::new(),
            done_async: Notify::new(),
            capacity: config.queue_capacity,
            overflow: config.overflow,
            counters: Counters::default(),
        });
        let (file, path, file_len) = match current {
            Some((f, p, len)) => (Some(f), p, len),
            None => (None, PathBuf::new(), 0),
        };
        let thread = Thread {
            dir,
            config,
            file,
            path,
            file_len,
            next_seq,
            prev,
            unsynced: 0,
            oldest_unsynced: None,
            pending: Vec::new(),
            pending_records: 0,
            on_disk: 0,
            processed: 0,
            shared: shared.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("paddock-audit".into())
            .spawn(move || thread.run())
            .map_err(OpenError::Spawn)?;
        Ok(AuditLog {
            inner: Arc::new(Inner {
                shared,
                thread: Mutex::new(Some(handle)),
            }),
        })
    }
}

/// A handle on an open audit log: cheap to clone, `Send + Sync`.
///
/// Dropping the last handle closes the log like [`AuditLog::close`] (blocking
/// until the queue is written and synced) but cannot report an error.
#[derive(Debug, Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

impl AuditLog {
    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// Queues `event`; the writer thread gives it the next seq and prev.
    ///
    /// With a full queue, [`OverflowPolicy::Wait`] blocks the thread until
    /// there is room (inside `tokio::task::block_in_place` on a tokio
    /// multi-thread runtime; on a current-thread runtime the whole runtime
    /// blocks, so prefer [`AuditLog::append_async`] there; inside a
    /// `LocalSet` on a multi-thread runtime tokio's `block_in_place` panics,
    /// so use [`AuditLog::append_async`] there too) and
    /// [`OverflowPolicy::Drop`] drops the event, counts it and returns `Ok`.
    pub fn append(&self, event: AuditEvent) -> Result<(), AuditError> {
        event
            .check()
            .map_err(|e| AuditError::InvalidEvent(Arc::new(e)))?;
        let shared = self.shared();
        let Some(event) = shared.try_push(event)? else {
            return Ok(());
        };
        let mut st = shared.lock();
        loop {
            if let Some(failed) = &st.failed {
                return Err(AuditError::Failed(failed.clone()));
            }
            if st.closing {
                return Err(AuditError::Closed);
            }
            if st.queue.len() < shared.capacity {
                shared.push(st, event);
                return Ok(());
            }
            st = wait(&shared.space, st);
        }
    }

    /// [`AuditLog::append`] that awaits room in the queue instead of blocking
    /// a thread.
    pub async fn append_async(&self, event: AuditEvent) -> Result<(), AuditError> {
        event
            .check()
            .map_err(|e| AuditError::InvalidEvent(Arc::new(e)))?;
        let shared = self.shared();
        let mut event = event;
        loop {
            // Register for the wake-up before looking, so a wake-up between
            // the look and the await is not missed.
            let notified = shared.space_async.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match shared.try_push(event)? {
                None => return Ok(()),
                Some(back) => event = back,
            }
            notified.await;
        }
    }

    /// Returns once every event appended before the call is written and
    /// synced (whatever the [`FsyncPolicy`]), or the writer's failure.
    pub fn flush(&self) -> Result<(), AuditError> {
        let shared = self.shared();
        let mut st = shared.lock();
        let target = st.enqueued;
        while !shared.flushed(&mut st, target)? {
            st = wait(&shared.done, st);
        }
        Ok(())
    }

    /// [`AuditLog::flush`] that awaits instead of blocking a thread.
    pub async fn flush_async(&self) -> Result<(), AuditError> {
        let shared = self.shared();
        let target = shared.lock().enqueued;
        loop {
            let notified = shared.done_async.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let flushed = {
                let mut st = shared.lock();
                shared.flushed(&mut st, target)?
            };
            if flushed {
                return Ok(());
            }
            notified.await;
        }
    }

    /// Stops accepting events (on every handle), writes and syncs the queue,
    /// and joins the writer thread. Returns the writer's failure, if any.
    pub fn close(self) -> Result<(), AuditError> {
        self.inner.close()
    }

    /// Whether the writer failed (every later call returns the error).
    pub fn failed(&self) -> bool {
        self.shared().lock().failed.is_some()
    }

    /// The writer's failure, if any.
    pub fn failure(&self) -> Option<Arc<WriteError>> {
        self.shared().lock().failed.clone()
    }

    /// Events dropped by [`OverflowPolicy::Drop`].
    pub fn dropped(&self) -> u64 {
        self.shared().counters.dropped.load(Ordering::Relaxed)
    }

    /// The last record written (possibly not yet synced: flush first for a
    /// durable head), `None` for an empty log. Keep it elsewhere and pass it
    /// to [`crate::verify_with`] to catch edits of the log's tail.
    pub fn head(&self) -> Option<Head> {
        self.shared().lock().head
    }

    /// The counters.
    pub fn stats(&self) -> AuditStats {
        let shared = self.shared();
        let queue_depth = shared.lock().queue.len() as u64;
        let c = &shared.counters;
        AuditStats {
            records_written: c.records_written.load(Ordering::Relaxed),
            bytes_written: c.bytes_written.load(Ordering::Relaxed),
            fsyncs: c.fsyncs.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            queue_depth,
            write_errors: c.write_errors.load(Ordering::Relaxed),
            lost: c.lost.load(Ordering::Relaxed),
        }
    }
}

/// Pending bytes that are written out even before the batch ends.
const PENDING_LIMIT: usize = 256 * 1024;

/// The writer thread's own state.
struct Thread {
    dir: PathBuf,
    config: AuditConfig,
    file: Option<File>,
    path: PathBuf,
    file_len: u64,
    next_seq: u64,
    prev: Digest,
    /// Records of `file` (written or pending) not yet synced.
    unsynced: u64,
    oldest_unsynced: Option<Instant>,
    /// Complete lines for `file` not yet written: a batch's lines go out in
    /// one write(2) rather than one each.
    pending: Vec<u8>,
    pending_records: u64,
    /// Records whose line was fully written.
    on_disk: u64,
    /// Events taken from the queue and written.
    processed: u64,
    shared: Arc<Shared>,
}

impl Thread {
    fn run(mut self) {
        let shared = self.shared.clone();
        let mut batch = Vec::new();
        loop {
            {
                let mut st = shared.lock();
                while st.queue.is_empty() && st.flush_target <= st.synced && !st.closing {
                    st = shared.work.wait(st).unwrap_or_else(PoisonError::into_inner);
                }
                batch.extend(st.queue.drain(..));
            }
            if !batch.is_empty() {
                shared.wake_appenders();
            }
            let taken = batch.len() as u64;
            let before = self.on_disk;
            let mut result = Ok(());
            for event in batch.drain(..) {
                if let Err(e) = self.write(event) {
                    result = Err(e);
                    break;
                }
            }
            if let Err(e) = result.and_then(|()| self.settle()) {
                // Whatever was taken and did not fully reach the file.
                self.fail(e, taken - (self.on_disk - before));
                return;
            }
            let mut st = shared.lock();
            if st.closing && st.queue.is_empty() && st.synced == st.enqueued {
                st.exited = true;
                drop(st);
                shared.wake_flushers();
                return;
            }
        }
    }

    /// After a batch: syncs if a flusher, the policy or close asks for it,
    /// and publishes progress.
    fn settle(&mut self) -> Result<(), WriteError> {
        self.write_pending()?;
        let need = {
            let st = self.shared.lock();
            let flush = st.flush_target > st.synced && self.processed >= st.flush_target;
            let idle = st.queue.is_empty()
                && (st.closing || matches!(self.config.fsync, FsyncPolicy::Batched { .. }));
            flush || idle
        };
        if need && self.unsynced > 0 {
            self.sync()?;
        }
        let mut st = self.shared.lock();
        st.processed = self.processed;
        if self.unsynced == 0 {
            st.synced = self.processed;
        }
        st.head = self.next_seq.checked_sub(1).map(|seq| Head {
            seq,
            hash: self.prev,
        });
        drop(st);
        self.shared.wake_flushers();
        Ok(())
    }

    fn fail(&mut self, error: WriteError, unwritten: u64) {
        self.pending.clear();
        let shared = &self.shared;
        let mut st = shared.lock();
        let lost = unwritten + st.queue.len() as u64;
        st.queue.clear();
        st.failed = Some(Arc::new(error));
        st.exited = true;
        drop(st);
        shared.counters.lost.fetch_add(lost, Ordering::Relaxed);
        shared.counters.write_errors.fetch_add(1, Ordering::Relaxed);
        shared.wake_appenders();
        shared.wake_flushers();
    }

    fn write(&mut self, event: AuditEvent) -> Result<(), WriteError> {
        let seq = self.next_seq;
        let record = AuditRecord {
            seq,
            prev: self.prev,
            event,
        };
        let mut line = record
            .to_line()
            .map_err(|source| WriteError::Encode { seq, source })?;
        let hash = Digest::of(&line);
        line.push(b'\n');
        let len = line.len() as u64;
        if self.file.is_some()
            && self.file_len > 0
            && self.file_len.saturating_add(len) > self.config.max_file_bytes
        {
            self.rotate()?;
        }
        if self.file.is_none() {
            self.create()?;
        }
        self.pending.extend_from_slice(&line);
        self.pending_records += 1;
        self.file_len += len;
        self.next_seq = seq.wrapping_add(1);
        self.prev = hash;
        self.processed += 1;
        self.unsynced += 1;
        let oldest = *self.oldest_unsynced.get_or_insert_with(Instant::now);
        let sync = match self.config.fsync {
            FsyncPolicy::EachRecord => true,
            FsyncPolicy::Batched {
                max_records,
                max_delay,
            } => self.unsynced >= u64::from(max_records.max(1)) || oldest.elapsed() >= max_delay,
            FsyncPolicy::Never => false,
        };
        if sync {
            self.sync()?;
        } else if self.pending.len() >= PENDING_LIMIT {
            self.write_pending()?;
        }
        Ok(())
    }

    /// Writes the pending lines with one `write_all`: only whole lines, so a
    /// crash leaves at most one torn line, at the end of the file.
    fn write_pending(&mut self) -> Result<(), WriteError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let Some(file) = &mut self.file else {
            // write() creates the file before it adds a line.
            return Err(WriteError::Write {
                path: self.path.clone(),
                source: io::Error::other("no open file"),
            });
        };
        file.write_all(&self.pending)
            .map_err(|source| WriteError::Write {
                path: self.path.clone(),
                source,
            })?;
        let c = &self.shared.counters;
        c.records_written
            .fetch_add(self.pending_records, Ordering::Relaxed);
        c.bytes_written
            .fetch_add(self.pending.len() as u64, Ordering::Relaxed);
        self.on_disk += self.pending_records;
        self.pending.clear();
        self.pending_records = 0;
        Ok(())
    }

    fn sync(&mut self) -> Result<(), WriteError> {
        self.write_pending()?;
        if let Some(file) = &self.file {
            file.sync_data().map_err(|source| WriteError::Sync {
                path: self.path.clone(),
                source,
            })?;
            self.shared.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        self.unsynced = 0;
        self.oldest_unsynced = None;
        Ok(())
    }

    /// Closes the current file, synced whatever the policy, so that a flush
    /// never needs to reach back to an older file.
    fn rotate(&mut self) -> Result<(), WriteError> {
        self.write_pending()?;
        if self.unsynced > 0 {
            self.sync()?;
        }
        self.file = None;
        Ok(())
    }

    /// Creates the file for `next_seq`. A file with that name can only exist
    /// if it holds no complete line (otherwise the chain would be past it): an
    /// empty one is reused, one holding only a torn line is moved aside to
    /// `<name>.torn` (or `<name>.torn.<n>`).
    fn create(&mut self) -> Result<(), WriteError> {
        let path = self.dir.join(files::file_name(self.next_seq));
        let create_err = |source| WriteError::Create {
            path: path.clone(),
            source,
        };
        match std::fs::metadata(&path) {
            Ok(meta) if meta.len() > 0 => {
                let tail = files::read_tail(&path).map_err(create_err)?;
                if tail.last_line.is_some() {
                    return Err(WriteError::Occupied { path });
                }
                let aside = aside_name(&path).map_err(create_err)?;
                std::fs::rename(&path, aside).map_err(create_err)?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(create_err(e)),
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(create_err)?;
        // Make the new name durable, so a synced record is never in a file
        // the directory forgot.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| WriteError::Sync {
                path: self.dir.clone(),
                source,
            })?;
        self.shared.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.path = path;
        self.file_len = 0;
        self.file = Some(file);
        Ok(())
    }
}

/// `<path>.torn`, or `<path>.torn.<n>` for the first free `n`.
fn aside_name(path: &Path) -> io::Result<PathBuf> {
    let base = path.as_os_str().to_owned();
    for n in 0u32..1000 {
        let mut name = base.clone();
        if n == 0 {
            name.push(".torn");
        } else {
            name.push(format!(".torn.{n}"));
        }
        let candidate = PathBuf::from(name);
        if !candidate.try_exists()? {
            return Ok(candidate);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "no free .torn name",
    ))
}
