//! A slot's memory as the host pays for it (USS, PSS, RSS of its QEMU) and
//! as its guest uses it, on real VMs: read after creation and after an
//! in-place reset.
#![cfg(test)]

use std::time::Duration;

use paddock::vm::SlotMemory;
use paddock::{PoolConfig, VmPoolSpec};
use paddock_tests::vm::{enabled, test_paddock};
use paddock_tests::{test_config, unique_marker};

type TestResult = anyhow::Result<()>;

/// Whether the guest RAM of the QEMU `pid` (its one anonymous mapping of
/// exactly `guest_mib`) is marked mergeable for KSM (`mg` in its
/// `VmFlags`).
fn guest_ram_mergeable(pid: u32, guest_mib: u64) -> anyhow::Result<bool> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let mut size_matches = false;
    let mut found = Vec::new();
    for line in smaps.lines() {
        if let Some(size) = line.strip_prefix("Size:") {
            size_matches = size.trim() == format!("{} kB", guest_mib * 1024);
        } else if let Some(flags) = line.strip_prefix("VmFlags:") {
            if size_matches {
                found.push(flags.split_whitespace().any(|flag| flag == "mg"));
            }
        }
    }
    anyhow::ensure!(
        found.len() == 1,
        "{} mappings of the guest's size",
        found.len()
    );
    Ok(found[0])
}

/// A pool of one slot, its guest memory in MiB.
async fn one_slot_pool(ksm_mergeable: bool) -> anyhow::Result<(paddock::VmPool, u64)> {
    let paddock = test_paddock().await?;
    let name = format!("pm{}", unique_marker());
    let mut spec = VmPoolSpec::new(&name);
    spec.client = test_config();
    spec.ksm_mergeable = ksm_mergeable;
    let guest_mib = spec.memory_mib;
    let pool = paddock
        .create_pool(
            spec,
            PoolConfig {
                min_ready: 1,
                max_size: 1,
                health_check_interval: None,
                acquire_timeout: Duration::from_secs(120),
                ..PoolConfig::default()
            },
        )
        .await?;
    Ok((pool, guest_mib))
}

/// The figures hold together: `USS <= PSS <= RSS`, guest RAM is in the
/// QEMU, and the guest reports using some of its memory.
fn check(memory: &SlotMemory, guest_mib: u64, when: &str) {
    let host = &memory.host;
    assert!(host.uss_kib > 0, "{when}: {memory:?}");
    assert!(host.uss_kib <= host.pss_kib, "{when}: {memory:?}");
    assert!(host.pss_kib <= host.rss_kib, "{when}: {memory:?}");
    assert!(
        host.anon_huge_pages_kib <= host.anonymous_kib,
        "{when}: {memory:?}"
    );
    let guest = &memory.guest;
    assert!(guest.total_kib > 0, "{when}: {memory:?}");
    assert!(guest.total_kib <= guest_mib * 1024, "{when}: {memory:?}");
    assert!(guest.used_kib() > 0, "{when}: {memory:?}");
    assert!(guest.free_kib < guest.total_kib, "{when}: {memory:?}");
    // The guest's kernel, agent and page cache live in QEMU's memory.
    assert!(host.rss_kib > guest.used_kib(), "{when}: {memory:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_reports_uss_pss_and_guest_use_before_and_after_a_reset() -> TestResult {
    if !enabled("a_slot_reports_uss_pss_and_guest_use_before_and_after_a_reset") {
        return Ok(());
    }
    let (pool, guest_mib) = one_slot_pool(true).await?;
    let outcome = async {
        pool.wait_ready(Duration::from_secs(180)).await?;
        let lease = pool.acquire().await?;
        let fresh = lease.memory().await?;
        assert!(
            guest_ram_mergeable(lease.vm().qemu_pid()?, guest_mib)?,
            "QEMU's default: guest RAM is mergeable"
        );
        eprintln!("fresh slot: {fresh:?}");
        check(&fresh, guest_mib, "fresh");
        // Fill 32 MiB of the guest's page cache: the guest's own figure
        // must see it, and the reset must give it back.
        lease
            .client()
            .exec_collect(paddock::agent::Execute::shell(
                "head -c 33554432 /dev/urandom > /tmp/fill",
            ))
            .await?;
        let filled = lease.guest_memory().await?;
        assert!(
            filled.in_use_with_cache_kib() >= fresh.guest.in_use_with_cache_kib() + 30 * 1024,
            "{fresh:?} then {filled:?}"
        );
        lease.release();
        pool.wait_ready(Duration::from_secs(120)).await?;
        let lease = pool.acquire().await?;
        assert!(lease.uses() > 0, "the same slot, reset");
        let reset = lease.memory().await?;
        eprintln!("after a reset: {reset:?}");
        check(&reset, guest_mib, "reset");
        assert!(
            reset.guest.in_use_with_cache_kib() + 30 * 1024 <= filled.in_use_with_cache_kib(),
            "the reset gave the guest's memory back: {filled:?} then {reset:?}"
        );
        drop(lease);
        anyhow::Ok(())
    }
    .await;
    pool.close().await?;
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_kept_out_of_ksm_has_unmergeable_guest_ram() -> TestResult {
    if !enabled("a_pool_kept_out_of_ksm_has_unmergeable_guest_ram") {
        return Ok(());
    }
    let (pool, guest_mib) = one_slot_pool(false).await?;
    let outcome = async {
        pool.wait_ready(Duration::from_secs(180)).await?;
        // Fresh from the golden's memory, and after an in-place reset.
        for round in 0..2 {
            let lease = pool.acquire().await?;
            assert_eq!(lease.uses(), round);
            assert!(
                !guest_ram_mergeable(lease.vm().qemu_pid()?, guest_mib)?,
                "round {round}: <nosharepages/> keeps guest RAM out of KSM"
            );
            lease.release();
            pool.wait_ready(Duration::from_secs(120)).await?;
        }
        anyhow::Ok(())
    }
    .await;
    pool.close().await?;
    outcome
}
