//! HELLO and HELLO_ACK: the handshake that opens a session.

use serde::{Deserialize, Serialize};

use super::nullable::{or_default, or_default_max_payload, or_default_window};

/// Names of optional features an agent announces in [`HelloAck::capabilities`].
pub mod capability {
    /// EXECUTE with `argv` or `shell`.
    pub const EXEC: &str = "exec";
    /// STDIN / STDIN_CLOSE streaming.
    pub const STDIN: &str = "stdin";
    /// SIGNAL to a running execution.
    pub const SIGNAL: &str = "signal";
    /// FILE_PUT / FILE_GET.
    pub const FILES: &str = "files";
    /// STATUS_REQUEST.
    pub const STATUS: &str = "status";
    /// STOP with scope `agent`.
    pub const STOP_AGENT: &str = "stop-agent";
    /// Every process an execution starts ends with it, those that leave its
    /// process group included (a cgroup per execution).
    pub const CONTAIN_TREE: &str = "contain-tree";
    /// FS_REQUEST: file system operations (list, metadata, make, remove,
    /// rename, mode, links, existence).
    pub const FS: &str = "fs";
    /// TREE_PUT / TREE_GET: directories as one tar stream.
    pub const TREES: &str = "trees";
    /// EXECUTE with a `tty` (a pseudo-terminal) and RESIZE.
    pub const TTY: &str = "tty";
}

/// Opens a session (host -> agent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Oldest protocol version the host speaks.
    pub min_version: u16,
    /// Newest protocol version the host speaks.
    pub max_version: u16,
    /// Free-form client identification, for logs.
    #[serde(default, deserialize_with = "or_default")]
    pub client: String,
    /// Largest payload the host accepts; the agent never sends larger frames.
    #[serde(
        default = "default_max_payload",
        deserialize_with = "or_default_max_payload"
    )]
    pub max_payload: u32,
    /// Initial flow-control window for data the agent sends to the host.
    #[serde(default = "default_window", deserialize_with = "or_default_window")]
    pub initial_window: u32,
    /// An opaque value the host picks for each connection and repeats when it
    /// resends HELLO on that connection. The agent remembers the token of the
    /// session it accepted last and returns it as
    /// [`HelloAck::previous_token`] in the next session: see
    /// [`HelloAck::previous_token`] for how the host uses it. Empty means
    /// none.
    #[serde(default, deserialize_with = "or_default")]
    pub session_token: String,
    /// The host's wall clock when it sent this HELLO, in milliseconds since
    /// the Unix epoch (0: not given). A guest restored from a saved state
    /// or a snapshot wakes with the clock it had then; an agent allowed to
    /// set the clock steps it to this time when they differ by more than
    /// [`CLOCK_TOLERANCE_MS`] and says so in [`HelloAck::clock_step_ms`].
    #[serde(default, deserialize_with = "or_default")]
    pub host_time_unix_ms: u64,
}

/// How far the guest's clock may be from [`Hello::host_time_unix_ms`] before
/// the agent steps it: the HELLO's own delay stays well below this.
pub const CLOCK_TOLERANCE_MS: u64 = 500;

/// The wall clock in milliseconds since the Unix epoch, as
/// [`Hello::host_time_unix_ms`] carries it (0 before the epoch).
#[must_use]
pub fn unix_time_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Accepts a session (agent -> host).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloAck {
    /// The version both sides use from now on.
    pub version: u16,
    /// The agent's own version string.
    pub agent_version: String,
    /// Optional features the agent supports (see [`capability`]).
    #[serde(default, deserialize_with = "or_default")]
    pub capabilities: Vec<String>,
    /// Random id chosen when the agent process started. It survives a memory
    /// snapshot: a guest restored from a snapshot reports the id it had when the
    /// snapshot was taken, a rebooted one reports a new id.
    pub boot_id: String,
    /// Sessions the agent accepted since it started, this one included. A
    /// HELLO resent with the token of the current session does not count
    /// again. With the same `boot_id`, a value lower than one seen before
    /// means the guest was restored to an earlier state.
    #[serde(default, deserialize_with = "or_default")]
    pub session_seq: u64,
    /// The [`Hello::session_token`] of the session the agent accepted before
    /// this one (empty if none). A host that reconnects compares it with the
    /// token of its own last session: equal means the guest ran on from
    /// there; different, with the same `boot_id`, means the guest's memory
    /// was reset to an earlier state (a snapshot revert or a restore), and a
    /// different `boot_id` means the guest rebooted.
    #[serde(default, deserialize_with = "or_default")]
    pub previous_token: String,
    /// Milliseconds since the agent started, as the guest's clock sees it.
    #[serde(default, deserialize_with = "or_default")]
    pub uptime_ms: u64,
    /// Largest payload the agent accepts.
    #[serde(
        default = "default_max_payload",
        deserialize_with = "or_default_max_payload"
    )]
    pub max_payload: u32,
    /// Initial flow-control window for data the host sends to the agent.
    #[serde(default = "default_window", deserialize_with = "or_default_window")]
    pub initial_window: u32,
    /// How far the agent stepped the guest's wall clock to the host's on
    /// this HELLO, in milliseconds (positive: forward); 0 when it did not
    /// (within tolerance, no host time, or not allowed to).
    #[serde(default, deserialize_with = "or_default")]
    pub clock_step_ms: i64,
}

fn default_max_payload() -> u32 {
    crate::DEFAULT_MAX_PAYLOAD
}

fn default_window() -> u32 {
    crate::DEFAULT_WINDOW
}
