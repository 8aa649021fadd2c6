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
    let paddock = test_paddock().await?;
    let name = format!("pm{}", unique_marker());
    let mut spec = VmPoolSpec::new(&name);
    spec.client = test_config();
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
    let outcome = async {
        pool.wait_ready(Duration::from_secs(180)).await?;
        let lease = pool.acquire().await?;
        let fresh = lease.memory().await?;
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
