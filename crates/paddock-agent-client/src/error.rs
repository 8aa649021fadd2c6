//! The client's error type and its retry classification.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use paddock_proto::{DecodeError, ErrorCode, FrameError, MessageKind, WindowError};

/// Everything that can go wrong talking to a guest agent.
///
/// Callers decide what to do from [`ClientError::should_reconnect`] (the
/// connection is gone or cannot be trusted: open a new one, which
/// [`crate::AgentClient`] does on the next call) and
/// [`ClientError::is_retryable`] (the same call may succeed if repeated).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection could be made before the connect deadline.
    #[error("Could not connect to the agent at {endpoint} ({attempts} attempts)")]
    Connect {
        /// The transport endpoint, for humans.
        endpoint: String,
        /// Connection attempts made.
        attempts: u32,
        /// The last attempt's error.
        #[source]
        source: io::Error,
    },
    /// A hybrid-vsock multiplexer refused the `CONNECT <port>` handshake.
    #[error("Vsock multiplexer refused the connection: {reply:?}")]
    VsockHandshake {
        /// What the multiplexer answered instead of `OK <port>`.
        reply: String,
    },
    /// The agent speaks no protocol version this client speaks.
    #[error("Agent speaks no common protocol version")]
    UnsupportedVersion {
        /// The agent's explanation.
        message: String,
    },
    /// An operation did not finish in time.
    #[error("Timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was being waited for.
        what: &'static str,
        /// The limit that passed.
        after: Duration,
    },
    /// The connection closed or failed while a request was open.
    #[error("Connection to the agent was lost")]
    ConnectionLost {
        /// The underlying failure, when there was one (EOF has none).
        #[source]
        source: Option<io::Error>,
    },
    /// The agent broke the framing; the stream cannot be trusted.
    #[error("Agent sent a corrupt frame")]
    Frame(#[source] FrameError),
    /// The agent sent a frame whose payload does not match its kind.
    #[error("Agent sent an invalid message")]
    Decode(#[source] DecodeError),
    /// The agent sent more data than its flow-control window allowed.
    #[error("Agent violated flow control")]
    FlowControl(#[source] WindowError),
    /// The agent sent a frame that makes no sense at this point.
    #[error("Agent sent an unexpected {kind:?} frame")]
    Unexpected {
        /// The frame's kind.
        kind: MessageKind,
    },
    /// The agent answered the request with an ERROR frame.
    #[error("Agent refused the request ({code:?}): {message}")]
    Agent {
        /// The wire error code.
        code: ErrorCode,
        /// The agent's message.
        message: String,
    },
    /// A transferred file's size or checksum did not match.
    #[error(
        "File transfer corrupted: expected {expected_size} bytes crc {expected_crc:#010x}, got {size} bytes crc {crc:#010x}"
    )]
    ChecksumMismatch {
        /// Size the sender declared.
        expected_size: u64,
        /// CRC the sender declared.
        expected_crc: u32,
        /// Size received.
        size: u64,
        /// CRC computed over what was received.
        crc: u32,
    },
    /// A local file could not be read or written.
    #[error("Local file {path} could not be accessed")]
    LocalIo {
        /// The local path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A request was malformed before it was sent.
    #[error("Invalid request: {0}")]
    InvalidRequest(String),
    /// The host's request gate refused it before it was sent (a rate
    /// limit); retry after `retry_after` when there is one.
    #[error("Refused by {limit}; retry after {retry_after:?}")]
    Refused {
        /// The limit or policy that refused it.
        limit: &'static str,
        /// When the same request may pass.
        retry_after: Option<Duration>,
    },
    /// The request policy denied it before it was sent: the same request
    /// will be denied again.
    #[error(transparent)]
    Denied(paddock_policy::Denial),
    /// The agent does not announce the capability the call needs (an
    /// older agent, which would refuse the request or, for a field it does
    /// not know such as EXECUTE's `tty`, ignore it); nothing was sent.
    #[error("The agent does not support {capability}")]
    Unsupported {
        /// The missing capability ([`paddock_proto::capability`]).
        capability: &'static str,
    },
    /// A directory could not be packed or unpacked on the host: an entry
    /// from the guest that would land outside the destination, a stream
    /// past its `max_bytes`, a local file system error.
    #[error("Directory transfer failed on the host")]
    Tree(#[source] crate::TreeError),
}

impl ClientError {
    /// Whether the connection is unusable and a new one should be opened.
    #[must_use]
    pub fn should_reconnect(&self) -> bool {
        matches!(
            self,
            Self::ConnectionLost { .. }
                | Self::Frame(_)
                | Self::Decode(_)
                | Self::FlowControl(_)
                | Self::Unexpected { .. }
                | Self::Connect { .. }
                | Self::VsockHandshake { .. }
                // The agent closes a connection past its cap; a new one may
                // be admitted once another ends.
                | Self::Agent {
                    code: ErrorCode::TooManyConnections,
                    ..
                }
        )
    }

    /// Whether repeating the same call may succeed (after a reconnect when
    /// [`ClientError::should_reconnect`] also holds).
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Agent { code, .. } => matches!(
                code,
                ErrorCode::TooManyRequests | ErrorCode::TooManyConnections
            ),
            Self::UnsupportedVersion { .. }
            | Self::LocalIo { .. }
            | Self::InvalidRequest(_)
            | Self::Tree(_)
            | Self::Unsupported { .. } => false,
            Self::Timeout { .. } | Self::ChecksumMismatch { .. } => true,
            Self::Refused { retry_after, .. } => retry_after.is_some(),
            other => other.should_reconnect(),
        }
    }

    /// A short, bounded name for the error, fit for a metrics label or an
    /// audit record.
    #[must_use]
    pub fn kind_name(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "connect",
            Self::VsockHandshake { .. } => "vsock_handshake",
            Self::UnsupportedVersion { .. } => "unsupported_version",
            Self::Timeout { .. } => "timeout",
            Self::ConnectionLost { .. } => "connection_lost",
            Self::Frame(_) => "frame",
            Self::Decode(_) => "decode",
            Self::FlowControl(_) => "flow_control",
            Self::Unexpected { .. } => "unexpected",
            Self::Agent { .. } => "agent",
            Self::ChecksumMismatch { .. } => "checksum_mismatch",
            Self::LocalIo { .. } => "local_io",
            Self::InvalidRequest(_) => "invalid_request",
            Self::Refused { .. } => "refused",
            Self::Denied(_) => "denied",
            Self::Unsupported { .. } => "unsupported",
            Self::Tree(_) => "tree",
        }
    }

    /// The wire error code, when the agent refused the request.
    #[must_use]
    pub fn agent_code(&self) -> Option<ErrorCode> {
        match self {
            Self::Agent { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub(crate) fn lost(source: Option<io::Error>) -> Self {
        Self::ConnectionLost { source }
    }

    /// Copies an error for fan-out to every open request when a connection
    /// fails (io::Error is not Clone, so the copy keeps kind and text).
    pub(crate) fn duplicate(&self) -> Self {
        match self {
            Self::ConnectionLost { source } => Self::ConnectionLost {
                source: source
                    .as_ref()
                    .map(|e| io::Error::new(e.kind(), e.to_string())),
            },
            Self::Frame(e) => Self::Frame(e.clone()),
            Self::FlowControl(e) => Self::FlowControl(e.clone()),
            Self::Unexpected { kind } => Self::Unexpected { kind: *kind },
            other => Self::ConnectionLost {
                source: Some(io::Error::other(other.to_string())),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let lost = ClientError::lost(None);
        assert!(lost.should_reconnect() && lost.is_retryable());
        let busy = ClientError::Agent {
            code: ErrorCode::TooManyRequests,
            message: String::new(),
        };
        assert!(!busy.should_reconnect() && busy.is_retryable());
        let missing = ClientError::Agent {
            code: ErrorCode::NotFound,
            message: String::new(),
        };
        assert!(!missing.should_reconnect() && !missing.is_retryable());
        let timeout = ClientError::Timeout {
            what: "x",
            after: Duration::from_secs(1),
        };
        assert!(!timeout.should_reconnect() && timeout.is_retryable());
        let frame = ClientError::Frame(FrameError::CrcMismatch {
            expected: 1,
            actual: 2,
        });
        assert!(frame.should_reconnect());
        assert_eq!(missing.agent_code(), Some(ErrorCode::NotFound));
    }
}
