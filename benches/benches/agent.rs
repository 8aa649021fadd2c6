//! End-to-end costs of the guest agent over a Unix socket, measured through
//! the real client and the real `paddock-agent` binary (release build).
//!
//! - `exec_round_trip/agent_true`: `exec_collect(["true"])` from request to
//!   result, next to `exec_round_trip/bare_spawn_true`, a plain
//!   `std::process::Command` spawn and wait of `true` in the same run. Their
//!   difference is what the agent and the protocol add. Target: at most
//!   0.3 ms added to the median.
//! - `file_transfer/put` and `file_transfer/get`: 64 MiB through FILE_PUT and
//!   FILE_GET, to and from a file on tmpfs (as in a guest, whose root is in
//!   RAM). Target: at least 500 MB/s.
//!
//! Run with `cargo xtask bench -- agent` (it builds the release agent first),
//! or `cargo build --release -p paddock-guest-agent && cargo bench -p
//! paddock-benches --bench agent`.

// `criterion_group!` and `criterion_main!` generate public items without docs.
#![allow(missing_docs)]

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use paddock_agent_client::Execute;
use paddock_tests::AgentProcess;

const TRANSFER_BYTES: usize = 64 * 1024 * 1024;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn exec_round_trip(c: &mut Criterion) {
    let rt = runtime();
    let agent = AgentProcess::start(&["--log", "warn"]).expect("agent starts");
    let client = rt.block_on(agent.client()).expect("agent connects");
    let mut group = c.benchmark_group("exec_round_trip");
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("agent_true", |b| {
        b.iter(|| {
            let out = rt
                .block_on(client.exec_collect(Execute::argv(["true"])))
                .expect("exec");
            assert_eq!(out.result.exit_code, Some(0));
        });
    });
    group.bench_function("bare_spawn_true", |b| {
        b.iter(|| {
            let status = std::process::Command::new("true").status().expect("spawn");
            assert!(status.success());
        });
    });
    group.finish();
}

fn file_transfer(c: &mut Criterion) {
    let rt = runtime();
    let agent = AgentProcess::start(&["--log", "warn"]).expect("agent starts");
    let client = rt.block_on(agent.client()).expect("agent connects");
    let payload: Vec<u8> = (0..TRANSFER_BYTES)
        .map(|i| u8::try_from(i % 251).unwrap_or(0))
        .collect();
    // Guests write into RAM (their root is an initramfs), and a disk-backed
    // destination here would measure this host's writeback, not the transfer.
    let ram = tempfile::tempdir_in("/dev/shm").expect("a tmpfs at /dev/shm");
    let remote = ram.path().join("bench.bin");
    let remote = remote.to_str().expect("UTF-8 path").to_owned();
    let mut group = c.benchmark_group("file_transfer");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(15));
    group.throughput(Throughput::Bytes(TRANSFER_BYTES as u64));
    group.bench_function("put", |b| {
        b.iter(|| {
            let done = rt
                .block_on(client.put_reader(&mut payload.as_slice(), &remote, 0o644))
                .expect("put");
            assert_eq!(done.size, TRANSFER_BYTES as u64);
        });
    });
    group.bench_function("get", |b| {
        b.iter(|| {
            let download = rt
                .block_on(client.get_writer(&remote, &mut tokio::io::sink()))
                .expect("get");
            assert_eq!(download.size, TRANSFER_BYTES as u64);
        });
    });
    group.finish();
}

criterion_group!(benches, exec_round_trip, file_transfer);
criterion_main!(benches);
