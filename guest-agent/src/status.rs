//! STATUS_REQUEST: the guest's uptime, load, memory and disk, and the agent's
//! own counters.
//!
//! The figures come from `/proc/uptime`, `/proc/loadavg`, `/proc/meminfo` and
//! `statvfs("/")`, read on the request's own task (see [`StatusRequest`]).

use std::ffi::CStr;
use std::io;
use std::mem::MaybeUninit;
use std::sync::atomic::Ordering;

use paddock_proto::{ErrorCode, Message, StatusReport};

use crate::request::{Flow, Handler, Inputs, RequestCtx, WireError};
use crate::{AGENT_VERSION, Agent};

/// The file system whose size is reported.
const DISK: &CStr = c"/";

/// Why the status could not be gathered.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StatusError {
    /// A `/proc` file could not be read.
    #[error("Could not read {path}")]
    Read {
        path: &'static str,
        #[source]
        source: io::Error,
    },
    /// A `/proc` file is not in the expected format.
    #[error("Could not parse {0}")]
    Parse(&'static str),
    /// `statvfs` failed.
    #[error("Could not get the size of the file system at {DISK:?}")]
    Statvfs(#[source] io::Error),
}

impl WireError for StatusError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::Read { .. } | Self::Statvfs(_) => ErrorCode::Io,
            Self::Parse(_) => ErrorCode::Internal,
        }
    }
}

/// STATUS_REQUEST, which has no payload.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StatusRequest;

impl Handler for StatusRequest {
    type Error = StatusError;

    fn flow(&self) -> Flow {
        Flow {
            sends: false,
            takes: false,
        }
    }

    /// Gathers the status and answers with STATUS_REPORT. It does so on
    /// the request's own task, without waiting: reading `/proc` and
    /// `statvfs` of `/` copy what the kernel holds in memory, and a hop to
    /// the blocking pool (a thread woken, then waited for) cost more than
    /// the reads in a one-vCPU guest. So no frame of the host can reach the
    /// request before its answer; one that comes later finds it closed.
    async fn handle(self, ctx: &RequestCtx, _inputs: Inputs) -> Result<Message, StatusError> {
        gather(ctx.agent()).map(Message::StatusReport)
    }
}

fn gather(agent: &Agent) -> Result<StatusReport, StatusError> {
    let uptime = read_proc("/proc/uptime")?;
    let loadavg = read_proc("/proc/loadavg")?;
    let meminfo = read_proc("/proc/meminfo")?;
    let (disk_total_bytes, disk_available_bytes) = disk_space()?;
    Ok(StatusReport {
        agent_version: AGENT_VERSION.to_owned(),
        boot_id: agent.boot_id.clone(),
        uptime_ms: agent.uptime_ms(),
        system_uptime_s: first_float(&uptime).ok_or(StatusError::Parse("/proc/uptime"))?,
        load_avg: parse_loadavg(&loadavg).ok_or(StatusError::Parse("/proc/loadavg"))?,
        mem_total_bytes: meminfo_bytes(&meminfo, "MemTotal")
            .ok_or(StatusError::Parse("/proc/meminfo"))?,
        mem_available_bytes: meminfo_bytes(&meminfo, "MemAvailable")
            .ok_or(StatusError::Parse("/proc/meminfo"))?,
        disk_total_bytes,
        disk_available_bytes,
        running_executions: agent.running_executions.load(Ordering::Relaxed),
        active_transfers: agent.active_transfers.load(Ordering::Relaxed),
    })
}

fn read_proc(path: &'static str) -> Result<String, StatusError> {
    std::fs::read_to_string(path).map_err(|source| StatusError::Read { path, source })
}

fn first_float(text: &str) -> Option<f64> {
    text.split_whitespace().next()?.parse().ok()
}

fn parse_loadavg(text: &str) -> Option<[f64; 3]> {
    let mut fields = text.split_whitespace().map(str::parse);
    Some([
        fields.next()?.ok()?,
        fields.next()?.ok()?,
        fields.next()?.ok()?,
    ])
}

/// The value of a `/proc/meminfo` line such as `MemTotal: 16384 kB`, in bytes.
fn meminfo_bytes(text: &str, key: &str) -> Option<u64> {
    let line = text
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))?;
    let mut fields = line.split_whitespace();
    let value: u64 = fields.next()?.parse().ok()?;
    match fields.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

/// Total and available (to unprivileged users) bytes of the root file system.
fn disk_space() -> Result<(u64, u64), StatusError> {
    let mut stat = MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: DISK is NUL-terminated and statvfs writes one statvfs through a
    // pointer that is valid for the call.
    let rc = unsafe { libc::statvfs(DISK.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(StatusError::Statvfs(io::Error::last_os_error()));
    }
    // SAFETY: statvfs succeeded, so it initialised `stat`.
    let stat = unsafe { stat.assume_init() };
    let fragment = stat.f_frsize;
    Ok((
        stat.f_blocks.saturating_mul(fragment),
        stat.f_bavail.saturating_mul(fragment),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_host::TestHost;

    #[test]
    fn parses_proc_formats() {
        assert_eq!(first_float("12345.67 2345.10\n"), Some(12345.67));
        assert_eq!(
            parse_loadavg("0.50 1.00 2.25 1/123 4567\n"),
            Some([0.5, 1.0, 2.25])
        );
        assert_eq!(parse_loadavg("0.50 1.00\n"), None);
        let meminfo = "MemTotal:       16384 kB\nMemFree:  1 kB\nMemAvailable:    8192 kB\n";
        assert_eq!(meminfo_bytes(meminfo, "MemTotal"), Some(16384 * 1024));
        assert_eq!(meminfo_bytes(meminfo, "MemAvailable"), Some(8192 * 1024));
        assert_eq!(meminfo_bytes(meminfo, "Mem"), None);
        assert_eq!(meminfo_bytes("MemTotal: lots kB\n", "MemTotal"), None);
    }

    #[test]
    fn gathers_this_machine() {
        let agent = Agent::new(crate::Config::default()).expect("agent");
        let report = gather(&agent).expect("status");
        assert!(report.system_uptime_s > 0.0);
        assert!(report.mem_total_bytes >= report.mem_available_bytes);
        assert!(report.mem_total_bytes > 0);
        assert!(report.disk_total_bytes >= report.disk_available_bytes);
        assert!(report.disk_total_bytes > 0);
        assert_eq!(report.boot_id, agent.boot_id());
    }

    #[tokio::test]
    async fn status_request_is_answered() {
        let mut host = TestHost::ready().await;
        host.send(3, &Message::StatusRequest).await;
        match host.recv().await {
            (3, Message::StatusReport(report)) => {
                assert_eq!(report.boot_id, host.agent.boot_id());
                assert_eq!(report.agent_version, AGENT_VERSION);
                assert_eq!(report.running_executions, 0);
                assert!(report.mem_total_bytes > 0);
            }
            other => panic!("expected STATUS_REPORT, got {other:?}"),
        }
    }
}
