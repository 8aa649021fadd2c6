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
    /// A file system of the guest is full (`ENOSPC`).
    NoSpace,
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
    /// A tree entry would land outside its destination (an absolute path,
    /// a `..` component, or a path through a symlink).
    UnsafePath,
    /// A transfer is larger than its `max_bytes`.
    TooLarge,
    /// A path that must not exist does (`EEXIST`).
    AlreadyExists,
    /// A path component that must be a directory is not (`ENOTDIR`).
    NotADirectory,
    /// A path that must not be a directory is one (`EISDIR`).
    IsADirectory,
    /// A directory to remove or replace is not empty (`ENOTEMPTY`).
    DirectoryNotEmpty,
    /// A code this side does not know (serde's `other`: it stays last).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// Every code, in declaration order.
    pub const ALL: [Self; 26] = [
        Self::BadFrame,
        Self::UnknownKind,
        Self::BadPayload,
        Self::UnsupportedVersion,
        Self::NotNegotiated,
        Self::UnknownRequest,
        Self::DuplicateRequest,
        Self::TooManyRequests,
        Self::FlowControl,
        Self::SpawnFailed,
        Self::NotFound,
        Self::PermissionDenied,
        Self::Io,
        Self::NoSpace,
        Self::InvalidArgument,
        Self::ChecksumMismatch,
        Self::ShuttingDown,
        Self::TooManyConnections,
        Self::Internal,
        Self::UnsafePath,
        Self::TooLarge,
        Self::AlreadyExists,
        Self::NotADirectory,
        Self::IsADirectory,
        Self::DirectoryNotEmpty,
        Self::Unknown,
    ];
}

/// The longest [`ErrorReport::message`] [`ErrorReport::new`] makes, in
/// bytes, so that an ERROR always fits in the smallest payload limit.
pub const MAX_ERROR_MESSAGE_LEN: usize = 1024;

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
    /// An error report with `code` and `message`, cut to
    /// [`MAX_ERROR_MESSAGE_LEN`] bytes (at a character boundary).
    #[must_use]
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > MAX_ERROR_MESSAGE_LEN {
            let mut end = MAX_ERROR_MESSAGE_LEN;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        Self { code, message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_code_once() {
        // No wildcard: a new code must be given a place here and in ALL.
        let index = |code: ErrorCode| match code {
            ErrorCode::BadFrame => 0,
            ErrorCode::UnknownKind => 1,
            ErrorCode::BadPayload => 2,
            ErrorCode::UnsupportedVersion => 3,
            ErrorCode::NotNegotiated => 4,
            ErrorCode::UnknownRequest => 5,
            ErrorCode::DuplicateRequest => 6,
            ErrorCode::TooManyRequests => 7,
            ErrorCode::FlowControl => 8,
            ErrorCode::SpawnFailed => 9,
            ErrorCode::NotFound => 10,
            ErrorCode::PermissionDenied => 11,
            ErrorCode::Io => 12,
            ErrorCode::NoSpace => 13,
            ErrorCode::InvalidArgument => 14,
            ErrorCode::ChecksumMismatch => 15,
            ErrorCode::ShuttingDown => 16,
            ErrorCode::TooManyConnections => 17,
            ErrorCode::Internal => 18,
            ErrorCode::UnsafePath => 19,
            ErrorCode::TooLarge => 20,
            ErrorCode::AlreadyExists => 21,
            ErrorCode::NotADirectory => 22,
            ErrorCode::IsADirectory => 23,
            ErrorCode::DirectoryNotEmpty => 24,
            ErrorCode::Unknown => 25,
        };
        for (at, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(index(*code), at, "{code:?}");
        }
    }

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        let report = ErrorReport::new(ErrorCode::Io, "é".repeat(MAX_ERROR_MESSAGE_LEN));
        assert!(report.message.len() <= MAX_ERROR_MESSAGE_LEN);
        assert!(report.message.len() > MAX_ERROR_MESSAGE_LEN - 2);
        assert!(report.message.chars().all(|c| c == 'é'));
        assert_eq!(ErrorReport::new(ErrorCode::Io, "short").message, "short");
    }
}
