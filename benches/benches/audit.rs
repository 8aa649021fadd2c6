//! Audit log throughput: records per second appended (and flushed) through
//! `paddock-audit`'s writer thread, for each fsync policy.
//!
//! One iteration appends 1,000 typical exec records and then flushes, so the
//! figure includes the final sync. The log lives in `CARGO_TARGET_TMPDIR`
//! (the target directory's disk) rather than `/tmp`, which may be a tmpfs on
//! which `fdatasync` costs nothing.
//!
//! Run with `cargo bench -p paddock-benches --no-default-features --bench audit`.

// `criterion_group!` and `criterion_main!` generate public items without docs.
#![allow(missing_docs)]

use std::time::Duration;

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use paddock_audit::{
    Actor, AuditConfig, AuditEvent, AuditWriter, CommandRecording, ExecSummary, FsyncPolicy,
    Request, Response, Stage, Target, Verb, outcome,
};

const BATCH: u64 = 1_000;

/// A completed exec as the host would record it: about 710 bytes of JSON.
fn exec_event(i: u64) -> AuditEvent {
    AuditEvent::new(
        format!("6f1c2d4e-8a7b-4c3d-9e0f-{i:012x}"),
        Stage::Completed,
        Actor::tenant("acme-research"),
        Verb::EXEC,
    )
    .with_target(
        Target::pool("python-3.12")
            .with_slot(7)
            .with_lease(format!("lease-{i}"))
            .with_domain("paddock-python-3.12-7"),
    )
    .with_request(Request::exec(
        &ExecSummary::argv([
            "python3",
            "-u",
            "/work/main.py",
            "--input",
            "/work/data.csv",
        ])
        .env_names(["PATH", "HOME", "PYTHONPATH", "LANG"])
        .cwd("/work")
        .timeout(Duration::from_secs(60)),
        CommandRecording::Full,
    ))
    .with_response(
        Response::outcome(outcome::OK)
            .with_exit_code(0)
            .with_duration(Duration::from_millis(1234))
            .with_bytes(4096)
            .with_truncated(false),
    )
}

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("audit_append");
    group.throughput(Throughput::Elements(BATCH));
    group.sample_size(10);
    // Each iteration is long with EachRecord; flat sampling keeps the count
    // of iterations at the sample size.
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    let policies = [
        ("each_record", FsyncPolicy::EachRecord),
        ("batched_64_50ms", FsyncPolicy::default()),
        ("never", FsyncPolicy::Never),
    ];
    for (name, fsync) in policies {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
        let log = AuditWriter::open(
            dir.path(),
            AuditConfig {
                fsync,
                ..AuditConfig::default()
            },
        )
        .expect("open");
        let events: Vec<AuditEvent> = (0..BATCH).map(exec_event).collect();
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                for event in &events {
                    log.append(event.clone()).expect("append");
                }
                log.flush().expect("flush");
            });
        });
        let stats = log.stats();
        log.close().expect("close");
        eprintln!(
            "{name}: {} records, {} bytes ({} bytes/record), {} syncs",
            stats.records_written,
            stats.bytes_written,
            stats.bytes_written / stats.records_written.max(1),
            stats.fsyncs
        );
    }
    group.finish();
}

criterion_group!(benches, append);
criterion_main!(benches);
