//! One established session with an agent: the HELLO handshake, a reader task
//! that demultiplexes frames by request id, a writer task, and per-request
//! flow-control credit.
//!
//! Tasks and ownership:
//!
//! ```text
//!   Connection (Arc, held by AgentClient and every open request)
//!     ├── reader task: socket -> FrameDecoder -> dispatch() -> request slots
//!     └── writer task: unbounded queue of encoded frames -> socket
//! ```
//!
//! The writer queue is unbounded, but only the client itself fills it, and
//! every data frame in it was first covered by the agent's credit, so it holds
//! at most one window per request plus small control frames. Incoming data is
//! bounded the same way by the credit this side grants ([`RecvCredit`]). A
//! stream nobody reads (a dropped [`crate::OutputStream`]) has its data
//! discarded and its credit returned at once, so it never stalls the agent.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use paddock_proto::{
    DEFAULT_CHUNK, FRAME_READ_CHUNK, Frame, FrameDecoder, FrameError, Hello, HelloAck,
    MIN_PROTOCOL_VERSION, Message, MessageKind, PROTOCOL_VERSION, RecvWindow, SendWindow,
    decode_message, encode_frame, encode_message, is_supported_version,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use crate::error::ClientError;
use crate::transport::Stream;

/// An item of a request's control channel.
pub(crate) type Event = Result<Message, ClientError>;
/// An item of an output stream.
pub(crate) type Chunk = Result<Vec<u8>, ClientError>;

/// Settings a connection needs from the client configuration.
#[derive(Debug, Clone)]
pub(crate) struct SessionParams {
    pub client_name: String,
    pub max_payload: u32,
    pub window: u32,
    pub handshake_timeout: Duration,
    /// Sent in HELLO (and in every resent HELLO of this connection).
    pub session_token: String,
}

/// Credit this side grants the agent for one request's incoming data.
#[derive(Debug)]
pub(crate) struct RecvCredit {
    window: Mutex<RecvWindow>,
    request_id: u64,
    writer: mpsc::UnboundedSender<Vec<u8>>,
    buffered: Arc<AtomicU64>,
}

impl RecvCredit {
    fn receive(&self, len: usize) -> Result<(), ClientError> {
        lock(&self.window)
            .receive(len)
            .map_err(ClientError::FlowControl)?;
        self.buffered.fetch_add(len as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Returns credit for `len` bytes the consumer took (or discarded).
    pub(crate) fn consumed(&self, len: usize) {
        self.buffered.fetch_sub(len as u64, Ordering::Relaxed);
        let increment = lock(&self.window).consume(len);
        if let Some(increment) = increment {
            // A closed writer means the connection is gone; nothing to return.
            let _ = send_frame(
                &self.writer,
                self.request_id,
                &Message::WindowUpdate(increment),
            );
        }
    }
}

/// Credit the agent granted this side for one request's outgoing data.
#[derive(Debug)]
pub(crate) struct SendCredit {
    window: Mutex<SendWindow>,
    notify: Notify,
    closed: AtomicBool,
}

impl SendCredit {
    fn new(initial: u32) -> Self {
        Self {
            window: Mutex::new(SendWindow::new(initial)),
            notify: Notify::new(),
            closed: AtomicBool::new(false),
        }
    }

    /// Waits until at least one byte may be sent; returns how many (<= want).
    /// Fails when the request ended (answered, or its connection failed).
    pub(crate) async fn acquire(
        &self,
        want: usize,
        timeout: Duration,
    ) -> Result<usize, ClientError> {
        let wait = async {
            loop {
                let notified = self.notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.closed.load(Ordering::Acquire) {
                    return None;
                }
                let granted = lock(&self.window).take(want);
                if granted > 0 {
                    return Some(granted);
                }
                notified.await;
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(Some(granted)) => Ok(granted),
            Ok(None) => Err(ClientError::lost(None)),
            Err(_) => Err(ClientError::Timeout {
                what: "flow-control credit",
                after: timeout,
            }),
        }
    }

    fn grant(&self, increment: u32) -> Result<(), ClientError> {
        lock(&self.window)
            .grant(increment)
            .map_err(ClientError::FlowControl)?;
        self.notify.notify_waiters();
        Ok(())
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// Whether the request this credit belongs to has ended.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// The demultiplexer's record of one open request.
#[derive(Debug)]
struct Slot {
    events: mpsc::UnboundedSender<Event>,
    /// Stdout and stderr senders, for executions.
    outputs: [Option<mpsc::UnboundedSender<Chunk>>; 2],
    recv: Arc<RecvCredit>,
    send: Arc<SendCredit>,
}

#[derive(Debug, Default)]
struct State {
    slots: HashMap<u64, Slot>,
    /// Set once the connection failed; later requests fail with a copy.
    failure: Option<ClientError>,
}

/// State shared by the connection's tasks and its requests.
#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    writer: mpsc::UnboundedSender<Vec<u8>>,
    next_id: AtomicU64,
    agent_window: u32,
    our_window: u32,
    buffered: Arc<AtomicU64>,
}

/// One session with an agent. Dropping it ends the session.
#[derive(Debug)]
pub(crate) struct Connection {
    shared: Arc<Shared>,
    /// What the agent said about itself in HELLO_ACK.
    pub(crate) session: HelloAck,
    /// Largest data chunk to send: the agent's payload limit, capped.
    pub(crate) chunk: usize,
    tasks: [JoinHandle<()>; 2],
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.close();
    }
}

/// The receiving ends of a newly opened request.
#[derive(Debug)]
pub(crate) struct Request {
    pub id: u64,
    pub conn: Arc<Connection>,
    pub events: mpsc::UnboundedReceiver<Event>,
    pub outputs: [Option<mpsc::UnboundedReceiver<Chunk>>; 2],
    pub recv: Arc<RecvCredit>,
    pub send: Arc<SendCredit>,
}

impl Drop for Request {
    fn drop(&mut self) {
        // A request dropped before its answer stops being routed; data still
        // queued for it is discarded and its credit returned.
        let slot = lock(&self.conn.shared.state).slots.remove(&self.id);
        drop(slot);
        self.events.close();
        while let Ok(event) = self.events.try_recv() {
            if let Ok(Message::FileData(data)) = event {
                self.recv.consumed(data.len());
            }
        }
    }
}

impl Connection {
    /// Runs the HELLO handshake on `stream` and starts the session's tasks.
    pub(crate) async fn establish(
        stream: Stream,
        params: &SessionParams,
        buffered: Arc<AtomicU64>,
    ) -> Result<Arc<Self>, ClientError> {
        let (mut reader, mut writer) = tokio::io::split(stream);
        let mut decoder = FrameDecoder::new(params.max_payload);
        // Request ids start at a random offset so that stale frames of an
        // earlier session on a virtio-serial stream cannot match new requests.
        let first_id = random_id_base();
        let mut hello = Hello {
            min_version: MIN_PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            client: params.client_name.clone(),
            max_payload: params.max_payload,
            initial_window: params.window,
            session_token: params.session_token.clone(),
            host_time_unix_ms: 0,
        };
        // HELLO is sent again every HELLO_RESEND until answered: on a
        // virtio-serial port a HELLO written while the guest's agent was not
        // reading (still booting, or restarting) can be lost. The stream is
        // ordered, so every HELLO reaches the agent before any request that
        // follows; answers to the extra ones find no open request.
        let mut hello_id = first_id;
        let handshake = async {
            loop {
                let mut bytes = Vec::new();
                // The time is taken per send: a restored guest's agent sets
                // its clock from it.
                hello.host_time_unix_ms = paddock_proto::unix_time_ms();
                let message = Message::Hello(hello.clone());
                encode_message(&mut bytes, hello_id, &message).map_err(|e| {
                    ClientError::InvalidRequest(format!("HELLO could not be encoded: {e}"))
                })?;
                writer
                    .write_all(&bytes)
                    .await
                    .map_err(|e| ClientError::lost(Some(e)))?;
                let answer = await_hello_ack(&mut reader, &mut decoder, first_id..=hello_id);
                if let Ok(result) = tokio::time::timeout(HELLO_RESEND, answer).await {
                    break result;
                }
                hello_id += 1;
            }
        };
        let session = tokio::time::timeout(params.handshake_timeout, handshake)
            .await
            .map_err(|_| ClientError::Timeout {
                what: "the agent's HELLO_ACK",
                after: params.handshake_timeout,
            })??;
        if !is_supported_version(session.version) {
            return Err(ClientError::UnsupportedVersion {
                message: format!("agent chose version {}", session.version),
            });
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            writer: tx,
            next_id: AtomicU64::new(hello_id + 1),
            agent_window: session.initial_window,
            our_window: params.window,
            buffered,
        });
        let reader_task = tokio::spawn(read_loop(Arc::clone(&shared), reader, decoder));
        let writer_task = tokio::spawn(write_loop(Arc::clone(&shared), rx, writer));
        let chunk =
            usize::try_from(session.max_payload).map_or(DEFAULT_CHUNK, |m| m.min(DEFAULT_CHUNK));
        Ok(Arc::new(Self {
            shared,
            session,
            chunk: chunk.max(1),
            tasks: [reader_task, writer_task],
        }))
    }

    /// Ends the session now: the socket closes (so the agent ends the
    /// session's executions) and every open request fails.
    pub(crate) fn close(&self) {
        for task in &self.tasks {
            task.abort();
        }
        self.shared.fail_all(&ClientError::lost(None));
    }

    /// Whether the session has failed or closed.
    pub(crate) fn is_closed(&self) -> bool {
        lock(&self.shared.state).failure.is_some() || self.shared.writer.is_closed()
    }

    /// Registers a new request; `with_outputs` adds stdout/stderr streams.
    pub(crate) fn open(self: &Arc<Self>, with_outputs: bool) -> Result<Request, ClientError> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let mut outputs_tx = [None, None];
        let mut outputs_rx = [None, None];
        if with_outputs {
            for (tx, rx) in outputs_tx.iter_mut().zip(outputs_rx.iter_mut()) {
                let (t, r) = mpsc::unbounded_channel();
                *tx = Some(t);
                *rx = Some(r);
            }
        }
        let recv = Arc::new(RecvCredit {
            window: Mutex::new(RecvWindow::new(self.shared.our_window)),
            request_id: id,
            writer: self.shared.writer.clone(),
            buffered: Arc::clone(&self.shared.buffered),
        });
        let send = Arc::new(SendCredit::new(self.shared.agent_window));
        let mut state = lock(&self.shared.state);
        if let Some(failure) = &state.failure {
            return Err(failure.duplicate());
        }
        state.slots.insert(
            id,
            Slot {
                events: events_tx,
                outputs: outputs_tx,
                recv: Arc::clone(&recv),
                send: Arc::clone(&send),
            },
        );
        drop(state);
        Ok(Request {
            id,
            conn: Arc::clone(self),
            events: events_rx,
            outputs: outputs_rx,
            recv,
            send,
        })
    }

    /// Queues one message for the writer task.
    pub(crate) fn send(&self, request_id: u64, message: &Message) -> Result<(), ClientError> {
        send_frame(&self.shared.writer, request_id, message)
    }

    /// Queues one data frame (`STDIN`, `FILE_DATA`) encoded straight from
    /// `data`, without building a [`Message`] (one copy fewer on the hot path).
    pub(crate) fn send_data(
        &self,
        request_id: u64,
        kind: MessageKind,
        data: &[u8],
    ) -> Result<(), ClientError> {
        debug_assert!(kind.is_flow_controlled());
        let mut bytes = Vec::new();
        encode_frame(&mut bytes, kind, request_id, data)
            .map_err(|e| ClientError::InvalidRequest(format!("data could not be framed: {e}")))?;
        self.shared
            .writer
            .send(bytes)
            .map_err(|_| ClientError::lost(None))
    }
}

fn send_frame(
    writer: &mpsc::UnboundedSender<Vec<u8>>,
    request_id: u64,
    message: &Message,
) -> Result<(), ClientError> {
    let mut bytes = Vec::new();
    encode_message(&mut bytes, request_id, message)
        .map_err(|e| ClientError::InvalidRequest(format!("message could not be encoded: {e}")))?;
    writer.send(bytes).map_err(|_| ClientError::lost(None))
}

/// Reads frames until HELLO_ACK. Anything before it (stale output of an
/// earlier session on a virtio-serial stream, garbage) is skipped.
async fn await_hello_ack(
    reader: &mut ReadHalf<Stream>,
    decoder: &mut FrameDecoder,
    hello_ids: std::ops::RangeInclusive<u64>,
) -> Result<HelloAck, ClientError> {
    loop {
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    let id = frame.request_id;
                    match decode_message(frame) {
                        Ok(Message::HelloAck(ack)) => return Ok(ack),
                        Ok(Message::Error(report)) if hello_ids.contains(&id) || id == 0 => {
                            return Err(match report.code {
                                paddock_proto::ErrorCode::UnsupportedVersion => {
                                    ClientError::UnsupportedVersion {
                                        message: report.message,
                                    }
                                }
                                code => ClientError::Agent {
                                    code,
                                    message: report.message,
                                },
                            });
                        }
                        Ok(other) => {
                            tracing::debug!(kind = ?other.kind(), id, "skipping frame before HELLO_ACK");
                        }
                        Err(err) => tracing::debug!(%err, "skipping bad frame before HELLO_ACK"),
                    }
                }
                Ok(None) => break,
                Err(err) => tracing::debug!(%err, "skipping garbage before HELLO_ACK"),
            }
        }
        match reader.read(decoder.spare(FRAME_READ_CHUNK)).await {
            Ok(0) => return Err(ClientError::lost(None)),
            Ok(n) => decoder.commit(n),
            Err(err) => return Err(ClientError::lost(Some(err))),
        }
    }
}

async fn read_loop(shared: Arc<Shared>, mut reader: ReadHalf<Stream>, mut decoder: FrameDecoder) {
    let failure = 'session: loop {
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    if let Err(err) = shared.dispatch(frame) {
                        break 'session err;
                    }
                }
                Ok(None) => break,
                Err(FrameError::UnknownKind { kind, request_id }) => {
                    // A newer agent's optional frame: the stream is still in sync.
                    tracing::debug!(kind, request_id, "ignoring frame of unknown kind");
                }
                Err(err) => break 'session ClientError::Frame(err),
            }
        }
        match reader.read(decoder.spare(FRAME_READ_CHUNK)).await {
            Ok(0) => break ClientError::lost(None),
            Ok(n) => decoder.commit(n),
            Err(err) => break ClientError::lost(Some(err)),
        }
    };
    tracing::debug!(error = %failure, "agent session ended");
    shared.fail_all(&failure);
}

/// How long to wait for HELLO_ACK before sending HELLO again.
const HELLO_RESEND: Duration = Duration::from_secs(1);

/// Frames at least this large are written on their own instead of being
/// copied into a batch with their neighbours.
const BATCH_LIMIT: usize = 16 * 1024;

async fn write_loop(
    shared: Arc<Shared>,
    mut queue: mpsc::UnboundedReceiver<Vec<u8>>,
    mut writer: WriteHalf<Stream>,
) {
    while let Some(first) = queue.recv().await {
        let mut result = Ok(());
        let mut batch = first;
        loop {
            if batch.len() >= BATCH_LIMIT {
                result = writer.write_all(&batch).await;
                batch.clear();
            }
            match queue.try_recv() {
                Ok(next) if result.is_ok() => batch.extend_from_slice(&next),
                _ => break,
            }
        }
        if result.is_ok() && !batch.is_empty() {
            result = writer.write_all(&batch).await;
        }
        if let Err(err) = result {
            shared.fail_all(&ClientError::lost(Some(err)));
            return;
        }
    }
}

impl Shared {
    /// Routes one frame to its request. An error ends the whole session.
    fn dispatch(&self, frame: Frame) -> Result<(), ClientError> {
        let id = frame.request_id;
        let message = decode_message(frame).map_err(ClientError::Decode)?;
        let mut state = lock(&self.state);
        let Some(slot) = state.slots.get(&id) else {
            match &message {
                Message::Error(report) => {
                    tracing::warn!(id, code = ?report.code, message = %report.message, "agent reported an error");
                }
                Message::Ping => {
                    drop(state);
                    return send_frame(&self.writer, id, &Message::Pong);
                }
                other => tracing::debug!(id, kind = ?other.kind(), "frame for no open request"),
            }
            return Ok(());
        };
        match message {
            Message::Stdout(_) | Message::Stderr(_) if slot.outputs.iter().all(Option::is_none) => {
                Err(ClientError::Unexpected {
                    kind: message.kind(),
                })
            }
            Message::Stdout(data) => route_output(slot, 0, data),
            Message::Stderr(data) => route_output(slot, 1, data),
            Message::FileData(data) => {
                slot.recv.receive(data.len())?;
                let len = data.len();
                if slot.events.send(Ok(Message::FileData(data))).is_err() {
                    slot.recv.consumed(len);
                }
                Ok(())
            }
            Message::WindowUpdate(increment) => slot.send.grant(increment),
            Message::FileInfo(_) => {
                let _ = slot.events.send(Ok(message));
                Ok(())
            }
            Message::Ping => {
                drop(state);
                send_frame(&self.writer, id, &Message::Pong)
            }
            Message::ExecResult(_)
            | Message::Error(_)
            | Message::Pong
            | Message::StatusReport(_)
            | Message::FileDone(_)
            | Message::FileEnd(_)
            | Message::Stop(_) => {
                // The request's last frame: stop routing, wake any sender.
                if let Some(slot) = state.slots.remove(&id) {
                    slot.send.close();
                    let _ = slot.events.send(Ok(message));
                }
                Ok(())
            }
            other => Err(ClientError::Unexpected { kind: other.kind() }),
        }
    }

    /// Fails every open request and refuses new ones.
    fn fail_all(&self, failure: &ClientError) {
        let mut state = lock(&self.state);
        if state.failure.is_none() {
            state.failure = Some(failure.duplicate());
        }
        for (_, slot) in state.slots.drain() {
            slot.send.close();
            for output in slot.outputs.iter().flatten() {
                let _ = output.send(Err(failure.duplicate()));
            }
            let _ = slot.events.send(Err(failure.duplicate()));
        }
    }
}

fn route_output(slot: &Slot, index: usize, data: Vec<u8>) -> Result<(), ClientError> {
    slot.recv.receive(data.len())?;
    let len = data.len();
    let delivered = slot.outputs[index]
        .as_ref()
        .is_some_and(|tx| tx.send(Ok(data)).is_ok());
    if !delivered {
        // Nobody reads this stream: discard, and return the credit at once.
        slot.recv.consumed(len);
    }
    Ok(())
}

/// A per-connection random starting request id (48 bits of entropy from the
/// std hasher's per-process random keys and the clock; ids stay below 2^63).
/// A token for HELLO that no other connection of this process (nor, very
/// likely, of any other) uses.
pub(crate) fn new_session_token() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{:012x}-{:x}-{:x}",
        random_id_base(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn random_id_base() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (hasher.finish() >> 16).max(1)
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it (the
/// guarded state is always left consistent between statements).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
