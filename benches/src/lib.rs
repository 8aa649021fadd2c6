//! Benchmark harnesses for Paddock.
//!
//! This crate has no library code of its own: it holds the criterion
//! benchmarks under `benches/` (run them with
//! `cargo bench -p paddock-benches --bench codec`).
