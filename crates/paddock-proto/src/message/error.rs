//! ERROR: the wire error codes and the report that carries one.

use serde::{Deserialize, Serialize};

use super::nullable::or_default;

/// Wire error codes. Unknown codes from a newer peer decode as
/// [`ErrorCode::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// A frame failed magic, version, length or CRC checks.
    BadFrame,
    /// The frame's kind is not known to the receiver.
    UnknownKind,
    /// The payload is not valid for its kind.
    BadPayload,
    /// No common protocol version.
    UnsupportedVersion,
    /// A request arrived before HELLO.
    NotNegotiated,
    /// The request id names no open request.
    UnknownRequest,
    /// The request id is already in use, or is 0.
    DuplicateRequest,
    /// The agent's limit on concurrent requests is reached; retry later.
    TooManyRequests,
    /// The peer sent more data than its window allowed.
    FlowControl,
    /// The process could not be started.
    SpawnFailed,
    /// A path does not exist.
    NotFound,
    /// The agent may not access a path.
    PermissionDenied,
    /// Another I/O failure.
    Io,
    /// A request field is out of range or contradictory.
    InvalidArgument,
    /// File content did not match its size or checksum.
    ChecksumMismatch,
    /// The agent is shutting down.
    ShuttingDown,
    /// The agent serves as many connections as it may; it closes this one.
    TooManyConnections,
    /// A bug or unexpected state in the agent.
    Internal,
    /// A code this side does not know.
    #[serde(other)]
    Unknown,
}

/// A failed request (request id != 0) or connection (request id 0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReport {
    /// What kind of failure.
    pub code: ErrorCode,
    /// Human-readable detail.
    #[serde(default, deserialize_with = "or_default")]
    pub message: String,
}

impl ErrorReport {
    /// An error report with `code` and `message`.
    #[must_use]
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}
