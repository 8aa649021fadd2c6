//! One host connection: its reader, its writer, its sessions, request routing.
//!
//! The reader (the task running [`serve_connection`]) decodes frames and
//! handles what belongs to the connection or the session: HELLO, PING, request
//! ids, the accounting of the flow-control windows, and errors about frames.
//! Frames for an open request go to its task through an unbounded channel;
//! the data queued there stays within the request's window, because data
//! frames are checked against its [`RecvWindow`] here, before they are queued.
//!
//! Every frame is written by one writer task, fed through a bounded channel.
//! Each queued frame is tagged with the session that produced it, and the
//! writer drops frames of a session that is no longer current, so nothing of
//! an ended session follows the HELLO_ACK of the next one.

use std::collections::HashMap;
use std::error::Error;
use std::io;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use paddock_proto::{
    DEFAULT_CHUNK, DecodeError, EncodeError, ErrorCode, ErrorReport, FRAME_READ_CHUNK, Frame,
    FrameDecoder, FrameError, Hello, HelloAck, MIN_PROTOCOL_VERSION, Message, MessageKind,
    PROTOCOL_VERSION, RecvWindow, SendWindow, Stop, StopScope, WindowError, capability,
    decode_message, encode_frame, encode_message, negotiate_version,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::{AGENT_VERSION, Agent, Config, exec, files, status};

/// Encoded frames the writer channel holds before senders wait.
const OUTBOX_FRAMES: usize = 64;

/// How long a closing connection waits for its writer to flush.
const WRITER_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The smallest `max_payload` a host may announce: every control message the
/// agent sends must fit in it.
const MIN_HOST_PAYLOAD: u32 = 4096;

/// Kinds only the agent sends; the host sending one is a protocol error.
const AGENT_ONLY: [MessageKind; 7] = [
    MessageKind::HelloAck,
    MessageKind::Stdout,
    MessageKind::Stderr,
    MessageKind::ExecResult,
    MessageKind::StatusReport,
    MessageKind::FileInfo,
    MessageKind::FileDone,
];

/// A frame the reader refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    /// The decoder rejected bytes or a frame.
    #[error("Invalid frame")]
    BadFrame(#[source] FrameError),
    /// A kind the agent only sends.
    #[error("The agent does not accept {0:?} frames")]
    NotAccepted(MessageKind),
    /// HELLO offered no version the agent speaks.
    #[error(
        "No common protocol version: the host speaks {min}..={max}, the agent {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION}"
    )]
    UnsupportedVersion { min: u16, max: u16 },
    /// HELLO announced a payload limit too small for the agent's messages.
    #[error("The host's max_payload of {0} bytes is below the minimum of {MIN_HOST_PAYLOAD}")]
    HostPayloadTooSmall(u32),
    /// The payload does not match its kind.
    #[error("Invalid payload")]
    BadPayload(#[source] DecodeError),
    /// A request before HELLO.
    #[error("Send HELLO first")]
    NotNegotiated,
    /// A new request with id 0 or the id of an open request.
    #[error("Request id {0} is 0 or already in use")]
    DuplicateRequest(u64),
    /// The session has `max_requests` open requests.
    #[error("The session already has {0} open requests")]
    TooManyRequests(usize),
    /// A frame for a request that is not open.
    #[error("No request with id {0} is open")]
    UnknownRequest(u64),
    /// The host sent more than its window, or granted past `u32::MAX`.
    #[error("Flow-control violation")]
    FlowControl(#[source] WindowError),
}

impl WireError for SessionError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::BadFrame(FrameError::UnsupportedVersion { .. })
            | Self::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            Self::BadFrame(FrameError::UnknownKind { .. }) | Self::NotAccepted(_) => {
                ErrorCode::UnknownKind
            }
            Self::BadFrame(_) => ErrorCode::BadFrame,
            Self::HostPayloadTooSmall(_) => ErrorCode::InvalidArgument,
            Self::BadPayload(_) => ErrorCode::BadPayload,
            Self::NotNegotiated => ErrorCode::NotNegotiated,
            Self::DuplicateRequest(_) => ErrorCode::DuplicateRequest,
            Self::TooManyRequests(_) => ErrorCode::TooManyRequests,
            Self::UnknownRequest(_) => ErrorCode::UnknownRequest,
            Self::FlowControl(_) => ErrorCode::FlowControl,
        }
    }
}

/// An error that has a wire code; its report carries the whole source chain.
pub(crate) trait WireError: Error {
    /// The code the host sees.
    fn code(&self) -> ErrorCode;

    /// The ERROR payload for this error.
    fn report(&self) -> ErrorReport
    where
        Self: Sized,
    {
        let mut message = self.to_string();
        let mut source = self.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        ErrorReport::new(self.code(), message)
    }
}

/// Why a request could not go on talking to the host.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Interrupted {
    /// The session ended (or the connection closed) while the request ran.
    #[error("The session ended")]
    SessionEnded,
    /// A message could not be encoded (a bug).
    #[error("Could not encode a frame")]
    Encode(#[source] EncodeError),
}

impl WireError for Interrupted {
    fn code(&self) -> ErrorCode {
        match self {
            Self::SessionEnded => ErrorCode::ShuttingDown,
            Self::Encode(_) => ErrorCode::Internal,
        }
    }
}

/// The host broke the protocol on an open request, which ends with this.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Rejection {
    /// A frame kind this request does not take (now).
    #[error("{0:?} frames are not valid for this request")]
    Unexpected(MessageKind),
    /// The reader refused a frame for this request.
    #[error("{}", .0.message)]
    Report(ErrorReport),
}

impl WireError for Rejection {
    fn code(&self) -> ErrorCode {
        match self {
            Self::Unexpected(_) => ErrorCode::InvalidArgument,
            Self::Report(report) => report.code,
        }
    }
}

/// What the reader hands to a request's task.
#[derive(Debug)]
pub(crate) enum Input {
    /// A frame for the request, already accounted for flow control.
    Frame(Message),
    /// The request must end with this error.
    Reject(ErrorReport),
}

/// The receiving end of a request's inputs.
pub(crate) type Inputs = mpsc::UnboundedReceiver<Input>;

/// Waits for the first input and turns it into the rejection that ends a
/// request which takes no input. Pending forever once the inputs are closed.
pub(crate) async fn rejection(inputs: &mut Inputs) -> Rejection {
    match inputs.recv().await {
        Some(Input::Frame(message)) => Rejection::Unexpected(message.kind()),
        Some(Input::Reject(report)) => Rejection::Report(report),
        None => std::future::pending().await,
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The agent's credit for data it sends on one request (the host's window).
#[derive(Debug)]
pub(crate) struct Credit {
    window: Mutex<SendWindow>,
    granted: Notify,
}

impl Credit {
    fn new(initial: u32) -> Self {
        Self {
            window: Mutex::new(SendWindow::new(initial)),
            granted: Notify::new(),
        }
    }

    fn grant(&self, increment: u32) -> Result<(), WindowError> {
        lock(&self.window).grant(increment)?;
        self.granted.notify_waiters();
        Ok(())
    }

    /// Waits until `f` returns non-zero; `f` sees the window under its lock.
    async fn wait(&self, mut f: impl FnMut(&mut SendWindow) -> usize) -> usize {
        loop {
            let mut granted = pin!(self.granted.notified());
            granted.as_mut().enable();
            let n = f(&mut lock(&self.window));
            if n > 0 {
                return n;
            }
            granted.await;
        }
    }
}

/// A request as the reader sees it.
#[derive(Debug, Clone)]
struct Handle {
    inputs: mpsc::UnboundedSender<Input>,
    /// Set when the request sends flow-controlled data (takes WINDOW_UPDATE).
    credit: Option<Arc<Credit>>,
    /// Set when the request takes flow-controlled data (STDIN, FILE_DATA).
    intake: Option<Arc<Mutex<RecvWindow>>>,
}

/// Which flow-controlled directions a new request uses.
#[derive(Debug, Clone, Copy)]
struct Flow {
    sends: bool,
    takes: bool,
}

/// A frame on its way to the writer.
#[derive(Debug)]
struct Outgoing {
    /// The session that produced it; 0 for connection-level frames, which are
    /// always written.
    session: u64,
    frame: Vec<u8>,
}

/// One session: what HELLO negotiated and the requests opened since.
#[derive(Debug)]
struct Session {
    agent: Arc<Agent>,
    seq: u64,
    host_max_payload: u32,
    host_window: u32,
    /// Cancelled when the session ends (a child of the agent's shutdown).
    ended: CancellationToken,
    outbox: mpsc::Sender<Outgoing>,
    requests: Mutex<HashMap<u64, Handle>>,
}

impl Session {
    fn handle(&self, id: u64) -> Option<Handle> {
        lock(&self.requests).get(&id).cloned()
    }
}

/// What a request's task holds: its id, its session and its windows.
#[derive(Debug)]
pub(crate) struct RequestCtx {
    id: u64,
    session: Arc<Session>,
    credit: Arc<Credit>,
    intake: Arc<Mutex<RecvWindow>>,
}

impl RequestCtx {
    pub(crate) fn agent(&self) -> &Arc<Agent> {
        &self.session.agent
    }

    pub(crate) fn config(&self) -> &Config {
        &self.session.agent.config
    }

    /// A name unique to this request among all requests of all agent runs.
    pub(crate) fn unique_name(&self) -> String {
        format!(
            "{}-{}-{}",
            self.session.agent.boot_id, self.session.seq, self.id
        )
    }

    /// Largest data chunk to send: the default chunk, or less if the host's
    /// `max_payload` is smaller.
    pub(crate) fn chunk(&self) -> usize {
        usize::try_from(self.session.host_max_payload)
            .map_or(DEFAULT_CHUNK, |max| max.min(DEFAULT_CHUNK))
    }

    /// Completes when the session ends.
    pub(crate) async fn ended(&self) {
        self.session.ended.cancelled().await;
    }

    /// A token cancelled when the session ends, for tasks that may end earlier.
    pub(crate) fn child_token(&self) -> CancellationToken {
        self.session.ended.child_token()
    }

    /// Queues a frame for the writer, or fails once the session has ended.
    async fn queue(&self, frame: Vec<u8>) -> Result<(), Interrupted> {
        let outgoing = Outgoing {
            session: self.session.seq,
            frame,
        };
        tokio::select! {
            biased;
            () = self.ended() => Err(Interrupted::SessionEnded),
            sent = self.session.outbox.send(outgoing) => sent.map_err(|_| Interrupted::SessionEnded),
        }
    }

    /// Sends a message on this request.
    pub(crate) async fn send(&self, message: &Message) -> Result<(), Interrupted> {
        let mut frame = Vec::new();
        encode_message(&mut frame, self.id, message).map_err(Interrupted::Encode)?;
        self.queue(frame).await
    }

    /// Waits for the host's credit and returns how much is available, without
    /// taking it.
    pub(crate) async fn credit_available(&self) -> Result<usize, Interrupted> {
        let available = self
            .credit
            .wait(|window| usize::try_from(window.available()).unwrap_or(usize::MAX));
        tokio::select! {
            () = self.ended() => Err(Interrupted::SessionEnded),
            n = available => Ok(n),
        }
    }

    /// Sends `data` as frames of `kind`, each within the host's credit.
    pub(crate) async fn send_data(
        &self,
        kind: MessageKind,
        mut data: &[u8],
    ) -> Result<(), Interrupted> {
        while !data.is_empty() {
            let want = data.len();
            let granted = tokio::select! {
                () = self.ended() => return Err(Interrupted::SessionEnded),
                n = self.credit.wait(|window| window.take(want)) => n,
            };
            let (now, rest) = data.split_at(granted.min(want));
            let mut frame = Vec::new();
            encode_frame(&mut frame, kind, self.id, now).map_err(Interrupted::Encode)?;
            self.queue(frame).await?;
            data = rest;
        }
        Ok(())
    }

    /// Accounts for `len` bytes of the host's data handed to their consumer,
    /// returning credit with WINDOW_UPDATE when enough has gathered.
    pub(crate) async fn consumed(&self, len: usize) -> Result<(), Interrupted> {
        let increment = lock(&self.intake).consume(len);
        match increment {
            Some(increment) => self.send(&Message::WindowUpdate(increment)).await,
            None => Ok(()),
        }
    }

    /// Ends the request: it is closed before its last frame is queued, so the
    /// host may reuse the id as soon as it sees that frame. Nothing is sent
    /// once the session has ended.
    pub(crate) async fn finish(self, outcome: Result<Message, ErrorReport>) {
        lock(&self.session.requests).remove(&self.id);
        if self.session.ended.is_cancelled() {
            return;
        }
        let message = outcome.unwrap_or_else(|report| {
            debug!(code = ?report.code, message = %report.message, "Request failed");
            Message::Error(report)
        });
        if let Err(err) = self.send(&message).await {
            debug!(%err, "Could not send the request's last frame");
        }
    }
}

/// Whether the reader goes on after a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Continue,
    Close,
}

/// The reader's state for one connection.
#[derive(Debug)]
struct Connection {
    agent: Arc<Agent>,
    outbox: mpsc::Sender<Outgoing>,
    /// The current session's sequence number; the writer drops other sessions' frames.
    current: Arc<AtomicU64>,
    /// Request tasks of every session of this connection.
    tasks: TaskTracker,
    session: Option<Arc<Session>>,
}

/// Serves one host connection until the stream ends, HELLO finds no common
/// version, or the agent stops. Every session it had has ended (its
/// executions are gone) when this returns.
///
/// # Errors
/// The error that ended reading from the stream.
pub async fn serve_connection<S>(agent: Arc<Agent>, stream: S) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut reader, writer) = tokio::io::split(stream);
    let (outbox, frames) = mpsc::channel(OUTBOX_FRAMES);
    let current = Arc::new(AtomicU64::new(0));
    let mut writer = tokio::spawn(write_frames(writer, frames, Arc::clone(&current)));
    let mut connection = Connection {
        agent,
        outbox,
        current,
        tasks: TaskTracker::new(),
        session: None,
    };
    let read = connection.read_frames(&mut reader).await;
    connection.end_session();
    connection.tasks.close();
    connection.tasks.wait().await;
    drop(connection);
    if timeout(WRITER_FLUSH_TIMEOUT, &mut writer).await.is_err() {
        warn!("The host does not read; dropping unsent frames");
        writer.abort();
    }
    read
}

/// Writes queued frames until every sender is gone or a write fails.
async fn write_frames<W: AsyncWrite>(
    writer: W,
    mut frames: mpsc::Receiver<Outgoing>,
    current: Arc<AtomicU64>,
) {
    let mut writer = pin!(writer);
    while let Some(Outgoing { session, frame }) = frames.recv().await {
        if session != 0 && session != current.load(Ordering::Acquire) {
            continue;
        }
        let mut written = writer.write_all(&frame).await;
        if written.is_ok() && frames.is_empty() {
            written = writer.flush().await;
        }
        if let Err(err) = written {
            debug!(%err, "Could not write to the host");
            return;
        }
    }
    if let Err(err) = writer.shutdown().await {
        debug!(%err, "Could not close the stream");
    }
}

impl Connection {
    async fn read_frames<R: AsyncRead + Unpin>(&mut self, reader: &mut R) -> io::Result<()> {
        let mut decoder = FrameDecoder::new(self.agent.config.max_payload);
        loop {
            let read = tokio::select! {
                read = reader.read(decoder.spare(FRAME_READ_CHUNK)) => read?,
                () = self.agent.stopping() => return Ok(()),
                () = self.outbox.closed() => return Ok(()),
            };
            if read == 0 {
                return Ok(());
            }
            decoder.commit(read);
            loop {
                let step = match decoder.next_frame() {
                    Ok(Some(frame)) => self.on_frame(frame).await,
                    Ok(None) => break,
                    Err(err) => {
                        debug!(%err, "Rejected bytes from the host");
                        let id = match err {
                            FrameError::UnknownKind { request_id, .. } => request_id,
                            _ => 0,
                        };
                        self.reject(id, &SessionError::BadFrame(err)).await
                    }
                };
                if step == Step::Close {
                    return Ok(());
                }
            }
        }
    }

    async fn on_frame(&mut self, frame: Frame) -> Step {
        let (id, kind) = (frame.request_id, frame.kind);
        if AGENT_ONLY.contains(&kind) {
            return self.reject(id, &SessionError::NotAccepted(kind)).await;
        }
        if matches!(kind, MessageKind::Pong | MessageKind::Error) {
            // Answers to nothing the agent asked; answering them could loop.
            debug!(id, ?kind, "Ignored an unsolicited reply from the host");
            return Step::Continue;
        }
        if self.session.is_none() && !matches!(kind, MessageKind::Ping | MessageKind::Hello) {
            return self.reject(id, &SessionError::NotNegotiated).await;
        }
        let message = match decode_message(frame) {
            Ok(message) => message,
            Err(err) => return self.reject(id, &SessionError::BadPayload(err)).await,
        };
        match message {
            Message::Ping => self.send(id, &Message::Pong).await,
            Message::Hello(hello) => return self.hello(id, &hello).await,
            Message::Execute(execute) => {
                let flow = Flow {
                    sends: true,
                    takes: execute.stdin,
                };
                return self
                    .open(id, kind, flow, |ctx, inputs| {
                        exec::serve(ctx, execute, inputs)
                    })
                    .await;
            }
            Message::FilePut(put) => {
                let flow = Flow {
                    sends: false,
                    takes: true,
                };
                return self
                    .open(id, kind, flow, |ctx, inputs| files::put(ctx, put, inputs))
                    .await;
            }
            Message::FileGet(get) => {
                let flow = Flow {
                    sends: true,
                    takes: false,
                };
                return self
                    .open(id, kind, flow, |ctx, inputs| files::get(ctx, get, inputs))
                    .await;
            }
            Message::StatusRequest => {
                let flow = Flow {
                    sends: false,
                    takes: false,
                };
                return self.open(id, kind, flow, status::serve).await;
            }
            Message::Stop(Stop {
                scope: StopScope::Agent,
            }) => {
                info!(id, "STOP agent: ending every session");
                self.send(id, &message).await;
                self.agent.shutdown();
            }
            Message::WindowUpdate(increment) => return self.window_update(id, increment),
            Message::Stdin(ref data) | Message::FileData(ref data) => {
                let len = data.len();
                return self.data(id, len, message).await;
            }
            Message::StdinClose | Message::Signal(_) | Message::Stop(_) | Message::FileEnd(_) => {
                return self.forward(id, message).await;
            }
            // Filtered out before decoding.
            Message::HelloAck(_)
            | Message::Pong
            | Message::Stdout(_)
            | Message::Stderr(_)
            | Message::ExecResult(_)
            | Message::StatusReport(_)
            | Message::FileInfo(_)
            | Message::FileDone(_)
            | Message::Error(_) => {}
        }
        Step::Continue
    }

    async fn hello(&mut self, id: u64, hello: &Hello) -> Step {
        if self.end_session() {
            info!("A new HELLO ended the session");
        }
        let Some(version) = negotiate_version(hello.min_version, hello.max_version) else {
            let err = SessionError::UnsupportedVersion {
                min: hello.min_version,
                max: hello.max_version,
            };
            self.send(id, &Message::Error(err.report())).await;
            return Step::Close;
        };
        if hello.max_payload < MIN_HOST_PAYLOAD {
            let err = SessionError::HostPayloadTooSmall(hello.max_payload);
            self.send(id, &Message::Error(err.report())).await;
            return Step::Continue;
        }
        let seq = self.agent.sessions.fetch_add(1, Ordering::Relaxed) + 1;
        self.current.store(seq, Ordering::Release);
        let (announced_seq, previous_token) = self.agent.accept_session(&hello.session_token);
        self.session = Some(Arc::new(Session {
            agent: Arc::clone(&self.agent),
            seq,
            host_max_payload: hello.max_payload,
            host_window: hello.initial_window,
            ended: self.agent.shutdown.child_token(),
            outbox: self.outbox.clone(),
            requests: Mutex::new(HashMap::new()),
        }));
        info!(seq, version, client = %hello.client, "Session started");
        let config = &self.agent.config;
        let clock_step_ms = if config.set_clock {
            match crate::clock::step_to(hello.host_time_unix_ms) {
                Ok(0) => 0,
                Ok(step) => {
                    info!(step_ms = step, "Stepped the clock to the host's");
                    step
                }
                Err(err) => {
                    warn!(error = %err, "Could not step the clock to the host's");
                    0
                }
            }
        } else {
            0
        };
        let ack = HelloAck {
            version,
            agent_version: AGENT_VERSION.to_owned(),
            capabilities: [
                capability::EXEC,
                capability::STDIN,
                capability::SIGNAL,
                capability::FILES,
                capability::STATUS,
                capability::STOP_AGENT,
            ]
            .map(str::to_owned)
            .to_vec(),
            boot_id: self.agent.boot_id.clone(),
            session_seq: announced_seq,
            previous_token,
            uptime_ms: self.agent.uptime_ms(),
            max_payload: config.max_payload,
            initial_window: config.window,
            clock_step_ms,
        };
        self.send(id, &Message::HelloAck(ack)).await;
        Step::Continue
    }

    /// Ends the current session, if any: its tasks wind down on their own and
    /// none of its frames is written any more. Returns whether there was one.
    fn end_session(&mut self) -> bool {
        let Some(session) = self.session.take() else {
            return false;
        };
        self.current.store(0, Ordering::Release);
        session.ended.cancel();
        true
    }

    /// Opens request `id` and spawns `task` for it.
    async fn open<F, T>(&mut self, id: u64, kind: MessageKind, flow: Flow, task: F) -> Step
    where
        F: FnOnce(RequestCtx, Inputs) -> T,
        T: Future<Output = ()> + Send + 'static,
    {
        let Some(session) = self.session.clone() else {
            return self.reject(id, &SessionError::NotNegotiated).await;
        };
        let credit = Arc::new(Credit::new(session.host_window));
        let intake = Arc::new(Mutex::new(RecvWindow::new(self.agent.config.window)));
        let (sender, inputs) = mpsc::unbounded_channel();
        let refused = {
            let mut requests = lock(&session.requests);
            if id == 0 || requests.contains_key(&id) {
                Some(SessionError::DuplicateRequest(id))
            } else if requests.len() >= self.agent.config.max_requests {
                Some(SessionError::TooManyRequests(requests.len()))
            } else {
                let handle = Handle {
                    inputs: sender,
                    credit: flow.sends.then(|| Arc::clone(&credit)),
                    intake: flow.takes.then(|| Arc::clone(&intake)),
                };
                requests.insert(id, handle);
                None
            }
        };
        if let Some(err) = refused {
            return self.reject(id, &err).await;
        }
        let ctx = RequestCtx {
            id,
            session,
            credit,
            intake,
        };
        let span = info_span!("request", id, ?kind);
        self.tasks.spawn(task(ctx, inputs).instrument(span));
        Step::Continue
    }

    /// Routes a data frame of `len` bytes, checking it against the window.
    async fn data(&mut self, id: u64, len: usize, message: Message) -> Step {
        let Some(handle) = self.session.as_ref().and_then(|s| s.handle(id)) else {
            return self.reject(id, &SessionError::UnknownRequest(id)).await;
        };
        let input = match handle
            .intake
            .as_ref()
            .map(|intake| lock(intake).receive(len))
        {
            Some(Err(err)) => Input::Reject(SessionError::FlowControl(err).report()),
            Some(Ok(())) | None => Input::Frame(message),
        };
        deliver(&handle, input);
        Step::Continue
    }

    /// Applies credit. Credit for a request that is not open is ignored: the
    /// host returns credit as it consumes data, which races with the
    /// request's last frame, so such updates are normal.
    fn window_update(&mut self, id: u64, increment: u32) -> Step {
        let Some(handle) = self.session.as_ref().and_then(|s| s.handle(id)) else {
            debug!(id, "Ignored WINDOW_UPDATE for a request that is not open");
            return Step::Continue;
        };
        match handle.credit.as_ref().map(|credit| credit.grant(increment)) {
            Some(Ok(())) => {}
            Some(Err(err)) => {
                deliver(
                    &handle,
                    Input::Reject(SessionError::FlowControl(err).report()),
                );
            }
            None => deliver(&handle, Input::Frame(Message::WindowUpdate(increment))),
        }
        Step::Continue
    }

    async fn forward(&mut self, id: u64, message: Message) -> Step {
        match self.session.as_ref().and_then(|s| s.handle(id)) {
            Some(handle) => deliver(&handle, Input::Frame(message)),
            None => return self.reject(id, &SessionError::UnknownRequest(id)).await,
        }
        Step::Continue
    }

    /// Answers a refused frame with ERROR. If `id` names an open request, the
    /// request ends with that ERROR instead.
    async fn reject(&mut self, id: u64, err: &SessionError) -> Step {
        let report = err.report();
        match self.session.as_ref().and_then(|s| s.handle(id)) {
            Some(handle) if id != 0 => deliver(&handle, Input::Reject(report)),
            _ => self.send(id, &Message::Error(report)).await,
        }
        Step::Continue
    }

    /// Queues a connection-level frame.
    async fn send(&self, id: u64, message: &Message) {
        let mut frame = Vec::new();
        if let Err(err) = encode_message(&mut frame, id, message) {
            error!(%err, "Could not encode a frame");
            return;
        }
        let outgoing = Outgoing { session: 0, frame };
        tokio::select! {
            sent = self.outbox.send(outgoing) => {
                if sent.is_err() {
                    debug!("The writer is gone");
                }
            }
            () = self.agent.stopping() => {}
        }
    }
}

fn deliver(handle: &Handle, input: Input) {
    // The task may have just finished; then the input has nobody to go to.
    let _ = handle.inputs.send(input);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use paddock_proto::{DEFAULT_MAX_PAYLOAD, ErrorCode, Execute, HEADER_LEN};

    use super::*;
    use crate::test_host::{
        TestHost, assert_no_process_with, hello, test_config, wait_for_process,
    };

    fn error_code(frame: (u64, Message)) -> (u64, ErrorCode) {
        match frame {
            (id, Message::Error(report)) => (id, report.code),
            other => panic!("expected ERROR, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn hello_negotiates_and_announces_the_agent() {
        let mut host = TestHost::start(test_config());
        let ack = host.hello(hello()).await;
        assert_eq!(ack.version, PROTOCOL_VERSION);
        assert_eq!(ack.agent_version, AGENT_VERSION);
        assert_eq!(ack.boot_id, host.agent.boot_id());
        assert_eq!(ack.boot_id.len(), 32);
        assert!(ack.boot_id.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(ack.session_seq, 1);
        assert_eq!(ack.max_payload, DEFAULT_MAX_PAYLOAD);
        assert_eq!(ack.initial_window, test_config().window);
        for feature in [capability::EXEC, capability::FILES, capability::STOP_AGENT] {
            assert!(ack.capabilities.iter().any(|c| c == feature), "{feature}");
        }
        // A second HELLO starts a new session of the same agent run.
        let again = host.hello(hello()).await;
        assert_eq!(again.session_seq, 2);
        assert_eq!(again.boot_id, ack.boot_id);
        // Sessions are counted across connections.
        let mut other = TestHost::connect_to(Arc::clone(&host.agent));
        assert_eq!(other.hello(hello()).await.session_seq, 3);
    }

    #[tokio::test]
    async fn an_agent_not_allowed_to_set_the_clock_leaves_it_alone() {
        // The test agent runs on the host: `set_clock` is off, and a host
        // time an hour off is ignored.
        let mut host = TestHost::start(test_config());
        let mut far_off = hello();
        far_off.host_time_unix_ms = paddock_proto::unix_time_ms() + 3_600_000;
        let ack = host.hello(far_off).await;
        assert_eq!(ack.clock_step_ms, 0);
        assert!(
            crate::clock::due_step(
                paddock_proto::unix_time_ms() + 3_600_000,
                paddock_proto::unix_time_ms()
            )
            .is_some()
        );
    }

    #[tokio::test]
    async fn no_common_version_is_refused_and_the_stream_closed() {
        let mut host = TestHost::start(test_config());
        let mut future = hello();
        future.min_version = PROTOCOL_VERSION + 1;
        future.max_version = PROTOCOL_VERSION + 5;
        host.send(0, &Message::Hello(future)).await;
        assert_eq!(
            error_code(host.recv().await),
            (0, ErrorCode::UnsupportedVersion)
        );
        assert!(host.try_recv().await.is_none(), "the stream must close");
    }

    #[tokio::test]
    async fn requests_before_hello_are_not_negotiated_but_ping_is_answered() {
        let mut host = TestHost::start(test_config());
        host.send(1, &Message::Execute(Execute::argv(["true"])))
            .await;
        assert_eq!(error_code(host.recv().await), (1, ErrorCode::NotNegotiated));
        host.send(2, &Message::StatusRequest).await;
        assert_eq!(error_code(host.recv().await), (2, ErrorCode::NotNegotiated));
        host.send(5, &Message::Ping).await;
        assert_eq!(host.recv().await, (5, Message::Pong));
        let mut small = hello();
        small.max_payload = 100;
        host.send(0, &Message::Hello(small)).await;
        assert_eq!(
            error_code(host.recv().await),
            (0, ErrorCode::InvalidArgument)
        );
        host.send(3, &Message::StatusRequest).await;
        assert_eq!(error_code(host.recv().await), (3, ErrorCode::NotNegotiated));
    }

    #[tokio::test]
    async fn malformed_frames_get_errors_and_the_connection_keeps_serving() {
        let mut host = TestHost::ready().await;

        let mut bad_crc = Vec::new();
        encode_message(&mut bad_crc, 1, &Message::Stdin(b"abc".to_vec())).expect("encode");
        bad_crc[HEADER_LEN] ^= 0xff;
        host.send_raw(&bad_crc).await;
        assert_eq!(error_code(host.recv().await), (0, ErrorCode::BadFrame));

        let mut oversized = TestHost::raw_frame(MessageKind::Ping as u16, 2, b"");
        oversized[20..24].copy_from_slice(&(DEFAULT_MAX_PAYLOAD + 1).to_le_bytes());
        host.send_raw(&oversized).await;
        assert_eq!(error_code(host.recv().await), (0, ErrorCode::BadFrame));

        let mut old_version = TestHost::raw_frame(MessageKind::Ping as u16, 3, b"");
        old_version[4..6].copy_from_slice(&77u16.to_le_bytes());
        host.send_raw(&old_version).await;
        assert_eq!(
            error_code(host.recv().await),
            (0, ErrorCode::UnsupportedVersion)
        );
        host.send(4, &Message::Ping).await;
        assert_eq!(host.recv().await, (4, Message::Pong));

        // A frame ends the previous run of garbage, so this one is reported.
        host.send_raw(b"plain garbage").await;
        host.send_raw(&TestHost::raw_frame(999, 7, b"{}")).await;
        assert_eq!(error_code(host.recv().await), (0, ErrorCode::BadFrame));
        assert_eq!(error_code(host.recv().await), (7, ErrorCode::UnknownKind));

        host.send_raw(&TestHost::raw_frame(
            MessageKind::Execute as u16,
            8,
            b"{\"command\":",
        ))
        .await;
        assert_eq!(error_code(host.recv().await), (8, ErrorCode::BadPayload));

        host.send(9, &Message::Stdout(b"x".to_vec())).await;
        match host.recv().await {
            (9, Message::Error(report)) => {
                assert_eq!(report.code, ErrorCode::UnknownKind);
                assert!(
                    report.message.contains("does not accept"),
                    "{}",
                    report.message
                );
            }
            other => panic!("expected ERROR, got {other:?}"),
        }

        // Unsolicited replies are not answered.
        host.send(0, &Message::Pong).await;
        host.send(10, &Message::Ping).await;
        assert_eq!(host.recv().await, (10, Message::Pong));
        let status = Execute::argv(["true"]);
        host.send(11, &Message::Execute(status)).await;
        let result = host.collect(11).await;
        assert!(matches!(result.last, Message::ExecResult(ref r) if r.exit_code == Some(0)));
    }

    #[tokio::test]
    async fn request_ids_are_checked() {
        let mut config = test_config();
        config.max_requests = 1;
        let mut host = TestHost::start(config);
        host.hello(hello()).await;

        host.send(0, &Message::Execute(Execute::argv(["true"])))
            .await;
        assert_eq!(
            error_code(host.recv().await),
            (0, ErrorCode::DuplicateRequest)
        );
        host.send(42, &Message::Stdin(b"x".to_vec())).await;
        assert_eq!(
            error_code(host.recv().await),
            (42, ErrorCode::UnknownRequest)
        );
        // Credit for a closed request races with its end: it is ignored.
        host.send(43, &Message::WindowUpdate(1)).await;
        host.send(44, &Message::Ping).await;
        assert_eq!(host.recv().await, (44, Message::Pong));

        let marker = "1000.201";
        host.send(1, &Message::Execute(Execute::argv(["sleep", marker])))
            .await;
        wait_for_process(marker).await;
        host.send(2, &Message::Execute(Execute::argv(["true"])))
            .await;
        assert_eq!(
            error_code(host.recv().await),
            (2, ErrorCode::TooManyRequests)
        );
        // Reusing an open id ends that request with the ERROR.
        host.send(1, &Message::Execute(Execute::argv(["true"])))
            .await;
        assert_eq!(
            error_code(host.recv().await),
            (1, ErrorCode::DuplicateRequest)
        );
        assert_no_process_with(marker).await;
        // The id is free again.
        host.send(1, &Message::Execute(Execute::argv(["true"])))
            .await;
        assert!(matches!(host.collect(1).await.last, Message::ExecResult(_)));
    }

    #[tokio::test]
    async fn status_request_is_answered() {
        let mut host = TestHost::ready().await;
        host.send(3, &Message::StatusRequest).await;
        match host.recv().await {
            (3, Message::StatusReport(report)) => {
                assert_eq!(report.boot_id, host.agent.boot_id());
                assert_eq!(report.agent_version, AGENT_VERSION);
                assert_eq!(report.running_executions, 0);
                assert!(report.mem_total_bytes > 0);
            }
            other => panic!("expected STATUS_REPORT, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_new_hello_ends_the_session_and_its_executions() {
        let mut host = TestHost::ready().await;
        let marker = "1000.202";
        host.send(1, &Message::Execute(Execute::argv(["sleep", marker])))
            .await;
        wait_for_process(marker).await;
        assert_eq!(host.hello(hello()).await.session_seq, 2);
        assert_no_process_with(marker).await;
        // Nothing of the old session follows the new HELLO_ACK.
        host.send(5, &Message::Ping).await;
        assert_eq!(host.recv().await, (5, Message::Pong));
        host.send(1, &Message::Stdin(b"x".to_vec())).await;
        assert_eq!(
            error_code(host.recv().await),
            (1, ErrorCode::UnknownRequest)
        );
    }

    #[tokio::test]
    async fn the_end_of_the_stream_ends_executions() {
        let mut host = TestHost::ready().await;
        let marker = "1000.203";
        host.send(
            1,
            &Message::Execute(Execute::shell(format!("sleep {marker}"))),
        )
        .await;
        wait_for_process(marker).await;
        host.hang_up().await;
        assert_no_process_with(marker).await;
    }

    #[tokio::test]
    async fn stop_agent_is_acknowledged_and_ends_everything() {
        let mut host = TestHost::ready().await;
        let marker = "1000.204";
        host.send(1, &Message::Execute(Execute::argv(["sleep", marker])))
            .await;
        wait_for_process(marker).await;
        let stop = Message::Stop(Stop {
            scope: StopScope::Agent,
        });
        host.send(2, &stop).await;
        assert_eq!(host.recv().await, (2, stop));
        assert!(host.try_recv().await.is_none(), "the connection must close");
        assert_no_process_with(marker).await;
        timeout(Duration::from_secs(1), host.agent.stopping())
            .await
            .expect("agent stopping");
    }
}
