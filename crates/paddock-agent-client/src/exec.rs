//! A running execution: its output streams, its stdin, and its result.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use paddock_events::{Emitter, EventKind, ExecOutcome};
use paddock_proto::{ExecResult, Message, MessageKind, SignalRequest, Stop, StopScope};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::client::RunningExec;
use crate::connection::{Chunk, Connection, RecvCredit, Request, SendCredit};
use crate::error::ClientError;
use crate::gate::{GateRequest, Gatekeeper};

/// A process running in the guest.
///
/// Take the streams you want with [`Execution::take_stdout`],
/// [`Execution::take_stderr`] and [`Execution::take_stdin`], then call
/// [`Execution::wait`]. Output of a stream that was never taken, or was
/// dropped, is discarded as it arrives (so it never stalls the process).
/// Dropping an execution before its result arrived stops it in the guest.
#[derive(Debug)]
pub struct Execution {
    request: Request,
    stdout: Option<OutputStream>,
    stderr: Option<OutputStream>,
    stdin: Option<StdinWriter>,
    deadline: Instant,
    finished: bool,
    events: Emitter,
    /// Its number and when it was sent, for its end's event.
    started: ExecStart,
    /// The client's gate, which signals pass.
    gate: Option<Gatekeeper>,
    /// Counts it among its client's running executions while it lives.
    _running: RunningExec,
    /// The stdout and stderr caps it was sent with, which `collect` holds
    /// on the host too.
    caps: [Option<u64>; 2],
}

/// An execution's number (unique within the process, the same in its two
/// events) and when it was sent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ExecStart {
    pub(crate) exec: u64,
    pub(crate) at: std::time::Instant,
}

impl ExecStart {
    /// A new execution, starting now.
    pub(crate) fn next() -> Self {
        static NEXT_EXEC: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Self {
            exec: NEXT_EXEC.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            at: std::time::Instant::now(),
        }
    }
}

/// Everything an execution printed, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// How the process ended, with truncation flags and byte counts.
    pub result: ExecResult,
    /// Stdout as forwarded by the agent (up to the request's cap).
    pub stdout: Vec<u8>,
    /// Stderr as forwarded by the agent (up to the request's cap).
    pub stderr: Vec<u8>,
}

/// What an execution reports to and is held by: its events, its client's
/// gate and its place among the client's running executions.
#[derive(Debug)]
pub(crate) struct ExecTracking {
    pub(crate) caps: [Option<u64>; 2],
    pub(crate) events: Emitter,
    pub(crate) started: ExecStart,
    pub(crate) gate: Option<Gatekeeper>,
    pub(crate) running: RunningExec,
}

impl Execution {
    pub(crate) fn new(
        mut request: Request,
        stdin: bool,
        deadline: Instant,
        io_timeout: Duration,
        tracking: ExecTracking,
    ) -> Self {
        let ExecTracking {
            caps,
            events,
            started,
            gate,
            running,
        } = tracking;
        let mut output = |index: usize| {
            request.outputs[index]
                .take()
                .map(|rx| OutputStream::new(rx, Arc::clone(&request.recv)))
        };
        let stdout = output(0);
        let stderr = output(1);
        let stdin = stdin.then(|| StdinWriter {
            request_id: request.id,
            conn: Arc::clone(&request.conn),
            credit: Arc::clone(&request.send),
            io_timeout,
            closed: false,
        });
        Self {
            request,
            stdout,
            stderr,
            stdin,
            deadline,
            finished: false,
            events,
            started,
            gate,
            _running: running,
            caps,
        }
    }

    /// The request id of this execution on its connection.
    #[must_use]
    pub fn request_id(&self) -> u64 {
        self.request.id
    }

    /// The connection this execution runs on.
    pub(crate) fn connection(&self) -> &Arc<Connection> {
        &self.request.conn
    }

    /// Takes the stdout stream (once).
    pub fn take_stdout(&mut self) -> Option<OutputStream> {
        self.stdout.take()
    }

    /// Takes the stderr stream (once).
    pub fn take_stderr(&mut self) -> Option<OutputStream> {
        self.stderr.take()
    }

    /// Takes the stdin writer (once; only when the request asked for stdin).
    pub fn take_stdin(&mut self) -> Option<StdinWriter> {
        self.stdin.take()
    }

    /// Sends a signal to the execution's process group.
    ///
    /// # Errors
    /// [`ClientError::Denied`] if the client's policy does not allow the
    /// signal, [`ClientError::ConnectionLost`] if the session is gone.
    pub fn signal(&self, signal: i32) -> Result<(), ClientError> {
        if let Some(gate) = &self.gate {
            gate.admit(&mut GateRequest::Signal { signal })?;
        }
        self.request
            .conn
            .send(self.request.id, &Message::Signal(SignalRequest { signal }))
    }

    /// Asks the agent to end the execution (SIGTERM, then SIGKILL after the
    /// grace period). The result follows with `stopped` set.
    ///
    /// # Errors
    /// [`ClientError::ConnectionLost`] if the session is gone.
    pub fn stop(&self) -> Result<(), ClientError> {
        self.request.conn.send(
            self.request.id,
            &Message::Stop(Stop {
                scope: StopScope::Execution,
            }),
        )
    }

    /// Waits for the result. Streams not taken are discarded; a stdin writer
    /// not taken is closed.
    ///
    /// # Errors
    /// [`ClientError::Agent`] if the agent refused the request (spawn failure
    /// and the like), [`ClientError::Timeout`] if no result came within the
    /// execution's timeout plus a margin (the execution is then stopped), or a
    /// connection error.
    pub async fn wait(mut self) -> Result<ExecResult, ClientError> {
        drop(self.stdout.take());
        drop(self.stderr.take());
        drop(self.stdin.take());
        let event = tokio::time::timeout_at(self.deadline, self.request.events.recv()).await;
        let result = match event {
            Err(_) => {
                let _ = self.stop();
                let after = self.deadline.saturating_duration_since(Instant::now());
                Err(ClientError::Timeout {
                    what: "the execution's result",
                    after,
                })
            }
            Ok(None) => Err(ClientError::lost(None)),
            Ok(Some(Err(err))) => Err(err),
            Ok(Some(Ok(Message::ExecResult(result)))) => Ok(result),
            Ok(Some(Ok(Message::Error(report)))) => Err(ClientError::Agent {
                code: report.code,
                message: report.message,
            }),
            Ok(Some(Ok(other))) => Err(ClientError::Unexpected { kind: other.kind() }),
        };
        self.finished = true;
        match &result {
            Ok(result) => {
                let duration = self.started.at.elapsed();
                self.events.emit(|| EventKind::ExecFinished {
                    exec: self.started.exec,
                    outcome: ExecOutcome::of(result),
                    result: Some(result.clone()),
                    duration,
                    error: None,
                });
            }
            Err(err) => exec_failed(&self.events, err, self.started),
        }
        result
    }

    /// Reads stdout and stderr to the end while waiting for the result.
    /// Each stream keeps at most the request's cap, or
    /// [`MAX_COLLECTED_BYTES`] without one, whatever the guest sends: the
    /// rest is read and dropped, and the result says the stream was
    /// truncated.
    ///
    /// # Errors
    /// As [`Execution::wait`].
    pub async fn collect(mut self) -> Result<ExecOutput, ClientError> {
        let stdout = self.take_stdout();
        let stderr = self.take_stderr();
        let [stdout_cap, stderr_cap] = self.caps.map(|cap| cap.unwrap_or(MAX_COLLECTED_BYTES));
        let reads =
            async { tokio::join!(read_all(stdout, stdout_cap), read_all(stderr, stderr_cap)) };
        let Ok((stdout, stderr)) = tokio::time::timeout_at(self.deadline, reads).await else {
            // `wait` reports the timeout and stops the execution.
            return Err(self.wait().await.err().unwrap_or(ClientError::Timeout {
                what: "the execution's output",
                after: Duration::ZERO,
            }));
        };
        let mut result = self.wait().await?;
        let (stdout, stdout_dropped) = stdout?;
        let (stderr, stderr_dropped) = stderr?;
        result.stdout_truncated |= stdout_dropped;
        result.stderr_truncated |= stderr_dropped;
        Ok(ExecOutput {
            result,
            stdout,
            stderr,
        })
    }
}

impl Drop for Execution {
    fn drop(&mut self) {
        if !self.finished {
            // Best effort: nothing of a dropped execution should keep running.
            let _ = self.stop();
            let duration = self.started.at.elapsed();
            self.events.emit(|| EventKind::ExecFinished {
                exec: self.started.exec,
                outcome: ExecOutcome::Error,
                result: None,
                duration,
                error: Some("abandoned"),
            });
        }
    }
}

/// Emits the end of an execution that has no result.
pub(crate) fn exec_failed(events: &Emitter, err: &ClientError, started: ExecStart) {
    events.emit(|| EventKind::ExecFinished {
        exec: started.exec,
        outcome: ExecOutcome::Error,
        result: None,
        duration: started.at.elapsed(),
        error: Some(err.kind_name()),
    });
}

/// The most [`Execution::collect`] keeps of a stream whose request set no
/// cap: 64 MiB. The rest is read and dropped, and the result says the
/// stream was truncated; stream the output instead to keep more.
pub const MAX_COLLECTED_BYTES: u64 = 64 << 20;

/// Reads `stream` to its end, keeping at most `cap` bytes: the host's own
/// bound, whatever the guest sends (its agent may not honour the cap).
/// Whether anything was dropped comes back with the bytes.
async fn read_all(stream: Option<OutputStream>, cap: u64) -> Result<(Vec<u8>, bool), ClientError> {
    let mut out = Vec::new();
    let mut dropped = false;
    if let Some(mut stream) = stream {
        while let Some(chunk) = stream.chunk().await? {
            let room = usize::try_from(cap.saturating_sub(out.len() as u64)).unwrap_or(usize::MAX);
            if chunk.len() > room {
                dropped = true;
            }
            out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
    }
    Ok((out, dropped))
}

/// Stdout or stderr of an execution, as it arrives.
///
/// Read it chunk by chunk with [`OutputStream::chunk`], or as an
/// [`AsyncRead`]. The agent sends no more than the flow-control window ahead
/// of what was read here, so a slow reader slows the process, it does not
/// make either side buffer without bound.
#[derive(Debug)]
pub struct OutputStream {
    rx: mpsc::UnboundedReceiver<Chunk>,
    credit: Arc<RecvCredit>,
    pending: Vec<u8>,
    offset: usize,
    done: bool,
}

impl OutputStream {
    fn new(rx: mpsc::UnboundedReceiver<Chunk>, credit: Arc<RecvCredit>) -> Self {
        Self {
            rx,
            credit,
            pending: Vec::new(),
            offset: 0,
            done: false,
        }
    }

    /// The next chunk, or `None` at the end of the stream.
    ///
    /// # Errors
    /// A connection error if the session failed before the stream ended.
    pub async fn chunk(&mut self) -> Result<Option<Vec<u8>>, ClientError> {
        if self.offset < self.pending.len() {
            let rest = self.pending.split_off(self.offset);
            self.pending.clear();
            self.offset = 0;
            return Ok(Some(rest));
        }
        if self.done {
            return Ok(None);
        }
        match self.rx.recv().await {
            Some(Ok(data)) => {
                self.credit.consumed(data.len());
                Ok(Some(data))
            }
            Some(Err(err)) => {
                self.done = true;
                Err(err)
            }
            None => {
                self.done = true;
                Ok(None)
            }
        }
    }

    /// Reads the rest of the stream into a vector.
    ///
    /// # Errors
    /// As [`OutputStream::chunk`].
    pub async fn read_to_vec(&mut self) -> Result<Vec<u8>, ClientError> {
        let mut out = Vec::new();
        while let Some(chunk) = self.chunk().await? {
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }
}

impl AsyncRead for OutputStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.offset >= this.pending.len() && !this.done {
            match ready!(this.rx.poll_recv(cx)) {
                Some(Ok(data)) => {
                    this.credit.consumed(data.len());
                    this.pending = data;
                    this.offset = 0;
                }
                Some(Err(err)) => {
                    this.done = true;
                    return Poll::Ready(Err(io::Error::other(err)));
                }
                None => this.done = true,
            }
        }
        let available = &this.pending[this.offset.min(this.pending.len())..];
        let n = available.len().min(buf.remaining());
        buf.put_slice(&available[..n]);
        this.offset += n;
        Poll::Ready(Ok(()))
    }
}

impl Drop for OutputStream {
    fn drop(&mut self) {
        // Return the credit of whatever is still queued; later data is
        // discarded by the connection as it arrives.
        self.rx.close();
        while let Ok(item) = self.rx.try_recv() {
            if let Ok(data) = item {
                self.credit.consumed(data.len());
            }
        }
    }
}

/// Stdin of an execution started with `stdin: true`.
///
/// Writes wait for flow-control credit, so a process that does not read its
/// stdin makes the writer wait (up to the client's I/O timeout), not buffer.
/// Dropping the writer closes stdin.
#[derive(Debug)]
pub struct StdinWriter {
    request_id: u64,
    conn: Arc<Connection>,
    credit: Arc<SendCredit>,
    io_timeout: Duration,
    closed: bool,
}

impl StdinWriter {
    /// Sends all of `data`.
    ///
    /// # Errors
    /// [`ClientError::Timeout`] if the process does not take its input within
    /// the I/O timeout, or a connection error (also when the execution ended).
    pub async fn write_all(&mut self, mut data: &[u8]) -> Result<(), ClientError> {
        while !data.is_empty() {
            let want = data.len().min(self.conn.chunk);
            let n = self.credit.acquire(want, self.io_timeout).await?;
            let (now, rest) = data.split_at(n);
            self.conn
                .send_data(self.request_id, MessageKind::Stdin, now)?;
            data = rest;
        }
        Ok(())
    }

    /// Copies `reader` to stdin until its end; returns the bytes copied.
    ///
    /// # Errors
    /// As [`StdinWriter::write_all`], or [`ClientError::LocalIo`] if reading fails.
    pub async fn copy_from<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
    ) -> Result<u64, ClientError> {
        let mut buf = vec![0u8; self.conn.chunk];
        let mut total = 0u64;
        loop {
            let n = reader
                .read(&mut buf)
                .await
                .map_err(|source| ClientError::LocalIo {
                    path: "<stdin source>".into(),
                    source,
                })?;
            if n == 0 {
                return Ok(total);
            }
            self.write_all(&buf[..n]).await?;
            total += n as u64;
        }
    }

    /// Closes stdin (the process reads end-of-file).
    ///
    /// # Errors
    /// A connection error.
    pub fn close(mut self) -> Result<(), ClientError> {
        self.closed = true;
        self.conn.send(self.request_id, &Message::StdinClose)
    }
}

impl Drop for StdinWriter {
    fn drop(&mut self) {
        if !self.closed && !self.credit.is_closed() {
            let _ = self.conn.send(self.request_id, &Message::StdinClose);
        }
    }
}
