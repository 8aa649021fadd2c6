//! Memory per slot of a pool of three (TCG, 256 MiB guests), and how many
//! idle slots this host holds, printed as one JSON object on stdout.
//!
//! For each slot: its QEMU's USS, PSS, RSS and transparent huge pages
//! (`smaps_rollup`), next to what its guest uses (`free`'s "used" and
//! buff/cache from its `/proc/meminfo`), medians over the slots:
//!
//! - `fresh`: slots just restored from the golden, idle;
//! - `after_reset`: after each slot was leased, ran `true` and was reset
//!   (the pool's default reset, in place);
//! - `after_dirty_reset`: after each lease wrote `DIRTY_MIB` MiB to the
//!   guest's `/tmp` (its page cache) and was reset.
//!
//! `idle_cpu_percent`: the share of one core each ready, idle slot's QEMU
//! used over `IDLE_SECONDS`; `capacity`: idle slots by memory (the host's
//! available memory over the median USS) and by CPU (idle slots until
//! they take `IDLE_CPU_BUDGET_PERCENT` of the cores).
//!
//! With `PADDOCK_BENCH_KSM=1` (root), KSM is then switched on
//! (`/sys/kernel/mm/ksm`, a host-wide setting: it merges every process's
//! mergeable memory, other QEMUs included) with `KSM_PAGES_TO_SCAN` pages
//! per wake-up, and after it settled (two full scans without growth of
//! `pages_sharing`) the figures are taken again (`ksm`), with ksmd's own
//! CPU; then one more dirty lease and reset on each slot (`ksm_after_dirty_reset`,
//! right after the reset, and settled again). KSM's settings are put back
//! as they were (merged pages unmerged when it was off).
//!
//! `PADDOCK_BENCH_TB_CACHE_MIB=N` sets the slots' TCG translation cache
//! (`<tb-cache>`) instead of the default.
//!
//! Run as root with libvirtd running and an image built:
//! `PADDOCK_IMAGE=$(readlink -f target/paddock-image/current.json) cargo
//! bench -p paddock-benches --bench slot_memory`.

use std::path::Path;
use std::time::{Duration, Instant};

use paddock::agent::Execute;
use paddock::libvirt::{ProcessMemory, Vm};
use paddock::{Paddock, PaddockConfig, PoolConfig, VmPool, VmPoolSpec};
use paddock_benches::slot_memory::{
    capacity_json, cpu_percent, guest_json, guest_memory, host_available_kib, host_json,
    host_memory, median, round, slot_vms,
};
use paddock_benches::wait_all_ready;
use paddock_tests::vm::{SYSTEM_URI, test_image};

const SLOTS: usize = 3;
const GUEST_MIB: u64 = 256;
const IDLE_SECONDS: u64 = 10;
const DIRTY_MIB: u64 = 32;
const IDLE_CPU_BUDGET_PERCENT: f64 = 50.0;
const KSM: &str = "/sys/kernel/mm/ksm";
const KSM_PAGES_TO_SCAN: u64 = 1000;
const KSM_SETTLE_TIMEOUT: Duration = Duration::from_secs(300);

/// How long the pool may take to have every slot ready again.
const READY_TIMEOUT: Duration = Duration::from_secs(180);

fn main() -> anyhow::Result<()> {
    paddock_benches::run_harness(run())
}

async fn run() -> anyhow::Result<()> {
    let image = test_image()?;
    let mut config = PaddockConfig::new(image);
    config.libvirt_uri = SYSTEM_URI.into();
    let paddock = Paddock::connect(config).await?;
    let name = format!("mem-{}", std::process::id());
    let mut spec = VmPoolSpec::new(&name);
    spec.memory_mib = GUEST_MIB;
    let tb_cache = std::env::var("PADDOCK_BENCH_TB_CACHE_MIB")
        .ok()
        .map(|v| v.parse::<u64>())
        .transpose()?;
    if let Some(mib) = tb_cache {
        let mut tuning = paddock::libvirt::Profile::Custom(paddock::libvirt::Resources {
            vcpus: spec.vcpus,
            memory_mib: spec.memory_mib,
        })
        .tuning();
        tuning.tcg_tb_cache_mib = Some(mib);
        spec.tuning = Some(tuning);
    }
    let pool = paddock
        .create_pool(
            spec,
            PoolConfig {
                min_ready: SLOTS,
                max_size: SLOTS,
                max_concurrent_prepares: 2,
                health_check_interval: None,
                acquire_timeout: Duration::from_secs(180),
                ..PoolConfig::default()
            },
        )
        .await?;
    let ksm = std::env::var_os("PADDOCK_BENCH_KSM").is_some();
    let outcome = measure(&paddock, &pool, &name, ksm).await;
    pool.close().await?;
    let mut report = outcome?;
    report["tb_cache_mib"] = serde_json::json!(tb_cache);
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// Leases every slot, runs `command` in each, releases them all and waits
/// for the resets.
async fn cycle(pool: &VmPool, command: &str) -> anyhow::Result<()> {
    let mut leases = Vec::new();
    for _ in 0..SLOTS {
        leases.push(pool.acquire().await?);
    }
    for lease in &leases {
        let out = lease
            .client()
            .exec_collect(Execute::shell(command.to_owned()))
            .await?;
        anyhow::ensure!(out.result.exit_code == Some(0), "{command}: {out:?}");
    }
    for lease in leases {
        lease.release();
    }
    wait_all_ready(pool, READY_TIMEOUT).await
}

fn uss_median_kib(memory: &[ProcessMemory]) -> u64 {
    let mut uss: Vec<u64> = memory.iter().map(|m| m.uss_kib).collect();
    uss.sort_unstable();
    uss.get(uss.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(0)
}

/// One state's figures: host memory now, then the guests' through leases.
async fn snapshot(pool: &VmPool, vms: &[Vm]) -> anyhow::Result<serde_json::Value> {
    let host = host_memory(vms).await?;
    let guest = guest_memory(pool).await?;
    wait_all_ready(pool, READY_TIMEOUT).await?;
    Ok(serde_json::json!({ "host_mib": host_json(&host), "guest_mib": guest_json(&guest) }))
}

async fn measure(
    paddock: &Paddock,
    pool: &VmPool,
    name: &str,
    ksm: bool,
) -> anyhow::Result<serde_json::Value> {
    pool.wait_ready(Duration::from_secs(300)).await?;
    wait_all_ready(pool, READY_TIMEOUT).await?;
    let vms = slot_vms(paddock.libvirt(), name).await?;
    anyhow::ensure!(vms.len() == SLOTS, "found {} slot domains", vms.len());

    let fresh_host = host_memory(&vms).await?;
    let idle = cpu_percent(&vms, Duration::from_secs(IDLE_SECONDS)).await?;
    let capacity = capacity_json(
        SLOTS,
        host_available_kib()?,
        uss_median_kib(&fresh_host),
        &idle,
        IDLE_CPU_BUDGET_PERCENT,
    );
    let fresh_guest = guest_memory(pool).await?;
    wait_all_ready(pool, READY_TIMEOUT).await?;
    let fresh = serde_json::json!({
        "host_mib": host_json(&fresh_host), "guest_mib": guest_json(&fresh_guest),
    });
    eprintln!("fresh: {fresh}");

    // Leases that only run `true` hold the guest's memory as it was.
    cycle(pool, "true").await?;
    let after_reset = snapshot(pool, &vms).await?;
    eprintln!("after a reset: {after_reset}");
    let dirty = format!("head -c {} /dev/urandom > /tmp/dirt", DIRTY_MIB << 20);
    cycle(pool, &dirty).await?;
    let after_dirty_reset = snapshot(pool, &vms).await?;
    eprintln!("after a dirty lease's reset: {after_dirty_reset}");

    let mut report = serde_json::json!({
        "slots": SLOTS,
        "guest_memory_mib": GUEST_MIB,
        "reset": "in_place",
        "dirty_lease_mib": DIRTY_MIB,
        "fresh": fresh,
        "after_reset": after_reset,
        "after_dirty_reset": after_dirty_reset,
        "idle_cpu_percent_of_one_core": { "seconds": IDLE_SECONDS, "per_slot": idle, "median": median(&idle) },
        "capacity": capacity,
        "host_thp": std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")?.trim(),
    });
    if ksm {
        let saved = KsmSettings::read()?;
        let outcome = measure_ksm(pool, &vms, &dirty).await;
        saved.restore()?;
        report["ksm"] = outcome?;
    }
    Ok(report)
}

async fn measure_ksm(pool: &VmPool, vms: &[Vm], dirty: &str) -> anyhow::Result<serde_json::Value> {
    write(&Path::new(KSM).join("pages_to_scan"), KSM_PAGES_TO_SCAN)?;
    write(&Path::new(KSM).join("run"), 1)?;
    let settle = ksm_settle().await?;
    let settled = snapshot(pool, vms).await?;
    eprintln!("KSM settled: {settled}");
    let idle = cpu_percent(vms, Duration::from_secs(IDLE_SECONDS)).await?;
    let ksmd = ksmd_cpu_percent(Duration::from_secs(IDLE_SECONDS)).await?;
    let merged = ksm_counters()?;
    let host = host_memory(vms).await?;
    let capacity = capacity_json(
        SLOTS,
        host_available_kib()?,
        uss_median_kib(&host),
        &idle,
        IDLE_CPU_BUDGET_PERCENT,
    );
    cycle(pool, dirty).await?;
    let after_dirty_reset = host_json(&host_memory(vms).await?);
    let resettle = ksm_settle().await?;
    let after_dirty_reset_settled = snapshot(pool, vms).await?;
    eprintln!("KSM after a dirty reset, settled: {after_dirty_reset_settled}");
    Ok(serde_json::json!({
        "pages_to_scan": KSM_PAGES_TO_SCAN,
        "settle_seconds": settle,
        "settled": settled,
        "counters": merged,
        "ksmd_cpu_percent_of_one_core_settled": ksmd,
        "idle_cpu_percent_of_one_core": { "per_slot": idle, "median": median(&idle) },
        "capacity": capacity,
        "after_dirty_reset_host_mib": after_dirty_reset,
        "resettle_seconds": resettle,
        "after_dirty_reset_settled": after_dirty_reset_settled,
    }))
}

fn write(path: &Path, value: u64) -> anyhow::Result<()> {
    std::fs::write(path, value.to_string())
        .map_err(|e| anyhow::anyhow!("write {value} to {}: {e}", path.display()))
}

fn read(name: &str) -> anyhow::Result<u64> {
    let path = Path::new(KSM).join(name);
    Ok(std::fs::read_to_string(&path)
        .map_err(|e| anyhow::anyhow!("read {}: {e}", path.display()))?
        .trim()
        .parse()?)
}

/// KSM's host-wide settings this bench changes.
struct KsmSettings {
    run: u64,
    pages_to_scan: u64,
}

impl KsmSettings {
    fn read() -> anyhow::Result<Self> {
        Ok(Self {
            run: read("run")?,
            pages_to_scan: read("pages_to_scan")?,
        })
    }

    /// Puts them back; when KSM was off, what it merged is unmerged first
    /// (`run` 2), so the host's other processes are left as they were.
    fn restore(&self) -> anyhow::Result<()> {
        if self.run != 1 {
            write(&Path::new(KSM).join("run"), 2)?;
        }
        write(&Path::new(KSM).join("run"), self.run)?;
        write(&Path::new(KSM).join("pages_to_scan"), self.pages_to_scan)
    }
}

/// Waits until KSM went through two full scans after which `pages_sharing`
/// grew by less than 1 %; the seconds it took.
async fn ksm_settle() -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut last_scan = read("full_scans")?;
    let mut last_sharing = read("pages_sharing")?;
    let mut stable_scans = 0;
    while stable_scans < 2 {
        anyhow::ensure!(start.elapsed() < KSM_SETTLE_TIMEOUT, "KSM did not settle");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let scans = read("full_scans")?;
        if scans == last_scan {
            continue;
        }
        let sharing = read("pages_sharing")?;
        if sharing <= last_sharing.saturating_add(last_sharing / 100) {
            stable_scans += 1;
        } else {
            stable_scans = 0;
        }
        (last_scan, last_sharing) = (scans, sharing);
    }
    Ok(round(start.elapsed().as_secs_f64(), 1))
}

fn ksm_counters() -> anyhow::Result<serde_json::Value> {
    let page_mib = |pages: u64| paddock_benches::slot_memory::mib(pages * 4);
    Ok(serde_json::json!({
        "pages_shared_mib": page_mib(read("pages_shared")?),
        "pages_sharing_mib": page_mib(read("pages_sharing")?),
        "pages_unshared_mib": page_mib(read("pages_unshared")?),
        "ksm_zero_pages_mib": page_mib(read("ksm_zero_pages").unwrap_or(0)),
        "general_profit_mib": read("general_profit").map_or(0.0, |b| paddock_benches::slot_memory::mib(b / 1024)),
        "full_scans": read("full_scans")?,
        "host_wide_note": "counts every mergeable process on the host, not only this pool",
    }))
}

/// The share of one core the `ksmd` kernel thread used over `window`.
async fn ksmd_cpu_percent(window: Duration) -> anyhow::Result<f64> {
    let pid = std::fs::read_dir("/proc")?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "ksmd")
        })
        .ok_or_else(|| anyhow::anyhow!("no ksmd thread"))?;
    let before = paddock::libvirt::host_memory::read_process_cpu_time(pid)?;
    let start = Instant::now();
    tokio::time::sleep(window).await;
    let used = paddock::libvirt::host_memory::read_process_cpu_time(pid)?.saturating_sub(before);
    Ok(round(
        used.as_secs_f64() / start.elapsed().as_secs_f64() * 100.0,
        2,
    ))
}
