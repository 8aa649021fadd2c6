//! Arbitrary observation streams never panic, and memory stays bounded.
#![cfg(test)]

use std::time::Duration;

use paddock_anomaly::{Detector, DetectorConfig, Observation, ProtocolErrorKind, Scope};
use proptest::prelude::*;

fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::MAX),
        (0u64..100_000).prop_map(Duration::from_millis),
        any::<u64>().prop_map(Duration::from_nanos),
    ]
}

fn utilization() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(-1.0),
        Just(1.0),
        0.0..=1.2f64,
        any::<f64>(),
    ]
}

fn observation() -> impl Strategy<Value = Observation> {
    prop_oneof![
        (duration(), any::<u64>(), any::<bool>()).prop_map(
            |(duration, output_bytes, timed_out)| {
                Observation::ExecFinished {
                    duration,
                    output_bytes,
                    timed_out,
                }
            }
        ),
        (duration(), any::<bool>())
            .prop_map(|(duration, ok)| Observation::ResetFinished { duration, ok }),
        duration().prop_map(|wait| Observation::AcquireWait { wait }),
        prop::sample::select(ProtocolErrorKind::ALL.to_vec())
            .prop_map(|kind| Observation::ProtocolError { kind }),
        utilization().prop_map(|utilization| Observation::CpuSample { utilization }),
        Just(Observation::EgressDenied),
    ]
}

/// Timestamps that mostly move forward in small steps, sometimes jump back
/// or to the end of time.
fn step() -> impl Strategy<Value = i64> {
    prop_oneof![
        8 => 0i64..2_000,
        1 => -100_000i64..0,
        1 => Just(i64::MAX),
    ]
}

fn small_config() -> DetectorConfig {
    let mut c = DetectorConfig {
        max_scopes: 3,
        cooldown_ms: 0,
        ..DetectorConfig::default()
    };
    for w in [&mut c.exec_rate_spike, &mut c.output_rate_spike] {
        w.window = 8;
        w.min_samples = 2;
    }
    for w in [
        &mut c.exec_duration_outlier,
        &mut c.reset_duration_outlier,
        &mut c.acquire_wait_outlier,
    ] {
        w.window = 8;
        w.min_samples = 2;
        w.floor_ms = 0;
    }
    c
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_streams_never_panic_and_stay_bounded(
        events in prop::collection::vec((0usize..6, step(), observation()), 1..400),
        default_config in any::<bool>(),
    ) {
        let config = if default_config {
            DetectorConfig { max_scopes: 3, ..DetectorConfig::default() }
        } else {
            small_config()
        };
        let bound = 3 * config.max_samples_per_scope();
        let mut d = Detector::new(config).expect("valid");
        let scopes: Vec<Scope> = (0..6u32)
            .map(|i| if i % 2 == 0 { Scope::slot("p", i) } else { Scope::tenant("p", i.to_string()) })
            .collect();
        let mut now: u64 = 0;
        for (scope, step, obs) in events {
            now = match step {
                i64::MAX => u64::MAX,
                s if s < 0 => now.saturating_sub(s.unsigned_abs()),
                s => now.saturating_add(s.unsigned_abs()),
            };
            let at = Duration::from_millis(now);
            for alert in d.observe(&scopes[scope], at, &obs) {
                prop_assert!(alert.value.is_finite(), "{alert:?}");
                prop_assert!(alert.threshold.is_finite(), "{alert:?}");
                prop_assert!(!alert.message.is_empty());
            }
            prop_assert!(d.scopes() <= 3);
            prop_assert!(d.retained_samples() <= bound);
            if now % 7 == 0 {
                d.prune(at);
            }
        }
    }
}
