//! Paddock's host <-> guest wire protocol.
//!
//! This crate is the contract between the host (`paddock-agent-client`) and the
//! guest agent (`paddock-agent`). It holds the frame layout, the message schema,
//! the flow-control accounting and nothing else: no sockets, no async runtime,
//! no timeouts. Both sides link the same code, and everything here runs on plain
//! byte buffers, so every rule below is tested without a VM.
//!
//! The protocol runs over any reliable, ordered byte stream: AF_VSOCK, a
//! virtio-serial port, or a Unix socket.
//!
//! # Frame layout
//!
//! Every frame is a fixed 28-byte header followed by `payload_len` bytes of
//! payload. All integers are little-endian.
//!
//! | offset | size | field         | meaning                                                    |
//! |-------:|-----:|---------------|------------------------------------------------------------|
//! | 0      | 4    | `magic`       | `b"PDCK"` (`50 44 43 4B`); the resynchronisation anchor     |
//! | 4      | 2    | `version`     | protocol version the frame is written in (see below)        |
//! | 6      | 2    | `kind`        | [`MessageKind`]; 0 is reserved as invalid                   |
//! | 8      | 2    | `flags`       | reserved: senders write 0, receivers ignore unknown bits    |
//! | 10     | 2    | `reserved`    | senders write 0, receivers ignore                          |
//! | 12     | 8    | `request_id`  | which request the frame belongs to; 0 = the connection     |
//! | 20     | 4    | `payload_len` | bytes of payload after the header                          |
//! | 24     | 4    | `crc32`       | CRC-32/IEEE of bytes 0..24 followed by the payload          |
//!
//! Control messages carry a UTF-8 JSON object as payload. Bulk data (stdin,
//! stdout, stderr, file contents) is carried as raw bytes, never re-encoded.
//! [`MessageKind`] documents which is which.
//!
//! Each kind is sent by the host, by the agent, or by either
//! ([`MessageKind::direction`], one table both sides check). A kind arriving
//! from a side that may not send it is a protocol error: the agent answers it
//! with `ERROR unknown_kind`, the host ends the session if it names one of its
//! open requests.
//!
//! A receiver checks, in this order: the magic, the version, the payload length
//! against its maximum (default [`DEFAULT_MAX_PAYLOAD`], 1 MiB) *before* it
//! buffers or allocates for the payload, then the CRC, then the kind. A bad
//! magic, an unsupported version, an oversized length or a CRC mismatch means
//! the stream position cannot be trusted: the [`FrameDecoder`] reports the error
//! once and resynchronises on the next magic. An unknown kind with a good CRC is
//! a well-formed frame from a newer peer: it is reported with its request id
//! and the stream stays in sync.
//!
//! # Versioning
//!
//! The header layout above is frozen: every version keeps the magic, version,
//! kind and length fields where they are, so any receiver can skip a frame it
//! does not understand. The host opens every connection with [`Hello`] carrying
//! the range of versions it speaks; the agent answers [`HelloAck`] with the
//! highest version both speak, and both sides write that version in every later
//! frame. This crate speaks [`PROTOCOL_VERSION`] and the one before it
//! ([`MIN_PROTOCOL_VERSION`]); compatibility is one-way, from older to newer.
//! New optional JSON fields may be added without a version bump (unknown fields
//! are ignored and missing ones take their defaults); anything that changes the
//! meaning of an existing field or frame needs a new version.
//!
//! # Connection state machine
//!
//! ```text
//!   host                                   agent
//!    |  HELLO {versions, window, token,       |
//!    |         host_time}  ---------------->  |   AwaitingHello -> Ready
//!    |  <---------  HELLO_ACK {version,       |
//!    |     boot_id, session_seq,              |
//!    |     previous_token, capabilities,      |
//!    |     clock_step}                        |
//!    |  ...any number of requests, interleaved by request id...
//! ```
//!
//! A host resends `HELLO` (same token) while it waits on a virtio-serial port,
//! where a `HELLO` written before the agent opened the port is lost; a resent
//! `HELLO` does not count as a new session. `previous_token` lets the host tell
//! whether the guest ran on since its last session, was reset to an earlier
//! memory state (a snapshot revert or restore: the agent remembers an older
//! token), or rebooted (a new `boot_id`): see [`HelloAck::previous_token`].
//! A guest reset to an earlier memory state also has that state's clock: an
//! agent allowed to set the clock steps it to `host_time` when it is more
//! than [`CLOCK_TOLERANCE_MS`] off, and reports the step
//! ([`HelloAck::clock_step_ms`]). Both fields default to 0, so peers without
//! them still speak version 1.
//!
//! Before `HELLO` the agent answers every frame but `PING` with `ERROR
//! not_negotiated`. A second `HELLO` on the same stream starts a new session.
//! This is what a host does after reconnecting to a virtio-serial port, where
//! the byte stream itself never closes.
//!
//! Executions and transfers belong to their session. When the session ends
//! (the connection closes, or a new `HELLO` arrives on the same stream) the
//! agent ends every execution of it (SIGTERM to the process group, SIGKILL
//! after the execution's grace period, see below) and discards every
//! unfinished put. Nothing a session started outlives it.
//!
//! `STOP {scope: agent}` is acknowledged by a `STOP {scope: agent}` frame with
//! the same request id; the agent then ends every execution of every session,
//! closes its connections and exits.
//!
//! Request ids are chosen by the host, must be non-zero and unique among the
//! requests open on the connection; the agent answers `ERROR duplicate_request`
//! otherwise. Many requests run at once, each frame carries its request id.
//!
//! # An execution
//!
//! ```text
//!   host                                         agent
//!    | EXECUTE {argv|shell, env, cwd, timeout,     |
//!    |          stdout_cap, stderr_cap, stdin} -->  | spawn in a new process group
//!    | STDIN bytes (if stdin) ------------------->  |
//!    | STDIN_CLOSE ------------------------------->  |
//!    | <------------------- STDOUT / STDERR bytes   | within the host's window
//!    | WINDOW_UPDATE n --------------------------->  | as the host consumes output
//!    | SIGNAL {signal} / STOP {execution} ------->  | optional
//!    | <------------------------------- RESULT {}   | the last frame of the request
//! ```
//!
//! `RESULT` (or `ERROR`) ends the request; no frame for it follows. Output past
//! a cap is read and discarded, so the process never blocks on a full pipe, and
//! `RESULT` says so (`stdout_truncated`, `stderr_truncated`, with the byte
//! counts the process really wrote). On a timeout or `STOP` the agent sends
//! SIGTERM to the whole process group, then SIGKILL after a grace period:
//! `EXECUTE`'s `kill_grace_ms`, or else the agent's default,
//! [`DEFAULT_KILL_GRACE_MS`] (1 s) unless the agent was started with another.
//! An execution ends when its leader exits: whatever it left running in its
//! process group is killed, so no process of a request outlives its `RESULT`.
//! `SIGNAL` is not acknowledged; its effect shows in `RESULT`.
//!
//! So a `RESULT` is due at most `timeout_ms` plus the grace period after
//! `EXECUTE`, plus the time to drain the pipes and deliver the frame. A host
//! that waits for it counts the same grace (`kill_grace_ms`, or
//! [`DEFAULT_KILL_GRACE_MS`]) and adds its own margin for the rest.
//!
//! # A file transfer
//!
//! ```text
//!   put:  host FILE_PUT {path, mode} -> FILE_DATA* -> FILE_END {size, crc32}
//!         agent                          <- FILE_DONE {size, crc32} | ERROR
//!   get:  host FILE_GET {path}
//!         agent <- FILE_INFO {size, mode} <- FILE_DATA* <- FILE_END {size, crc32}
//! ```
//!
//! The checksum is CRC-32/IEEE of the whole file. It guards against corruption
//! in transit and on disk, not against a hostile guest: the guest is untrusted
//! anyway, and could lie about any digest. A put is written to a temporary file
//! next to the target and renamed into place only when size and checksum match.
//!
//! # Flow control
//!
//! Data frames (`STDIN`, `STDOUT`, `STDERR`, `FILE_DATA`) are credit-based, per
//! request and per direction, as in HTTP/2. A sender may have at most `window`
//! payload bytes of a request unacknowledged; the receiver returns credit with
//! `WINDOW_UPDATE` (a 4-byte little-endian increment) as its consumer takes the
//! data. The initial window for data flowing to the host is the host's
//! [`Hello::initial_window`]; for data flowing to the agent it is the agent's
//! [`HelloAck::initial_window`]. A peer that exceeds its window is in violation
//! ([`ErrorCode::FlowControl`]). So a process that prints without end can make
//! neither side buffer more than one window per request: the agent stops
//! reading the pipe, and the process blocks in `write`. [`RecvWindow`] and
//! [`SendWindow`] hold the arithmetic.

mod flow;
mod frame;
mod io;
mod message;

pub use flow::{RecvWindow, SendWindow, WindowError};
pub use frame::{
    DEFAULT_MAX_PAYLOAD, FRAME_READ_CHUNK, Frame, FrameDecoder, FrameError, FrameHeader,
    HEADER_LEN, MAGIC, decode_frame, encode_frame, encode_frame_header,
};
pub use io::{ReadFrameError, read_frame, write_frame};
pub use message::{
    CLOCK_TOLERANCE_MS, DEFAULT_FILE_MODE, DEFAULT_KILL_GRACE_MS, MAX_KILL_GRACE_MS, MAX_SIGNAL,
    unix_time_ms,
};
pub use message::{
    Command, DecodeError, Direction, EncodeError, ErrorCode, ErrorReport, ExecResult, Execute,
    FileDone, FileEnd, FileGet, FileInfo, FilePut, Hello, HelloAck, Message, MessageKind,
    SignalRequest, StatusReport, Stop, StopScope, capability, decode_message, encode_message,
};

/// The protocol version this crate writes.
pub const PROTOCOL_VERSION: u16 = 1;

/// The oldest protocol version this crate still reads (the current one and the
/// one before it are supported; version 1 is the first).
pub const MIN_PROTOCOL_VERSION: u16 = 1;

/// The default initial flow-control window per request and direction (256 KiB).
pub const DEFAULT_WINDOW: u32 = 256 * 1024;

/// The size of data chunks senders cut bulk data into (64 KiB).
pub const DEFAULT_CHUNK: usize = 64 * 1024;

/// The smallest `max_payload` a side may announce in HELLO or HELLO_ACK
/// (4 KiB): every control message must fit in one frame.
pub const MIN_MAX_PAYLOAD: u32 = 4096;

/// The most control frames (STDIN_CLOSE, SIGNAL, STOP, FILE_END) an agent
/// holds unread for one request; past it the request ends with ERROR
/// `flow_control`. Data frames are bounded by the window instead.
pub const MAX_QUEUED_CONTROL: usize = 128;

/// Whether a frame written in `version` can be read by this crate.
#[must_use]
pub fn is_supported_version(version: u16) -> bool {
    (MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version)
}

/// The highest version both this crate and a peer speaking `min..=max` speak.
#[must_use]
pub fn negotiate_version(min: u16, max: u16) -> Option<u16> {
    let high = max.min(PROTOCOL_VERSION);
    let low = min.max(MIN_PROTOCOL_VERSION);
    (low <= high).then_some(high)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_picks_highest_common_version() {
        assert_eq!(negotiate_version(1, 1), Some(1));
        assert_eq!(negotiate_version(1, 9), Some(PROTOCOL_VERSION));
        assert_eq!(negotiate_version(PROTOCOL_VERSION + 1, 9), None);
        assert_eq!(negotiate_version(0, 0), None);
        assert!(is_supported_version(PROTOCOL_VERSION));
        assert!(!is_supported_version(0));
    }
}
