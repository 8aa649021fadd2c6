//! The events themselves.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use paddock_proto::{Command, ExecResult};

/// A lease's identity: unique within a process, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId(pub u64);

impl std::fmt::Display for LeaseId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "lease-{}", self.0)
    }
}

/// Where an event comes from. Every field is optional: a pool's golden
/// build has no slot, a sandbox outside a pool has no pool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Source {
    /// The pool's name.
    pub pool: Option<Arc<str>>,
    /// The slot's number in its pool.
    pub slot: Option<u32>,
    /// The lease the slot is on, while it is on one.
    pub lease: Option<LeaseId>,
    /// The tenant the lease was acquired for, where there is one.
    pub tenant: Option<Arc<str>>,
    /// The libvirt domain.
    pub domain: Option<Arc<str>>,
}

/// One thing that happened.
#[derive(Debug, Clone)]
pub struct Event {
    /// A number unique within its hub, increasing in emission order.
    pub id: u64,
    /// When it was emitted.
    pub at: SystemTime,
    /// Where it comes from.
    pub source: Source,
    /// What happened.
    pub kind: EventKind,
}

/// How an acquire ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AcquireOutcome {
    /// A slot was handed out.
    Ok,
    /// No slot became free within the timeout.
    Timeout,
    /// No slot became free and the backend (libvirtd) is unreachable.
    Unavailable,
    /// The pool is shut down.
    Closed,
    /// The pool's acquire rate limit refused it.
    RateLimited,
}

impl AcquireOutcome {
    /// Every outcome, for metrics that start at zero.
    pub const ALL: [Self; 5] = [
        Self::Ok,
        Self::Timeout,
        Self::Unavailable,
        Self::Closed,
        Self::RateLimited,
    ];

    /// A stable label value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Timeout => "timeout",
            Self::Unavailable => "unavailable",
            Self::Closed => "closed",
            Self::RateLimited => "rate_limited",
        }
    }
}

/// Why a slot was destroyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DestroyCause {
    /// Its reset failed.
    ResetFailed,
    /// Its health check failed.
    CheckFailed,
    /// It outlived the pool's TTL.
    Expired,
    /// It served the pool's maximum number of leases.
    WornOut,
    /// The pool shut down.
    Shutdown,
    /// An anomaly rule asked for it to be recycled.
    Recycled,
}

impl DestroyCause {
    /// Every cause, for metrics that start at zero.
    pub const ALL: [Self; 6] = [
        Self::ResetFailed,
        Self::CheckFailed,
        Self::Expired,
        Self::WornOut,
        Self::Shutdown,
        Self::Recycled,
    ];

    /// A stable label value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ResetFailed => "reset_failed",
            Self::CheckFailed => "check_failed",
            Self::Expired => "expired",
            Self::WornOut => "worn_out",
            Self::Shutdown => "shutdown",
            Self::Recycled => "recycled",
        }
    }
}

/// How a reset ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResetOutcome {
    /// The slot is back at the golden state.
    Ok,
    /// It failed; the slot is destroyed and replaced.
    Failed,
    /// The backend was away; the slot is kept and reset again later.
    Outage,
}

impl ResetOutcome {
    /// A stable label value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failed => "failed",
            Self::Outage => "outage",
        }
    }
}

/// How an execution ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExecOutcome {
    /// Exit code 0.
    Ok,
    /// Another exit code.
    NonZero,
    /// Killed by a signal (not by its timeout).
    Signal,
    /// Ended by its timeout.
    Timeout,
    /// No result: the request failed (connection lost, refused...).
    Error,
}

impl ExecOutcome {
    /// Every outcome, for metrics that start at zero.
    pub const ALL: [Self; 5] = [
        Self::Ok,
        Self::NonZero,
        Self::Signal,
        Self::Timeout,
        Self::Error,
    ];

    /// The outcome `result` shows.
    #[must_use]
    pub fn of(result: &ExecResult) -> Self {
        if result.timed_out {
            Self::Timeout
        } else if result.signal.is_some() {
            Self::Signal
        } else if result.exit_code == Some(0) {
            Self::Ok
        } else {
            Self::NonZero
        }
    }

    /// A stable label value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::NonZero => "non_zero",
            Self::Signal => "signal",
            Self::Timeout => "timeout",
            Self::Error => "error",
        }
    }
}

/// Which way a file went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileDirection {
    /// Host to guest.
    Put,
    /// Guest to host.
    Get,
}

impl FileDirection {
    /// A stable label value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Put => "put",
            Self::Get => "get",
        }
    }
}

/// What happened. Every `&'static str` here is a bounded name, fit for a
/// metrics label; free text (paths, commands, messages) is only in fields
/// that metrics never use.
#[derive(Debug, Clone)]
pub enum EventKind {
    /// A pool was created with its golden state.
    PoolCreated {
        /// The golden's id.
        golden_id: String,
        /// The guest image's hash.
        image_hash: String,
        /// The reset strategy's name.
        strategy: &'static str,
    },
    /// A golden state was built (boot, warm-up, capture).
    GoldenBuilt {
        /// The golden's id.
        golden_id: String,
        /// How long it took.
        duration: Duration,
    },
    /// A slot was made and is ready.
    SlotCreated {
        /// How long the creation took.
        duration: Duration,
    },
    /// A slot could not be made.
    SlotCreateFailed {
        /// The backend's short reason.
        reason: &'static str,
    },
    /// A slot was destroyed.
    SlotDestroyed {
        /// Why.
        cause: DestroyCause,
        /// The failure's short reason, for failed resets and checks.
        reason: Option<&'static str>,
    },
    /// An acquire ended.
    Acquire {
        /// How.
        outcome: AcquireOutcome,
        /// How long it waited.
        wait: Duration,
    },
    /// A lease ended (released or dropped).
    LeaseReleased {
        /// How long it was held.
        held: Duration,
    },
    /// A reset ended.
    ResetFinished {
        /// The strategy's name.
        strategy: &'static str,
        /// How it ended.
        outcome: ResetOutcome,
        /// The failure's short reason.
        reason: Option<&'static str>,
        /// How long it took.
        duration: Duration,
        /// Its phases and their times, where the backend reports them.
        phases: Vec<(&'static str, Duration)>,
    },
    /// A health check of a ready slot failed.
    HealthCheckFailed {
        /// The failure's short reason.
        reason: &'static str,
    },
    /// The libvirt connection was lost or came back.
    BackendConnection {
        /// Whether it is up now.
        connected: bool,
    },
    /// An execution was sent to the agent.
    ExecStarted {
        /// Which execution: a number unique within the process, the same in
        /// its [`EventKind::ExecFinished`] (so an audit log pairs them).
        exec: u64,
        /// What runs.
        command: Command,
        /// The names of the variables it sets (never their values).
        env_names: Vec<String>,
        /// Its working directory.
        cwd: Option<String>,
        /// Its timeout, if it has one.
        timeout: Option<Duration>,
    },
    /// An execution ended.
    ExecFinished {
        /// Which execution: the number of its [`EventKind::ExecStarted`].
        exec: u64,
        /// How.
        outcome: ExecOutcome,
        /// The agent's result; `None` for [`ExecOutcome::Error`].
        result: Option<ExecResult>,
        /// The time from sending it to its end, as the host saw it.
        duration: Duration,
        /// The error's short name, for [`ExecOutcome::Error`].
        error: Option<&'static str>,
    },
    /// A file transfer ended.
    FileTransferred {
        /// Which way.
        direction: FileDirection,
        /// The guest's path.
        path: String,
        /// Bytes moved.
        bytes: u64,
        /// Whether it completed and verified.
        ok: bool,
        /// The error's short name when it did not.
        error: Option<&'static str>,
        /// How long it took.
        duration: Duration,
    },
    /// A request/answer round trip to the agent (PING or STATUS).
    AgentRoundTrip {
        /// Its time.
        duration: Duration,
    },
    /// The agent's peer broke the protocol (a bad frame, an unknown kind,
    /// a window overrun...). From a guest, that is a broken or hostile one.
    ProtocolError {
        /// A short name for the kind of error.
        kind: &'static str,
    },
    /// The request policy denied a request before it was sent: it never
    /// reached the guest.
    Denied {
        /// The request's kind (`exec`, `put`, `get`, `status`, `signal`,
        /// `stop_agent`).
        request: &'static str,
        /// The rule that denied it (`exec.program`, `put.size`...): a
        /// bounded name.
        rule: &'static str,
        /// The policy's name.
        policy: String,
        /// What in the request broke the rule, for people.
        detail: String,
    },
    /// A rate limit refused a request.
    RateLimited {
        /// Which limit (`acquire`, `exec`, `bytes`...).
        limit: &'static str,
        /// When a retry may pass.
        retry_after: Duration,
    },
    /// A rate limit held a data flow back: the host returned the agent's
    /// credit for received bytes (exec output, a download) `delay` later
    /// than it would have. Nothing was refused or lost.
    Throttled {
        /// Which limit (`lease_received_bytes`).
        limit: &'static str,
        /// How long the credit was held back.
        delay: Duration,
    },
    /// An anomaly rule fired.
    Alert {
        /// The rule's name.
        rule: &'static str,
        /// The action configured for it.
        action: &'static str,
        /// The value that crossed the threshold.
        value: f64,
        /// The threshold.
        threshold: f64,
        /// A short, human description.
        message: String,
    },
}

impl EventKind {
    /// A stable name for the kind of event.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Self::PoolCreated { .. } => "pool_created",
            Self::GoldenBuilt { .. } => "golden_built",
            Self::SlotCreated { .. } => "slot_created",
            Self::SlotCreateFailed { .. } => "slot_create_failed",
            Self::SlotDestroyed { .. } => "slot_destroyed",
            Self::Acquire { .. } => "acquire",
            Self::LeaseReleased { .. } => "lease_released",
            Self::ResetFinished { .. } => "reset_finished",
            Self::HealthCheckFailed { .. } => "health_check_failed",
            Self::BackendConnection { .. } => "backend_connection",
            Self::ExecStarted { .. } => "exec_started",
            Self::ExecFinished { .. } => "exec_finished",
            Self::FileTransferred { .. } => "file_transferred",
            Self::AgentRoundTrip { .. } => "agent_round_trip",
            Self::ProtocolError { .. } => "protocol_error",
            Self::RateLimited { .. } => "rate_limited",
            Self::Throttled { .. } => "throttled",
            Self::Denied { .. } => "denied",
            Self::Alert { .. } => "alert",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_outcomes_follow_the_result() {
        let mut result = ExecResult {
            exit_code: Some(0),
            ..ExecResult::default()
        };
        assert_eq!(ExecOutcome::of(&result), ExecOutcome::Ok);
        result.exit_code = Some(2);
        assert_eq!(ExecOutcome::of(&result), ExecOutcome::NonZero);
        result.exit_code = None;
        result.signal = Some(9);
        assert_eq!(ExecOutcome::of(&result), ExecOutcome::Signal);
        result.timed_out = true;
        assert_eq!(ExecOutcome::of(&result), ExecOutcome::Timeout);
    }

    #[test]
    fn lease_ids_print_as_names() {
        assert_eq!(LeaseId(7).to_string(), "lease-7");
    }
}
