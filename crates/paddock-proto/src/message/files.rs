//! File transfers: FILE_PUT, FILE_GET, FILE_INFO, FILE_END and FILE_DONE.

use serde::{Deserialize, Serialize};

use super::nullable::{or_default, or_default_mode};

/// Starts writing a file in the guest (host -> agent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilePut {
    /// Absolute path of the file to create or replace.
    pub path: String,
    /// Permission bits, `0o7777` at most (JSON has no octal: `0o644` is
    /// written `420`); [`DEFAULT_FILE_MODE`] when absent.
    #[serde(default = "default_mode", deserialize_with = "or_default_mode")]
    pub mode: u32,
    /// Create missing parent directories (mode `0o777` less the agent's
    /// umask).
    #[serde(default, deserialize_with = "or_default")]
    pub create_parents: bool,
}

/// The mode of a put that names none: `0o644`.
pub const DEFAULT_FILE_MODE: u32 = 0o644;

fn default_mode() -> u32 {
    DEFAULT_FILE_MODE
}

/// Starts reading a file from the guest (host -> agent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileGet {
    /// Absolute path of the file to read.
    pub path: String,
}

/// Describes a file about to be sent (agent -> host, answer to FILE_GET).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    /// Size in bytes when the transfer started.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
}

/// Ends file content (either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEnd {
    /// Bytes sent.
    pub size: u64,
    /// CRC-32/IEEE of all bytes sent.
    pub crc32: u32,
}

/// A put was written, verified and renamed into place (agent -> host).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDone {
    /// Bytes written.
    pub size: u64,
    /// CRC-32/IEEE of the bytes written.
    pub crc32: u32,
}
