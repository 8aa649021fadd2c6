//! Rules, the actions they ask for, and the alerts they raise.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Scope;

/// Every rule the detector evaluates. The names returned by
/// [`RuleId::as_str`] are stable: they become Prometheus label values, audit
/// fields and configuration keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleId {
    /// N timed-out execs within a window.
    RepeatedExecTimeouts,
    /// N agent protocol errors within a window.
    AgentProtocolErrors,
    /// N failed resets within a window.
    ResetFailures,
    /// CPU utilization at or above a level for a continuous duration.
    CpuPinned,
    /// N egress denials within a window.
    EgressDenied,
    /// The exec rate (execs/s) is an outlier against the scope's history.
    ExecRateSpike,
    /// The output rate (bytes/s) is an outlier against the scope's history.
    OutputRateSpike,
    /// One exec's duration is an outlier.
    ExecDurationOutlier,
    /// One reset's duration is an outlier.
    ResetDurationOutlier,
    /// One acquire wait is an outlier.
    AcquireWaitOutlier,
}

impl RuleId {
    /// How many rules there are.
    pub const COUNT: usize = 10;

    /// Every rule, in a stable order.
    pub const ALL: [Self; Self::COUNT] = [
        Self::RepeatedExecTimeouts,
        Self::AgentProtocolErrors,
        Self::ResetFailures,
        Self::CpuPinned,
        Self::EgressDenied,
        Self::ExecRateSpike,
        Self::OutputRateSpike,
        Self::ExecDurationOutlier,
        Self::ResetDurationOutlier,
        Self::AcquireWaitOutlier,
    ];

    /// The stable snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::RepeatedExecTimeouts => "repeated_exec_timeouts",
            Self::AgentProtocolErrors => "agent_protocol_errors",
            Self::ResetFailures => "reset_failures",
            Self::CpuPinned => "cpu_pinned",
            Self::EgressDenied => "egress_denied",
            Self::ExecRateSpike => "exec_rate_spike",
            Self::OutputRateSpike => "output_rate_spike",
            Self::ExecDurationOutlier => "exec_duration_outlier",
            Self::ResetDurationOutlier => "reset_duration_outlier",
            Self::AcquireWaitOutlier => "acquire_wait_outlier",
        }
    }

    /// The rule's position in [`RuleId::ALL`], for per-rule arrays.
    pub(crate) const fn index(self) -> usize {
        match self {
            Self::RepeatedExecTimeouts => 0,
            Self::AgentProtocolErrors => 1,
            Self::ResetFailures => 2,
            Self::CpuPinned => 3,
            Self::EgressDenied => 4,
            Self::ExecRateSpike => 5,
            Self::OutputRateSpike => 6,
            Self::ExecDurationOutlier => 7,
            Self::ResetDurationOutlier => 8,
            Self::AcquireWaitOutlier => 9,
        }
    }
}

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the host should do about an alert. Here it is only data: the host
/// executes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Record the alert (log, metric, audit) and do nothing else.
    Log,
    /// Let the current lease finish, then recycle the slot (rebuild it rather
    /// than reset it) instead of returning it to the pool.
    RecycleSlot,
    /// End the current lease now.
    EndLease,
    /// Refuse the tenant new leases for a while (a pool refuses them for
    /// its `RateLimits::tenant_throttle`; its leases out go on).
    ThrottleTenant,
}

impl Action {
    /// Every action, in a stable order.
    pub const ALL: [Self; 4] = [
        Self::Log,
        Self::RecycleSlot,
        Self::EndLease,
        Self::ThrottleTenant,
    ];

    /// The stable snake_case name (also the configuration value).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Log => "log",
            Self::RecycleSlot => "recycle_slot",
            Self::EndLease => "end_lease",
            Self::ThrottleTenant => "throttle_tenant",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rule fired for a scope.
///
/// `value` and `threshold` are in the rule's natural unit, so they can be
/// exported as they are:
///
/// | rules | `value` | `threshold` |
/// |---|---|---|
/// | count rules | events within the window | the configured count |
/// | `cpu_pinned` | seconds pinned so far | the configured duration, seconds |
/// | `exec_rate_spike` | execs/s in the current bucket | the firing level, execs/s |
/// | `output_rate_spike` | bytes/s in the current bucket | the firing level, bytes/s |
/// | duration outliers | the duration, seconds | the firing level, seconds |
///
/// For the statistical rules the firing level is
/// `max(floor, median + threshold · MAD / 0.6745)`: the smallest value that
/// would have fired against the same history.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// The rule that fired.
    pub rule: RuleId,
    /// The scope it fired for.
    pub scope: Scope,
    /// When, as passed to `observe` (or the scope's latest timestamp when time
    /// went backwards), at millisecond resolution.
    pub at: Duration,
    /// The observed value (see the table above).
    pub value: f64,
    /// The threshold it met (see the table above).
    pub threshold: f64,
    /// What the configuration asks the host to do.
    pub action: Action,
    /// A short human-readable explanation.
    pub message: String,
}
