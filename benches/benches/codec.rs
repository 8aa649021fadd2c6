//! Codec throughput: frame encoding, frame decoding with CRC verification, and
//! a JSON control message (`Execute`) both ways.
//!
//! Throughput is counted in payload bytes (the 28-byte header is not counted).
//! The project's target is at least 2 GB/s for 64 KiB data frames, both for
//! encoding and for decoding with verification.
//!
//! Run with `cargo bench -p paddock-benches --bench codec`.

// `criterion_group!` and `criterion_main!` generate public items without docs.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use paddock_proto::{
    DEFAULT_MAX_PAYLOAD, Execute, FrameDecoder, HEADER_LEN, Message, decode_message, encode_message,
};

/// Payload sizes, with their labels: 64 B, 4 KiB, 64 KiB and 1 MiB.
const SIZES: [(usize, &str); 4] = [
    (64, "64B"),
    (4 * 1024, "4KiB"),
    (64 * 1024, "64KiB"),
    (1024 * 1024, "1MiB"),
];

const REQUEST_ID: u64 = 42;

/// Payload bytes as criterion's throughput unit.
fn bytes(len: usize) -> Throughput {
    Throughput::Bytes(u64::try_from(len).expect("a payload length fits in u64"))
}

/// Non-constant data, so nothing can special-case zeros.
fn data(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| u8::try_from(i % 251).expect("less than 251"))
        .collect()
}

/// A decoder that accepts the largest benchmarked payload. The limit is
/// inclusive (only `payload_len > max` is rejected), so the default 1 MiB is
/// enough for a 1 MiB payload.
fn decoder() -> FrameDecoder {
    FrameDecoder::new(DEFAULT_MAX_PAYLOAD)
}

fn encoded(message: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    encode_message(&mut out, REQUEST_ID, message).expect("encode");
    out
}

/// A realistic `Execute` whose JSON payload is exactly `target` bytes long, or
/// the smallest this shape allows when `target` is below that.
fn execute_of_size(target: usize) -> Execute {
    let build = |script: String| {
        let mut exec = Execute::argv(["/bin/sh".to_owned(), "-c".to_owned(), script]);
        exec.env
            .insert("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into());
        exec.env.insert("LANG".into(), "C.UTF-8".into());
        exec.cwd = Some("/work".into());
        exec.timeout_ms = Some(30_000);
        exec.stdout_cap = Some(1 << 20);
        exec.stdin = true;
        exec
    };
    let payload_len = |exec: &Execute| encoded(&Message::Execute(exec.clone())).len() - HEADER_LEN;
    let base = payload_len(&build(String::new()));
    // ASCII without quotes, backslashes or controls: one JSON byte per char.
    let pattern = "echo building target; make -j2 all && ./run-tests --verbose; ";
    let script: String = pattern
        .chars()
        .cycle()
        .take(target.saturating_sub(base))
        .collect();
    let exec = build(script);
    assert_eq!(payload_len(&exec), target.max(base), "padding is exact");
    exec
}

fn encode_stdout(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode_stdout");
    for (len, label) in SIZES {
        let message = Message::Stdout(data(len));
        let mut out = Vec::with_capacity(HEADER_LEN + len);
        group.throughput(bytes(len));
        group.bench_function(BenchmarkId::from_parameter(label), |b| {
            b.iter(|| {
                out.clear();
                encode_message(&mut out, REQUEST_ID, black_box(&message)).expect("encode");
                black_box(out.len())
            });
        });
    }
    group.finish();
}

fn decode_verify_stdout(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode_verify_stdout");
    for (len, label) in SIZES {
        let frame = encoded(&Message::Stdout(data(len)));
        let mut dec = decoder();
        group.throughput(bytes(len));
        group.bench_function(BenchmarkId::from_parameter(label), |b| {
            b.iter(|| {
                dec.feed(black_box(&frame));
                let frame = dec
                    .next_frame()
                    .expect("valid frame")
                    .expect("complete frame");
                black_box(frame)
            });
        });
        assert_eq!(dec.buffered(), 0, "every fed frame was decoded");
    }
    group.finish();
}

fn execute_json(c: &mut Criterion) {
    let mut group = c.benchmark_group("execute_json");
    for (len, label) in SIZES {
        let message = Message::Execute(execute_of_size(len));
        let frame = encoded(&message);
        let mut check = decoder();
        check.feed(&frame);
        let decoded = check.next_frame().expect("valid").expect("complete");
        assert_eq!(decode_message(decoded).expect("valid Execute"), message);

        let mut out = Vec::with_capacity(frame.len());
        group.throughput(bytes(frame.len() - HEADER_LEN));
        group.bench_function(BenchmarkId::new("encode", label), |b| {
            b.iter(|| {
                out.clear();
                encode_message(&mut out, REQUEST_ID, black_box(&message)).expect("encode");
                black_box(out.len())
            });
        });
        let mut dec = decoder();
        group.bench_function(BenchmarkId::new("decode", label), |b| {
            b.iter(|| {
                dec.feed(black_box(&frame));
                let frame = dec
                    .next_frame()
                    .expect("valid frame")
                    .expect("complete frame");
                decode_message(frame).expect("valid Execute")
            });
        });
    }
    group.finish();
}

criterion_group!(benches, encode_stdout, decode_verify_stdout, execute_json);
criterion_main!(benches);
