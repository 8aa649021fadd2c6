//! The SLO harness: end-to-end figures of the golden-snapshot pool on real
//! VMs (TCG here, 256 MiB guests), printed as one JSON object on stdout.
//!
//! - `acquire_ms`: `acquire()` from a pool whose slots are all ready.
//! - `reset_ms`: from `release()` until the slot is ready again, for each
//!   reset strategy (in place, the default; restore; revert), with where
//!   the time went (`reset_phases_ms`); and for a NAT-filtered pool reset
//!   in place.
//! - `exec_true_ms`: exec round trip of `true` in a leased slot;
//!   `first_exec_true_after_reset_ms`: the first one of each lease.
//! - `boot_to_agent_ready_ms`: a sandbox booted from the image.
//! - `status_rtt_ms`, `channel_echo_ms`, `guest_spawn_true_ms`, `file_mb_s`,
//!   `channel_raw_mb_s`: the agent's per-request cost and 8 MiB transfers
//!   next to their floors, measured in one sandbox with a probe port
//!   ([`paddock_benches::floors`]); the whole set, with the ratios, is under
//!   `floors (one sandbox, virtio-serial)`.
//! - `boot_phases_ms`: where those boots went, phase by phase
//!   (`paddock::BootPhases`; `cargo bench --bench boot` adds the floor).
//! - `cycles_per_minute`: acquire, exec `true`, release, by two workers on a
//!   pool of two, for a minute.
//! - `host_memory_per_slot_mib`: QEMU's resident memory per slot after the
//!   load, and that minus the guest's memory size (negative when the guest
//!   has not touched all of its memory).
//! - `slot_uss_mib`, `slot_pss_mib`: each slot QEMU's unique and
//!   proportional memory (`smaps_rollup`), fresh and after the load (after
//!   its in-place resets); `slot_memory_mib` has them with RSS, huge pages
//!   and what each guest uses (`free`'s "used" and buff/cache).
//!
//! Run with `cargo xtask bench-slo` (root; it starts libvirtd and builds the
//! image first). It takes about four minutes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use paddock::agent::Execute;
use paddock::libvirt::{NetworkKind, NetworkSpec, builtin_filters};
use paddock::{
    Paddock, PaddockConfig, PoolConfig, PoolNetwork, ResetStrategy, Sandbox, SandboxConfig, VmPool,
    VmPoolSpec,
};
use paddock_benches::{Samples, wait_all_ready};
use paddock_tests::vm::{SYSTEM_URI, test_image};

const ACQUIRES: usize = 40;
const RESTORES: usize = 20;
const REVERTS: usize = 8;
const NAT_CYCLES: usize = 10;
const EXECS: usize = 100;
const BOOTS: usize = 3;
const LOAD_SECONDS: u64 = 60;
const GUEST_MIB: u64 = 256;

/// How long the pool may take to have every slot ready again.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

fn main() -> anyhow::Result<()> {
    paddock_benches::run_harness(run())
}

async fn make_pool(paddock: &Paddock, strategy: ResetStrategy) -> anyhow::Result<VmPool> {
    make_pool_on(paddock, strategy, PoolNetwork::Isolated).await
}

async fn make_pool_on(
    paddock: &Paddock,
    strategy: ResetStrategy,
    network: PoolNetwork,
) -> anyhow::Result<VmPool> {
    let mut spec = VmPoolSpec::new(format!("slo-{}", std::process::id()));
    spec.reset = strategy;
    spec.network = network;
    spec.memory_mib = GUEST_MIB;
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
    pool.wait_ready(Duration::from_secs(180)).await?;
    Ok(pool)
}

/// What `acquire_and_reset` measured.
#[derive(Default)]
struct Cycles {
    acquire: Samples,
    reset: Samples,
    /// The lease's first exec of `true` (the guest's first work after its
    /// reset).
    first_exec: Samples,
    /// The phases of the resets (see `ResetPhases`), as the slots recorded
    /// them: seen on the next lease of the slot.
    stop_or_revert: Samples,
    overlay: Samples,
    restore: Samples,
    agent: Samples,
    network: Samples,
    rewarm: Samples,
}

impl Cycles {
    fn phases(&mut self) -> serde_json::Value {
        serde_json::json!({
            "stop_or_revert": self.stop_or_revert.json(),
            "overlay": self.overlay.json(),
            "restore": self.restore.json(),
            "agent": self.agent.json(),
            "network": self.network.json(),
            "rewarm": self.rewarm.json(),
        })
    }
}

/// Acquire and reset latencies of `count` cycles on an idle, full pool.
async fn acquire_and_reset(pool: &VmPool, count: usize) -> anyhow::Result<Cycles> {
    let mut cycles = Cycles::default();
    for _ in 0..count {
        wait_all_ready(pool, READY_TIMEOUT).await?;
        let t = Instant::now();
        let lease = pool.acquire().await?;
        cycles.acquire.push(t.elapsed());
        if lease.uses() > 0 {
            let phases = lease.last_reset();
            cycles.stop_or_revert.push(phases.stop_or_revert);
            cycles.overlay.push(phases.overlay);
            cycles.restore.push(phases.restore);
            cycles.agent.push(phases.agent);
            cycles.network.push(phases.network);
            cycles.rewarm.push(phases.rewarm);
        }
        let t = Instant::now();
        lease.client().exec_collect(Execute::argv(["true"])).await?;
        cycles.first_exec.push(t.elapsed());
        let t = Instant::now();
        lease.release();
        wait_all_ready(pool, READY_TIMEOUT).await?;
        cycles.reset.push(t.elapsed());
    }
    Ok(cycles)
}

/// QEMU's resident set of each slot domain of `pool`, in MiB.
fn qemu_rss_mib(pool: &str) -> Vec<u64> {
    let mut out = Vec::new();
    for index in 0..2 {
        let pid_file = format!("/run/libvirt/qemu/paddock-{pool}-{index}.pid");
        let Ok(pid) = std::fs::read_to_string(&pid_file) else {
            continue;
        };
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap_or_default();
        if let Some(kib) = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
        {
            out.push(kib / 1024);
        }
    }
    out
}

async fn run() -> anyhow::Result<()> {
    let image = test_image()?;
    let mut config = PaddockConfig::new(image.clone());
    config.libvirt_uri = SYSTEM_URI.into();
    let paddock = Paddock::connect(config).await?;

    // Boot to agent ready, from the image.
    let mut boot = Samples::default();
    let mut boot_phases = paddock_benches::boot::PhaseSamples::default();
    for i in 0..BOOTS {
        let mut config = SandboxConfig::new(format!("paddock-slo-boot-{}-{i}", std::process::id()));
        config.memory_mib = GUEST_MIB;
        config.pool = "slo-boot".into();
        let sandbox = Sandbox::boot(paddock.libvirt(), &image, config).await?;
        boot.0.push(sandbox.boot_to_ready());
        boot_phases.push(sandbox.boot_phases());
        sandbox.destroy().await?;
    }
    eprintln!("boots done");

    // The agent's per-request cost and transfers next to their floors, in
    // one sandbox with a probe port.
    let floors = {
        let mut config = SandboxConfig::new(format!("paddock-slo-floors-{}", std::process::id()));
        config.memory_mib = GUEST_MIB;
        config.pool = "slo-boot".into();
        config.probe_port = true;
        let sandbox = Sandbox::boot(paddock.libvirt(), &image, config).await?;
        let floors = paddock_benches::floors::measure(&sandbox, false).await;
        sandbox.destroy().await?;
        floors?
    };
    eprintln!("floors done");

    // The default strategy: in place.
    let pool = make_pool(&paddock, ResetStrategy::InPlace).await?;
    let pool_name = format!("slo-{}", std::process::id());
    wait_all_ready(&pool, READY_TIMEOUT).await?;
    let fresh_memory = slot_memory_json(&paddock, &pool, &pool_name).await?;
    wait_all_ready(&pool, READY_TIMEOUT).await?;
    let mut in_place = acquire_and_reset(&pool, ACQUIRES).await?;
    eprintln!("acquire/reset done");

    let mut exec = Samples::default();
    {
        let lease = pool.acquire().await?;
        for _ in 0..EXECS {
            let t = Instant::now();
            lease.client().exec_collect(Execute::argv(["true"])).await?;
            exec.0.push(t.elapsed());
        }
    }
    wait_all_ready(&pool, READY_TIMEOUT).await?;

    // Continuous load: two workers on the pool of two.
    let cycles = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(LOAD_SECONDS);
    let mut workers = Vec::new();
    for _ in 0..2 {
        let (pool, cycles) = (pool.clone(), Arc::clone(&cycles));
        workers.push(tokio::spawn(async move {
            while Instant::now() < stop {
                let lease = pool.acquire().await?;
                lease.client().exec_collect(Execute::argv(["true"])).await?;
                lease.release();
                cycles.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for worker in workers {
        worker.await??;
    }
    let per_minute = cycles.load(Ordering::Relaxed) * 60 / LOAD_SECONDS;
    let failed_resets = pool.stats().failed_resets;
    wait_all_ready(&pool, READY_TIMEOUT).await?;
    // After the load: what in-place resets leave resident.
    let rss = qemu_rss_mib(&pool_name);
    let loaded_memory = slot_memory_json(&paddock, &pool, &pool_name).await?;
    pool.close().await?;
    eprintln!("load done");

    // The other strategies.
    let pool = make_pool(&paddock, ResetStrategy::Restore).await?;
    let mut restore = acquire_and_reset(&pool, RESTORES).await?;
    pool.close().await?;
    let pool = make_pool(&paddock, ResetStrategy::Revert).await?;
    let mut revert = acquire_and_reset(&pool, REVERTS).await?;
    pool.close().await?;

    // A NAT-filtered pool, reset in place: each slot has its own MAC and
    // address (no traffic is sent).
    let pid = std::process::id();
    let network = NetworkSpec {
        name: format!("pdk-slo-{pid}"),
        bridge: format!("pdkslo{}", pid % 100_000),
        kind: NetworkKind::Nat,
        subnet: std::net::Ipv4Addr::new(10, 216, u8::try_from(pid % 200)? + 20, 0),
        slots: 3,
    };
    let filters = builtin_filters();
    let nat = async {
        let pool = make_pool_on(
            &paddock,
            ResetStrategy::InPlace,
            PoolNetwork::NatFiltered {
                network: network.clone(),
                filters,
                filter: "paddock-egress".into(),
            },
        )
        .await?;
        let cycles = acquire_and_reset(&pool, NAT_CYCLES).await;
        pool.close().await?;
        cycles
    }
    .await;
    // The pool leaves its network defined.
    for action in ["net-destroy", "net-undefine"] {
        let _ = std::process::Command::new("virsh")
            .args(["-q", "-c", SYSTEM_URI, action, &network.name])
            .output();
    }
    let mut nat = nat?;

    let report = serde_json::json!({
        "guest_memory_mib": GUEST_MIB,
        "accelerator": "tcg",
        "acquire_ms": in_place.acquire.json(),
        "reset_ms": {
            "in_place (default)": in_place.reset.json(),
            "restore": restore.reset.json(),
            "revert": revert.reset.json(),
            "in_place, NAT-filtered": nat.reset.json(),
        },
        "reset_phases_ms": {
            "in_place (default)": in_place.phases(),
            "restore": restore.phases(),
            "revert": revert.phases(),
            "in_place, NAT-filtered": nat.phases(),
        },
        "exec_true_ms": exec.json(),
        "status_rtt_ms": floors["status_rtt_ms"],
        "channel_echo_ms": floors["channel_echo_ms"],
        "guest_spawn_true_ms": floors["guest_spawn_true_ms"],
        "file_mb_s": floors["file_mb_s"],
        "channel_raw_mb_s": floors["channel_raw_mb_s"],
        "floors (one sandbox, virtio-serial)": floors,
        "first_exec_true_after_reset_ms": {
            "in_place (default)": in_place.first_exec.json(),
            "restore": restore.first_exec.json(),
            "revert": revert.first_exec.json(),
            "in_place, NAT-filtered": nat.first_exec.json(),
        },
        "boot_to_agent_ready_ms": boot.json(),
        "boot_phases_ms": boot_phases.json(),
        "cycles_per_minute": { "pool_size": 2, "workers": 2, "seconds": LOAD_SECONDS, "cycles_per_minute": per_minute, "failed_resets": failed_resets },
        "host_memory_per_slot_mib": {
            "qemu_rss": rss,
            "qemu_rss_minus_guest": rss.iter().map(|&r| i64::try_from(r).unwrap_or(i64::MAX) - i64::try_from(GUEST_MIB).unwrap_or(0)).collect::<Vec<_>>(),
        },
    });
    let mut report = report;
    // Memory per slot (`slot_memory`): USS and PSS next to the guest's use.
    report["slot_uss_mib"] = serde_json::json!({
        "fresh": fresh_memory["host_mib"]["uss"],
        "after_load": loaded_memory["host_mib"]["uss"],
    });
    report["slot_pss_mib"] = serde_json::json!({
        "fresh": fresh_memory["host_mib"]["pss"],
        "after_load": loaded_memory["host_mib"]["pss"],
    });
    report["slot_memory_mib"] = serde_json::json!({
        "fresh": fresh_memory,
        "after_load": loaded_memory,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// Each slot QEMU's USS, PSS, RSS and huge pages, and each guest's own use
/// (through a lease on every slot, released before this returns), in MiB:
/// `{"host_mib": {...}, "guest_mib": {...}}` (`paddock_benches::slot_memory`).
async fn slot_memory_json(
    paddock: &Paddock,
    pool: &VmPool,
    pool_name: &str,
) -> anyhow::Result<serde_json::Value> {
    use paddock_benches::slot_memory::{
        guest_json, guest_memory, host_json, host_memory, slot_vms,
    };
    let vms = slot_vms(paddock.libvirt(), pool_name).await?;
    let host = host_memory(&vms).await?;
    let guest = guest_memory(pool).await?;
    wait_all_ready(pool, READY_TIMEOUT).await?;
    Ok(serde_json::json!({ "host_mib": host_json(&host), "guest_mib": guest_json(&guest) }))
}
