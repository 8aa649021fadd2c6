//! What observation adds to the data path with everything on: the events
//! an execution emits (started and finished) and those of an acquire and
//! its release, delivered to the Prometheus metrics, the audit log (batched
//! fsync, its writer thread doing the I/O) and the anomaly detector,
//! against the same hub with no subscriber.
//!
//! Run with `cargo bench -p paddock-benches --no-default-features --bench events`.

// `criterion_group!` and `criterion_main!` generate public items without docs.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use paddock_anomaly::{AnomalySubscriber, Detector, DetectorConfig};
use paddock_audit::{AuditConfig, AuditOptions, AuditSubscriber, AuditWriter};
use paddock_events::{
    AcquireOutcome, EventHub, EventKind, ExecOutcome, LeaseId, Source, Subscriber,
};
use paddock_metrics::Metrics;
use paddock_proto::{Command, ExecResult};

fn source() -> Source {
    Source {
        pool: Some("bench".into()),
        slot: Some(1),
        lease: Some(LeaseId(7)),
        tenant: None,
        domain: Some("paddock-bench-1".into()),
    }
}

fn one_exec(hub: &EventHub, source: &Source) {
    hub.emit(
        source.clone(),
        EventKind::ExecStarted {
            exec: 0,
            command: Command::Argv(vec!["make".into(), "test".into()]),
            env_names: vec!["CI".into()],
            cwd: Some("/work".into()),
            timeout: Some(Duration::from_secs(60)),
        },
    );
    hub.emit(
        source.clone(),
        EventKind::ExecFinished {
            exec: 0,
            outcome: ExecOutcome::Ok,
            result: Some(ExecResult {
                exit_code: Some(0),
                stdout_bytes: 4096,
                duration_us: 1500,
                ..ExecResult::default()
            }),
            duration: Duration::from_micros(1800),
            error: None,
        },
    );
}

fn one_lease(hub: &EventHub, source: &Source) {
    hub.emit(
        source.clone(),
        EventKind::Acquire {
            outcome: AcquireOutcome::Ok,
            wait: Duration::from_micros(20),
        },
    );
    hub.emit(
        source.clone(),
        EventKind::LeaseReleased {
            held: Duration::from_millis(300),
        },
    );
}

fn everything_on(dir: &std::path::Path) -> EventHub {
    let hub = EventHub::new();
    let (metrics, _registry) = Metrics::new().expect("metrics");
    hub.subscribe(Arc::new(metrics));
    let log = AuditWriter::open(dir, AuditConfig::default()).expect("audit log");
    hub.subscribe(Arc::new(AuditSubscriber::new(log, AuditOptions::default())));
    let detector = Detector::new(DetectorConfig::default()).expect("detector");
    hub.subscribe(Arc::new(AnomalySubscriber::new(detector, hub.clone())) as Arc<dyn Subscriber>);
    hub
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let quiet = EventHub::new();
    let observed = everything_on(dir.path());
    let source = source();
    let mut group = c.benchmark_group("observation");
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(3));
    group.bench_function("exec_events/no_subscriber", |b| {
        b.iter(|| one_exec(black_box(&quiet), &source));
    });
    group.bench_function("exec_events/everything_on", |b| {
        b.iter(|| one_exec(black_box(&observed), &source));
    });
    // At a pace the audit writer keeps up with (one exec per 200 µs, far
    // above what a pool of VMs does): what the emitting task pays while
    // the audit queue has room. The unpaced figure above is the audit
    // writer's throughput instead: a full queue makes emitters wait.
    group.bench_function("exec_events/everything_on_paced", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                std::thread::sleep(Duration::from_micros(200));
                let started = std::time::Instant::now();
                one_exec(black_box(&observed), &source);
                spent += started.elapsed();
            }
            spent
        });
    });
    group.bench_function("lease_events/no_subscriber", |b| {
        b.iter(|| one_lease(black_box(&quiet), &source));
    });
    group.bench_function("lease_events/everything_on", |b| {
        b.iter(|| one_lease(black_box(&observed), &source));
    });
    group.bench_function("lease_events/everything_on_paced", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                std::thread::sleep(Duration::from_micros(200));
                let started = std::time::Instant::now();
                one_lease(black_box(&observed), &source);
                spent += started.elapsed();
            }
            spent
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
