//! The API's JSON bodies (see `API.md`), shared by the daemon and the
//! `paddock` command.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `GET /v1/pools`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolList {
    /// Every pool the daemon runs, by name.
    pub pools: Vec<PoolStatus>,
}

/// One pool's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStatus {
    /// Its name.
    pub name: String,
    /// Slots ready to lease.
    pub ready: usize,
    /// Slots on a lease.
    pub leased: usize,
    /// Slots being made, reset or checked.
    pub preparing: usize,
    /// Every slot.
    pub total: usize,
    /// The pool's target of ready slots.
    pub min_ready: usize,
    /// The pool's largest size.
    pub max_size: usize,
    /// The reset strategy (`in_place`, `restore`, `revert`).
    pub reset: String,
    /// Whether libvirtd answers.
    pub backend_available: bool,
    /// Whether it is draining (no new leases).
    pub draining: bool,
    /// The golden new slots are made from.
    pub golden_id: String,
    /// The name of the request policy its leases are held to, if any.
    #[serde(default)]
    pub policy: Option<String>,
}

/// `GET /v1/pools/{pool}/slots`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotList {
    /// The ready and leased slots, by number.
    pub slots: Vec<SlotStatus>,
    /// How many slots are being made, reset or checked (they have no
    /// stable number yet).
    pub preparing: usize,
}

/// One slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotStatus {
    /// Its number in the pool.
    pub index: u32,
    /// `ready` or `leased`.
    pub state: String,
    /// Its lease, if the caller may see it.
    pub lease: Option<String>,
    /// Its lease's tenant, if the caller may see it.
    pub tenant: Option<String>,
    /// The libvirt domain.
    pub domain: String,
}

/// `GET /v1/leases`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseList {
    /// The caller's leases (every lease for the operator).
    pub leases: Vec<LeaseInfo>,
}

/// One lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    /// Its id (`l-<n>`).
    pub id: String,
    /// Its pool.
    pub pool: String,
    /// Its slot's number.
    pub slot: u32,
    /// The tenant it was acquired for (none for the operator).
    pub tenant: Option<String>,
    /// The slot's libvirt domain.
    pub domain: String,
    /// When it was acquired (RFC 3339, UTC).
    pub acquired_at: String,
}

/// `POST /v1/pools/{pool}/leases`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcquireRequest {
    /// How long to wait for a ready slot, at most the pool's acquire
    /// timeout (the default).
    #[serde(default)]
    pub wait_ms: Option<u64>,
}

/// `POST /v1/pools/{pool}/golden`: what the new golden is built from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenRequest {
    /// Another image manifest (a path on the daemon's host); the current
    /// image if absent.
    #[serde(default)]
    pub image: Option<String>,
    /// Other warm-up commands; the current ones if absent.
    #[serde(default)]
    pub warmup: Option<Vec<String>>,
    /// How long the slots' replacement may take (default 600).
    #[serde(default)]
    pub within_s: Option<u64>,
}

/// A finished golden rebuild.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoldenResult {
    /// The new golden's id.
    pub golden_id: String,
    /// Ready slots replaced with slots of the new golden.
    pub replaced: usize,
    /// Leased slots of the old golden: destroyed at their release.
    pub leased_left: usize,
}

/// How output bytes are put into JSON.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputEncoding {
    /// UTF-8, invalid sequences replaced.
    #[default]
    Text,
    /// Base64 (standard alphabet, padded).
    Base64,
}

/// `POST /v1/leases/{id}/exec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// The program and its arguments, run without a shell.
    #[serde(default)]
    pub argv: Option<Vec<String>>,
    /// A line for `/bin/sh -c`.
    #[serde(default)]
    pub shell: Option<String>,
    /// Environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The working directory.
    #[serde(default)]
    pub cwd: Option<String>,
    /// The timeout; the pool's default if absent.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Text written to stdin, which is then closed.
    #[serde(default)]
    pub stdin: Option<String>,
    /// Stream the output as NDJSON instead of collecting it.
    #[serde(default)]
    pub stream: bool,
    /// How output bytes are put into JSON.
    #[serde(default)]
    pub output: OutputEncoding,
}

/// How an execution ended (the last line of a stream, and the fields of a
/// collected result).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecEnd {
    /// The exit code, if it exited.
    pub exit_code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// Whether it was killed at its timeout.
    pub timed_out: bool,
    /// How long it ran, in the guest.
    pub duration_ms: u64,
    /// Whether stdout was cut at the agent's cap.
    pub stdout_truncated: bool,
    /// Whether stderr was cut at the agent's cap.
    pub stderr_truncated: bool,
}

/// A collected execution: its end and all of its output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecOutput {
    /// How it ended.
    #[serde(flatten)]
    pub end: ExecEnd,
    /// Stdout, per the request's `output`.
    pub stdout: String,
    /// Stderr, per the request's `output`.
    pub stderr: String,
}

/// One line of a streamed execution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamLine {
    /// Stdout bytes, as text.
    Stdout(String),
    /// Stderr bytes, as text.
    Stderr(String),
    /// Stdout bytes, base64.
    StdoutB64(String),
    /// Stderr bytes, base64.
    StderrB64(String),
    /// The last line of an execution that ended.
    Result(ExecEnd),
    /// The last line of an execution that failed.
    Error(ErrorBody),
}

/// A finished upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutResult {
    /// The guest path.
    pub path: String,
    /// Bytes written.
    pub size: u64,
    /// Their CRC-32/IEEE, as the agent checked it.
    pub crc32: u32,
}

/// Every error's body: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorEnvelope {
    /// The error.
    pub error: ErrorBody,
}

/// An error: a stable code, a message, and when a retry may pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The stable code (`API.md` lists them).
    pub code: String,
    /// What happened, for a human.
    pub message: String,
    /// When the same request may pass, for refusals that pass with time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// The policy rule that denied the request (`policy_denied` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

/// `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `ok` or `draining`.
    pub status: String,
    /// How many pools it runs.
    pub pools: usize,
}
