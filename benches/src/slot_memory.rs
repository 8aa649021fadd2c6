//! Memory and idle CPU of a VM pool's slots, for the `slot_memory` bench
//! and the SLO harness: each slot's QEMU (USS, PSS, RSS, transparent huge
//! pages, from `smaps_rollup`) next to what its guest uses (its
//! `/proc/meminfo`), the CPU an idle slot's QEMU burns, and how many idle
//! slots this host holds by memory and by CPU.

use std::time::{Duration, Instant};

use paddock::VmPool;
use paddock::libvirt::{Libvirt, ProcessMemory, Vm};
use paddock::vm::GuestMemory;

/// The running slot domains of pool `pool`, in slot order.
///
/// # Errors
/// libvirt does not answer.
pub async fn slot_vms(libvirt: &Libvirt, pool: &str) -> anyhow::Result<Vec<Vm>> {
    let mut slots: Vec<(u32, Vm)> = libvirt
        .paddock_domains()
        .await?
        .into_iter()
        .filter(|(_, meta)| meta.pool == pool)
        .filter_map(|(vm, meta)| meta.role.slot().map(|n| (n, vm)))
        .collect();
    slots.sort_by_key(|(n, _)| *n);
    Ok(slots.into_iter().map(|(_, vm)| vm).collect())
}

/// Each slot QEMU's memory.
///
/// # Errors
/// A QEMU's `/proc` files cannot be read.
pub async fn host_memory(vms: &[Vm]) -> anyhow::Result<Vec<ProcessMemory>> {
    let mut out = Vec::new();
    for vm in vms {
        out.push(vm.qemu_memory().await?);
    }
    Ok(out)
}

/// Each guest's own memory, read through a lease on every slot of `pool`
/// at once (so each slot is read once), then released.
///
/// # Errors
/// An acquire or the read fails.
pub async fn guest_memory(pool: &VmPool) -> anyhow::Result<Vec<GuestMemory>> {
    let mut leases = Vec::new();
    for _ in 0..pool.config().max_size {
        leases.push(pool.acquire().await?);
    }
    leases.sort_by(|a, b| a.name().cmp(b.name()));
    let mut out = Vec::new();
    for lease in &leases {
        out.push(lease.guest_memory().await?);
    }
    Ok(out)
}

/// The share of one host CPU each QEMU of `vms` used over `window`, in per
/// cent.
///
/// # Errors
/// A QEMU's `/proc` files cannot be read.
pub async fn cpu_percent(vms: &[Vm], window: Duration) -> anyhow::Result<Vec<f64>> {
    let mut before = Vec::new();
    for vm in vms {
        before.push(vm.qemu_cpu_time().await?);
    }
    let start = Instant::now();
    tokio::time::sleep(window).await;
    let elapsed = start.elapsed();
    let mut out = Vec::new();
    for (vm, before) in vms.iter().zip(before) {
        let used = vm.qemu_cpu_time().await?.saturating_sub(before);
        out.push(round(used.as_secs_f64() / elapsed.as_secs_f64() * 100.0, 2));
    }
    Ok(out)
}

/// Rounds to `digits` decimals.
#[must_use]
pub fn round(value: f64, digits: i32) -> f64 {
    let scale = 10_f64.powi(digits);
    (value * scale).round() / scale
}

/// The median of `values` (the lower middle for an even count); 0 when
/// empty.
#[must_use]
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted
        .get(sorted.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(0.0)
}

/// `kib` in MiB, one decimal.
#[must_use]
pub fn mib(kib: u64) -> f64 {
    ProcessMemory::mib(kib)
}

/// The host figures of each slot in MiB, and their medians:
/// `{"rss": [...], "pss": [...], "uss": [...], "anon_huge_pages": [...],
/// "median": {...}}`.
#[must_use]
pub fn host_json(memory: &[ProcessMemory]) -> serde_json::Value {
    let field = |f: fn(&ProcessMemory) -> u64| memory.iter().map(|m| mib(f(m))).collect::<Vec<_>>();
    let (rss, pss, uss, thp, shared) = (
        field(|m| m.rss_kib),
        field(|m| m.pss_kib),
        field(|m| m.uss_kib),
        field(|m| m.anon_huge_pages_kib),
        field(|m| m.shared_kib),
    );
    serde_json::json!({
        "rss": rss, "pss": pss, "uss": uss, "anon_huge_pages": thp, "shared": shared,
        "median": {
            "rss": median(&rss), "pss": median(&pss), "uss": median(&uss),
            "anon_huge_pages": median(&thp), "shared": median(&shared),
        },
    })
}

/// Each guest's use in MiB (`free`'s "used", and its buff/cache) and their
/// medians.
#[must_use]
pub fn guest_json(memory: &[GuestMemory]) -> serde_json::Value {
    let used: Vec<f64> = memory.iter().map(|m| mib(m.used_kib())).collect();
    let cache: Vec<f64> = memory.iter().map(|m| mib(m.cache_kib)).collect();
    serde_json::json!({
        "used": used, "cache": cache,
        "median": { "used": median(&used), "cache": median(&cache) },
    })
}

/// The host's `MemAvailable` in KiB.
///
/// # Errors
/// `/proc/meminfo` cannot be read or has no such field.
pub fn host_available_kib() -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("/proc/meminfo has no MemAvailable"))
}

/// The mean of `values`; 0 when empty.
#[must_use]
pub fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    // Few values: the count is exact in f64.
    #[allow(clippy::cast_precision_loss)]
    let count = values.len() as f64;
    values.iter().sum::<f64>() / count
}

/// How many idle slots like these this host holds: by memory (the host's
/// available memory over a slot's median USS, plus the slots that already
/// run), and by idle CPU (`cpu_budget_percent` of all cores over a slot's
/// mean idle CPU: the mean, not the median, because a few busy idle slots
/// cost as much as many quiet ones).
#[must_use]
pub fn capacity_json(
    running: usize,
    available_kib: u64,
    uss_kib_median: u64,
    idle_cpu_percent: &[f64],
    cpu_budget_percent: f64,
) -> serde_json::Value {
    let idle_cpu_percent_mean = round(mean(idle_cpu_percent), 2);
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let by_memory = available_kib
        .checked_div(uss_kib_median)
        .map_or(0, |more| more.saturating_add(running as u64));
    // Float to count: both are small and positive.
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let by_cpu = if idle_cpu_percent_mean > 0.0 {
        (cores as f64 * cpu_budget_percent / idle_cpu_percent_mean).floor() as u64
    } else {
        u64::MAX
    };
    serde_json::json!({
        "host_cores": cores,
        "host_mem_available_mib": mib(available_kib),
        "slot_uss_median_mib": mib(uss_kib_median),
        "idle_cpu_percent_of_one_core_mean": idle_cpu_percent_mean,
        "idle_cpu_percent_of_one_core_median": median(idle_cpu_percent),
        "idle_cpu_budget_percent_of_cores": cpu_budget_percent,
        "slots_by_memory": by_memory,
        "slots_by_idle_cpu": by_cpu,
        "slots": by_memory.min(by_cpu),
    })
}
