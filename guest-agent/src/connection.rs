//! One host connection: its reader, the router of its frames, its sessions.
//!
//! The reader (the task running [`serve_connection`]) decodes frames and
//! handles what belongs to the connection or the session: HELLO (`hello`),
//! PING, request ids, the accounting of the flow-control windows, and errors
//! about frames. A frame that opens a request starts the request's task,
//! which runs the request through the pipeline every request takes
//! (`dispatch`). Later frames for an open request go to its task through its
//! inbox (`crate::request::inbox`), which never makes the reader wait and
//! never grows without bound.
//!
//! The reader asks the stream for little at first and for more while reads
//! fill what it asked for, and gives the buffer back when the connection
//! goes quiet: a connection that sends nothing holds a few KiB.
//!
//! An ERROR about a frame goes where the host will look for it without
//! mistaking it for the answer of another request: to the request the frame
//! names when that request is open (ending it), on the frame's own id when
//! the frame would have opened a request or is answered on its id anyway
//! (HELLO, PING, an unknown kind), and otherwise on request id 0 with the
//! frame's id in the message. So no frame with a request's id ever follows
//! its last frame, even when the host's frames for it cross that last frame.
//!
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use paddock_proto::{
    DecodeError, ErrorCode, ErrorReport, FRAME_READ_CHUNK, Frame, FrameDecoder, FrameError,
    Message, MessageKind, Stop, StopScope, WindowError, decode_message, encode_message,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info};

use crate::Agent;
use crate::request::{OpenError, Outgoing, Session, WireError};
use crate::status::StatusRequest;
use writer::Writer;

mod dispatch;
mod hello;
mod writer;

/// The first read asks for this much, and a quiet connection shrinks back
/// to it: a HELLO or a control frame fits.
const MIN_READ: usize = 4096;

/// A frame the reader refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    /// The decoder rejected bytes or a frame.
    #[error("Invalid frame")]
    BadFrame(#[source] FrameError),
    /// A kind only the agent sends.
    #[error("The agent does not accept {0:?} frames")]
    NotAccepted(MessageKind),
    /// The payload does not match its kind.
    #[error("Invalid payload")]
    BadPayload(#[source] DecodeError),
    /// A request before HELLO.
    #[error("Send HELLO first")]
    NotNegotiated,
    /// The session did not open a new request.
    #[error(transparent)]
    Refused(#[from] OpenError),
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
            Self::BadFrame(FrameError::UnsupportedVersion { .. }) => ErrorCode::UnsupportedVersion,
            Self::BadFrame(FrameError::UnknownKind { .. }) | Self::NotAccepted(_) => {
                ErrorCode::UnknownKind
            }
            Self::BadFrame(_) => ErrorCode::BadFrame,
            Self::BadPayload(_) => ErrorCode::BadPayload,
            Self::NotNegotiated => ErrorCode::NotNegotiated,
            Self::Refused(refused) => refused.code(),
            Self::UnknownRequest(_) => ErrorCode::UnknownRequest,
            Self::FlowControl(_) => ErrorCode::FlowControl,
        }
    }
}

/// Where an ERROR about a frame goes when the frame names no open request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// On the frame's own id: it would have opened a request (so the host
    /// waits on that id), or it is answered on its id anyway.
    OnItsId,
    /// On request id 0: the frame belongs to a request that is not open
    /// (any more), whose id may already be the host's for something new.
    OnConnection,
}

impl Answer {
    fn for_kind(kind: MessageKind) -> Self {
        if kind.opens_request() || matches!(kind, MessageKind::Hello | MessageKind::Ping) {
            Self::OnItsId
        } else {
            Self::OnConnection
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
    let current = Arc::new(AtomicU64::new(0));
    let (writer, outbox) = Writer::spawn(writer, Arc::clone(&current));
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
    writer.finish().await;
    read
}

impl Connection {
    async fn read_frames<R: AsyncRead + Unpin>(&mut self, reader: &mut R) -> io::Result<()> {
        let mut decoder = FrameDecoder::new(self.agent.config.max_payload);
        let mut want = MIN_READ;
        loop {
            let read = tokio::select! {
                read = reader.read(decoder.spare(want)) => read?,
                () = self.agent.stopping() => return Ok(()),
                () = self.outbox.closed() => return Ok(()),
            };
            if read == 0 {
                return Ok(());
            }
            decoder.commit(read);
            // Ask for more while the host sends more than was asked for;
            // back off while it sends little.
            if read == want {
                want = (want * 2).min(FRAME_READ_CHUNK);
            } else if read < want / 4 {
                want = (want / 2).max(MIN_READ);
            }
            loop {
                let step = match decoder.next_frame() {
                    Ok(Some(frame)) => self.on_frame(frame).await,
                    Ok(None) => break,
                    Err(err) => {
                        debug!(%err, "Rejected bytes from the host");
                        match err {
                            FrameError::UnknownKind { request_id, .. } => {
                                let err = SessionError::BadFrame(err);
                                self.reject(request_id, Answer::OnItsId, &err).await
                            }
                            _ => {
                                self.reject(0, Answer::OnItsId, &SessionError::BadFrame(err))
                                    .await
                            }
                        }
                    }
                };
                if step == Step::Close {
                    return Ok(());
                }
            }
            if want == MIN_READ {
                decoder.shrink_to(MIN_READ);
            }
        }
    }

    /// Routes one frame: refuses what the host may not send, answers what
    /// belongs to the connection, opens requests and forwards the frames of
    /// open ones.
    async fn on_frame(&mut self, frame: Frame) -> Step {
        let (id, kind) = (frame.request_id, frame.kind);
        let answer = Answer::for_kind(kind);
        if !kind.direction().host_may_send() {
            return self
                .reject(id, answer, &SessionError::NotAccepted(kind))
                .await;
        }
        if matches!(kind, MessageKind::Pong | MessageKind::Error) {
            // Answers to nothing the agent asked; answering them could loop.
            debug!(id, ?kind, "Ignored an unsolicited reply from the host");
            return Step::Continue;
        }
        if self.session.is_none() && !matches!(kind, MessageKind::Ping | MessageKind::Hello) {
            // No request is open before HELLO: every frame is answered on its id.
            return self
                .reject(id, Answer::OnItsId, &SessionError::NotNegotiated)
                .await;
        }
        let message = match decode_message(frame) {
            Ok(message) => message,
            Err(err) => {
                return self
                    .reject(id, answer, &SessionError::BadPayload(err))
                    .await;
            }
        };
        match message {
            Message::Ping => self.send(id, &Message::Pong).await,
            Message::Hello(hello) => return self.hello(id, &hello).await,
            Message::Execute(execute) => return self.open(id, kind, execute).await,
            Message::FilePut(put) => return self.open(id, kind, put).await,
            Message::FileGet(get) => return self.open(id, kind, get).await,
            Message::StatusRequest => return self.open(id, kind, StatusRequest).await,
            Message::FsRequest(request) => return self.open(id, kind, request).await,
            Message::TreePut(put) => return self.open(id, kind, put).await,
            Message::TreeGet(get) => return self.open(id, kind, get).await,
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
            Message::Resize(_) => return self.resize(id, message).await,
            // Kinds only the agent sends, and unsolicited replies: all
            // filtered out before decoding.
            Message::HelloAck(_)
            | Message::Pong
            | Message::Stdout(_)
            | Message::Stderr(_)
            | Message::ExecResult(_)
            | Message::StatusReport(_)
            | Message::FileInfo(_)
            | Message::FileDone(_)
            | Message::FsResult(_)
            | Message::TreeDone(_)
            | Message::Error(_) => {}
        }
        Step::Continue
    }

    /// Ends the current session, if any: its tasks wind down on their own and
    /// none of its frames is written any more. Returns whether there was one.
    fn end_session(&mut self) -> bool {
        let Some(session) = self.session.take() else {
            return false;
        };
        self.current.store(0, Ordering::Release);
        session.end();
        true
    }

    /// Answers a frame refused with `err` (see the module documentation): if
    /// `id` names an open request, the request ends with that ERROR;
    /// otherwise the ERROR goes on `id` or on 0, as `answer` says.
    async fn reject(&mut self, id: u64, answer: Answer, err: &SessionError) -> Step {
        let report = err.report();
        match self.session.as_ref().and_then(|s| s.handle(id)) {
            Some(handle) if id != 0 => handle.reject(report),
            _ if answer == Answer::OnItsId => self.send(id, &Message::Error(report)).await,
            _ => {
                let message = format!("A frame for request {id}: {}", report.message);
                let report = ErrorReport::new(report.code, message);
                self.send(0, &Message::Error(report)).await;
            }
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
        let outgoing = Outgoing {
            session: 0,
            frame,
            closes: None,
        };
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use paddock_proto::{DEFAULT_MAX_PAYLOAD, ErrorCode, Execute, HEADER_LEN};
    use tokio::time::timeout;

    use super::*;
    use crate::test_host::{
        TestHost, assert_no_process_with, error_code, hello, test_config, wait_for_process,
    };

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

        // A kind only the agent sends, for no open request: the ERROR goes
        // on id 0 and names the frame's id.
        host.send(9, &Message::Stdout(b"x".to_vec())).await;
        match host.recv().await {
            (0, Message::Error(report)) => {
                assert_eq!(report.code, ErrorCode::UnknownKind);
                assert!(
                    report.message.contains("does not accept")
                        && report.message.contains("request 9"),
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
            (0, ErrorCode::UnknownRequest)
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
