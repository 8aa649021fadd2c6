//! One established session with an agent: the HELLO handshake (`handshake`),
//! a reader task that demultiplexes frames by request id, a writer task, and
//! per-request flow-control credit (`credit`).
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
//!
//! Everything the agent sends is hostile input, and nothing it sends makes
//! this side queue without bound: a PING is answered only while no earlier
//! PONG waits in the writer queue (an agent that floods PINGs and reads
//! nothing gets one answer, not a growing queue), a request takes one
//! FILE_INFO and FILE_DATA only after it, and every other kind either ends
//! its request, is bounded by credit, or ends the session. [`dispatch`](Shared::dispatch) is the whole
//! of that routing; the `fuzzing` feature drives it, with the handshake
//! and the requests' consumers, from a scripted agent (`fuzz/`'s
//! `client_session` target and this crate's proptests).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use paddock_proto::{
    DEFAULT_CHUNK, FRAME_READ_CHUNK, Frame, FrameDecoder, FrameError, HelloAck, Message,
    MessageKind, decode_message, encode_frame, encode_message,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::ClientError;
use crate::transport::Stream;

mod credit;
mod handshake;
mod keepalive;

pub(crate) use credit::{Pacing, RecvCredit, SendCredit};
use handshake::{Handshake, handshake};
pub(crate) use handshake::{SessionParams, new_session_token};
pub(crate) use keepalive::Keepalive;

/// An item of a request's control channel.
pub(crate) type Event = Result<Message, ClientError>;
/// An item of an output stream.
pub(crate) type Chunk = Result<Vec<u8>, ClientError>;

/// The demultiplexer's record of one open request.
#[derive(Debug)]
struct Slot {
    events: mpsc::UnboundedSender<Event>,
    /// Stdout and stderr senders, for executions.
    outputs: [Option<mpsc::UnboundedSender<Chunk>>; 2],
    recv: Arc<RecvCredit>,
    send: Arc<SendCredit>,
    /// Whether the request's FILE_INFO came: a second one is a protocol
    /// error.
    info_received: bool,
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
    /// Where protocol errors of the agent's peer are reported.
    events: paddock_events::Emitter,
    /// Paces the credit returned for received bytes, if a gate does.
    pacing: Option<Pacing>,
    /// Set while a PONG waits in the writer queue; cleared by the writer
    /// once it wrote what it took. PINGs that come meanwhile get no answer
    /// of their own.
    pong_queued: std::sync::atomic::AtomicBool,
}

/// One session with an agent. Dropping it ends the session.
#[derive(Debug)]
pub(crate) struct Connection {
    shared: Arc<Shared>,
    /// What the agent said about itself in HELLO_ACK.
    pub(crate) session: HelloAck,
    /// Largest data chunk to send: the agent's payload limit, capped.
    pub(crate) chunk: usize,
    tasks: [JoinHandle<()>; 3],
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
        keepalive: Keepalive,
        buffered: Arc<AtomicU64>,
    ) -> Result<Arc<Self>, ClientError> {
        let (mut reader, mut writer) = tokio::io::split(stream);
        let mut decoder = FrameDecoder::new(params.max_payload);
        let Handshake { session, next_id } =
            handshake(&mut reader, &mut writer, &mut decoder, params).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            writer: tx,
            next_id: AtomicU64::new(next_id),
            agent_window: session.initial_window,
            our_window: params.window,
            buffered,
            events: params.events.clone(),
            pacing: params.gate.clone().map(|gate| Pacing {
                gate,
                events: params.events.clone(),
            }),
            pong_queued: std::sync::atomic::AtomicBool::new(false),
        });
        let reader_task = tokio::spawn(read_loop(Arc::clone(&shared), reader, decoder));
        let writer_task = tokio::spawn(write_loop(Arc::clone(&shared), rx, writer));
        let keepalive_task = tokio::spawn(keepalive::keepalive_loop(
            Arc::downgrade(&shared),
            session.boot_id.clone(),
            keepalive,
        ));
        let chunk =
            usize::try_from(session.max_payload).map_or(DEFAULT_CHUNK, |m| m.min(DEFAULT_CHUNK));
        Ok(Arc::new(Self {
            shared,
            session,
            chunk: chunk.max(1),
            tasks: [reader_task, writer_task, keepalive_task],
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
        let recv = Arc::new(RecvCredit::new(
            self.shared.our_window,
            id,
            self.shared.writer.clone(),
            Arc::clone(&self.shared.buffered),
            self.shared.pacing.clone(),
        ));
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
                info_received: false,
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

    /// Lets the agent's FILE_DATA for `request` through without a
    /// FILE_INFO first: a tree's stream (TREE_GET) has none.
    pub(crate) fn accept_data(&self, request: &Request) {
        if let Some(slot) = lock(&self.shared.state).slots.get_mut(&request.id) {
            slot.info_received = true;
        }
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

async fn read_loop(shared: Arc<Shared>, mut reader: ReadHalf<Stream>, mut decoder: FrameDecoder) {
    let failure = 'session: loop {
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    if let Err(err) = shared.dispatch(frame) {
                        if let Some(kind) = protocol_error_kind(&err) {
                            shared
                                .events
                                .emit(|| paddock_events::EventKind::ProtocolError { kind });
                        }
                        break 'session err;
                    }
                }
                Ok(None) => break,
                Err(FrameError::UnknownKind { kind, request_id }) => {
                    // A newer agent's optional frame: the stream is still in sync.
                    tracing::debug!(kind, request_id, "ignoring frame of unknown kind");
                    shared
                        .events
                        .emit(|| paddock_events::EventKind::ProtocolError {
                            kind: "unknown_kind",
                        });
                }
                Err(err) => {
                    let err = ClientError::Frame(err);
                    if let Some(kind) = protocol_error_kind(&err) {
                        shared
                            .events
                            .emit(|| paddock_events::EventKind::ProtocolError { kind });
                    }
                    break 'session err;
                }
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

/// A short name for an error that says the agent broke the protocol, for
/// its event; `None` for other errors (a lost connection is not one).
fn protocol_error_kind(err: &ClientError) -> Option<&'static str> {
    match err {
        ClientError::Frame(FrameError::CrcMismatch { .. }) => Some("crc"),
        ClientError::Frame(FrameError::BadMagic { .. }) => Some("bad_magic"),
        ClientError::Frame(FrameError::TooLarge { .. }) => Some("too_large"),
        ClientError::Frame(FrameError::UnknownKind { .. }) => Some("unknown_kind"),
        ClientError::Frame(FrameError::UnsupportedVersion { .. }) => Some("unsupported_version"),
        ClientError::Frame(_) => Some("frame"),
        ClientError::Decode(_) => Some("decode"),
        ClientError::FlowControl(_) => Some("window_overrun"),
        ClientError::Unexpected { .. } => Some("unexpected_kind"),
        _ => None,
    }
}

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
        // Whatever PONG was queued before this batch was taken is written.
        shared.pong_queued.store(false, Ordering::Release);
    }
}

impl Shared {
    /// Opens a request of the client's own (the keepalive's): its id and
    /// the receiver of its answer.
    fn open_internal(&self) -> (u64, mpsc::UnboundedReceiver<Event>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (events, answers) = mpsc::unbounded_channel();
        let slot = Slot {
            events,
            outputs: [None, None],
            recv: Arc::new(RecvCredit::new(
                self.our_window,
                id,
                self.writer.clone(),
                Arc::clone(&self.buffered),
                self.pacing.clone(),
            )),
            send: Arc::new(SendCredit::new(self.agent_window)),
            info_received: false,
        };
        lock(&self.state).slots.insert(id, slot);
        (id, answers)
    }

    /// Stops routing request `id` (one given up on).
    fn forget(&self, id: u64) {
        lock(&self.state).slots.remove(&id);
    }

    /// Routes one frame to its request. An error ends the whole session.
    fn dispatch(&self, frame: Frame) -> Result<(), ClientError> {
        let id = frame.request_id;
        let message = decode_message(frame).map_err(ClientError::Decode)?;
        let mut state = lock(&self.state);
        let Some(slot) = state.slots.get_mut(&id) else {
            match &message {
                Message::Error(report) => {
                    // Debug-quoted: the text is the guest's.
                    tracing::warn!(id, code = ?report.code, message = ?report.message, "agent reported an error");
                }
                Message::Ping => {
                    drop(state);
                    return self.answer_ping(id);
                }
                other => tracing::debug!(id, kind = ?other.kind(), "frame for no open request"),
            }
            return Ok(());
        };
        let kind = message.kind();
        if !kind.direction().agent_may_send() {
            // A kind only the host sends: the agent broke the protocol.
            return Err(ClientError::Unexpected { kind });
        }
        match message {
            Message::Stdout(_) | Message::Stderr(_) if slot.outputs.iter().all(Option::is_none) => {
                Err(ClientError::Unexpected { kind })
            }
            Message::Stdout(data) => route_output(slot, 0, data),
            Message::Stderr(data) => route_output(slot, 1, data),
            // FILE_DATA follows a FILE_INFO (FILE_GET's answer): before
            // one it is no request's data, and a consumer that does not
            // expect it would drop it without returning its credit.
            Message::FileData(_) if !slot.info_received => Err(ClientError::Unexpected { kind }),
            Message::FileData(data) => {
                slot.recv.receive(data.len())?;
                let len = data.len();
                if slot.events.send(Ok(Message::FileData(data))).is_err() {
                    slot.recv.consumed(len);
                }
                Ok(())
            }
            Message::WindowUpdate(increment) => slot.send.grant(increment),
            Message::FileInfo(_) if slot.info_received => Err(ClientError::Unexpected { kind }),
            Message::FileInfo(_) => {
                slot.info_received = true;
                let _ = slot.events.send(Ok(message));
                Ok(())
            }
            Message::Ping => {
                drop(state);
                self.answer_ping(id)
            }
            Message::ExecResult(_)
            | Message::Error(_)
            | Message::Pong
            | Message::StatusReport(_)
            | Message::FileDone(_)
            | Message::FileEnd(_)
            | Message::FsResult(_)
            | Message::TreeDone(_)
            | Message::Stop(_) => {
                // The request's last frame: stop routing, wake any sender.
                if let Some(slot) = state.slots.remove(&id) {
                    slot.send.close();
                    let _ = slot.events.send(Ok(message));
                }
                Ok(())
            }
            // HELLO_ACK once the handshake is over; kinds only the host
            // sends were refused above.
            other => Err(ClientError::Unexpected { kind: other.kind() }),
        }
    }

    /// Queues a PONG for a PING on `id`, unless one is already waiting to
    /// be written: the agent cannot make the writer queue grow by sending
    /// PINGs and not reading (the agent never needs an answer to each; it
    /// sends none of its own, and a peer that pings gets at least one PONG
    /// per batch the writer gets out).
    fn answer_ping(&self, id: u64) -> Result<(), ClientError> {
        if self.pong_queued.swap(true, Ordering::AcqRel) {
            tracing::trace!(id, "a PONG is already queued; not answering this PING");
            return Ok(());
        }
        send_frame(&self.writer, id, &Message::Pong)
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

/// Locks a mutex, recovering the data if a panicking thread poisoned it (the
/// guarded state is always left consistent between statements).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use paddock_proto::{FileInfo, decode_frame};

    use super::*;

    /// A connection's shared state with no tasks: frames are dispatched by
    /// hand, and what it would write stays in the returned queue.
    fn shared() -> (Shared, mpsc::UnboundedReceiver<Vec<u8>>) {
        let (writer, queue) = mpsc::unbounded_channel();
        let shared = Shared {
            state: Mutex::new(State::default()),
            writer,
            next_id: AtomicU64::new(100),
            agent_window: 1024,
            our_window: 1024,
            buffered: Arc::new(AtomicU64::new(0)),
            events: paddock_events::Emitter::disabled(),
            pacing: None,
            pong_queued: std::sync::atomic::AtomicBool::new(false),
        };
        (shared, queue)
    }

    fn frame(id: u64, message: &Message) -> Frame {
        let mut bytes = Vec::new();
        encode_message(&mut bytes, id, message).expect("encode");
        decode_frame(&bytes, u32::MAX).expect("decode").0
    }

    #[test]
    fn a_ping_flood_queues_one_pong_until_the_writer_wrote_it() {
        let (shared, mut queue) = shared();
        let (open, _answers) = shared.open_internal();
        for id in [0, open, 7].into_iter().cycle().take(10_000) {
            shared
                .dispatch(frame(id, &Message::Ping))
                .expect("a ping is fine");
        }
        let queued: Vec<Vec<u8>> = std::iter::from_fn(|| queue.try_recv().ok()).collect();
        assert_eq!(
            queued.len(),
            1,
            "one PONG for 10,000 PINGs while none was written"
        );
        // The writer wrote it: the next PING is answered again.
        shared.pong_queued.store(false, Ordering::Release);
        shared.dispatch(frame(0, &Message::Ping)).expect("ping");
        assert!(
            queue.try_recv().is_ok(),
            "answered once the first PONG was out"
        );
    }

    #[test]
    fn file_data_needs_one_file_info_first() {
        let (shared, _queue) = shared();
        let (id, mut answers) = shared.open_internal();
        let data = || frame(id, &Message::FileData(b"data".to_vec()));
        let info = || {
            frame(
                id,
                &Message::FileInfo(FileInfo {
                    size: 4,
                    mode: 0o644,
                }),
            )
        };
        assert!(matches!(
            shared.dispatch(data()),
            Err(ClientError::Unexpected {
                kind: MessageKind::FileData
            })
        ));
        assert_eq!(
            shared.buffered.load(Ordering::Relaxed),
            0,
            "nothing counted"
        );
        shared.dispatch(info()).expect("the first FILE_INFO");
        shared.dispatch(data()).expect("data after it");
        assert_eq!(shared.buffered.load(Ordering::Relaxed), 4);
        assert!(matches!(
            shared.dispatch(info()),
            Err(ClientError::Unexpected {
                kind: MessageKind::FileInfo
            })
        ));
        assert!(matches!(answers.try_recv(), Ok(Ok(Message::FileInfo(_)))));
        assert!(matches!(answers.try_recv(), Ok(Ok(Message::FileData(_)))));
    }
}
