//! Benchmark harnesses for Paddock.
//!
//! The criterion benchmarks are under `benches/` (run them with
//! `cargo xtask bench`); `vm` and `slo` measure real VMs (`cargo xtask
//! bench-vm`, `cargo xtask bench-slo`), and `reset` a pool slot's in-place
//! reset phase by phase next to its floors. What they share is here.
//! bench-vm`, `cargo xtask bench-slo`). What they share is here, and
//! [`slot_memory`] (each slot's USS, PSS and huge pages next to what its
//! guest uses, idle CPU, the host's idle-slot capacity), which the
//! `slot_memory` bench and the SLO harness both report.
//!
//! `agent`, `vm` and `slo` link libvirt (through `paddock` and
//! `paddock-tests`) and need the default feature `libvirt`; `codec` and
//! `render` do not, so `--no-default-features` builds them without
//! libvirt-dev.

#[cfg(feature = "libvirt")]
pub mod agent_rtt;
#[cfg(feature = "libvirt")]
pub mod slot_memory;

use std::future::Future;

#[cfg(feature = "libvirt")]
pub mod floors;

use std::time::Duration;

/// Runs a real-VM harness on a two-thread runtime (what a host gives
/// Paddock here).
///
/// # Errors
/// The runtime cannot start, or the harness fails.
pub fn run_harness(harness: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(harness)
}

/// Durations of one measured step, reported as median and p99.
#[derive(Debug, Default)]
pub struct Samples(pub Vec<Duration>);

impl Samples {
    /// Adds one measurement.
    pub fn push(&mut self, sample: Duration) {
        self.0.push(sample);
    }

    /// `{"p50": ms, "p99": ms, "n": count}`, milliseconds rounded to µs.
    /// Nearest-rank percentiles: with few samples p99 is the maximum.
    #[must_use]
    pub fn json(&mut self) -> serde_json::Value {
        self.0.sort();
        let n = self.0.len();
        let at = |q: usize| {
            self.0
                .get((n * q / 100).min(n.saturating_sub(1)))
                .map_or(0.0, |d| (d.as_secs_f64() * 1_000_000.0).round() / 1000.0)
        };
        serde_json::json!({ "p50": at(50), "p99": at(99), "n": n })
    }
}

/// File transfer throughput through the agent next to the raw channel
/// (the `transfer` bench).
#[cfg(feature = "libvirt")]
pub mod transfer;

/// Boot figures: phases over several boots, and the floor.
#[cfg(feature = "libvirt")]
pub mod boot;

/// Waits until every slot of `pool` (its `max_size`) is ready, for at most
/// `timeout`; polls every millisecond, so that a reset's end is seen at once.
///
/// # Errors
/// The pool is not full within `timeout` (the error shows its stats).
#[cfg(feature = "libvirt")]
pub async fn wait_all_ready(pool: &paddock::VmPool, timeout: Duration) -> anyhow::Result<()> {
    let target = pool.config().max_size;
    let deadline = std::time::Instant::now() + timeout;
    while pool.stats().ready < target {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "pool not ready: {:?}",
            pool.stats()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}
