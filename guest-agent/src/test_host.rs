//! A scripted host for the unit tests: raw frames over `tokio::io::duplex`.

use std::sync::Arc;
use std::time::Duration;

use paddock_proto::{
    DEFAULT_MAX_PAYLOAD, ErrorCode, FrameDecoder, Hello, HelloAck, Message, MessageKind,
    PROTOCOL_VERSION, decode_message, encode_frame, encode_message,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;

use crate::{Agent, Config, serve_connection};

/// How long a test waits for a frame before it fails.
const RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// The window a test host grants for output, and the agent's window in tests.
pub(crate) const TEST_WINDOW: u32 = 64 * 1024;

/// One connection to an agent, driven by hand.
#[derive(Debug)]
pub(crate) struct TestHost {
    pub(crate) agent: Arc<Agent>,
    stream: DuplexStream,
    decoder: FrameDecoder,
    pub(crate) connection: JoinHandle<std::io::Result<()>>,
}

/// What came back for an execution (or any request with data frames).
#[derive(Debug)]
pub(crate) struct Collected {
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: Vec<u8>,
    pub(crate) last: Message,
}

/// Test defaults: a small agent window so tests cross it.
pub(crate) fn test_config() -> Config {
    Config {
        window: TEST_WINDOW,
        kill_grace: Duration::from_millis(300),
        ..Config::default()
    }
}

/// The request id and code of an ERROR frame; panics on any other frame.
pub(crate) fn error_code(frame: (u64, Message)) -> (u64, ErrorCode) {
    match frame {
        (id, Message::Error(report)) => (id, report.code),
        other => panic!("expected ERROR, got {other:?}"),
    }
}

pub(crate) fn hello() -> Hello {
    Hello {
        min_version: 1,
        max_version: PROTOCOL_VERSION,
        client: "test".into(),
        max_payload: DEFAULT_MAX_PAYLOAD,
        initial_window: TEST_WINDOW,
        session_token: String::new(),
        host_time_unix_ms: 0,
    }
}

impl TestHost {
    /// A new agent and a connection to it, before HELLO.
    pub(crate) fn start(config: Config) -> Self {
        let agent = Agent::new(config).expect("agent");
        Self::connect_to(agent)
    }

    /// A new connection to `agent`, before HELLO.
    pub(crate) fn connect_to(agent: Arc<Agent>) -> Self {
        let (stream, guest) = tokio::io::duplex(1 << 20);
        let connection = tokio::spawn(serve_connection(Arc::clone(&agent), guest));
        Self {
            agent,
            stream,
            decoder: FrameDecoder::default(),
            connection,
        }
    }

    /// A new agent with [`test_config`] and a negotiated session.
    pub(crate) async fn ready() -> Self {
        let mut host = Self::start(test_config());
        host.hello(hello()).await;
        host
    }

    /// Closes the host's end and waits for the agent to end the connection.
    pub(crate) async fn hang_up(self) {
        drop(self.stream);
        tokio::time::timeout(RECV_TIMEOUT, self.connection)
            .await
            .expect("connection ends in time")
            .expect("connection task did not panic")
            .expect("connection ended cleanly");
    }

    pub(crate) async fn hello(&mut self, hello: Hello) -> HelloAck {
        self.send(0, &Message::Hello(hello)).await;
        match self.recv().await {
            (0, Message::HelloAck(ack)) => ack,
            other => panic!("expected HELLO_ACK, got {other:?}"),
        }
    }

    pub(crate) async fn send(&mut self, id: u64, message: &Message) {
        let mut bytes = Vec::new();
        encode_message(&mut bytes, id, message).expect("encode");
        self.send_raw(&bytes).await;
    }

    pub(crate) async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write to agent");
    }

    /// A frame with any kind value and payload, with a correct CRC.
    pub(crate) fn raw_frame(kind: u16, id: u64, payload: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        encode_frame(&mut bytes, MessageKind::Ping, id, payload).expect("encode");
        bytes[6..8].copy_from_slice(&kind.to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&bytes[..24]);
        crc.update(payload);
        bytes[24..28].copy_from_slice(&crc.finalize().to_le_bytes());
        bytes
    }

    /// The next frame, or `None` at the end of the stream.
    pub(crate) async fn try_recv(&mut self) -> Option<(u64, Message)> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if let Some(frame) = self.decoder.next_frame().expect("valid frame from agent") {
                let id = frame.request_id;
                return Some((id, decode_message(frame).expect("valid message from agent")));
            }
            let read = tokio::time::timeout(RECV_TIMEOUT, self.stream.read(&mut buf))
                .await
                .expect("agent answered in time")
                .expect("read from agent");
            if read == 0 {
                return None;
            }
            self.decoder.feed(&buf[..read]);
        }
    }

    pub(crate) async fn recv(&mut self) -> (u64, Message) {
        self.try_recv()
            .await
            .expect("a frame, not the end of the stream")
    }

    /// Whether a frame arrives within `wait`.
    pub(crate) async fn quiet_for(&mut self, wait: Duration) -> bool {
        if self.decoder.buffered() > 0 {
            return false;
        }
        let mut byte = [0u8; 1];
        match tokio::time::timeout(wait, self.stream.read(&mut byte)).await {
            Err(_) => true,
            Ok(read) => {
                self.decoder.feed(&byte[..read.expect("read")]);
                false
            }
        }
    }

    /// Collects STDOUT / STDERR of request `id`, returning their credit at
    /// once, until the request's last frame.
    pub(crate) async fn collect(&mut self, id: u64) -> Collected {
        let mut collected = Collected {
            stdout: Vec::new(),
            stderr: Vec::new(),
            last: Message::Pong,
        };
        loop {
            let (got, message) = self.recv().await;
            assert_eq!(got, id, "frame for another request: {message:?}");
            match message {
                Message::Stdout(data) | Message::Stderr(data) if data.is_empty() => {
                    panic!("empty data frame")
                }
                Message::Stdout(data) => {
                    self.grant(id, data.len()).await;
                    collected.stdout.extend(data);
                }
                Message::Stderr(data) => {
                    self.grant(id, data.len()).await;
                    collected.stderr.extend(data);
                }
                Message::WindowUpdate(_) => {}
                last => {
                    collected.last = last;
                    return collected;
                }
            }
        }
    }

    pub(crate) async fn grant(&mut self, id: u64, len: usize) {
        let increment = u32::try_from(len).expect("small");
        self.send(id, &Message::WindowUpdate(increment)).await;
    }

    /// Sends `data` as `kind` frames (STDIN or FILE_DATA) of `chunk` bytes for
    /// request `id`, within the agent's window: waits for its WINDOW_UPDATE
    /// when the credit runs out. Returns the STDOUT that arrived meanwhile.
    pub(crate) async fn send_within_window(
        &mut self,
        id: u64,
        kind: MessageKind,
        data: &[u8],
        chunk: usize,
    ) -> Vec<u8> {
        let mut stdout = Vec::new();
        let mut credit = usize::try_from(TEST_WINDOW).expect("small");
        for piece in data.chunks(chunk) {
            while credit < piece.len() {
                match self.recv().await {
                    (got, Message::WindowUpdate(n)) if got == id => {
                        credit += usize::try_from(n).expect("small");
                    }
                    (got, Message::Stdout(out)) if got == id => {
                        self.grant(id, out.len()).await;
                        stdout.extend(out);
                    }
                    other => panic!("unexpected frame while sending: {other:?}"),
                }
            }
            credit -= piece.len();
            let message = match kind {
                MessageKind::Stdin => Message::Stdin(piece.to_vec()),
                _ => Message::FileData(piece.to_vec()),
            };
            self.send(id, &message).await;
        }
        stdout
    }
}

/// Pids of live processes whose command line contains `marker`.
pub(crate) fn processes_with(marker: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                cmdline
                    .split(|byte| *byte == 0)
                    .any(|arg| arg == marker.as_bytes())
            })
        })
        .collect()
}

/// Waits up to two seconds for every process with `marker` to be gone.
pub(crate) async fn assert_no_process_with(marker: &str) {
    for _ in 0..40 {
        if processes_with(marker).is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "processes with {marker} survive: {:?}",
        processes_with(marker)
    );
}

/// Waits until a process with `marker` runs (the execution started).
pub(crate) async fn wait_for_process(marker: &str) {
    for _ in 0..100 {
        if !processes_with(marker).is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no process with {marker} started");
}
