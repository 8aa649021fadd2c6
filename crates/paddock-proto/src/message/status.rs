//! STATUS_REPORT: the agent's view of its guest.

use serde::{Deserialize, Serialize};

use super::nullable::or_default;

/// The agent's view of its guest (agent -> host).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The agent's version string.
    #[serde(default, deserialize_with = "or_default")]
    pub agent_version: String,
    /// See [`HelloAck::boot_id`](crate::HelloAck::boot_id).
    #[serde(default, deserialize_with = "or_default")]
    pub boot_id: String,
    /// Milliseconds since the agent started.
    #[serde(default, deserialize_with = "or_default")]
    pub uptime_ms: u64,
    /// Seconds since the guest kernel booted (`/proc/uptime`).
    #[serde(default, deserialize_with = "or_default")]
    pub system_uptime_s: f64,
    /// 1, 5 and 15 minute load averages.
    #[serde(default, deserialize_with = "or_default")]
    pub load_avg: [f64; 3],
    /// Total memory, bytes.
    #[serde(default, deserialize_with = "or_default")]
    pub mem_total_bytes: u64,
    /// Available memory, bytes.
    #[serde(default, deserialize_with = "or_default")]
    pub mem_available_bytes: u64,
    /// Size of the guest's root filesystem, bytes.
    #[serde(default, deserialize_with = "or_default")]
    pub disk_total_bytes: u64,
    /// Space available to unprivileged users on it, bytes.
    #[serde(default, deserialize_with = "or_default")]
    pub disk_available_bytes: u64,
    /// Executions running on all sessions.
    #[serde(default, deserialize_with = "or_default")]
    pub running_executions: u32,
    /// File transfers in progress on all sessions.
    #[serde(default, deserialize_with = "or_default")]
    pub active_transfers: u32,
}
