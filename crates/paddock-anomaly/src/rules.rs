//! Count rules (N events within a window) and the `cpu_pinned` run rule.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::Action;

/// The largest `count` of a count rule: a scope keeps the last `count`
/// timestamps, so this bounds its memory.
pub const MAX_COUNT: u32 = 10_000;

/// Configuration of a count rule: it fires when `count` events fall within
/// `window_ms`, i.e. when the newest and the `count`-th newest are less than
/// `window_ms` apart. Durations are integer milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountConfig {
    /// Whether the rule runs at all.
    pub enabled: bool,
    /// How many events fire the rule (at least 1).
    pub count: u32,
    /// The window they must fall within, milliseconds.
    pub window_ms: u64,
    /// What to ask the host to do.
    pub action: Action,
}

impl CountConfig {
    pub(crate) const fn new(count: u32, window_ms: u64, action: Action) -> Self {
        Self {
            enabled: true,
            count,
            window_ms,
            action,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), RuleConfigError> {
        if self.count == 0 {
            return Err(RuleConfigError::ZeroCount);
        }
        if self.count > MAX_COUNT {
            return Err(RuleConfigError::CountTooLarge(self.count));
        }
        if self.window_ms == 0 {
            return Err(RuleConfigError::ZeroWindow);
        }
        Ok(())
    }
}

/// Configuration of `cpu_pinned`: utilization at or above `utilization` in
/// every sample for at least `duration_ms`. Durations are integer
/// milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuPinnedConfig {
    /// Whether the rule runs at all.
    pub enabled: bool,
    /// The utilization (0.0 to 1.0 of the slot's vCPU time) that counts as
    /// pinned.
    pub utilization: f64,
    /// How long a run of pinned samples must last, from its first sample.
    pub duration_ms: u64,
    /// Two samples further apart than this break a run: the host stopped
    /// looking, so "continuously" can't be claimed across the gap.
    pub max_gap_ms: u64,
    /// What to ask the host to do.
    pub action: Action,
}

impl Default for CpuPinnedConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            // Leaves room for the guest's own housekeeping: a busy loop on
            // every vCPU reads 0.97 to 1.0, a heavy build rarely stays above.
            utilization: 0.95,
            // A minute rules out compile bursts; miners and spinning loops
            // stay pinned for the whole lease.
            duration_ms: 60_000,
            // Three missed samples at a 10 s sampling interval.
            max_gap_ms: 30_000,
            action: Action::Log,
        }
    }
}

impl CpuPinnedConfig {
    pub(crate) fn validate(&self) -> Result<(), RuleConfigError> {
        if !(self.utilization.is_finite() && self.utilization > 0.0 && self.utilization <= 1.0) {
            return Err(RuleConfigError::Utilization(self.utilization));
        }
        if self.duration_ms == 0 {
            return Err(RuleConfigError::ZeroDuration);
        }
        if self.max_gap_ms == 0 {
            return Err(RuleConfigError::ZeroMaxGap);
        }
        Ok(())
    }
}

/// An invalid count or run rule configuration.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RuleConfigError {
    /// `count` is 0: the rule would fire with no event.
    #[error("count must not be 0")]
    ZeroCount,
    /// `count` is above [`MAX_COUNT`].
    #[error("count {0} is above {MAX_COUNT}")]
    CountTooLarge(u32),
    /// `window_ms` is 0.
    #[error("window_ms must not be 0")]
    ZeroWindow,
    /// `utilization` is not in (0, 1].
    #[error("utilization {0} must be in (0, 1]")]
    Utilization(f64),
    /// `duration_ms` is 0.
    #[error("duration_ms must not be 0")]
    ZeroDuration,
    /// `max_gap_ms` is 0.
    #[error("max_gap_ms must not be 0")]
    ZeroMaxGap,
}

/// The timestamps (ms) of the last `count` events of one rule in one scope.
#[derive(Debug, Clone, Default)]
pub(crate) struct CountWindow {
    times: VecDeque<u64>,
}

impl CountWindow {
    /// Records an event at `now` (never earlier than the previous one: the
    /// detector clamps time per scope) and returns how many events fall
    /// within the window when that reaches `count`.
    pub(crate) fn record(&mut self, now: u64, count: u32, window_ms: u64) -> Option<u32> {
        let count_usize = usize::try_from(count).unwrap_or(usize::MAX);
        while self.times.len() >= count_usize {
            self.times.pop_front();
        }
        self.times.push_back(now);
        if self.times.len() < count_usize {
            return None;
        }
        let oldest = self.times.front().copied().unwrap_or(now);
        (now.saturating_sub(oldest) < window_ms).then_some(count)
    }

    pub(crate) fn len(&self) -> usize {
        self.times.len()
    }
}

/// The current run of pinned CPU samples in one scope.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CpuRun {
    /// The first sample of the run, when a run is on.
    start: Option<u64>,
    /// The last valid sample.
    last: Option<u64>,
}

impl CpuRun {
    /// Records a sample; returns the run's length (ms) when it reaches
    /// `duration_ms`. `utilization` is already clamped to 0..=1.
    pub(crate) fn record(
        &mut self,
        now: u64,
        utilization: f64,
        config: &CpuPinnedConfig,
    ) -> Option<u64> {
        let gap_ok = self
            .last
            .is_some_and(|last| now.saturating_sub(last) <= config.max_gap_ms);
        self.last = Some(now);
        if utilization < config.utilization {
            self.start = None;
            return None;
        }
        let start = match self.start {
            Some(start) if gap_ok => start,
            _ => now,
        };
        self.start = Some(start);
        let length = now.saturating_sub(start);
        (length >= config.duration_ms).then_some(length)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_window_fires_at_count_within_window() {
        let mut w = CountWindow::default();
        assert_eq!(w.record(0, 3, 100), None);
        assert_eq!(w.record(50, 3, 100), None);
        assert_eq!(w.record(99, 3, 100), Some(3));
        // 0 fell out; 50, 99, 150 span exactly 100: not within.
        assert_eq!(w.record(150, 3, 100), None);
        assert_eq!(w.len(), 3);
    }

    #[test]
    fn count_of_one_fires_on_every_event() {
        let mut w = CountWindow::default();
        assert_eq!(w.record(0, 1, 1), Some(1));
        assert_eq!(w.record(10, 1, 1), Some(1));
        assert_eq!(w.len(), 1);
    }
}
