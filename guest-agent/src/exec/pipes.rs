//! The pipes of one execution: the stdin feeder and the output pumps.
//!
//! A pump reads its pipe only while the host's window is open, so a process
//! that prints without end blocks in `write`. Past the stream's cap it reads
//! and discards without waiting, so the process never blocks on a cap. After
//! the leader exits, the pumps forward what is still in the pipes, then wait
//! at most [`DRAIN_TIMEOUT`] for the end of the pipe, so a process that
//! escaped the group (`setsid`) and keeps the pipe open cannot hold the
//! request. Data already in a pipe is forwarded however long the host takes
//! to open its window; only waiting for new data is bounded.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::Mutex;
use std::time::Duration;

use paddock_proto::MessageKind;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::lock;
use crate::request::RequestCtx;

/// How long the pumps wait for the end of a pipe once the leader exited and
/// the pipe is empty.
pub(super) const DRAIN_TIMEOUT: Duration = Duration::from_millis(200);
/// The host's stdin on its way from the supervisor to the feeder. Chunks
/// are merged into one buffer, which holds at most one window of bytes:
/// the feeder returns credit only for what the process took.
#[derive(Debug, Default)]
pub(super) struct StdinQueue {
    state: Mutex<StdinState>,
    ready: Notify,
}

#[derive(Debug, Default)]
struct StdinState {
    bytes: Vec<u8>,
    closed: bool,
}

impl StdinQueue {
    /// Appends bytes for the process.
    pub(super) fn push(&self, data: Vec<u8>) {
        let mut state = lock(&self.state);
        if state.bytes.is_empty() {
            state.bytes = data;
        } else {
            state.bytes.extend_from_slice(&data);
        }
        drop(state);
        self.ready.notify_one();
    }

    /// The host closed stdin: the process sees its end once the bytes
    /// before it are written.
    pub(super) fn close(&self) {
        lock(&self.state).closed = true;
        self.ready.notify_one();
    }

    /// The bytes that wait, or `None` once stdin is closed and drained.
    async fn next(&self) -> Option<Vec<u8>> {
        loop {
            let ready = self.ready.notified();
            {
                let mut state = lock(&self.state);
                if !state.bytes.is_empty() {
                    return Some(std::mem::take(&mut state.bytes));
                }
                if state.closed {
                    return None;
                }
            }
            ready.await;
        }
    }
}

/// Writes the host's STDIN to the process and returns its credit as the
/// process takes it. Stops when the host closes stdin or the leader exits.
pub(super) async fn feed_stdin<W: AsyncWrite + Unpin>(
    ctx: &RequestCtx,
    pipe: Option<W>,
    queue: &StdinQueue,
    exited: &CancellationToken,
) {
    let Some(pipe) = pipe else {
        return;
    };
    let feeding = async {
        let mut pipe = Some(pipe);
        while let Some(chunk) = queue.next().await {
            if let Some(open) = &mut pipe {
                if let Err(err) = open.write_all(&chunk).await {
                    // The process closed its stdin: the rest is discarded.
                    debug!(%err, "Stdin closed by the process");
                    pipe = None;
                }
            }
            if ctx.consumed(chunk.len()).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = feeding => {}
        () = exited.cancelled() => {}
    }
}

/// What a pump saw of one output stream.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Captured {
    /// Bytes the process wrote (forwarded or not).
    pub(super) bytes: u64,
    /// Bytes were discarded past the cap.
    pub(super) truncated: bool,
}

/// Once the leader exited: the bytes that were in the pipe then (forwarded
/// whenever the host allows), and how long to wait for more.
#[derive(Debug, Clone, Copy)]
struct Drain {
    pending: u64,
    deadline: Instant,
}

/// Forwards one output pipe as frames of `kind`, up to `cap` bytes.
pub(super) async fn pump<P>(
    ctx: &RequestCtx,
    pipe: Option<P>,
    kind: MessageKind,
    cap: Option<u64>,
    exited: &CancellationToken,
    abandon: &CancellationToken,
) -> Captured
where
    P: AsyncRead + AsFd + Unpin,
{
    let mut captured = Captured::default();
    let Some(mut pipe) = pipe else {
        return captured;
    };
    let cap = cap.unwrap_or(u64::MAX);
    let mut buf = vec![0u8; ctx.chunk()];
    let mut drain = None;
    let pumping = async {
        loop {
            let forwarded = captured.bytes.min(cap);
            let want = if forwarded < cap {
                let Ok(available) = ctx.credit_available().await else {
                    return;
                };
                available.min(buf.len())
            } else {
                buf.len()
            };
            let read = match read_pipe(&mut pipe, &mut buf[..want], exited, &mut drain).await {
                Ok(0) => return,
                Ok(read) => read,
                Err(err) => {
                    warn!(%err, ?kind, "Could not read the output pipe");
                    return;
                }
            };
            let room = usize::try_from(cap - forwarded).unwrap_or(usize::MAX);
            let keep = read.min(room);
            captured.bytes = captured.bytes.saturating_add(read as u64);
            captured.truncated |= keep < read;
            if keep > 0 && ctx.send_data(kind, &buf[..keep]).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = pumping => {}
        () = abandon.cancelled() => {}
    }
    captured
}

/// Reads from an output pipe. Once the leader exited, reads what was in the
/// pipe then, and waits for more only until the drain deadline (0 = done).
async fn read_pipe<P>(
    pipe: &mut P,
    buf: &mut [u8],
    exited: &CancellationToken,
    drain: &mut Option<Drain>,
) -> io::Result<usize>
where
    P: AsyncRead + AsFd + Unpin,
{
    let state = match drain {
        Some(state) => state,
        None => {
            tokio::select! {
                biased;
                () = exited.cancelled() => {}
                read = pipe.read(buf) => return read,
            }
            drain.insert(Drain {
                pending: pipe_pending(pipe.as_fd()),
                deadline: Instant::now() + DRAIN_TIMEOUT,
            })
        }
    };
    let read = tokio::select! {
        biased;
        () = sleep_until(state.deadline), if state.pending == 0 => return Ok(0),
        read = pipe.read(buf) => read?,
    };
    state.pending = state.pending.saturating_sub(read as u64);
    Ok(read)
}

/// Bytes waiting in a pipe (FIONREAD); 0 if the pipe cannot tell.
fn pipe_pending(fd: BorrowedFd<'_>) -> u64 {
    let mut pending: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer, which is valid
    // for the duration of the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut pending) };
    if rc == 0 {
        u64::try_from(pending).unwrap_or(0)
    } else {
        0
    }
}
