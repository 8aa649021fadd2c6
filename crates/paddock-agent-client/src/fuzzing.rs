//! A scripted, hostile agent for fuzzing the client's side of the protocol
//! (`fuzz/`'s `client_session` target) and for this crate's proptests.
//! Not part of the API: built for tests and with the `fuzzing` feature.
//!
//! [`run`] drives a real [`AgentClient`] over a real Unix socket against an
//! agent whose every byte comes from the input: the client connects, opens
//! an execution, a STATUS, a download, an upload and a PING at once, and
//! the agent answers with what the input says, then closes the socket. The
//! whole of the client's receiving side runs: the handshake, the reader
//! and its routing by request id ([`crate::connection`]), credit, and the
//! consumers of each request (exec output, file transfer checks).
//!
//! # Input
//!
//! Byte 0 sets the handshake:
//!
//! | bits | meaning |
//! |---|---|
//! | 0 | 1: no HELLO_ACK of the harness; the operations start at once (the handshake itself is fuzzed) |
//! | 1-2 | the HELLO_ACK's window for the client's uploads: 0 the default, 1 the next byte, 2 zero, 3 `u32::MAX` |
//! | 3 | 1: the HELLO_ACK carries an unsupported version |
//!
//! Then operations, until the input ends (at most [`MAX_OPS`]); every read
//! past the end gives zeros. An operation's first byte `op`:
//!
//! | `op % 8` | what the agent sends |
//! |---|---|
//! | 0 | a frame: kind (`u16`, any), target, length (`u16`), payload; bit 7 of `op`: a wrong CRC |
//! | 1, 5, 6, 7 | a well-formed message (see `message`) for a target |
//! | 2 | raw bytes: a length byte, then that many |
//! | 3 | nothing: the agent yields, so the client's tasks run in between |
//! | 4 | a burst: the next byte says how many PINGs (answered or not) |
//!
//! A target byte `t` picks a request id: `t % 16` 0 is id 0, 1 to 5 the
//! first to fifth request the client opened (in the order the agent saw
//! them; id 0 if not yet seen), 6 the last HELLO's id, 7 a `u64` from the
//! input, 8 to 12 the request of kind EXECUTE, STATUS_REQUEST, FILE_GET,
//! FILE_PUT and PING, anything else id 0.
//!
//! # What is checked
//!
//! - The client never panics (a panic is the fuzzer's crash) and every
//!   call ends, with a value or a typed [`ClientError`], within
//!   [`HANG_LIMIT`] once the agent has closed: none waits out a timer
//!   ([`ClientError::Timeout`] is a finding), since the agent's end of
//!   stream ends every request.
//! - A download that succeeded received exactly the bytes it reports, and
//!   their CRC; an upload that succeeded was acknowledged with its own
//!   size and CRC.
//! - Once every call ended, no received byte is left counted as buffered.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use paddock_proto::{
    DEFAULT_WINDOW, ErrorCode, ErrorReport, ExecResult, FileDone, FileEnd, FileInfo, FrameDecoder,
    HEADER_LEN, Hello, HelloAck, MAGIC, Message, MessageKind, PROTOCOL_VERSION, StatusReport, Stop,
    StopScope, encode_message,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UnixListener;

use crate::{AgentClient, ClientConfig, ClientError, Execute, Transport};

/// The most operations one input runs.
pub const MAX_OPS: usize = 512;

/// How long the client may take to end every call once the agent closed;
/// far more than it needs (milliseconds), so that only a real hang trips it.
pub const HANG_LIMIT: Duration = Duration::from_secs(20);

/// The payload limit the client is given: frames past it are `TooLarge`.
const CLIENT_MAX_PAYLOAD: u32 = 16 * 1024;

/// What the upload sends.
const PUT_DATA: &[u8] = b"the host's upload";

/// How each call of the client ended: the call, then `Ok` or the error's
/// kind name ([`ClientError::kind_name`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// One entry per call, in a fixed order: connect, exec, status, get,
    /// put, ping (only `connect` when the connection failed).
    pub calls: Vec<(&'static str, Result<(), &'static str>)>,
}

/// Runs one input on a runtime of its own; see the module docs.
///
/// # Panics
/// When the client hangs or breaks one of the checked properties: that is
/// what the fuzzer and the proptests look for.
#[must_use]
pub fn run(input: &[u8]) -> Outcome {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(drive(input))
}

/// The client's side of one session against the scripted agent.
async fn drive(input: &[u8]) -> Outcome {
    let path = socket_path();
    let listener = UnixListener::bind(&path).expect("bind the agent's socket");
    let seen = Arc::new(Seen::default());
    let agent = tokio::spawn(agent(
        listener,
        path.clone(),
        input.to_vec(),
        Arc::clone(&seen),
    ));
    let config = ClientConfig {
        // A client that lost its connection retries until this deadline:
        // the agent accepts once, so a retry only ever finds nothing.
        connect_timeout: Duration::from_millis(5),
        backoff_initial: Duration::from_millis(5),
        backoff_max: Duration::from_millis(50),
        request_timeout: Duration::from_secs(5),
        io_timeout: Duration::from_secs(5),
        default_exec_timeout: Duration::from_secs(5),
        exec_timeout_margin: Duration::from_secs(1),
        max_payload: CLIENT_MAX_PAYLOAD,
        window: 8 * 1024,
        keepalive_interval: None,
        ..ClientConfig::default()
    };
    let calls = async {
        let client =
            match AgentClient::connect(Transport::Unix { path: path.clone() }, config).await {
                Ok(client) => client,
                Err(err) => return vec![("connect", Err(checked(&err)))],
            };
        let mut downloaded = Vec::new();
        let mut upload = PUT_DATA;
        let (exec, status, get, put, ping) = tokio::join!(
            client.exec_collect(Execute::shell("fuzz")),
            client.status(),
            client.get_writer("/fuzz/get", &mut downloaded),
            client.put_reader(&mut upload, "/fuzz/put", 0o644),
            client.ping(),
        );
        if let Ok(download) = &get {
            assert_eq!(download.size, downloaded.len() as u64, "a download's size");
            assert_eq!(download.crc32, crc32(&downloaded), "a download's CRC");
        }
        if let Ok(done) = &put {
            assert_eq!(done.size, PUT_DATA.len() as u64, "an upload's size");
            assert_eq!(done.crc32, crc32(PUT_DATA), "an upload's CRC");
        }
        client.close().await;
        assert_eq!(client.buffered_bytes(), 0, "received bytes left counted");
        vec![
            ("connect", Ok(())),
            ("exec", exec.map(drop).map_err(|e| checked(&e))),
            ("status", status.map(drop).map_err(|e| checked(&e))),
            ("get", get.map(drop).map_err(|e| checked(&e))),
            ("put", put.map(drop).map_err(|e| checked(&e))),
            ("ping", ping.map(drop).map_err(|e| checked(&e))),
        ]
    };
    // The agent closes once its script is out; from then on every call must
    // end at once. The limit also covers the script itself, which takes
    // milliseconds.
    let calls = tokio::time::timeout(HANG_LIMIT, calls)
        .await
        .unwrap_or_else(|_| panic!("the client hung: requests seen {:?}", seen.requests()));
    agent.abort();
    let _ = agent.await;
    let _ = std::fs::remove_file(&path);
    Outcome { calls }
}

/// An error's kind name, after checking it is not a timer's: the agent's
/// end of stream must end every wait first.
fn checked(err: &ClientError) -> &'static str {
    assert!(
        !matches!(err, ClientError::Timeout { .. }),
        "a call waited out its timer: {err}"
    );
    err.kind_name()
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(bytes);
    hasher.finalize()
}

/// A socket path of this process's own, in the temporary directory; each
/// run removes its own.
fn socket_path() -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "paddock-client-fuzz-{}-{}.sock",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// What the agent saw the client send.
#[derive(Debug, Default)]
struct Seen {
    inner: Mutex<SeenFrames>,
    changed: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct SeenFrames {
    hellos: Vec<u64>,
    requests: Vec<(MessageKind, u64)>,
}

impl Seen {
    fn record(&self, kind: MessageKind, id: u64) {
        let mut frames = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match kind {
            MessageKind::Hello => frames.hellos.push(id),
            _ if kind.opens_request() || kind == MessageKind::Ping => {
                if !frames.requests.iter().any(|(_, seen)| *seen == id) {
                    frames.requests.push((kind, id));
                }
            }
            _ => return,
        }
        drop(frames);
        self.changed.notify_waiters();
    }

    fn requests(&self) -> Vec<(MessageKind, u64)> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .requests
            .clone()
    }

    fn last_hello(&self) -> Option<u64> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .hellos
            .last()
            .copied()
    }

    /// Waits until `check` holds or `limit` passes.
    async fn wait(&self, limit: Duration, check: impl Fn(&SeenFrames) -> bool) {
        let _ = tokio::time::timeout(limit, async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if check(
                    &self
                        .inner
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner),
                ) {
                    return;
                }
                changed.await;
            }
        })
        .await;
    }
}

/// The input, read from the front; zeros past its end.
struct Script {
    bytes: Vec<u8>,
    at: usize,
}

impl Script {
    fn done(&self) -> bool {
        self.at >= self.bytes.len()
    }

    fn byte(&mut self) -> u8 {
        let byte = self.bytes.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        byte
    }

    fn take(&mut self, len: usize) -> Vec<u8> {
        let start = self.at.min(self.bytes.len());
        let end = self.at.saturating_add(len).min(self.bytes.len());
        self.at = self.at.saturating_add(len);
        self.bytes[start..end].to_vec()
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }
}

/// The scripted agent: accepts the client, answers its HELLO as byte 0
/// says, plays the operations, and closes.
async fn agent(listener: UnixListener, path: PathBuf, input: Vec<u8>, seen: Arc<Seen>) {
    let Ok((stream, _)) = listener.accept().await else {
        return;
    };
    // One connection only: a client that reconnects finds nothing.
    drop(listener);
    let _ = std::fs::remove_file(&path);
    let (reader, mut writer) = stream.into_split();
    let reading = tokio::spawn(read_client(reader, Arc::clone(&seen)));
    let mut script = Script {
        bytes: input,
        at: 0,
    };
    let mode = script.byte();
    if mode & 1 == 0 {
        seen.wait(Duration::from_secs(2), |frames| !frames.hellos.is_empty())
            .await;
        let window = match (mode >> 1) & 3 {
            0 => DEFAULT_WINDOW,
            1 => u32::from(script.byte()),
            2 => 0,
            _ => u32::MAX,
        };
        let ack = HelloAck {
            version: if mode & 8 == 0 {
                PROTOCOL_VERSION
            } else {
                0xBAD
            },
            initial_window: window,
            ..hello_ack()
        };
        let id = seen.last_hello().unwrap_or(0);
        if send(&mut writer, id, &Message::HelloAck(ack))
            .await
            .is_err()
        {
            return;
        }
        if mode & 8 == 0 {
            // The five requests go out at once after the handshake.
            seen.wait(Duration::from_secs(2), |frames| frames.requests.len() >= 5)
                .await;
        }
    }
    let mut ops = 0;
    while !script.done() && ops < MAX_OPS {
        ops += 1;
        let bytes = operation(&mut script, &seen);
        if bytes.is_empty() {
            tokio::task::yield_now().await;
            continue;
        }
        if writer.write_all(&bytes).await.is_err() {
            break;
        }
    }
    // Closing is the end of the script: every request must now end.
    drop(writer);
    reading.abort();
    let _ = reading.await;
}

/// Reads what the client sends, recording its HELLOs and requests.
async fn read_client(mut reader: tokio::net::unix::OwnedReadHalf, seen: Arc<Seen>) {
    let mut decoder = FrameDecoder::new(u32::MAX);
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => seen.record(frame.kind, frame.request_id),
                Ok(None) => break,
                Err(_) => {}
            }
        }
        match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => decoder.feed(&buffer[..n]),
        }
    }
}

/// The bytes of one operation.
fn operation(script: &mut Script, seen: &Seen) -> Vec<u8> {
    let op = script.byte();
    match op % 8 {
        0 => {
            let kind = script.u16();
            let id = target(script, seen);
            let len = usize::from(script.u16());
            let payload = script.take(len);
            raw_frame(kind, id, &payload, op & 0x80 != 0)
        }
        2 => {
            let len = usize::from(script.byte());
            script.take(len)
        }
        3 => Vec::new(),
        4 => {
            let count = script.byte();
            let id = target(script, seen);
            let mut bytes = Vec::new();
            for _ in 0..count {
                let _ = encode_message(&mut bytes, id, &Message::Ping);
            }
            bytes
        }
        _ => {
            let id = target(script, seen);
            let message = message(script);
            let mut bytes = Vec::new();
            // A message too large for a frame is simply not sent.
            let _ = encode_message(&mut bytes, id, &message);
            bytes
        }
    }
}

/// The kinds of the client's five requests, as targets 8 to 12 name them.
const REQUEST_KINDS: [MessageKind; 5] = [
    MessageKind::Execute,
    MessageKind::StatusRequest,
    MessageKind::FileGet,
    MessageKind::FilePut,
    MessageKind::Ping,
];

/// The request id a target byte picks.
fn target(script: &mut Script, seen: &Seen) -> u64 {
    let t = script.byte() % 16;
    let requests = seen.requests();
    match t {
        1..=5 => requests.get(usize::from(t) - 1).map_or(0, |(_, id)| *id),
        6 => seen.last_hello().unwrap_or(0),
        7 => script.u64(),
        8..=12 => {
            let kind = REQUEST_KINDS[usize::from(t) - 8];
            requests
                .iter()
                .find(|(seen_kind, _)| *seen_kind == kind)
                .map_or(0, |(_, id)| *id)
        }
        _ => 0,
    }
}

/// A well-formed message, chosen and filled in by the input.
fn message(script: &mut Script) -> Message {
    let choice = script.byte();
    let len = usize::from(script.u16() % 20_000);
    match choice % 17 {
        0 => Message::Stdout(script.take(len)),
        1 => Message::Stderr(script.take(len)),
        2 => Message::FileData(script.take(len)),
        3 => Message::FileInfo(FileInfo {
            size: script.u64(),
            mode: script.u32(),
        }),
        4 => {
            // The CRC of what is named next, so that a download can succeed.
            let data = script.take(len);
            Message::FileEnd(FileEnd {
                size: data.len() as u64,
                crc32: crc32(&data),
            })
        }
        5 => Message::ExecResult(ExecResult {
            exit_code: Some(i32::from(script.byte())),
            stdout_bytes: script.u64(),
            ..ExecResult::default()
        }),
        6 => Message::Error(ErrorReport::new(
            error_code(script.byte()),
            String::from_utf8_lossy(&script.take(len)).into_owned(),
        )),
        7 => Message::WindowUpdate(script.u32()),
        8 => Message::StatusReport(StatusReport {
            boot_id: if script.byte() % 2 == 0 {
                hello_ack().boot_id
            } else {
                "another boot".into()
            },
            ..StatusReport::default()
        }),
        9 => Message::Pong,
        10 => Message::Ping,
        11 => Message::Stop(Stop {
            scope: if script.byte() % 2 == 0 {
                StopScope::Execution
            } else {
                StopScope::Agent
            },
        }),
        12 => Message::HelloAck(hello_ack()),
        13 => Message::FileDone(if script.byte() % 2 == 0 {
            FileDone {
                size: PUT_DATA.len() as u64,
                crc32: crc32(PUT_DATA),
            }
        } else {
            FileDone {
                size: script.u64(),
                crc32: script.u32(),
            }
        }),
        14 => Message::Execute(Execute::shell("the host's kind")),
        15 => Message::Hello(Hello {
            min_version: 1,
            max_version: 1,
            client: "an agent posing as a host".into(),
            max_payload: 4096,
            initial_window: 0,
            session_token: String::new(),
            host_time_unix_ms: 0,
        }),
        _ => {
            // Stdout worth the client's whole window, and one byte more:
            // an agent overrunning the credit it was given.
            Message::Stdout(vec![b'o'; 8 * 1024 + usize::from(script.byte() % 2)])
        }
    }
}

fn error_code(byte: u8) -> ErrorCode {
    const CODES: [ErrorCode; 8] = [
        ErrorCode::NotNegotiated,
        ErrorCode::UnsupportedVersion,
        ErrorCode::InvalidArgument,
        ErrorCode::TooManyConnections,
        ErrorCode::NotFound,
        ErrorCode::FlowControl,
        ErrorCode::Internal,
        ErrorCode::TooManyRequests,
    ];
    CODES[usize::from(byte) % CODES.len()]
}

fn hello_ack() -> HelloAck {
    HelloAck {
        version: PROTOCOL_VERSION,
        agent_version: "scripted".into(),
        capabilities: Vec::new(),
        boot_id: "scripted-boot".into(),
        session_seq: 1,
        previous_token: String::new(),
        uptime_ms: 0,
        max_payload: 64 * 1024,
        initial_window: DEFAULT_WINDOW,
        clock_step_ms: 0,
    }
}

/// A frame of any kind number, with a right CRC or a wrong one.
fn raw_frame(kind: u16, id: u64, payload: &[u8], bad_crc: bool) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len());
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    bytes.extend_from_slice(&kind.to_le_bytes());
    bytes.extend_from_slice(&[0; 4]);
    bytes.extend_from_slice(&id.to_le_bytes());
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    bytes.extend_from_slice(&len.to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&bytes);
    crc.update(payload);
    let crc = crc.finalize() ^ u32::from(bad_crc);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

async fn send(
    writer: &mut tokio::net::unix::OwnedWriteHalf,
    id: u64,
    message: &Message,
) -> std::io::Result<()> {
    let mut bytes = Vec::new();
    encode_message(&mut bytes, id, message).map_err(std::io::Error::other)?;
    writer.write_all(&bytes).await
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Builds inputs operation by operation.
    #[derive(Default)]
    struct Input(Vec<u8>);

    impl Input {
        /// A message operation: `target`, then the message's own bytes
        /// (its choice and the length field first).
        fn message(mut self, target: u8, choice: u8, rest: &[u8]) -> Self {
            self.0.extend_from_slice(&[1, target, choice]);
            self.0.extend_from_slice(rest);
            self
        }
    }

    /// An honest agent answers each request as it should: every call
    /// succeeds (so the harness tells success from failure).
    #[test]
    fn an_honest_script_satisfies_every_call() {
        let len = |n: u16| n.to_le_bytes();
        let input = Input(vec![0])
            // exec: "hi" on stdout, then exit 0.
            .message(8, 0, &[len(2)[0], len(2)[1], b'h', b'i'])
            .message(8, 5, &[0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0])
            // status, from the same boot.
            .message(9, 8, &[0, 0, 0])
            // get: info, "abc", and its end with the right CRC.
            .message(10, 3, &[0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0xA4, 0x01, 0, 0])
            .message(10, 2, &[3, 0, b'a', b'b', b'c'])
            .message(10, 4, &[3, 0, b'a', b'b', b'c'])
            // put: done, with the upload's size and CRC.
            .message(11, 13, &[0, 0, 0])
            // ping.
            .message(12, 9, &[0, 0]);
        let outcome = run(&input.0);
        assert_eq!(
            outcome.calls,
            vec![
                ("connect", Ok(())),
                ("exec", Ok(())),
                ("status", Ok(())),
                ("get", Ok(())),
                ("put", Ok(())),
                ("ping", Ok(())),
            ]
        );
    }

    #[test]
    fn an_empty_script_fails_every_call_with_a_lost_connection() {
        let outcome = run(&[]);
        assert_eq!(outcome.calls.len(), 6, "{outcome:?}");
        assert_eq!(outcome.calls[0], ("connect", Ok(())));
        for (call, result) in &outcome.calls[1..] {
            assert_eq!(*result, Err("connection_lost"), "{call}: {outcome:?}");
        }
    }

    #[test]
    fn a_second_file_info_ends_the_session() {
        let info = [0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0xA4, 0x01, 0, 0];
        let outcome = run(&Input(vec![0]).message(10, 3, &info).message(10, 3, &info).0);
        let get = outcome.calls.iter().find(|(call, _)| *call == "get");
        assert_eq!(get, Some(&("get", Err("unexpected"))), "{outcome:?}");
    }

    /// The proptests' first finding: FILE_DATA to a request that had no
    /// FILE_INFO (here the execution) was counted as buffered and never
    /// given back by the consumer that refused it.
    #[test]
    fn file_data_without_file_info_ends_the_session_and_leaves_nothing_counted() {
        let outcome = run(&Input(vec![0]).message(8, 2, &[3, 0, b'a', b'b', b'c']).0);
        let exec = outcome.calls.iter().find(|(call, _)| *call == "exec");
        // `run` itself checked that nothing is left counted as buffered.
        assert_eq!(exec, Some(&("exec", Err("unexpected"))), "{outcome:?}");
    }

    #[test]
    fn a_ping_flood_gets_bounded_answers_and_ends() {
        // 200 bursts of 255 PINGs on id 0 while the client reads on.
        let mut input = vec![0u8];
        for _ in 0..200 {
            input.extend_from_slice(&[4, 255, 0]);
        }
        let outcome = run(&input);
        assert_eq!(outcome.calls[0], ("connect", Ok(())));
    }

    #[test]
    fn garbage_before_the_handshake_is_a_typed_error() {
        let outcome = run(&[1, 2, 200, 0xFF, 0x00, 0x13, 0x37]);
        assert_eq!(outcome.calls.len(), 1, "{outcome:?}");
        assert_eq!(outcome.calls[0].1, Err("connect"));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        /// Arbitrary bytes as the agent's whole side of the connection,
        /// after a good HELLO_ACK and instead of one.
        #[test]
        fn arbitrary_agent_bytes_end_in_typed_errors(
            handshake in any::<bool>(),
            bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        ) {
            let mut input = vec![if handshake { 0 } else { 1 }, 2];
            input.push(u8::try_from(bytes.len().min(255)).unwrap_or(255));
            input.extend_from_slice(&bytes);
            let outcome = run(&input);
            prop_assert!(!outcome.calls.is_empty());
        }

        /// Structured scripts: frames and messages aimed at the client's
        /// open requests.
        #[test]
        fn scripted_agents_end_in_typed_errors_or_checked_results(
            input in proptest::collection::vec(any::<u8>(), 0..4096),
        ) {
            let outcome = run(&input);
            prop_assert!(!outcome.calls.is_empty());
        }
    }
}
