//! The message schema: kinds, their payloads, and typed encode/decode.
//!
//! Control payloads are JSON objects. Every field that is not required has a
//! serde default, and unknown fields are ignored, so a newer peer can add
//! optional fields without a version bump.
//!
//! The kinds and their directions are in `kind`; the payloads are grouped by
//! what they belong to: the handshake (`hello`), executions (`exec`), file
//! transfers (`files`), directory transfers (`tree`), file system
//! operations (`fs`), status (`status`) and errors (`error`). This module
//! ties them together as [`Message`] and encodes and decodes it.

mod error;
mod exec;
mod files;
mod fs;
mod hello;
mod kind;
mod nullable;
mod status;
mod tree;
mod tty;

pub use error::{ErrorCode, ErrorReport, MAX_ERROR_MESSAGE_LEN};
pub use exec::{
    Command, DEFAULT_KILL_GRACE_MS, ExecResult, Execute, MAX_KILL_GRACE_MS, MAX_SIGNAL,
    SignalRequest, Stop, StopScope,
};
pub use files::{DEFAULT_FILE_MODE, FileDone, FileEnd, FileGet, FileInfo, FilePut};
pub use fs::{
    DEFAULT_DIR_MODE, DEFAULT_READ_DIR_LIMIT, DirEntry, FileType, FsRequest, FsResult,
    MAX_READ_DIR_LIMIT, Metadata,
};
pub use hello::{CLOCK_TOLERANCE_MS, Hello, HelloAck, capability, unix_time_ms};
pub use kind::{Direction, MessageKind};
pub use status::StatusReport;
pub use tree::{
    EntryPathError, MAX_TREE_DEPTH, MAX_TREE_ENTRIES, MAX_TREE_PATH_LEN, MAX_TREE_PAX_LEN,
    TREE_MODE_MASK, TreeDone, TreeGet, TreePut, entry_components,
};
pub use tty::{DEFAULT_TERM, Resize, Tty};

use crate::frame::{Frame, HEADER_LEN, encode_frame, encode_frame_header};

/// A typed message: the payload of one frame.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)] // Each variant is the payload of the `MessageKind` of the same name.
pub enum Message {
    Hello(Hello),
    HelloAck(HelloAck),
    Ping,
    Pong,
    Execute(Execute),
    Stdin(Vec<u8>),
    StdinClose,
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    ExecResult(ExecResult),
    Signal(SignalRequest),
    Stop(Stop),
    StatusRequest,
    StatusReport(StatusReport),
    FilePut(FilePut),
    FileGet(FileGet),
    FileInfo(FileInfo),
    FileData(Vec<u8>),
    FileEnd(FileEnd),
    FileDone(FileDone),
    WindowUpdate(u32),
    Error(ErrorReport),
    FsRequest(FsRequest),
    FsResult(FsResult),
    TreePut(TreePut),
    TreeGet(TreeGet),
    TreeDone(TreeDone),
    Resize(Resize),
}

impl Message {
    /// The kind this message is sent as.
    #[must_use]
    pub fn kind(&self) -> MessageKind {
        match self {
            Self::Hello(_) => MessageKind::Hello,
            Self::HelloAck(_) => MessageKind::HelloAck,
            Self::Ping => MessageKind::Ping,
            Self::Pong => MessageKind::Pong,
            Self::Execute(_) => MessageKind::Execute,
            Self::Stdin(_) => MessageKind::Stdin,
            Self::StdinClose => MessageKind::StdinClose,
            Self::Stdout(_) => MessageKind::Stdout,
            Self::Stderr(_) => MessageKind::Stderr,
            Self::ExecResult(_) => MessageKind::ExecResult,
            Self::Signal(_) => MessageKind::Signal,
            Self::Stop(_) => MessageKind::Stop,
            Self::StatusRequest => MessageKind::StatusRequest,
            Self::StatusReport(_) => MessageKind::StatusReport,
            Self::FilePut(_) => MessageKind::FilePut,
            Self::FileGet(_) => MessageKind::FileGet,
            Self::FileInfo(_) => MessageKind::FileInfo,
            Self::FileData(_) => MessageKind::FileData,
            Self::FileEnd(_) => MessageKind::FileEnd,
            Self::FileDone(_) => MessageKind::FileDone,
            Self::WindowUpdate(_) => MessageKind::WindowUpdate,
            Self::Error(_) => MessageKind::Error,
            Self::FsRequest(_) => MessageKind::FsRequest,
            Self::FsResult(_) => MessageKind::FsResult,
            Self::TreePut(_) => MessageKind::TreePut,
            Self::TreeGet(_) => MessageKind::TreeGet,
            Self::TreeDone(_) => MessageKind::TreeDone,
            Self::Resize(_) => MessageKind::Resize,
        }
    }
}

/// Why a message could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The payload does not fit the 32-bit length field.
    #[error("Payload of {len} bytes does not fit in a frame")]
    TooLarge {
        /// Payload size in bytes.
        len: usize,
    },
    /// A control message could not be serialised.
    #[error("Could not serialise the message as JSON")]
    Json(#[source] serde_json::Error),
}

/// Why a well-formed frame does not hold a valid message of its kind.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The JSON payload does not match the kind's schema.
    #[error("Bad {kind:?} payload")]
    BadPayload {
        /// The frame's kind.
        kind: MessageKind,
        /// What serde_json said.
        #[source]
        source: serde_json::Error,
    },
    /// A fixed-size raw payload has the wrong length.
    #[error("Bad {kind:?} payload: expected {expected} bytes, got {got}")]
    BadLength {
        /// The frame's kind.
        kind: MessageKind,
        /// Expected length.
        expected: usize,
        /// Actual length.
        got: usize,
    },
}

/// Appends `message` as one frame for `request_id` to `out`.
///
/// JSON payloads are serialised straight into `out` behind a reserved header,
/// so a control message costs one buffer and no copy.
///
/// # Errors
/// [`EncodeError`] if serialisation fails or the payload is too large.
pub fn encode_message(
    out: &mut Vec<u8>,
    request_id: u64,
    message: &Message,
) -> Result<(), EncodeError> {
    let kind = message.kind();
    let json = |out: &mut Vec<u8>, value: &dyn erased::Json| -> Result<(), EncodeError> {
        let at = out.len();
        out.extend_from_slice(&[0u8; HEADER_LEN]);
        value.write(out).map_err(EncodeError::Json)?;
        let (head, payload) = out[at..].split_at_mut(HEADER_LEN);
        let head: &mut [u8; HEADER_LEN] = head
            .try_into()
            .map_err(|_| EncodeError::TooLarge { len: payload.len() })?;
        encode_frame_header(head, kind, request_id, payload)
    };
    match message {
        Message::Hello(m) => json(out, m),
        Message::HelloAck(m) => json(out, m),
        Message::Execute(m) => json(out, m),
        Message::ExecResult(m) => json(out, m),
        Message::Signal(m) => json(out, m),
        Message::Stop(m) => json(out, m),
        Message::StatusReport(m) => json(out, m),
        Message::FilePut(m) => json(out, m),
        Message::FileGet(m) => json(out, m),
        Message::FileInfo(m) => json(out, m),
        Message::FileEnd(m) => json(out, m),
        Message::FileDone(m) => json(out, m),
        Message::Error(m) => json(out, m),
        Message::FsRequest(m) => json(out, m),
        Message::FsResult(m) => json(out, m),
        Message::TreePut(m) => json(out, m),
        Message::TreeGet(m) => json(out, m),
        Message::TreeDone(m) => json(out, m),
        Message::Resize(m) => json(out, m),
        Message::Stdin(data) | Message::Stdout(data) | Message::Stderr(data) => {
            encode_frame(out, kind, request_id, data)
        }
        Message::FileData(data) => encode_frame(out, kind, request_id, data),
        Message::WindowUpdate(n) => encode_frame(out, kind, request_id, &n.to_le_bytes()),
        Message::Ping | Message::Pong | Message::StdinClose | Message::StatusRequest => {
            encode_frame(out, kind, request_id, &[])
        }
    }
}

/// Turns a decoded frame into a typed message. The frame is consumed so raw
/// payloads move into the message without a copy.
///
/// # Errors
/// [`DecodeError`] if the payload does not match the kind.
pub fn decode_message(frame: Frame) -> Result<Message, DecodeError> {
    let kind = frame.kind;
    let payload = frame.payload;
    fn json<T: serde::de::DeserializeOwned>(
        kind: MessageKind,
        payload: &[u8],
    ) -> Result<T, DecodeError> {
        serde_json::from_slice(payload).map_err(|source| DecodeError::BadPayload { kind, source })
    }
    Ok(match kind {
        MessageKind::Hello => Message::Hello(json(kind, &payload)?),
        MessageKind::HelloAck => Message::HelloAck(json(kind, &payload)?),
        MessageKind::Ping => Message::Ping,
        MessageKind::Pong => Message::Pong,
        MessageKind::Execute => Message::Execute(json(kind, &payload)?),
        MessageKind::Stdin => Message::Stdin(payload),
        MessageKind::StdinClose => Message::StdinClose,
        MessageKind::Stdout => Message::Stdout(payload),
        MessageKind::Stderr => Message::Stderr(payload),
        MessageKind::ExecResult => Message::ExecResult(json(kind, &payload)?),
        MessageKind::Signal => Message::Signal(json(kind, &payload)?),
        MessageKind::Stop => Message::Stop(json(kind, &payload)?),
        MessageKind::StatusRequest => Message::StatusRequest,
        MessageKind::StatusReport => Message::StatusReport(json(kind, &payload)?),
        MessageKind::FilePut => Message::FilePut(json(kind, &payload)?),
        MessageKind::FileGet => Message::FileGet(json(kind, &payload)?),
        MessageKind::FileInfo => Message::FileInfo(json(kind, &payload)?),
        MessageKind::FileData => Message::FileData(payload),
        MessageKind::FileEnd => Message::FileEnd(json(kind, &payload)?),
        MessageKind::FileDone => Message::FileDone(json(kind, &payload)?),
        MessageKind::WindowUpdate => {
            let bytes: [u8; 4] =
                payload
                    .as_slice()
                    .try_into()
                    .map_err(|_| DecodeError::BadLength {
                        kind,
                        expected: 4,
                        got: payload.len(),
                    })?;
            Message::WindowUpdate(u32::from_le_bytes(bytes))
        }
        MessageKind::Error => Message::Error(json(kind, &payload)?),
        MessageKind::FsRequest => Message::FsRequest(json(kind, &payload)?),
        MessageKind::FsResult => Message::FsResult(json(kind, &payload)?),
        MessageKind::TreePut => Message::TreePut(json(kind, &payload)?),
        MessageKind::TreeGet => Message::TreeGet(json(kind, &payload)?),
        MessageKind::TreeDone => Message::TreeDone(json(kind, &payload)?),
        MessageKind::Resize => Message::Resize(json(kind, &payload)?),
    })
}

/// Object-safe JSON serialisation, so `encode_message` has one code path for
/// every control message.
mod erased {
    pub(super) trait Json {
        fn write(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error>;
    }

    impl<T: serde::Serialize> Json for T {
        fn write(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
            serde_json::to_writer(out, self)
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::frame::{DEFAULT_MAX_PAYLOAD, decode_frame};

    fn round_trip(message: &Message) -> Message {
        let mut out = Vec::new();
        encode_message(&mut out, 11, message).expect("encode");
        let (frame, used) = decode_frame(&out, DEFAULT_MAX_PAYLOAD).expect("frame");
        assert_eq!(used, out.len());
        assert_eq!(frame.request_id, 11);
        assert_eq!(frame.kind, message.kind());
        decode_message(frame).expect("message")
    }

    #[test]
    fn every_message_round_trips() {
        let mut exec = Execute::shell("echo hi");
        exec.env.insert("A".into(), "b".into());
        exec.timeout_ms = Some(5);
        let mut on_tty = Execute::shell("sh");
        on_tty.tty = Some(Tty::new("vt100", 24, 80));
        let messages = vec![
            Message::Hello(Hello {
                min_version: 1,
                max_version: 1,
                client: "t".into(),
                max_payload: 10,
                initial_window: 20,
                session_token: "tok".into(),
                host_time_unix_ms: 1_795_000_000_000,
            }),
            Message::HelloAck(HelloAck {
                version: 1,
                agent_version: "0".into(),
                capabilities: vec![capability::EXEC.into()],
                boot_id: "b".into(),
                session_seq: 3,
                previous_token: "before".into(),
                uptime_ms: 4,
                max_payload: 5,
                initial_window: 6,
                clock_step_ms: -1500,
            }),
            Message::Ping,
            Message::Pong,
            Message::Execute(exec),
            Message::Execute(Execute::argv(["true"])),
            Message::Stdin(b"in".to_vec()),
            Message::StdinClose,
            Message::Stdout(vec![0, 159, 146, 150]),
            Message::Stderr(Vec::new()),
            Message::ExecResult(ExecResult {
                exit_code: Some(3),
                ..ExecResult::default()
            }),
            Message::Signal(SignalRequest { signal: 15 }),
            Message::Stop(Stop {
                scope: StopScope::Agent,
            }),
            Message::StatusRequest,
            Message::StatusReport(StatusReport {
                load_avg: [0.5, 1.0, 2.0],
                ..Default::default()
            }),
            Message::FilePut(FilePut {
                path: "/a".into(),
                mode: 0o600,
                create_parents: true,
            }),
            Message::FileGet(FileGet { path: "/b".into() }),
            Message::FileInfo(FileInfo {
                size: 1,
                mode: 0o644,
            }),
            Message::FileData(vec![1, 2, 3]),
            Message::FileEnd(FileEnd { size: 3, crc32: 9 }),
            Message::FileDone(FileDone { size: 3, crc32: 9 }),
            Message::WindowUpdate(65536),
            Message::Error(ErrorReport::new(ErrorCode::SpawnFailed, "no such file")),
            Message::TreePut(TreePut {
                path: "/t".into(),
                max_bytes: 1 << 20,
                overwrite: true,
            }),
            Message::TreeGet(TreeGet {
                path: "/t".into(),
                max_bytes: 7,
            }),
            Message::TreeDone(TreeDone {
                files: 1,
                dirs: 2,
                symlinks: 3,
                bytes: 4,
            }),
            Message::Execute(on_tty),
            Message::Resize(Resize {
                rows: 50,
                cols: 132,
            }),
        ];
        for message in &messages {
            assert_eq!(&round_trip(message), message);
        }
    }

    #[test]
    fn floats_round_trip_exactly() {
        // Found by fuzzing: without serde_json's float_roundtrip this came back
        // one unit in the last place off.
        let report = StatusReport {
            system_uptime_s: 9.955_183_326_588_949e-55,
            load_avg: [f64::MIN_POSITIVE, 1e308, 0.1],
            ..StatusReport::default()
        };
        let message = Message::StatusReport(report);
        assert_eq!(round_trip(&message), message);
    }

    #[test]
    fn bad_json_is_a_typed_error() {
        let mut out = Vec::new();
        encode_frame(&mut out, MessageKind::Execute, 1, b"{\"command\":").expect("encode");
        let (frame, _) = decode_frame(&out, DEFAULT_MAX_PAYLOAD).expect("frame");
        assert!(matches!(
            decode_message(frame),
            Err(DecodeError::BadPayload {
                kind: MessageKind::Execute,
                ..
            })
        ));
    }

    #[test]
    fn short_window_update_is_a_typed_error() {
        let mut out = Vec::new();
        encode_frame(&mut out, MessageKind::WindowUpdate, 1, b"\x01\x02").expect("encode");
        let (frame, _) = decode_frame(&out, DEFAULT_MAX_PAYLOAD).expect("frame");
        assert!(matches!(
            decode_message(frame),
            Err(DecodeError::BadLength {
                expected: 4,
                got: 2,
                ..
            })
        ));
    }

    #[test]
    fn unknown_error_codes_and_fields_are_tolerated() {
        let report: ErrorReport =
            serde_json::from_str(r#"{"code":"from_the_future","message":"x","extra":1}"#)
                .expect("parse");
        assert_eq!(report.code, ErrorCode::Unknown);
        let exec: Execute =
            serde_json::from_str(r#"{"command":{"argv":["ls"]},"new_field":true}"#).expect("parse");
        assert_eq!(exec, Execute::argv(["ls"]));
    }

    #[test]
    fn a_tty_without_fields_has_the_defaults() {
        let exec: Execute =
            serde_json::from_str(r#"{"command":{"argv":["sh"]},"tty":{}}"#).expect("parse");
        let tty = exec.tty.expect("a tty");
        assert_eq!(tty, Tty::new("", 0, 0));
        assert_eq!(tty.term_or_default(), DEFAULT_TERM);
        assert_eq!(Tty::new("vt100", 1, 1).term_or_default(), "vt100");
        let resize: Result<Resize, _> = serde_json::from_str(r#"{"rows":1}"#);
        assert!(resize.is_err(), "rows and cols are required");
    }

    proptest! {
        #[test]
        fn execute_round_trips(
            argv in proptest::collection::vec(".*", 1..5),
            env in proptest::collection::btree_map("[A-Z_]{1,8}", ".*", 0..4),
            cwd in proptest::option::of("/[a-z/]{0,16}"),
            timeout_ms in proptest::option::of(any::<u64>()),
            stdout_cap in proptest::option::of(any::<u64>()),
            stdin in any::<bool>(),
        ) {
            let mut exec = Execute::argv(argv);
            exec.env = env;
            exec.cwd = cwd;
            exec.timeout_ms = timeout_ms;
            exec.stdout_cap = stdout_cap;
            exec.stdin = stdin;
            let message = Message::Execute(exec);
            prop_assert_eq!(round_trip(&message), message);
        }

        #[test]
        fn data_round_trips(data in proptest::collection::vec(any::<u8>(), 0..70_000), id in 1u64..) {
            let message = Message::Stdout(data);
            let mut out = Vec::new();
            encode_message(&mut out, id, &message).expect("encode");
            let (frame, _) = decode_frame(&out, DEFAULT_MAX_PAYLOAD).expect("frame");
            prop_assert_eq!(frame.request_id, id);
            prop_assert_eq!(decode_message(frame).expect("message"), message);
        }

        #[test]
        fn any_payload_for_any_kind_never_panics(
            kind in proptest::sample::select(MessageKind::ALL.to_vec()),
            payload in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let frame = Frame { version: 1, kind, flags: 0, request_id: 1, payload };
            let _ = decode_message(frame);
        }
    }
}
