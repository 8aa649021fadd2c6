//! The in-place reset of a pool slot, phase by phase, next to its floors
//! measured in the same run (TCG here, 256 MiB guests, a pool of two).
//!
//! - `release_to_ready_ms`: from `release()` until the pool has both slots
//!   ready again, `RESETS` times, with where each reset's time went
//!   (`phases_ms`: the `ResetPhases` and their `ResetDetail`).
//! - `first_exec_true_ms`: each lease's first exec of `true`, and
//!   `first_exec_true_guest_ms` the process's own time in the guest.
//! - floors, measured in each lease between the resets: `loadvm_alone_ms`,
//!   QEMU's `loadvm` of the slot's snapshot through the same monitor call,
//!   with no agent session and no rewarm; `steady_exec_true_ms`, the
//!   lease's third exec of `true`.
//!
//! Run as root with libvirtd running and an image built:
//! `PADDOCK_IMAGE=$(readlink -f target/paddock-image/current.json) cargo
//! bench -p paddock-benches --bench reset`. `PADDOCK_BENCH_RESETS` changes
//! the number of resets (default 40).

use std::time::{Duration, Instant};

use paddock::agent::Execute;
use paddock::{Paddock, PaddockConfig, PoolConfig, VmPool, VmPoolSpec};
use paddock_benches::{Samples, wait_all_ready};
use paddock_tests::vm::{SYSTEM_URI, test_image};

const DEFAULT_RESETS: usize = 40;

/// How long the pool may take to have every slot ready again.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

fn main() -> anyhow::Result<()> {
    paddock_benches::run_harness(run())
}

/// Everything the run measures, by name.
#[derive(Default)]
struct Figures {
    release_to_ready: Samples,
    stop_or_revert: Samples,
    agent: Samples,
    agent_hello: Samples,
    agent_settle: Samples,
    rewarm: Samples,
    rewarm_guest: Samples,
    first_exec: Samples,
    first_exec_guest: Samples,
    loadvm_alone: Samples,
    steady_exec: Samples,
    steady_exec_guest: Samples,
}

async fn run() -> anyhow::Result<()> {
    let resets = std::env::var("PADDOCK_BENCH_RESETS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_RESETS);
    let image = test_image()?;
    let mut config = PaddockConfig::new(image);
    config.libvirt_uri = SYSTEM_URI.into();
    let paddock = Paddock::connect(config).await?;
    let spec = VmPoolSpec::new(format!("bench-reset-{}", std::process::id()));
    let rewarm = spec.rewarm.clone();
    let pool = paddock
        .create_pool(
            spec,
            PoolConfig {
                min_ready: 2,
                max_size: 2,
                max_concurrent_prepares: 2,
                health_check_interval: None,
                ..PoolConfig::default()
            },
        )
        .await?;
    let measured = async {
        pool.wait_ready(Duration::from_secs(180)).await?;
        measure(&pool, resets).await
    }
    .await;
    pool.close().await?;
    let mut f = measured?;
    let report = serde_json::json!({
        "accelerator": "tcg",
        "guest_memory_mib": 256,
        "pool_size": 2,
        "rewarm": rewarm,
        "release_to_ready_ms": f.release_to_ready.json(),
        "phases_ms": {
            "stop_or_revert (loadvm)": f.stop_or_revert.json(),
            "agent": f.agent.json(),
            "agent.hello": f.agent_hello.json(),
            "agent.settle": f.agent_settle.json(),
            "rewarm": f.rewarm.json(),
            "rewarm.guest_process": f.rewarm_guest.json(),
        },
        "first_exec_true_ms": f.first_exec.json(),
        "first_exec_true_guest_ms": f.first_exec_guest.json(),
        "floors": {
            "loadvm_alone_ms": f.loadvm_alone.json(),
            "steady_exec_true_ms": f.steady_exec.json(),
            "steady_exec_true_guest_ms": f.steady_exec_guest.json(),
        },
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

async fn measure(pool: &VmPool, resets: usize) -> anyhow::Result<Figures> {
    let mut f = Figures::default();
    for _ in 0..resets {
        wait_all_ready(pool, READY_TIMEOUT).await?;
        let lease = pool.acquire().await?;
        if lease.uses() > 0 {
            let phases = lease.last_reset();
            f.stop_or_revert.push(phases.stop_or_revert);
            f.agent.push(phases.agent);
            f.agent_hello.push(phases.detail.agent_hello);
            f.agent_settle.push(phases.detail.agent_settle);
            f.rewarm.push(phases.rewarm);
            f.rewarm_guest.push(phases.detail.rewarm_guest);
        }
        let (took, in_guest) = exec_true(&lease).await?;
        f.first_exec.push(took);
        f.first_exec_guest.push(in_guest);
        // The floors, interleaved with the resets so that the machine's
        // load weighs on both alike: a steady exec (the third of the
        // lease), then QEMU's loadvm alone, with no session while the
        // guest is rewound, as in a reset. The release's reset then
        // reconnects as after any lease.
        exec_true(&lease).await?;
        let (took, in_guest) = exec_true(&lease).await?;
        f.steady_exec.push(took);
        f.steady_exec_guest.push(in_guest);
        lease.client().close().await;
        let t = Instant::now();
        lease.vm().load_snapshot_in_place("golden").await?;
        f.loadvm_alone.push(t.elapsed());
        let t = Instant::now();
        lease.release();
        wait_all_ready(pool, READY_TIMEOUT).await?;
        f.release_to_ready.push(t.elapsed());
    }
    Ok(f)
}

/// One exec of `true`: the round trip, and the process's time in the
/// guest.
async fn exec_true(
    lease: &paddock::Lease<paddock::VmBackend>,
) -> anyhow::Result<(Duration, Duration)> {
    let t = Instant::now();
    let out = lease.client().exec_collect(Execute::argv(["true"])).await?;
    let took = t.elapsed();
    anyhow::ensure!(
        out.result.exit_code == Some(0),
        "true failed: {:?}",
        out.result
    );
    Ok((took, Duration::from_micros(out.result.duration_us)))
}
