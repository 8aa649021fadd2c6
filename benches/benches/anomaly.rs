//! The anomaly detector's cost per observation, the price the host pays on
//! every exec and every CPU sample.
//!
//! Each benchmark runs against a scope whose windows are full (the steady
//! state): 400 s of 30 execs/s with ~2 s durations. `exec_scored` is the
//! worst common case (a duration above the floor, so the duration baseline
//! is maintained and the exec and output rates are checked); `exec_below_floor`
//! is a sub-second exec; `cpu_sample` a CPU sample extending a run.
//!
//! Run with `cargo bench -p paddock-benches --no-default-features --bench anomaly`.

// `criterion_group!` and `criterion_main!` generate public items without docs.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use paddock_anomaly::{Detector, DetectorConfig, Observation, Scope};

/// Milliseconds between execs: 30 execs/s.
const STEP_MS: u64 = 33;

/// A detector whose `scope` has full windows, and the time reached.
fn warmed(scope: &Scope) -> (Detector, u64) {
    let mut d = Detector::new(DetectorConfig::default()).expect("the default config is valid");
    let mut now = 0;
    let mut x: u64 = 1;
    for _ in 0..400 * 30 {
        // A cheap LCG for ±25 % duration noise.
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let noise = (x >> 33) % 1000;
        let obs = Observation::ExecFinished {
            duration: Duration::from_millis(1500 + noise),
            output_bytes: 4096,
            timed_out: false,
        };
        d.observe(scope, Duration::from_millis(now), &obs);
        now += STEP_MS;
    }
    (d, now)
}

fn observe(c: &mut Criterion) {
    let mut group = c.benchmark_group("anomaly_observe");
    let scope = Scope::slot("ci", 3);
    for (name, duration) in [
        ("exec_scored", Duration::from_millis(2000)),
        ("exec_below_floor", Duration::from_millis(200)),
    ] {
        let (mut d, mut now) = warmed(&scope);
        let obs = Observation::ExecFinished {
            duration,
            output_bytes: 4096,
            timed_out: false,
        };
        group.bench_function(name, |b| {
            b.iter(|| {
                now += STEP_MS;
                black_box(d.observe(&scope, Duration::from_millis(now), black_box(&obs)))
            });
        });
    }
    let (mut d, mut now) = warmed(&scope);
    let obs = Observation::CpuSample { utilization: 0.5 };
    group.bench_function("cpu_sample", |b| {
        b.iter(|| {
            now += 1000;
            black_box(d.observe(&scope, Duration::from_millis(now), black_box(&obs)))
        });
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = observe
}
criterion_main!(benches);
