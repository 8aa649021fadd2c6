#![doc = include_str!("../PROTOCOL.md")]

#[cfg(test)]
mod docs_examples;
mod flow;
mod frame;
mod io;
mod message;

pub use flow::{RecvWindow, SendWindow, WindowError};
pub use frame::{
    DEFAULT_MAX_PAYLOAD, FRAME_READ_CHUNK, Frame, FrameDecoder, FrameError, FrameHeader,
    HEADER_LEN, MAGIC, decode_frame, encode_frame, encode_frame_header,
    encode_frame_header_with_crc,
};
pub use io::{ReadFrameError, read_frame, write_frame};
pub use message::{
    CLOCK_TOLERANCE_MS, DEFAULT_FILE_MODE, DEFAULT_KILL_GRACE_MS, MAX_ERROR_MESSAGE_LEN,
    MAX_KILL_GRACE_MS, MAX_SIGNAL, unix_time_ms,
};
pub use message::{
    Command, DecodeError, Direction, EncodeError, ErrorCode, ErrorReport, ExecResult, Execute,
    FileDone, FileEnd, FileGet, FileInfo, FilePut, Hello, HelloAck, Message, MessageKind,
    SignalRequest, StatusReport, Stop, StopScope, capability, decode_message, encode_message,
};
pub use message::{
    DEFAULT_DIR_MODE, DEFAULT_READ_DIR_LIMIT, DirEntry, EntryPathError, FileType, FsRequest,
    FsResult, MAX_READ_DIR_LIMIT, MAX_TREE_DEPTH, MAX_TREE_ENTRIES, MAX_TREE_PATH_LEN,
    MAX_TREE_PAX_LEN, Metadata, TREE_MODE_MASK, TreeDone, TreeGet, TreePut, entry_components,
};
pub use message::{DEFAULT_TERM, Resize, Tty};

/// The protocol version this crate writes.
pub const PROTOCOL_VERSION: u16 = 1;

/// The oldest protocol version this crate still reads (the current one and the
/// one before it are supported; version 1 is the first).
pub const MIN_PROTOCOL_VERSION: u16 = 1;

/// The default initial flow-control window per request and direction
/// (1 MiB): four [`DEFAULT_CHUNK`]s, so that a sender keeps two chunks in
/// flight while the receiver returns credit for the other half.
pub const DEFAULT_WINDOW: u32 = 1024 * 1024;

/// The size of data chunks senders cut bulk data into (256 KiB). Every
/// frame costs both sides a few wake-ups and system calls whatever its
/// size, which under TCG (no hardware virtualisation) weighs more than
/// the copy: fewer, larger frames move bulk data for less.
pub const DEFAULT_CHUNK: usize = 256 * 1024;

/// The smallest `max_payload` a side may announce in HELLO or HELLO_ACK
/// (4 KiB): every control message must fit in one frame.
pub const MIN_MAX_PAYLOAD: u32 = 4096;

/// The longest [`Hello::session_token`] an agent accepts, in bytes: the agent
/// repeats a session's token to later hosts in [`HelloAck::previous_token`],
/// which must fit in [`MIN_MAX_PAYLOAD`].
pub const MAX_SESSION_TOKEN_LEN: usize = 256;

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
