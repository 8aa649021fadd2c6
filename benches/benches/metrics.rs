//! The Prometheus subscriber's price: what `hub.emit` costs with
//! [`Metrics`] subscribed (the data path pays it on every event), against
//! the same hub with no subscriber, and what a scrape (`render`) costs for
//! 2 pools × 8 slots with every family populated.
//!
//! Run with `cargo bench -p paddock-benches --no-default-features --bench metrics`.

// `criterion_group!` and `criterion_main!` generate public items without docs.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use paddock_events::{
    AcquireOutcome, DestroyCause, EventHub, EventKind, ExecOutcome, FileDirection, LeaseId,
    ResetOutcome, Source,
};
use paddock_metrics::{Metrics, PoolGauge, SlotCounts, SlotResources};
use paddock_proto::ExecResult;

fn source(pool: &str, slot: u32) -> Source {
    Source {
        pool: Some(pool.into()),
        slot: Some(slot),
        lease: Some(LeaseId(42)),
        tenant: Some("alice".into()),
        domain: Some(format!("paddock-{pool}-{slot}").into()),
    }
}

fn exec_finished() -> EventKind {
    EventKind::ExecFinished {
        exec: 0,
        outcome: ExecOutcome::Ok,
        result: Some(ExecResult {
            exit_code: Some(0),
            stdout_bytes: 4096,
            stderr_bytes: 12,
            duration_us: 1500,
            ..ExecResult::default()
        }),
        duration: Duration::from_micros(1800),
        error: None,
    }
}

fn acquire() -> EventKind {
    EventKind::Acquire {
        outcome: AcquireOutcome::Ok,
        wait: Duration::from_micros(180),
    }
}

fn subscribed() -> (Arc<Metrics>, EventHub) {
    let (metrics, _registry) = Metrics::new().expect("metrics register");
    let metrics = Arc::new(metrics);
    let hub = EventHub::new();
    hub.subscribe(metrics.clone());
    (metrics, hub)
}

fn emit(c: &mut Criterion) {
    let mut group = c.benchmark_group("metrics_emit");
    // The event is cloned per iteration either way: `emit` takes it by value.
    let bare = EventHub::new();
    let (_metrics, hub) = subscribed();
    let src = source("ci", 3);
    for (name, kind) in [("exec_finished", exec_finished()), ("acquire", acquire())] {
        group.bench_function(format!("{name}_no_subscriber"), |b| {
            b.iter(|| bare.emit(src.clone(), black_box(kind.clone())));
        });
        group.bench_function(name, |b| {
            b.iter(|| hub.emit(src.clone(), black_box(kind.clone())));
        });
    }
    group.finish();
}

struct Pool(String);

impl PoolGauge for Pool {
    fn name(&self) -> &str {
        &self.0
    }

    fn counts(&self) -> SlotCounts {
        SlotCounts {
            ready: 4,
            leased: 3,
            preparing: 1,
            waiting: 0,
            total: 8,
            backend_available: true,
        }
    }
}

fn render(c: &mut Criterion) {
    let (metrics, hub) = subscribed();
    let pools: Vec<Arc<dyn PoolGauge>> = ["ci", "gpu"]
        .iter()
        .map(|name| Arc::new(Pool((*name).to_owned())) as Arc<dyn PoolGauge>)
        .collect();
    for pool in &pools {
        metrics.watch_pool(pool.clone());
        let name = pool.name();
        hub.emit(
            source(name, 0),
            EventKind::PoolCreated {
                golden_id: "g1".into(),
                image_hash: "sha256:0123".into(),
                strategy: "snapshot",
            },
        );
        for slot in 0..8 {
            let src = source(name, slot);
            hub.emit(
                src.clone(),
                EventKind::SlotCreated {
                    duration: Duration::from_secs(2),
                },
            );
            hub.emit(src.clone(), acquire());
            hub.emit(src.clone(), exec_finished());
            hub.emit(
                src.clone(),
                EventKind::FileTransferred {
                    direction: FileDirection::Put,
                    path: "/work/input".into(),
                    bytes: 1 << 20,
                    ok: true,
                    error: None,
                    duration: Duration::from_millis(8),
                },
            );
            hub.emit(
                src.clone(),
                EventKind::ResetFinished {
                    strategy: "snapshot",
                    outcome: ResetOutcome::Ok,
                    reason: None,
                    duration: Duration::from_millis(40),
                    phases: vec![
                        ("revert", Duration::from_millis(30)),
                        ("check", Duration::from_millis(10)),
                    ],
                },
            );
            hub.emit(
                src.clone(),
                EventKind::AgentRoundTrip {
                    duration: Duration::from_micros(250),
                },
            );
            hub.emit(src.clone(), EventKind::ProtocolError { kind: "crc" });
            metrics.set_slot_resources(
                name,
                slot,
                SlotResources {
                    cpu_seconds: 12.5,
                    memory_bytes: 512 << 20,
                    block_read_bytes: 1 << 30,
                    block_write_bytes: 1 << 28,
                    net_rx_bytes: 1 << 20,
                    net_tx_bytes: 1 << 19,
                },
            );
        }
        hub.emit(
            source(name, 8),
            EventKind::SlotDestroyed {
                cause: DestroyCause::WornOut,
                reason: None,
            },
        );
    }
    let size = metrics.render().expect("renders").len();
    let mut group = c.benchmark_group("metrics_render");
    group.bench_function(format!("2_pools_8_slots_{size}_bytes"), |b| {
        b.iter(|| black_box(metrics.render().expect("renders")));
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = emit, render
}
criterion_main!(benches);
