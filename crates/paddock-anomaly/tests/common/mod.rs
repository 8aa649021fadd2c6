//! Helpers shared by the test files: a seeded PRNG and observation builders.
#![allow(dead_code)]

use std::time::Duration;

use paddock_anomaly::{Alert, Detector, DetectorConfig, Observation, RuleId};

/// SplitMix64: a tiny seeded generator, so streams are reproducible without
/// adding `rand`.
#[derive(Debug)]
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        f64::from(u32::try_from(self.next_u64() >> 32).expect("32 bits")) / 4_294_967_296.0
    }

    /// `base` with uniform ±`fraction` noise.
    pub fn noisy(&mut self, base: f64, fraction: f64) -> f64 {
        base * (1.0 + fraction * (2.0 * self.unit() - 1.0))
    }

    /// `noisy` rounded to whole milliseconds, as a Duration.
    pub fn noisy_ms(&mut self, base_ms: f64, fraction: f64) -> Duration {
        Duration::from_secs_f64(self.noisy(base_ms, fraction) / 1000.0)
    }

    /// `noisy` rounded to a whole count.
    pub fn noisy_count(&mut self, base: f64, fraction: f64) -> u64 {
        let v = self.noisy(base, fraction).round();
        format!("{v:.0}").parse().expect("a small positive count")
    }
}

/// `v` milliseconds.
pub fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// `v` seconds.
pub fn secs(v: u64) -> Duration {
    Duration::from_secs(v)
}

/// An exec that did not time out.
pub fn exec(duration: Duration, output_bytes: u64) -> Observation {
    Observation::ExecFinished {
        duration,
        output_bytes,
        timed_out: false,
    }
}

/// A timed-out exec.
pub fn timeout() -> Observation {
    Observation::ExecFinished {
        duration: secs(30),
        output_bytes: 0,
        timed_out: true,
    }
}

/// A reset.
pub fn reset(duration: Duration, ok: bool) -> Observation {
    Observation::ResetFinished { duration, ok }
}

/// A CPU sample.
pub fn cpu(utilization: f64) -> Observation {
    Observation::CpuSample { utilization }
}

/// A detector with the default configuration.
pub fn detector() -> Detector {
    Detector::new(DetectorConfig::default()).expect("the default config is valid")
}

/// The rules of `alerts`, in order.
pub fn rules(alerts: &[Alert]) -> Vec<RuleId> {
    alerts.iter().map(|a| a.rule).collect()
}
