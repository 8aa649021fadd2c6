//! Robust statistics: the modified z-score of Iglewicz and Hoaglin over a
//! fixed-capacity window, with floors that keep it quiet where it is
//! meaningless.
//!
//! `z = 0.6745 · (x − median) / MAD`, where MAD is the median absolute
//! deviation from the median. The median and MAD ignore the outliers they are
//! looking for (a mean and standard deviation would be dragged by them), and
//! 0.6745 makes `z` comparable to a standard score for normal data. Only the
//! high side fires: a fast exec or a short wait is never a problem.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::Action;

/// The consistency constant of the modified z-score.
pub const MODIFIED_Z_CONSTANT: f64 = 0.6745;

/// The largest window, so a configuration cannot ask for unbounded memory.
pub const MAX_WINDOW: u32 = 65_536;

/// Configuration of a per-observation outlier rule (exec duration, reset
/// duration, acquire wait). Durations are integer milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierConfig {
    /// Whether the rule runs at all (when off, nothing is recorded either).
    pub enabled: bool,
    /// How many recent values the median and MAD are taken over.
    pub window: u32,
    /// How many values the window must hold before the rule can fire.
    pub min_samples: u32,
    /// The modified z-score at or above which a value is an outlier.
    pub threshold: f64,
    /// Values at or below this never fire, whatever their score.
    pub floor_ms: u64,
    /// The MAD is never taken as less than this...
    pub mad_floor_ms: u64,
    /// ...nor less than this fraction of the median.
    pub mad_floor_fraction: f64,
    /// What to ask the host to do.
    pub action: Action,
}

impl OutlierConfig {
    /// The defaults shared by the three duration rules, with the rule's own
    /// floors: window 256, 30 samples, threshold 3.5, MAD floored at 10 % of
    /// the median, action `log`.
    pub(crate) const fn duration_default(floor_ms: u64, mad_floor_ms: u64) -> Self {
        Self {
            enabled: true,
            // A few hundred values: enough for a stable median, few enough
            // that a sorted copy per check costs a few microseconds.
            window: 256,
            // Below ~30 values the MAD is too noisy to trust.
            min_samples: 30,
            // Iglewicz and Hoaglin's recommended cut-off.
            threshold: 3.5,
            floor_ms,
            mad_floor_ms,
            // Identical history (MAD 0) would make any increase infinite; 10 %
            // of the median says "a change smaller than ~50 % of the median is
            // never an outlier" at threshold 3.5.
            mad_floor_fraction: 0.1,
            action: Action::Log,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), StatConfigError> {
        validate_common(
            self.window,
            self.min_samples,
            self.threshold,
            self.mad_floor_fraction,
        )?;
        if self.mad_floor_ms == 0 {
            return Err(StatConfigError::MadFloorNotPositive);
        }
        Ok(())
    }

    pub(crate) fn scorer(&self) -> Scorer {
        Scorer {
            min_samples: usize_from(self.min_samples),
            threshold: self.threshold,
            floor: ms_to_secs(self.floor_ms),
            mad_floor: ms_to_secs(self.mad_floor_ms),
            mad_floor_fraction: self.mad_floor_fraction,
        }
    }
}

/// Configuration of a rate rule (exec rate, output rate), scored once per
/// time bucket against the rates of the scope's recent active buckets. Rates
/// are per second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateConfig {
    /// Whether the rule runs at all.
    pub enabled: bool,
    /// How many recent active buckets the median and MAD are taken over.
    pub window: u32,
    /// How many active buckets the history must hold before the rule fires.
    pub min_samples: u32,
    /// The modified z-score at or above which a rate is a spike.
    pub threshold: f64,
    /// Rates at or below this (per second) never fire.
    pub floor_per_s: f64,
    /// The MAD is never taken as less than this (per second)...
    pub mad_floor_per_s: f64,
    /// ...nor less than this fraction of the median.
    pub mad_floor_fraction: f64,
    /// What to ask the host to do.
    pub action: Action,
}

impl RateConfig {
    /// The defaults shared by both rate rules, with the rule's own floors:
    /// window 300 buckets, 60 samples, threshold 3.5, 10 % MAD floor, `log`.
    pub(crate) const fn rate_default(floor_per_s: f64, mad_floor_per_s: f64) -> Self {
        Self {
            enabled: true,
            // Five minutes of activity at 1 s buckets.
            window: 300,
            // One minute of activity before judging a scope's rate.
            min_samples: 60,
            threshold: 3.5,
            floor_per_s,
            mad_floor_per_s,
            mad_floor_fraction: 0.1,
            action: Action::Log,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), StatConfigError> {
        validate_common(
            self.window,
            self.min_samples,
            self.threshold,
            self.mad_floor_fraction,
        )?;
        if !(self.floor_per_s.is_finite() && self.floor_per_s >= 0.0) {
            return Err(StatConfigError::FloorInvalid(self.floor_per_s));
        }
        if !(self.mad_floor_per_s.is_finite() && self.mad_floor_per_s > 0.0) {
            return Err(StatConfigError::MadFloorNotPositive);
        }
        Ok(())
    }

    pub(crate) fn scorer(&self) -> Scorer {
        Scorer {
            min_samples: usize_from(self.min_samples),
            threshold: self.threshold,
            floor: self.floor_per_s,
            mad_floor: self.mad_floor_per_s,
            mad_floor_fraction: self.mad_floor_fraction,
        }
    }
}

fn validate_common(
    window: u32,
    min_samples: u32,
    threshold: f64,
    mad_floor_fraction: f64,
) -> Result<(), StatConfigError> {
    if window == 0 {
        return Err(StatConfigError::ZeroWindow);
    }
    if window > MAX_WINDOW {
        return Err(StatConfigError::WindowTooLarge(window));
    }
    if min_samples == 0 || min_samples > window {
        return Err(StatConfigError::MinSamples {
            min_samples,
            window,
        });
    }
    if !(threshold.is_finite() && threshold > 0.0) {
        return Err(StatConfigError::Threshold(threshold));
    }
    if !(mad_floor_fraction.is_finite() && mad_floor_fraction >= 0.0) {
        return Err(StatConfigError::MadFloorFraction(mad_floor_fraction));
    }
    Ok(())
}

/// An invalid statistical rule configuration.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StatConfigError {
    /// `window` is 0.
    #[error("window must not be 0")]
    ZeroWindow,
    /// `window` is above [`MAX_WINDOW`].
    #[error("window {0} is above {MAX_WINDOW}")]
    WindowTooLarge(u32),
    /// `min_samples` is 0 or larger than the window, so the rule could never fire.
    #[error("min_samples {min_samples} must be in 1..={window}")]
    MinSamples {
        /// The configured minimum.
        min_samples: u32,
        /// The configured window.
        window: u32,
    },
    /// `threshold` is not a positive finite number.
    #[error("threshold {0} must be positive and finite")]
    Threshold(f64),
    /// `floor_per_s` is negative or not finite.
    #[error("floor {0} must be finite and not negative")]
    FloorInvalid(f64),
    /// The absolute MAD floor is 0 (or not a positive finite number): a
    /// constant history would divide by zero.
    #[error("the MAD floor must be positive and finite")]
    MadFloorNotPositive,
    /// `mad_floor_fraction` is negative or not finite.
    #[error("mad_floor_fraction {0} must be finite and not negative")]
    MadFloorFraction(f64),
}

pub(crate) fn ms_to_secs(ms: u64) -> f64 {
    // Precision loss only above 2^53 ms (285 000 years).
    #[allow(clippy::cast_precision_loss)]
    let ms = ms as f64;
    ms / 1000.0
}

pub(crate) fn usize_from(v: u32) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// How stale a per-observation baseline may get: it is recomputed once
/// `len / STALENESS_DIVISOR` values were added since (8 with a full window of
/// 256; every value while the window holds fewer than 32). A median over 256
/// values barely moves in 8, and this divides the per-observation cost.
pub const STALENESS_DIVISOR: usize = 32;

/// A fixed-capacity ring of finite values, oldest first, with a cached
/// baseline.
#[derive(Debug, Clone)]
pub(crate) struct Ring {
    values: VecDeque<f64>,
    capacity: usize,
    cached: Option<Baseline>,
    /// Values pushed since `cached` was computed.
    stale: usize,
}

impl Ring {
    /// An empty ring. It allocates its full capacity on the first value, so
    /// a statistic a scope never sees costs nothing.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            values: VecDeque::new(),
            capacity,
            cached: None,
            stale: 0,
        }
    }

    /// Appends a value, dropping the oldest when full. Non-finite values are
    /// dropped so the median and MAD stay finite (callers only pass finite
    /// values; this is the guard).
    pub(crate) fn push(&mut self, value: f64) {
        if !value.is_finite() || self.capacity == 0 {
            return;
        }
        if self.values.capacity() == 0 {
            // Once, exactly: doubling growth would round 300 up to 512.
            self.values.reserve_exact(self.capacity);
        }
        if self.values.len() >= self.capacity {
            self.values.pop_front();
        }
        self.values.push_back(value);
        self.stale = self.stale.saturating_add(1);
    }

    pub(crate) fn len(&self) -> usize {
        self.values.len()
    }
}

/// The median and the floored MAD of a window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Baseline {
    pub(crate) median: f64,
    /// The MAD after the floors, always positive.
    pub(crate) mad: f64,
}

/// A value that scored as an outlier.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Outlier {
    pub(crate) z: f64,
    /// The smallest value that would have fired against this baseline.
    pub(crate) level: f64,
}

/// A rule's statistical parameters in natural units (seconds or per second).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scorer {
    pub(crate) min_samples: usize,
    pub(crate) threshold: f64,
    pub(crate) floor: f64,
    pub(crate) mad_floor: f64,
    pub(crate) mad_floor_fraction: f64,
}

impl Scorer {
    /// Whether a value could fire at all: above the floor. Checked first so
    /// the common below-floor value costs no median.
    pub(crate) fn above_floor(&self, value: f64) -> bool {
        value > self.floor
    }

    /// The window's baseline, or `None` while it holds fewer than
    /// `min_samples` values. O(window): a copy into `scratch` and two
    /// selections.
    pub(crate) fn baseline(&self, ring: &Ring, scratch: &mut Vec<f64>) -> Option<Baseline> {
        if ring.len() < self.min_samples || ring.len() == 0 {
            return None;
        }
        scratch.clear();
        scratch.extend(ring.values.iter().copied());
        let median = median_in_place(scratch)?;
        for v in scratch.iter_mut() {
            *v = (*v - median).abs();
        }
        let raw_mad = median_in_place(scratch)?;
        // Floor the MAD always, not only at 0: a MAD of a microsecond is as
        // useless as none. `mad_floor` > 0 (validated), so no division by 0.
        let mad = raw_mad
            .max(self.mad_floor)
            .max(self.mad_floor_fraction * median.abs());
        Some(Baseline { median, mad })
    }

    /// [`baseline`](Self::baseline), reusing the ring's cached one while it
    /// is fresh enough (see [`STALENESS_DIVISOR`]).
    pub(crate) fn cached_baseline(
        &self,
        ring: &mut Ring,
        scratch: &mut Vec<f64>,
    ) -> Option<Baseline> {
        if let Some(cached) = ring.cached {
            if ring.stale <= ring.len() / STALENESS_DIVISOR {
                return Some(cached);
            }
        }
        let baseline = self.baseline(ring, scratch)?;
        ring.cached = Some(baseline);
        ring.stale = 0;
        Some(baseline)
    }

    /// Scores `value` against `baseline`; `Some` when it fires: above the
    /// floor and a modified z-score at or above the threshold.
    pub(crate) fn judge(&self, baseline: Baseline, value: f64) -> Option<Outlier> {
        if !self.above_floor(value) {
            return None;
        }
        let z = MODIFIED_Z_CONSTANT * (value - baseline.median) / baseline.mad;
        if z.is_finite() && z >= self.threshold {
            let level = (baseline.median + self.threshold * baseline.mad / MODIFIED_Z_CONSTANT)
                .max(self.floor);
            Some(Outlier { z, level })
        } else {
            None
        }
    }
}

/// The median of `values`, reordering them; `None` when empty. The values
/// are finite ([`Ring::push`] drops the others), so `total_cmp` is the usual
/// order.
pub(crate) fn median_in_place(values: &mut [f64]) -> Option<f64> {
    let len = values.len();
    if len == 0 {
        return None;
    }
    let mid = len / 2;
    let (lower, upper_mid, _) = values.select_nth_unstable_by(mid, f64::total_cmp);
    let upper_mid = *upper_mid;
    if len % 2 == 1 {
        return Some(upper_mid);
    }
    let lower_mid = lower.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    // Halve first: the sum of two huge values could overflow.
    Some(lower_mid / 2.0 + upper_mid / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_lengths() {
        assert_eq!(median_in_place(&mut []), None);
        assert_eq!(median_in_place(&mut [3.0]), Some(3.0));
        assert_eq!(median_in_place(&mut [5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median_in_place(&mut [4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(
            median_in_place(&mut [f64::MAX, f64::MAX]),
            Some(f64::MAX),
            "no overflow"
        );
    }

    fn scorer() -> Scorer {
        Scorer {
            min_samples: 3,
            threshold: 3.5,
            floor: 0.0,
            mad_floor: 0.001,
            mad_floor_fraction: 0.0,
        }
    }

    #[test]
    fn baseline_is_median_and_mad() {
        let mut ring = Ring::new(8);
        for v in [1.0, 2.0, 3.0, 4.0, 100.0] {
            ring.push(v);
        }
        let b = scorer().baseline(&ring, &mut Vec::new());
        // Deviations from 3: 2 1 0 1 97 → MAD 1.
        assert_eq!(
            b,
            Some(Baseline {
                median: 3.0,
                mad: 1.0
            })
        );
    }

    #[test]
    fn baseline_needs_min_samples() {
        let mut ring = Ring::new(8);
        ring.push(1.0);
        ring.push(2.0);
        assert_eq!(scorer().baseline(&ring, &mut Vec::new()), None);
    }

    #[test]
    fn ring_keeps_capacity_and_drops_non_finite() {
        let mut ring = Ring::new(3);
        for v in [1.0, f64::NAN, 2.0, f64::INFINITY, 3.0, 4.0] {
            ring.push(v);
        }
        assert_eq!(ring.len(), 3);
        assert_eq!(ring.values, [2.0, 3.0, 4.0]);
    }

    #[test]
    fn judge_uses_the_modified_z_score() {
        let s = scorer();
        let b = Baseline {
            median: 10.0,
            mad: 1.0,
        };
        // z = 0.6745 · (x − 10) / 1 ≥ 3.5 ⇔ x ≥ 15.189...
        assert!(s.judge(b, 15.1).is_none());
        let o = s.judge(b, 15.2).expect("fires");
        assert!((o.level - (10.0 + 3.5 / 0.6745)).abs() < 1e-9);
        assert!(s.judge(b, -1e300).is_none(), "only the high side fires");
    }

    #[test]
    fn cached_baseline_is_refreshed_after_len_over_32_values() {
        let s = scorer();
        let mut scratch = Vec::new();
        let mut ring = Ring::new(256);
        for _ in 0..256 {
            ring.push(1.0);
        }
        let first = s.cached_baseline(&mut ring, &mut scratch).expect("enough");
        assert_eq!(first.median, 1.0);
        for _ in 0..8 {
            ring.push(5.0);
        }
        assert_eq!(s.cached_baseline(&mut ring, &mut scratch), Some(first));
        for _ in 0..200 {
            ring.push(5.0);
        }
        let fresh = s.cached_baseline(&mut ring, &mut scratch).expect("enough");
        assert_eq!(fresh.median, 5.0);

        // Below 32 values, every push refreshes.
        let mut ring = Ring::new(256);
        for v in [1.0, 1.0, 1.0, 9.0, 9.0, 9.0, 9.0] {
            ring.push(v);
            let b = s.cached_baseline(&mut ring, &mut scratch);
            assert_eq!(b, s.baseline(&ring, &mut scratch));
        }
    }
}
