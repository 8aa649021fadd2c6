//! The golden-snapshot pool on real VMs: leases start from the golden,
//! resets undo everything a lease did, and nothing leaks.
#![cfg(test)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use paddock::agent::Execute;
use paddock::{PoolConfig, ResetStrategy, VmPool, VmPoolSpec};
use paddock_tests::vm::{POOL_ROOT, SYSTEM_URI, enabled, test_paddock};
use paddock_tests::{test_config, unique_marker};

type TestResult = anyhow::Result<()>;

async fn pool(
    strategy: ResetStrategy,
    min_ready: usize,
    max_size: usize,
) -> anyhow::Result<(VmPool, String, PathBuf)> {
    let paddock = test_paddock().await?;
    let name = format!("pt{}", unique_marker());
    let mut spec = VmPoolSpec::new(&name);
    spec.warmup = vec!["echo warm > /tmp/warm".into()];
    spec.reset = strategy;
    spec.client = test_config();
    let pool = paddock
        .create_pool(
            spec,
            PoolConfig {
                min_ready,
                max_size,
                max_concurrent_prepares: 2,
                health_check_interval: Some(Duration::from_secs(5)),
                acquire_timeout: Duration::from_secs(120),
                ..PoolConfig::default()
            },
        )
        .await?;
    pool.wait_ready(Duration::from_secs(180)).await?;
    let dir = Path::new(POOL_ROOT).join(&name);
    Ok((pool, name, dir))
}

/// How long a lease in the reset tests lasts at least.
const CLOCK_LAG: Duration = Duration::from_secs(4);

/// What a reset must undo, as the guest sees it.
async fn guest_state(lease: &paddock::Lease<paddock::VmBackend>) -> anyhow::Result<String> {
    let out = lease
        .client()
        .exec_collect(Execute::shell(
            // The disk is read past the page cache, so that a disk which
            // was not reset shows even when the memory was.
            "cat /tmp/warm; cat /tmp/dirt 2>/dev/null || echo clean; \
             echo \"$(ps -o args | grep -c '^sleep 999') sleeps\"; \
             echo 3 > /proc/sys/vm/drop_caches; \
             echo \"disk: $(dd if=/dev/vda bs=512 skip=8 count=1 2>/dev/null | tr -d '\\000')\"",
        ))
        .await?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The size of each slot's overlay under the pool directory `dir`.
fn overlay_sizes(dir: &Path) -> anyhow::Result<Vec<(PathBuf, u64)>> {
    let mut sizes = Vec::new();
    for entry in std::fs::read_dir(dir)?.flatten() {
        let overlay = entry.path().join("overlay.qcow2");
        if entry.file_name().to_string_lossy().starts_with("slot-") && overlay.exists() {
            sizes.push((entry.path(), std::fs::metadata(&overlay)?.len()));
        }
    }
    Ok(sizes)
}

/// Domains of pool `name` that libvirt still knows.
async fn pool_domains(name: &str) -> anyhow::Result<Vec<String>> {
    let libvirt = paddock::libvirt::Libvirt::open(SYSTEM_URI).await?;
    Ok(libvirt
        .paddock_domains()
        .await?
        .into_iter()
        .filter(|(_, meta)| meta.pool == name)
        .map(|(vm, _)| vm.name().to_owned())
        .collect())
}

async fn reset_undoes_a_lease(strategy: ResetStrategy) -> TestResult {
    let (pool, name, dir) = pool(strategy, 1, 1).await?;
    let lease = pool.acquire().await?;
    assert_eq!(
        guest_state(&lease).await?,
        "warm\nclean\n0 sleeps\ndisk: \n"
    );
    lease
        .client()
        .exec_collect(Execute::shell(
            // A process that escaped the agent's containment, which ends
            // every process of an execution with it: root in the guest may
            // move itself to the root cgroup (and out of the process group
            // with setsid). Only the reset can end it. Wait until it has
            // exec'd sleep, so that it moved before the execution ends.
            "echo dirty > /tmp/dirt; \
             printf dirty | dd of=/dev/vda bs=512 seek=8 conv=fsync 2>/dev/null; \
             setsid sh -c 'echo $$ > /sys/fs/cgroup/cgroup.procs && exec sleep 999' \
               > /dev/null 2>&1 & \
             until ps -o args | grep -q '^sleep 999'; do sleep 0.1; done",
        ))
        .await?;
    assert_eq!(
        guest_state(&lease).await?,
        "warm\ndirty\n1 sleeps\ndisk: dirty\n"
    );
    let index = lease.index();
    // Long enough that a guest clock left at the golden's time would be
    // seen to lag.
    tokio::time::sleep(CLOCK_LAG).await;
    lease.release();

    // The only slot, reset: the same domain, back at the golden.
    let lease = pool.acquire().await?;
    assert_eq!(lease.index(), index);
    assert_eq!(lease.uses(), 1);
    assert_eq!(
        guest_state(&lease).await?,
        "warm\nclean\n0 sleeps\ndisk: \n"
    );
    // A new QEMU (restore, revert) starts the guest's clock where the saved
    // state left it; the agent stepped it forward to the host's on the
    // reconnect. QEMU loading a snapshot in place keeps its clock running
    // (no step was needed here), so only the guest's time is checked there.
    let session = lease.client().session().await.context("connected")?;
    if strategy != ResetStrategy::InPlace {
        assert!(
            session.clock_step_ms >= i64::try_from(CLOCK_LAG.as_millis())?,
            "stepped {} ms",
            session.clock_step_ms
        );
    }
    let out = lease
        .client()
        .exec_collect(Execute::argv(["date", "+%s"]))
        .await?;
    let guest: i64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
    let host = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs(),
    )?;
    assert!((host - guest).abs() <= 2, "guest {guest}, host {host}");
    drop(lease);

    pool.close().await?;
    assert_eq!(pool_domains(&name).await?, Vec::<String>::new());
    assert!(!dir.exists(), "{} is still there", dir.display());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_place_reset_undoes_what_a_lease_did() -> TestResult {
    if !enabled("in_place_reset_undoes_what_a_lease_did") {
        return Ok(());
    }
    reset_undoes_a_lease(ResetStrategy::InPlace).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_reset_undoes_what_a_lease_did() -> TestResult {
    if !enabled("restore_reset_undoes_what_a_lease_did") {
        return Ok(());
    }
    reset_undoes_a_lease(ResetStrategy::Restore).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revert_reset_undoes_what_a_lease_did() -> TestResult {
    if !enabled("revert_reset_undoes_what_a_lease_did") {
        return Ok(());
    }
    reset_undoes_a_lease(ResetStrategy::Revert).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_cycles_leak_nothing() -> TestResult {
    if !enabled("two_hundred_cycles_leak_nothing") {
        return Ok(());
    }
    // The default strategy: in place.
    let (pool, name, dir) = pool(ResetStrategy::default(), 2, 2).await?;
    let overlays_before = overlay_sizes(&dir)?;
    assert_eq!(overlays_before.len(), 2, "{overlays_before:?}");
    for cycle in 0..200 {
        let lease = pool.acquire().await?;
        let out = lease
            .client()
            .exec_collect(Execute::argv(["echo", &cycle.to_string()]))
            .await?;
        assert_eq!(out.stdout, format!("{cycle}\n").as_bytes());
        lease.release();
    }
    let stats = pool.stats();
    assert_eq!(stats.total, 2, "{stats:?}");
    assert_eq!(
        stats.failed_resets,
        0,
        "{stats:?}: {:?}",
        pool.last_failure().map(anyhow::Error::new)
    );

    // Once the last resets are done: two domains, two slot directories,
    // each with one overlay (holding the golden snapshot) and one socket.
    for _ in 0..300 {
        if pool.stats().ready == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pool.stats().ready, 2, "{:?}", pool.stats());
    assert_eq!(pool_domains(&name).await?.len(), 2);
    let slots: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("slot-"))
        })
        .collect();
    assert_eq!(slots.len(), 2, "{slots:?}");
    for slot in &slots {
        let mut files: Vec<String> = std::fs::read_dir(slot)?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(
            files,
            ["agent.sock", "console.log", "overlay.qcow2"],
            "{}",
            slot.display()
        );
    }

    // The overlays hold the golden snapshot; 200 resets to it must not
    // make them grow (the guest wrote nothing to disk).
    for (slot, after) in overlay_sizes(&dir)? {
        let before = overlays_before
            .iter()
            .find(|(s, _)| *s == slot)
            .map(|(_, size)| *size)
            .ok_or_else(|| anyhow::anyhow!("{} is a new slot", slot.display()))?;
        assert!(
            after <= before + 16 * 1024 * 1024,
            "{}: {before} bytes before, {after} after",
            slot.display()
        );
    }

    pool.close().await?;
    assert_eq!(pool_domains(&name).await?, Vec::<String>::new());
    assert!(!dir.exists(), "{} is still there", dir.display());
    Ok(())
}

/// A runtime that ends while a slot is being reset (an orchestrator that
/// panicked, or returned from `main`, right after a release) leaves no
/// domain and no slot directory behind.
#[test]
fn a_runtime_ended_mid_reset_leaves_nothing() -> TestResult {
    if !enabled("a_runtime_ended_mid_reset_leaves_nothing") {
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (name, dir) = runtime.block_on(async {
        let (pool, name, dir) = pool(ResetStrategy::default(), 1, 1).await?;
        let lease = pool.acquire().await?;
        // The reset starts in the background; the runtime ends before it
        // is done. No shutdown, no close.
        lease.release();
        drop(pool);
        Ok::<_, anyhow::Error>((name, dir))
    })?;
    drop(runtime);

    let check = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    assert_eq!(check.block_on(pool_domains(&name))?, Vec::<String>::new());
    let slots: Vec<_> = std::fs::read_dir(&dir)?
        .flatten()
        .map(|e| e.file_name())
        .filter(|f| f.to_string_lossy().starts_with("slot-"))
        .collect();
    assert!(slots.is_empty(), "left in {}: {slots:?}", dir.display());
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
