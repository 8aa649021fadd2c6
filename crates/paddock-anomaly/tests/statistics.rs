//! The statistical rules on synthetic streams: quiet under steady noisy load,
//! fast on spikes, held back by min samples and floors, sane with MAD 0.
#![cfg(test)]

mod common;

use std::time::Duration;

use common::{SplitMix, detector, exec, ms, reset, rules, secs};
use paddock_anomaly::{Action, Alert, Detector, DetectorConfig, Observation, RuleId, Scope};

/// Feeds `per_bucket` execs spread evenly over the 1 s bucket starting at
/// `second`, and returns their alerts.
fn bucket(
    d: &mut Detector,
    scope: &Scope,
    second: u64,
    per_bucket: u64,
    mut obs: impl FnMut() -> Observation,
) -> Vec<Alert> {
    let mut alerts = Vec::new();
    for i in 0..per_bucket {
        let at = ms(second * 1000 + i * 1000 / per_bucket.max(1));
        alerts.extend(d.observe(scope, at, &obs()));
    }
    alerts
}

/// 24 simulated hours of steady, noisy (±30 %) load raise nothing. The
/// floors are lowered far below the defaults so every statistic is actually
/// scored (raising a floor can only remove alerts, so the defaults are
/// covered too); the spike tests below feed the same kind of stream and do
/// fire.
#[test]
fn steady_load_for_24_hours_raises_nothing() {
    let mut config = DetectorConfig::default();
    config.exec_rate_spike.floor_per_s = 1.0;
    config.output_rate_spike.floor_per_s = 1024.0;
    config.exec_duration_outlier.floor_ms = 0;
    config.reset_duration_outlier.floor_ms = 0;
    config.acquire_wait_outlier.floor_ms = 0;
    let mut d = Detector::new(config).expect("valid");
    let scopes = Scope::for_lease("ci", 3, "alice");
    let mut rng = SplitMix(7);
    let mut alerts = Vec::new();
    let mut execs = 0u64;
    for second in 0..24 * 3600 {
        // The exec rate and the output rate each carry ±30 % noise (the
        // output is spread over the bucket's execs).
        let n = rng.noisy_count(3.0, 0.3);
        let bytes = rng.noisy_count(10_240.0, 0.3) / n;
        for i in 0..n {
            let at = ms(second * 1000 + i * 1000 / n);
            let obs = exec(rng.noisy_ms(2000.0, 0.3), bytes);
            alerts.extend(d.observe_each(&scopes, at, &obs));
            execs += 1;
        }
        let at = secs(second);
        if second % 5 == 0 {
            let obs = Observation::CpuSample {
                utilization: rng.noisy(0.5, 0.6),
            };
            alerts.extend(d.observe_each(&scopes, at, &obs));
        }
        if second % 120 == 0 {
            alerts.extend(d.observe(&scopes[0], at, &reset(rng.noisy_ms(3000.0, 0.3), true)));
            let wait = Observation::AcquireWait {
                wait: rng.noisy_ms(20.0, 0.3),
            };
            alerts.extend(d.observe(&scopes[1], at, &wait));
        }
        // Isolated timeouts and denials, far below their counts.
        if second % 1200 == 600 {
            alerts.extend(d.observe_each(&scopes, at, &common::timeout()));
        }
        if second % 300 == 150 {
            alerts.extend(d.observe_each(&scopes, at, &Observation::EgressDenied));
        }
        if second % 3600 == 0 {
            d.prune(at);
        }
    }
    assert!(execs > 250_000, "{execs} execs");
    assert_eq!(d.scopes(), 2);
    assert!(alerts.is_empty(), "{alerts:#?}");
}

/// K = 1: an exec rate ×10 is caught within the first bucket of the spike.
#[test]
fn exec_rate_spike_is_caught_within_one_bucket() {
    let mut d = detector();
    let scope = Scope::slot("ci", 1);
    let mut rng = SplitMix(1);
    for second in 0..600 {
        let n = rng.noisy_count(30.0, 0.3);
        let alerts = bucket(&mut d, &scope, second, n, || exec(ms(100), 100));
        assert!(alerts.is_empty(), "steady at {second}: {alerts:?}");
    }
    let alerts = bucket(&mut d, &scope, 600, 300, || exec(ms(100), 100));
    assert_eq!(rules(&alerts), [RuleId::ExecRateSpike], "{alerts:?}");
    let alert = &alerts[0];
    assert!(alert.at < secs(601), "caught within the bucket: {alert:?}");
    assert!(alert.value >= alert.threshold && alert.threshold > 30.0);
    assert_eq!(alert.action, Action::Log);
    assert_eq!(alert.scope, scope);
    // The cooldown holds the sustained spike to one alert.
    for second in 601..650 {
        assert!(bucket(&mut d, &scope, second, 300, || exec(ms(100), 100)).is_empty());
    }
}

/// K = 1: an output flood (50 MiB/s after a steady 10 KiB/s) is caught
/// within the first bucket of the flood.
#[test]
fn output_flood_is_caught_within_one_bucket() {
    let mut d = detector();
    let scope = Scope::tenant("ci", "mallory");
    let mut rng = SplitMix(2);
    for second in 0..600 {
        let alerts = bucket(&mut d, &scope, second, 5, || {
            exec(ms(50), rng.noisy_count(2048.0, 0.3))
        });
        assert!(alerts.is_empty(), "steady at {second}: {alerts:?}");
    }
    let alerts = bucket(&mut d, &scope, 600, 5, || exec(ms(50), 10 << 20));
    assert_eq!(rules(&alerts), [RuleId::OutputRateSpike], "{alerts:?}");
    assert!(alerts[0].at < secs(601));
    assert!(alerts[0].value >= f64::from(1 << 20));
}

/// An exec 20× the median is caught on the first such event after min
/// samples.
#[test]
fn exec_duration_outlier_is_caught_on_the_first_event() {
    let mut d = detector();
    let scope = Scope::slot("ci", 1);
    let mut rng = SplitMix(3);
    for i in 0..30 {
        assert!(
            d.observe(&scope, secs(i), &exec(rng.noisy_ms(2000.0, 0.3), 0))
                .is_empty()
        );
    }
    let alerts = d.observe(&scope, secs(30), &exec(secs(40), 0));
    assert_eq!(rules(&alerts), [RuleId::ExecDurationOutlier]);
    assert_eq!(alerts[0].value, 40.0);
    assert!(
        alerts[0].threshold > 2.0 && alerts[0].threshold < 5.0,
        "{alerts:?}"
    );
}

/// A reset 10× slower is caught at once.
#[test]
fn slow_reset_is_caught_at_once() {
    let mut d = detector();
    let scope = Scope::slot("ci", 1);
    let mut rng = SplitMix(4);
    for i in 0..30 {
        let alerts = d.observe(
            &scope,
            secs(i * 60),
            &reset(rng.noisy_ms(5000.0, 0.3), true),
        );
        assert!(alerts.is_empty());
    }
    let alerts = d.observe(&scope, secs(30 * 60), &reset(secs(50), true));
    assert_eq!(rules(&alerts), [RuleId::ResetDurationOutlier]);
}

/// An acquire wait far above the usual is caught at once, above its floor.
#[test]
fn long_acquire_wait_is_caught() {
    let mut d = detector();
    let scope = Scope::pool("ci");
    let mut rng = SplitMix(5);
    for i in 0..30 {
        let wait = rng.noisy_ms(20.0, 0.3);
        assert!(
            d.observe(&scope, secs(i), &Observation::AcquireWait { wait })
                .is_empty()
        );
    }
    let wait = ms(400);
    let alerts = d.observe(&scope, secs(30), &Observation::AcquireWait { wait });
    assert_eq!(rules(&alerts), [RuleId::AcquireWaitOutlier]);
}

/// One sample short of min_samples, a huge outlier raises nothing.
#[test]
fn nothing_fires_before_min_samples() {
    let mut d = detector();
    let scope = Scope::slot("ci", 1);
    for i in 0..29 {
        d.observe(&scope, secs(i), &exec(secs(2), 0));
        d.observe(&scope, secs(i), &reset(secs(2), true));
    }
    assert!(d.observe(&scope, secs(29), &exec(secs(400), 0)).is_empty());
    assert!(
        d.observe(&scope, secs(29), &reset(secs(400), true))
            .is_empty()
    );

    // Rates: 59 closed buckets of history are not enough (the spike's first
    // exec closes the 59th)...
    let mut d = detector();
    for second in 0..59 {
        bucket(&mut d, &scope, second, 30, || exec(ms(10), 100));
    }
    assert!(bucket(&mut d, &scope, 59, 600, || exec(ms(10), 100)).is_empty());
    // ...60 are.
    let mut d = detector();
    for second in 0..60 {
        bucket(&mut d, &scope, second, 30, || exec(ms(10), 100));
    }
    let alerts = bucket(&mut d, &scope, 60, 600, || exec(ms(10), 100));
    assert_eq!(rules(&alerts), [RuleId::ExecRateSpike]);
}

/// A relative spike that stays at or below the absolute floor raises nothing.
#[test]
fn spikes_below_the_floors_raise_nothing() {
    let mut d = detector();
    let scope = Scope::slot("ci", 1);
    for i in 0..100 {
        d.observe(&scope, secs(i), &exec(ms(50), 0));
        d.observe(&scope, secs(i), &reset(ms(50), true));
        d.observe(&scope, secs(i), &Observation::AcquireWait { wait: ms(2) });
    }
    // 20×, but not above the floors (1 s, 1 s, 50 ms).
    assert!(d.observe(&scope, secs(100), &exec(ms(1000), 0)).is_empty());
    assert!(
        d.observe(&scope, secs(100), &reset(ms(1000), true))
            .is_empty()
    );
    let wait = Observation::AcquireWait { wait: ms(50) };
    assert!(d.observe(&scope, secs(100), &wait).is_empty());
    // Just above them: fires.
    let alerts = d.observe(&scope, secs(101), &exec(ms(1001), 0));
    assert_eq!(rules(&alerts), [RuleId::ExecDurationOutlier]);

    // Rates: 1/s → 20/s and 1 KiB/s → 1 MiB/s stay at the floors.
    let mut d = detector();
    for second in 0..100 {
        bucket(&mut d, &scope, second, 1, || exec(ms(10), 1024));
    }
    let alerts = bucket(&mut d, &scope, 100, 20, || exec(ms(10), 1 << 20 >> 4 >> 1));
    assert!(alerts.is_empty(), "{alerts:?}");
    let alerts = bucket(&mut d, &scope, 101, 21, || exec(ms(10), 100));
    assert_eq!(rules(&alerts), [RuleId::ExecRateSpike]);
}

/// An all-identical history (MAD 0) neither divides by zero nor hides a
/// genuine spike; small changes stay under the 10 %-of-median MAD floor.
#[test]
fn zero_mad_uses_the_floor() {
    let mut d = detector();
    let scope = Scope::slot("ci", 1);
    for i in 0..100 {
        assert!(d.observe(&scope, secs(i), &exec(secs(2), 0)).is_empty());
    }
    // MAD floor 0.2 s: 2.5 s scores 1.7, under 3.5.
    assert!(d.observe(&scope, secs(100), &exec(ms(2500), 0)).is_empty());
    let alerts = d.observe(&scope, secs(101), &exec(ms(3100), 0));
    assert_eq!(rules(&alerts), [RuleId::ExecDurationOutlier]);
    let expected = 2.0 + 3.5 * 0.2 / 0.6745;
    assert!((alerts[0].threshold - expected).abs() < 1e-9, "{alerts:?}");
    assert!(alerts[0].value.is_finite());

    // Rates: exactly 30 execs in every bucket, then 300.
    let mut d = detector();
    for second in 0..100 {
        assert!(bucket(&mut d, &scope, second, 30, || exec(ms(10), 0)).is_empty());
    }
    let alerts = bucket(&mut d, &scope, 100, 300, || exec(ms(10), 0));
    assert_eq!(rules(&alerts), [RuleId::ExecRateSpike]);
    assert!(alerts[0].threshold.is_finite());
}

/// The idle time between bursts is not a sample: a scope active at 30/s in
/// short bursts is judged against 30/s, not against zero.
#[test]
fn idle_buckets_are_not_samples() {
    let mut d = detector();
    let scope = Scope::slot("ci", 1);
    for burst in 0..100 {
        let alerts = bucket(&mut d, &scope, burst * 60, 30, || exec(ms(10), 0));
        assert!(alerts.is_empty(), "{alerts:?}");
    }
    // 40/s: above the floor, but not a spike against 30/s.
    assert!(bucket(&mut d, &scope, 6000, 40, || exec(ms(10), 0)).is_empty());
}

/// A scope's statistics do not leak into another's.
#[test]
fn scopes_are_independent() {
    let mut d = detector();
    let one = Scope::slot("ci", 1);
    let two = Scope::slot("ci", 2);
    for i in 0..100 {
        d.observe(&one, secs(i), &exec(secs(2), 0));
    }
    // Slot 2 has no history: no alert, however slow.
    assert!(d.observe(&two, secs(100), &exec(secs(60), 0)).is_empty());
    // Slot 1's history is untouched by slot 2's slow exec.
    assert_eq!(
        rules(&d.observe(&one, secs(101), &exec(secs(60), 0))),
        [RuleId::ExecDurationOutlier]
    );
    // And the cooldown is per scope.
    for i in 0..100 {
        d.observe(&two, secs(102 + i), &exec(secs(2), 0));
    }
    assert_eq!(
        rules(&d.observe(&two, secs(202), &exec(secs(60), 0))),
        [RuleId::ExecDurationOutlier]
    );
}

/// The tenant scope sees a tenant's load across slots.
#[test]
fn observe_each_fans_out() {
    let mut d = detector();
    let [slot, tenant] = Scope::for_lease("ci", 3, "alice");
    for i in 0..30 {
        d.observe_each([&slot, &tenant], secs(i), &exec(secs(2), 0));
    }
    let alerts = d.observe_each([&slot, &tenant], secs(30), &exec(secs(60), 0));
    let scopes: Vec<_> = alerts.iter().map(|a| a.scope.clone()).collect();
    assert_eq!(scopes, [slot, tenant]);
    assert_eq!(
        alerts[0].message,
        "exec took 60.000 s vs median 2.000 s (z 195.6)"
    );
}

/// A disabled rule neither fires nor records.
#[test]
fn disabled_rules_stay_silent() {
    let mut config = DetectorConfig::default();
    config.exec_duration_outlier.enabled = false;
    let mut d = Detector::new(config).expect("valid");
    let scope = Scope::slot("ci", 1);
    for i in 0..100 {
        d.observe(&scope, secs(i), &exec(secs(2), 0));
    }
    assert!(d.observe(&scope, secs(100), &exec(secs(60), 0)).is_empty());
}

/// The no-alert path returns a Vec that never allocated.
#[test]
fn no_alert_returns_an_unallocated_vec() {
    let mut d = detector();
    let alerts = d.observe(&Scope::slot("ci", 1), Duration::ZERO, &exec(ms(1), 1));
    assert_eq!(alerts.capacity(), 0);
}
