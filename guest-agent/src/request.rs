//! The request layer: what every request handler works with, below the
//! connection's router.
//!
//! A request is opened by one frame (EXECUTE, FILE_PUT, FILE_GET,
//! STATUS_REQUEST, FS_REQUEST) whose message implements [`Handler`]. Its handler gets a
//! [`RequestCtx`] and the request's [`Inputs`]. Through the context it sends
//! frames on its request, data within the host's credit, and returns credit
//! for the host's data it consumed. What it returns ends the request: its
//! message, or its error as an ERROR frame carrying the error's
//! [`WireError::code`] and its whole source chain.
//!
//! The router (`crate::connection`) opens requests in a [`Session`], routes
//! their later frames to their [`Handle`] (through a bounded [`inbox`]), and
//! runs each through the pipeline every request takes. This module and the
//! handlers know nothing of the router: they see only the context, the
//! inputs and their errors.
//!
//! A request stays open until its last frame is on its way to the host: the
//! writer closes it just before it writes that frame ([`Closing`]). So a
//! frame the host sent for the request before it saw the last one still
//! finds the request open (and is dropped, as the request has ended), and
//! the router's answer to any later one cannot come before the last frame.

use std::collections::HashMap;
use std::error::Error;
use std::pin::pin;
use std::sync::{Arc, Mutex};

use paddock_proto::{
    DEFAULT_CHUNK, EncodeError, ErrorCode, ErrorReport, HEADER_LEN, Hello, HelloAck, Message,
    MessageKind, RecvWindow, SendWindow, WindowError, encode_frame, encode_frame_header_with_crc,
    encode_message,
};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::{Agent, Config, lock};

pub(crate) mod inbox;

use inbox::Inbox;
pub(crate) use inbox::{Input, Inputs};

/// A request the agent serves, implemented by the message that opens it.
pub(crate) trait Handler: Send + 'static {
    /// Why the request can fail; the pipeline sends it as ERROR.
    type Error: WireError + Send;

    /// Which flow-controlled directions the request uses.
    fn flow(&self) -> Flow;

    /// Does the request, up to the message that ends it (RESULT, FILE_DONE,
    /// FILE_END, STATUS_REPORT). The pipeline sends that message.
    fn handle(
        self,
        ctx: &RequestCtx,
        inputs: Inputs,
    ) -> impl Future<Output = Result<Message, Self::Error>> + Send;
}

/// Which flow-controlled directions a request uses.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Flow {
    /// The request sends data (STDOUT, STDERR, FILE_DATA): it takes the
    /// host's WINDOW_UPDATE.
    pub(crate) sends: bool,
    /// The request takes data (STDIN, FILE_DATA), counted against its window.
    pub(crate) takes: bool,
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

/// Why a session refused to open a request.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    /// A new request with id 0 or the id of an open request.
    #[error("Request id {0} is 0 or already in use")]
    DuplicateRequest(u64),
    /// The session has `max_requests` open requests.
    #[error("The session already has {0} open requests")]
    TooManyRequests(usize),
}

impl WireError for OpenError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::DuplicateRequest(_) => ErrorCode::DuplicateRequest,
            Self::TooManyRequests(_) => ErrorCode::TooManyRequests,
        }
    }
}

/// Waits for the first input and turns it into the rejection that ends a
/// request which takes no input.
pub(crate) async fn rejection(inputs: &mut Inputs) -> Rejection {
    match inputs.recv().await {
        Input::Frame(message) => Rejection::Unexpected(message.kind()),
        Input::Reject(report) => Rejection::Report(report),
    }
}

/// A frame on its way to the connection's writer.
#[derive(Debug)]
pub(crate) struct Outgoing {
    /// The session that produced it; 0 for connection-level frames, which are
    /// always written.
    pub(crate) session: u64,
    /// The encoded frame.
    pub(crate) frame: Vec<u8>,
    /// Set on a request's last frame: the request to close before the frame
    /// is written (by dropping this).
    pub(crate) closes: Option<Closing>,
}

/// The open requests of a session, by id.
type RequestTable = Mutex<HashMap<u64, Handle>>;

/// Closes a request when dropped: the writer drops it just before it writes
/// the request's last frame, and a frame the writer never writes (the
/// connection failed) closes its request all the same.
#[derive(Debug)]
pub(crate) struct Closing {
    requests: Arc<RequestTable>,
    id: u64,
}

impl Drop for Closing {
    fn drop(&mut self) {
        lock(&self.requests).remove(&self.id);
    }
}

/// The agent's credit for data it sends on one request (the host's window).
#[derive(Debug)]
struct Credit {
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

/// A request as the reader sees it: where its inputs go and its windows.
#[derive(Debug, Clone)]
pub(crate) struct Handle {
    inbox: Arc<Inbox>,
    /// Set when the request sends flow-controlled data (takes WINDOW_UPDATE).
    credit: Option<Arc<Credit>>,
    /// Set when the request takes flow-controlled data (STDIN, FILE_DATA).
    intake: Option<Arc<Mutex<RecvWindow>>>,
}

impl Handle {
    /// Hands a frame to the request's task, without waiting: a request
    /// with too many control frames waiting ends with ERROR `flow_control`.
    /// A request whose task has finished drops it.
    pub(crate) fn deliver(&self, message: Message) {
        if let Err(full) = self.inbox.push(message) {
            self.reject(ErrorReport::new(ErrorCode::FlowControl, full.to_string()));
        }
    }

    /// Ends the request with `report` (the first rejection wins).
    pub(crate) fn reject(&self, report: ErrorReport) {
        self.inbox.reject(report);
    }

    /// Counts `len` bytes of the host's data against the request's window;
    /// `None` if the request takes no data.
    pub(crate) fn receive(&self, len: usize) -> Option<Result<(), WindowError>> {
        self.intake.as_ref().map(|intake| lock(intake).receive(len))
    }

    /// Adds the host's credit to the request's window; `None` if the request
    /// sends no data.
    pub(crate) fn grant(&self, increment: u32) -> Option<Result<(), WindowError>> {
        self.credit.as_ref().map(|credit| credit.grant(increment))
    }
}

/// One session: what HELLO negotiated and the requests opened since.
#[derive(Debug)]
pub(crate) struct Session {
    agent: Arc<Agent>,
    seq: u64,
    host_max_payload: u32,
    host_window: u32,
    /// The HELLO_ACK that started the session, answered again (with a new
    /// uptime) to a HELLO resent with the same token.
    ack: HelloAck,
    /// The token of the HELLO that started the session.
    token: String,
    /// Cancelled when the session ends (a child of the agent's shutdown).
    ended: CancellationToken,
    outbox: mpsc::Sender<Outgoing>,
    requests: Arc<RequestTable>,
}

impl Session {
    /// Session `seq` of `agent`, started by `hello` and answered with
    /// `ack`, writing through `outbox`.
    pub(crate) fn new(
        agent: &Arc<Agent>,
        seq: u64,
        hello: &Hello,
        ack: HelloAck,
        outbox: mpsc::Sender<Outgoing>,
    ) -> Self {
        Self {
            agent: Arc::clone(agent),
            seq,
            host_max_payload: hello.max_payload,
            host_window: hello.initial_window,
            ack,
            token: hello.session_token.clone(),
            ended: agent.shutdown.child_token(),
            outbox,
            requests: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Whether `hello` is a resend of the HELLO that started this session:
    /// it carries the same token, and the token is not empty.
    pub(crate) fn is_resent(&self, hello: &Hello) -> bool {
        !self.token.is_empty() && hello.session_token == self.token
    }

    /// The HELLO_ACK that started the session.
    pub(crate) fn ack(&self) -> &HelloAck {
        &self.ack
    }

    /// Ends the session: its requests wind down on their own.
    pub(crate) fn end(&self) {
        self.ended.cancel();
    }

    /// The open request `id`.
    pub(crate) fn handle(&self, id: u64) -> Option<Handle> {
        lock(&self.requests).get(&id).cloned()
    }

    /// Opens request `id` using `flow`: the context and inputs for its task.
    ///
    /// # Errors
    /// [`OpenError`] if the id is 0 or taken, or the session is full.
    pub(crate) fn open(
        self: &Arc<Self>,
        id: u64,
        flow: Flow,
    ) -> Result<(RequestCtx, Inputs), OpenError> {
        let config = &self.agent.config;
        let mut requests = lock(&self.requests);
        if id == 0 || requests.contains_key(&id) {
            return Err(OpenError::DuplicateRequest(id));
        }
        if requests.len() >= config.max_requests {
            return Err(OpenError::TooManyRequests(requests.len()));
        }
        let credit = Arc::new(Credit::new(self.host_window));
        let intake = Arc::new(Mutex::new(RecvWindow::new(config.window)));
        let (inbox, inputs) = Inbox::new();
        let handle = Handle {
            inbox,
            credit: flow.sends.then(|| Arc::clone(&credit)),
            intake: flow.takes.then(|| Arc::clone(&intake)),
        };
        requests.insert(id, handle);
        drop(requests);
        let ctx = RequestCtx {
            id,
            session: Arc::clone(self),
            credit,
            intake,
        };
        Ok((ctx, inputs))
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
    /// The request id the host chose.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// The agent this request runs in.
    pub(crate) fn agent(&self) -> &Arc<Agent> {
        &self.session.agent
    }

    /// The agent's settings.
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

    /// The largest payload the host accepts in one frame.
    pub(crate) fn host_max_payload(&self) -> usize {
        usize::try_from(self.session.host_max_payload).unwrap_or(usize::MAX)
    }

    /// Completes when the session ends.
    pub(crate) async fn ended(&self) {
        self.session.ended.cancelled().await;
    }

    /// Whether the whole agent is stopping (not only this session).
    pub(crate) fn agent_stopping(&self) -> bool {
        self.session.agent.shutdown.is_cancelled()
    }

    /// A token cancelled when the session ends, for tasks that may end earlier.
    pub(crate) fn child_token(&self) -> CancellationToken {
        self.session.ended.child_token()
    }

    /// Queues a frame for the writer, or fails once the session has ended.
    async fn queue(&self, frame: Vec<u8>, closes: Option<Closing>) -> Result<(), Interrupted> {
        let outgoing = Outgoing {
            session: self.session.seq,
            frame,
            closes,
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
        self.queue(frame, None).await
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
            self.queue(frame, None).await?;
            data = rest;
        }
        Ok(())
    }

    /// Sends `data` as frames of `kind` within the host's credit, like
    /// [`Self::send_data`], and adds it to `checksum`: each frame's payload
    /// is checksummed once, for the frame and for `checksum` alike.
    pub(crate) async fn send_data_checksummed(
        &self,
        kind: MessageKind,
        mut data: &[u8],
        checksum: &mut crc32fast::Hasher,
    ) -> Result<(), Interrupted> {
        while !data.is_empty() {
            let want = data.len();
            let granted = tokio::select! {
                () = self.ended() => return Err(Interrupted::SessionEnded),
                n = self.credit.wait(|window| window.take(want)) => n,
            };
            let (now, rest) = data.split_at(granted.min(want));
            let crc = crc32fast::hash(now);
            let mut header = [0u8; HEADER_LEN];
            encode_frame_header_with_crc(&mut header, kind, self.id, now.len(), crc)
                .map_err(Interrupted::Encode)?;
            let mut frame = Vec::with_capacity(HEADER_LEN + now.len());
            frame.extend_from_slice(&header);
            frame.extend_from_slice(now);
            checksum.combine(&crc32fast::Hasher::new_with_initial_len(
                crc,
                now.len() as u64,
            ));
            self.queue(frame, None).await?;
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

    /// Ends the request with its last frame: the writer closes the request
    /// just before it writes that frame (see the module documentation).
    /// Nothing is sent once the session has ended.
    pub(crate) async fn finish(self, outcome: Result<Message, ErrorReport>) {
        let closing = Closing {
            requests: Arc::clone(&self.session.requests),
            id: self.id,
        };
        if self.session.ended.is_cancelled() {
            return;
        }
        let message = outcome.unwrap_or_else(|report| {
            debug!(code = ?report.code, message = %report.message, "Request failed");
            Message::Error(report)
        });
        let mut frame = Vec::new();
        if let Err(err) = encode_message(&mut frame, self.id, &message) {
            debug!(%err, "Could not encode the request's last frame");
            return;
        }
        if let Err(err) = self.queue(frame, Some(closing)).await {
            debug!(%err, "Could not send the request's last frame");
        }
    }
}
