//! The count rules, `cpu_pinned`, cooldowns, scopes, pruning and the cap.
#![cfg(test)]

mod common;

use std::time::Duration;

use common::{cpu, detector, exec, ms, reset, rules, secs, timeout};
use paddock_anomaly::{
    Action, Detector, DetectorConfig, Observation, ProtocolErrorKind, RuleId, Scope,
};

/// One count rule under its default configuration.
struct Case {
    rule: RuleId,
    obs: Observation,
    count: u64,
    window_s: u64,
    action: Action,
}

fn cases() -> [Case; 4] {
    [
        Case {
            rule: RuleId::RepeatedExecTimeouts,
            obs: timeout(),
            count: 3,
            window_s: 300,
            action: Action::Log,
        },
        Case {
            rule: RuleId::AgentProtocolErrors,
            obs: Observation::ProtocolError {
                kind: ProtocolErrorKind::Crc,
            },
            count: 1,
            window_s: 300,
            action: Action::RecycleSlot,
        },
        Case {
            rule: RuleId::ResetFailures,
            obs: reset(secs(2), false),
            count: 2,
            window_s: 600,
            action: Action::RecycleSlot,
        },
        Case {
            rule: RuleId::EgressDenied,
            obs: Observation::EgressDenied,
            count: 10,
            window_s: 60,
            action: Action::Log,
        },
    ]
}

#[test]
fn count_rules_fire_at_exactly_the_count() {
    for case in cases() {
        let mut d = detector();
        let scope = Scope::slot("ci", 1);
        for i in 0..case.count - 1 {
            let alerts = d.observe(&scope, ms(i * 10), &case.obs);
            assert!(alerts.is_empty(), "{:?} fired early: {alerts:?}", case.rule);
        }
        let alerts = d.observe(&scope, ms(case.count * 10), &case.obs);
        assert_eq!(rules(&alerts), [case.rule]);
        let alert = &alerts[0];
        assert_eq!(
            alert.value,
            f64::from(u32::try_from(case.count).expect("small"))
        );
        assert_eq!(alert.threshold, alert.value);
        assert_eq!(alert.action, case.action);
        assert_eq!(alert.at, ms(case.count * 10));
    }
}

#[test]
fn count_rules_forget_events_outside_the_window() {
    for case in cases().into_iter().filter(|c| c.count > 1) {
        let mut d = detector();
        let scope = Scope::slot("ci", 1);
        // `count` events spanning exactly the window: not within it.
        let step = (case.window_s * 1000).div_ceil(case.count - 1);
        for i in 0..case.count {
            let alerts = d.observe(&scope, ms(i * step), &case.obs);
            assert!(alerts.is_empty(), "{:?}: {alerts:?}", case.rule);
        }
        // One more right after: the last `count` are within the window.
        let at = ms((case.count - 1) * step + 1);
        assert_eq!(rules(&d.observe(&scope, at, &case.obs)), [case.rule]);
    }
}

#[test]
fn cooldown_suppresses_repeats_then_rearms() {
    for case in cases() {
        let mut d = detector();
        let scope = Scope::slot("ci", 1);
        let mut fired = Vec::new();
        // One event a second for three minutes: the rule's condition holds
        // from the count-th event on.
        for i in 0..180 {
            for alert in d.observe(&scope, secs(i), &case.obs) {
                fired.push(alert.at);
            }
        }
        let first = secs(case.count - 1);
        // One alert per 60 s cooldown.
        let expected = [first, first + secs(60), first + secs(120)];
        assert_eq!(fired, expected, "{:?}", case.rule);
    }
}

#[test]
fn zero_cooldown_fires_on_every_qualifying_event() {
    let config = DetectorConfig {
        cooldown_ms: 0,
        ..DetectorConfig::default()
    };
    let mut d = Detector::new(config).expect("valid");
    let scope = Scope::slot("ci", 1);
    let kind = ProtocolErrorKind::Resync;
    for i in 0..5 {
        let alerts = d.observe(&scope, secs(i), &Observation::ProtocolError { kind });
        assert_eq!(alerts.len(), 1);
        assert_eq!(
            alerts[0].message,
            "1 agent protocol errors (last: resync) within 300 s"
        );
    }
}

#[test]
fn cpu_pinned_needs_the_full_duration() {
    // Samples every second: 0..=59 spans 59 s.
    let mut d = detector();
    let scope = Scope::slot("ci", 1);
    for t in 0..60 {
        assert!(d.observe(&scope, secs(t), &cpu(0.99)).is_empty(), "at {t}");
    }
    // 60 s from the first pinned sample: fires, once per cooldown.
    let alerts = d.observe(&scope, secs(60), &cpu(0.99));
    assert_eq!(rules(&alerts), [RuleId::CpuPinned]);
    assert_eq!(alerts[0].value, 60.0);
    assert_eq!(alerts[0].threshold, 60.0);
    for t in 61..120 {
        assert!(d.observe(&scope, secs(t), &cpu(0.99)).is_empty(), "at {t}");
    }
    assert_eq!(
        rules(&d.observe(&scope, secs(120), &cpu(1.0))),
        [RuleId::CpuPinned],
        "still pinned after the cooldown"
    );
}

#[test]
fn cpu_pinned_run_is_reset_by_a_dip() {
    let mut d = detector();
    let scope = Scope::slot("ci", 1);
    for t in 0..=40 {
        assert!(d.observe(&scope, secs(t), &cpu(0.99)).is_empty());
    }
    assert!(d.observe(&scope, secs(41), &cpu(0.94)).is_empty());
    for t in 42..=101 {
        assert!(d.observe(&scope, secs(t), &cpu(0.99)).is_empty(), "at {t}");
    }
    assert_eq!(
        rules(&d.observe(&scope, secs(102), &cpu(0.99))),
        [RuleId::CpuPinned]
    );
}

#[test]
fn cpu_pinned_run_is_reset_by_a_long_gap() {
    let mut d = detector();
    let scope = Scope::slot("ci", 1);
    // Irregular samples, gaps up to the 30 s limit: one run.
    for t in [0, 30, 45, 46, 60] {
        let alerts = d.observe(&scope, secs(t), &cpu(0.97));
        assert_eq!(alerts.is_empty(), t < 60, "at {t}");
    }
    // A 31 s gap breaks the run: the sample after it starts a new one.
    let mut d = detector();
    for t in [0, 20, 51, 80, 110] {
        assert!(d.observe(&scope, secs(t), &cpu(0.97)).is_empty(), "at {t}");
    }
    assert_eq!(
        rules(&d.observe(&scope, secs(111), &cpu(0.97))),
        [RuleId::CpuPinned]
    );
}

#[test]
fn cpu_samples_out_of_range_are_handled() {
    let mut d = detector();
    let scope = Scope::slot("ci", 1);
    // Above 1 is jitter: pinned. NaN and infinities are dropped: they neither
    // break nor extend the run.
    let samples = [1.5, f64::NAN, 1.0, f64::INFINITY, f64::NEG_INFINITY, 0.99];
    for (t, u) in (0..).step_by(10).zip(samples) {
        assert!(d.observe(&scope, secs(t), &cpu(u)).is_empty());
    }
    assert_eq!(
        rules(&d.observe(&scope, secs(60), &cpu(1.0))),
        [RuleId::CpuPinned]
    );
    // Negative is 0: breaks the run.
    let mut d = detector();
    for t in 0..=30 {
        d.observe(&scope, secs(t), &cpu(1.0));
    }
    d.observe(&scope, secs(31), &cpu(-0.5));
    for t in 32..=91 {
        assert!(d.observe(&scope, secs(t), &cpu(1.0)).is_empty(), "at {t}");
    }
}

#[test]
fn scopes_are_independent_for_rules() {
    let mut d = detector();
    let one = Scope::slot("ci", 1);
    let two = Scope::slot("ci", 2);
    let other_pool = Scope::slot("gpu", 1);
    d.observe(&one, secs(0), &timeout());
    d.observe(&one, secs(1), &timeout());
    assert!(d.observe(&two, secs(2), &timeout()).is_empty());
    assert!(d.observe(&other_pool, secs(2), &timeout()).is_empty());
    assert_eq!(
        rules(&d.observe(&one, secs(3), &timeout())),
        [RuleId::RepeatedExecTimeouts]
    );
    assert_eq!(d.scopes(), 3);
}

#[test]
fn prune_removes_idle_scopes() {
    let mut d = detector();
    let old = Scope::slot("ci", 1);
    let recent = Scope::tenant("ci", "alice");
    d.observe(&old, secs(0), &timeout());
    d.observe(&recent, secs(3000), &timeout());
    // A `now` in the past keeps everything.
    d.prune(Duration::ZERO);
    assert_eq!(d.scopes(), 2);
    d.prune(secs(3599));
    assert_eq!(d.scopes(), 2);
    d.prune(secs(3600));
    assert!(!d.contains_scope(&old));
    assert!(d.contains_scope(&recent));
    assert_eq!(d.scopes(), 1);
    // A pruned scope starts over: its old timeouts are gone.
    d.observe(&old, secs(3601), &timeout());
    assert!(d.observe(&old, secs(3602), &timeout()).is_empty());
}

#[test]
fn the_scope_cap_evicts_the_longest_idle() {
    let config = DetectorConfig {
        max_scopes: 2,
        ..DetectorConfig::default()
    };
    let mut d = Detector::new(config).expect("valid");
    let a = Scope::slot("ci", 1);
    let b = Scope::slot("ci", 2);
    let c = Scope::slot("ci", 3);
    d.observe(&a, secs(1), &timeout());
    d.observe(&b, secs(2), &timeout());
    d.observe(&a, secs(3), &timeout());
    d.observe(&c, secs(4), &timeout());
    assert_eq!(d.scopes(), 2);
    assert!(d.contains_scope(&a) && d.contains_scope(&c));
    assert!(!d.contains_scope(&b), "b was idle the longest");
    // Ties go to the scope created first.
    let mut d = Detector::new(DetectorConfig {
        max_scopes: 2,
        ..DetectorConfig::default()
    })
    .expect("valid");
    d.observe(&a, secs(5), &timeout());
    d.observe(&b, secs(5), &timeout());
    d.observe(&c, secs(5), &timeout());
    assert!(!d.contains_scope(&a) && d.contains_scope(&b) && d.contains_scope(&c));
}

#[test]
fn timestamps_going_backwards_are_clamped() {
    let mut d = detector();
    let scope = Scope::slot("ci", 1);
    d.observe(&scope, secs(1000), &timeout());
    d.observe(&scope, secs(10), &timeout());
    // Counted at 1000 s: three within the window, reported at 1000 s.
    let alerts = d.observe(&scope, secs(5), &timeout());
    assert_eq!(rules(&alerts), [RuleId::RepeatedExecTimeouts]);
    assert_eq!(alerts[0].at, secs(1000));
    // A CPU run cannot go negative either.
    for t in [2000, 1000, 1500, 2020, 2040, 2059] {
        assert!(d.observe(&scope, secs(t), &cpu(1.0)).is_empty(), "at {t}");
    }
    assert_eq!(
        rules(&d.observe(&scope, secs(2060), &cpu(1.0))),
        [RuleId::CpuPinned]
    );
}

#[test]
fn extreme_values_do_not_panic() {
    let mut d = detector();
    let scope = Scope::slot("ci", 1);
    for i in 0..100 {
        d.observe(&scope, ms(i), &exec(Duration::ZERO, 0));
        d.observe(&scope, ms(i), &reset(Duration::ZERO, true));
        d.observe(
            &scope,
            ms(i),
            &Observation::AcquireWait {
                wait: Duration::ZERO,
            },
        );
    }
    let huge = [
        exec(Duration::MAX, u64::MAX),
        exec(Duration::MAX, u64::MAX),
        reset(Duration::MAX, false),
        Observation::AcquireWait {
            wait: Duration::MAX,
        },
        cpu(f64::MAX),
        cpu(f64::MIN_POSITIVE),
    ];
    let mut all = Vec::new();
    for obs in &huge {
        all.extend(d.observe(&scope, Duration::MAX, obs));
    }
    for alert in &all {
        assert!(
            alert.value.is_finite() && alert.threshold.is_finite(),
            "{alert:?}"
        );
    }
    // Huge durations are reported, and the detector keeps working at the end
    // of time.
    assert!(rules(&all).contains(&RuleId::ExecDurationOutlier));
    assert!(rules(&all).contains(&RuleId::ResetDurationOutlier));
    assert!(rules(&all).contains(&RuleId::AcquireWaitOutlier));
    d.prune(Duration::MAX);
    assert_eq!(d.scopes(), 1, "observed at Duration::MAX: not idle");
}
