//! The detector's configuration: serde-loadable, validated once by
//! [`Detector::new`](crate::Detector::new).

use serde::{Deserialize, Serialize};

use crate::rules::{CountConfig, CpuPinnedConfig, RuleConfigError};
use crate::stats::{OutlierConfig, RateConfig, StatConfigError};
use crate::{Action, RuleId};

/// The largest `max_scopes`.
pub const MAX_SCOPES: u32 = 1_000_000;

/// The largest `bucket_ms` (one minute): rate buckets are meant to be short.
pub const MAX_BUCKET_MS: u64 = 60_000;

/// Everything the detector can be told. Durations are integer milliseconds
/// (`*_ms`), rates per second (`*_per_s`), utilization a fraction.
///
/// Loading: unknown keys are errors (`deny_unknown_fields`), so a typo does
/// not silently keep a default. A key left out keeps its default; a rule's
/// section, when given, must be complete (its defaults differ per rule).
/// Rule sections are named after [`RuleId::as_str`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorConfig {
    /// After a rule fires for a scope, it does not fire again for that scope
    /// for this long: a sustained anomaly gives one alert per cooldown, not
    /// one per event. 0 disables the cooldown.
    pub cooldown_ms: u64,
    /// The most scopes kept. A new scope beyond it evicts the scope whose
    /// latest observation is the oldest (ties: the scope first seen).
    pub max_scopes: u32,
    /// [`Detector::prune`](crate::Detector::prune) drops scopes idle for at
    /// least this long. Must cover every count window and the cooldown, so
    /// pruning never forgets state that could still matter.
    pub idle_timeout_ms: u64,
    /// The rate rules' bucket length.
    pub bucket_ms: u64,
    /// `repeated_exec_timeouts`.
    pub repeated_exec_timeouts: CountConfig,
    /// `agent_protocol_errors`.
    pub agent_protocol_errors: CountConfig,
    /// `reset_failures`.
    pub reset_failures: CountConfig,
    /// `cpu_pinned`.
    pub cpu_pinned: CpuPinnedConfig,
    /// `egress_denied`.
    pub egress_denied: CountConfig,
    /// `exec_rate_spike`: execs per second per bucket.
    pub exec_rate_spike: RateConfig,
    /// `output_rate_spike`: exec output bytes per second per bucket.
    pub output_rate_spike: RateConfig,
    /// `exec_duration_outlier`.
    pub exec_duration_outlier: OutlierConfig,
    /// `reset_duration_outlier`.
    pub reset_duration_outlier: OutlierConfig,
    /// `acquire_wait_outlier`.
    pub acquire_wait_outlier: OutlierConfig,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            // Long enough to stop a flood of identical alerts, short enough
            // that an anomaly still going on a minute later is reported again.
            cooldown_ms: 60_000,
            // A host runs tens of slots and hundreds of tenants; a full scope
            // is ~11 KiB of windows, so 4096 scopes stay under ~45 MiB.
            max_scopes: 4096,
            // An hour: pruning forgets a scope's history, which then needs
            // min_samples again; an hour of idleness makes it stale anyway.
            idle_timeout_ms: 3_600_000,
            // One-second buckets: short enough to catch a burst within a
            // second, long enough to hold several execs.
            bucket_ms: 1000,
            // Three timeouts in five minutes: one is a slow test, three is a
            // guest that hangs (or a job that makes it hang).
            repeated_exec_timeouts: CountConfig::new(3, 300_000, Action::Log),
            // A correct agent never sends a bad frame: one is enough, and the
            // slot must not be reused as it is.
            agent_protocol_errors: CountConfig::new(1, 300_000, Action::RecycleSlot),
            // One failed reset may be the host; two in ten minutes is the slot.
            reset_failures: CountConfig::new(2, 600_000, Action::RecycleSlot),
            cpu_pinned: CpuPinnedConfig::default(),
            // The default network denies everything; tools retry a few times
            // (pip, apt), a scanner or exfiltration attempt many more.
            egress_denied: CountConfig::new(10, 60_000, Action::Log),
            // Below 20 execs/s nobody cares how much faster it got.
            exec_rate_spike: RateConfig::rate_default(20.0, 1.0),
            // Below 1 MiB/s the host's log pipeline is in no danger.
            output_rate_spike: RateConfig::rate_default(1024.0 * 1024.0, 1024.0),
            // Execs under a second are never worth a look.
            exec_duration_outlier: OutlierConfig::duration_default(1000, 10),
            // A snapshot revert under a second is healthy whatever the median.
            reset_duration_outlier: OutlierConfig::duration_default(1000, 10),
            // A wait under 50 ms is within the acquire SLO.
            acquire_wait_outlier: OutlierConfig::duration_default(50, 1),
        }
    }
}

impl DetectorConfig {
    /// Checks every value; [`Detector::new`](crate::Detector::new) calls it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_scopes == 0 || self.max_scopes > MAX_SCOPES {
            return Err(ConfigError::MaxScopes(self.max_scopes));
        }
        if self.bucket_ms == 0 || self.bucket_ms > MAX_BUCKET_MS {
            return Err(ConfigError::BucketMs(self.bucket_ms));
        }
        for (rule, config) in self.count_rules() {
            config
                .validate()
                .map_err(|source| ConfigError::Rule { rule, source })?;
        }
        self.cpu_pinned
            .validate()
            .map_err(|source| ConfigError::Rule {
                rule: RuleId::CpuPinned,
                source,
            })?;
        for (rule, config) in [
            (RuleId::ExecRateSpike, &self.exec_rate_spike),
            (RuleId::OutputRateSpike, &self.output_rate_spike),
        ] {
            config
                .validate()
                .map_err(|source| ConfigError::Statistic { rule, source })?;
        }
        for (rule, config) in self.outlier_rules() {
            config
                .validate()
                .map_err(|source| ConfigError::Statistic { rule, source })?;
        }
        let needed_ms = self
            .count_rules()
            .iter()
            .map(|(_, c)| c.window_ms)
            .chain([self.cooldown_ms, self.cpu_pinned.duration_ms])
            .max()
            .unwrap_or(0);
        if self.idle_timeout_ms < needed_ms {
            return Err(ConfigError::IdleTimeout {
                idle_timeout_ms: self.idle_timeout_ms,
                needed_ms,
            });
        }
        Ok(())
    }

    /// The most values one scope can retain across its windows (rate
    /// histories, duration windows, count windows): with
    /// [`max_scopes`](Self::max_scopes), the detector's memory bound.
    pub fn max_samples_per_scope(&self) -> usize {
        let windows = [
            self.exec_rate_spike.window,
            self.output_rate_spike.window,
            self.exec_duration_outlier.window,
            self.reset_duration_outlier.window,
            self.acquire_wait_outlier.window,
        ];
        let counts = self.count_rules().map(|(_, c)| c.count);
        windows
            .into_iter()
            .chain(counts)
            .map(|v| usize::try_from(v).unwrap_or(usize::MAX))
            .fold(0, usize::saturating_add)
    }

    pub(crate) fn count_rules(&self) -> [(RuleId, &CountConfig); 4] {
        [
            (RuleId::RepeatedExecTimeouts, &self.repeated_exec_timeouts),
            (RuleId::AgentProtocolErrors, &self.agent_protocol_errors),
            (RuleId::ResetFailures, &self.reset_failures),
            (RuleId::EgressDenied, &self.egress_denied),
        ]
    }

    fn outlier_rules(&self) -> [(RuleId, &OutlierConfig); 3] {
        [
            (RuleId::ExecDurationOutlier, &self.exec_duration_outlier),
            (RuleId::ResetDurationOutlier, &self.reset_duration_outlier),
            (RuleId::AcquireWaitOutlier, &self.acquire_wait_outlier),
        ]
    }
}

/// An invalid [`DetectorConfig`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// `max_scopes` is 0 or above [`MAX_SCOPES`].
    #[error("max_scopes {0} must be in 1..={MAX_SCOPES}")]
    MaxScopes(u32),
    /// `bucket_ms` is 0 or above [`MAX_BUCKET_MS`].
    #[error("bucket_ms {0} must be in 1..={MAX_BUCKET_MS}")]
    BucketMs(u64),
    /// `idle_timeout_ms` is shorter than a count window, the cooldown or the
    /// `cpu_pinned` duration.
    #[error(
        "idle_timeout_ms {idle_timeout_ms} is below the longest window or cooldown ({needed_ms} ms)"
    )]
    IdleTimeout {
        /// The configured idle timeout.
        idle_timeout_ms: u64,
        /// The longest window, cooldown or duration it must cover.
        needed_ms: u64,
    },
    /// A count or run rule's section is invalid.
    #[error("invalid {rule} config")]
    Rule {
        /// The rule.
        rule: RuleId,
        /// What is wrong.
        #[source]
        source: RuleConfigError,
    },
    /// A statistical rule's section is invalid.
    #[error("invalid {rule} config")]
    Statistic {
        /// The rule.
        rule: RuleId,
        /// What is wrong.
        #[source]
        source: StatConfigError,
    },
}
