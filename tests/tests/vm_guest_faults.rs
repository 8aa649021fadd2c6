//! Faults inside a slot's guest, on real VMs: QEMU killed, the guest kernel
//! panicking, the agent killed, the guest out of memory, its disk full.
//! Each is seen at once or by the health check, gives a typed error, and
//! leaves the pool whole: the slot is replaced (with the reason kept) or
//! reset clean.
#![cfg(test)]

use std::time::Duration;

use anyhow::{Context as _, ensure};
use paddock::agent::{ClientError, Execute};
use paddock::{PoolConfig, PoolStats, SlotBackend, VmError, VmLease, VmPool, VmPoolSpec};
use paddock_tests::vm::{enabled, test_paddock};
use paddock_tests::{processes_matching, test_config, unique_marker};

type TestResult = anyhow::Result<()>;

/// A pool of two, reset in place, with a short acquire timeout.
async fn pool() -> anyhow::Result<VmPool> {
    let paddock = test_paddock().await?;
    let mut spec = VmPoolSpec::new(format!("gf{}", unique_marker()));
    spec.client = test_config();
    let pool = paddock
        .create_pool(
            spec,
            PoolConfig {
                min_ready: 2,
                max_size: 2,
                acquire_timeout: Duration::from_secs(120),
                health_check_interval: None,
                ..PoolConfig::default()
            },
        )
        .await?;
    pool.wait_ready(Duration::from_secs(180)).await?;
    Ok(pool)
}

async fn settle(
    pool: &VmPool,
    timeout: Duration,
    condition: impl Fn(&PoolStats) -> bool,
) -> anyhow::Result<PoolStats> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let stats = pool.stats();
        if condition(&stats) {
            return Ok(stats);
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the pool did not settle within {timeout:?}: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn shell(lease: &VmLease, script: &str) -> anyhow::Result<paddock::agent::ExecOutput> {
    Ok(lease
        .client()
        .exec_collect(Execute::shell(script.to_owned()))
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_killed_during_an_exec_fails_it_at_once_and_the_slot_is_replaced() -> TestResult {
    if !enabled("qemu_killed_during_an_exec_fails_it_at_once_and_the_slot_is_replaced") {
        return Ok(());
    }
    let pool = pool().await?;
    let lease = pool.acquire().await?;
    let name = lease.name().to_owned();
    let running = lease.client().exec(Execute::shell("sleep 300")).await?;
    let qemu = processes_matching(&format!("guest={name},"));
    ensure!(qemu.len() == 1, "one QEMU for {name}: {qemu:?}");
    std::process::Command::new("kill")
        .args(["-KILL", &qemu[0].to_string()])
        .status()?;
    let ended = tokio::time::timeout(Duration::from_secs(10), running.wait())
        .await
        .context("the exec ended within 10 s of QEMU's death")?;
    let err = ended.expect_err("the guest is gone");
    ensure!(
        matches!(err, ClientError::ConnectionLost { .. }),
        "a lost connection: {err:?}"
    );
    let fault = pool
        .backend()
        .check(&lease)
        .await
        .expect_err("the health check sees it");
    ensure!(
        matches!(fault, VmError::GuestStopped { .. }) && fault.reason() == "guest_stopped",
        "{fault:?}"
    );
    drop(lease);
    let stats = settle(&pool, Duration::from_secs(120), |s| {
        s.ready == 2 && s.failed_resets == 1
    })
    .await?;
    ensure!(stats.destroyed == 1 && stats.created == 3, "{stats:?}");
    let reason = pool.last_failure().map(|failure| failure.reason());
    ensure!(
        reason == Some("guest_stopped"),
        "the reason is kept: {reason:?}"
    );
    pool.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_kernel_panic_ends_the_lease_and_the_slot_is_replaced() -> TestResult {
    if !enabled("a_guest_kernel_panic_ends_the_lease_and_the_slot_is_replaced") {
        return Ok(());
    }
    let pool = pool().await?;
    let lease = pool.acquire().await?;
    let panicked = tokio::time::timeout(
        Duration::from_secs(30),
        shell(&lease, "echo c > /proc/sysrq-trigger"),
    )
    .await
    .context("the exec ended within 30 s of the panic")?;
    let err = panicked.expect_err("the guest died");
    let client = err
        .downcast_ref::<ClientError>()
        .context("a client error")?;
    ensure!(
        matches!(client, ClientError::ConnectionLost { .. }),
        "a lost connection: {client:?}"
    );
    // A panicking guest reboots, and a sandbox domain is destroyed rather
    // than rebooted.
    let fault = pool.backend().check(&lease).await.expect_err("it is gone");
    ensure!(fault.reason() == "guest_stopped", "{fault:?}");
    drop(lease);
    settle(&pool, Duration::from_secs(120), |s| {
        s.ready == 2 && s.failed_resets == 1
    })
    .await?;
    let reason = pool.last_failure().map(|failure| failure.reason());
    ensure!(
        reason == Some("guest_stopped"),
        "the reason is kept: {reason:?}"
    );
    pool.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_in_the_guest_is_detected_and_the_reset_brings_it_back() -> TestResult {
    if !enabled("an_agent_killed_in_the_guest_is_detected_and_the_reset_brings_it_back") {
        return Ok(());
    }
    let pool = pool().await?;
    let lease = pool.acquire().await?;
    let index = lease.index();
    // Killed during an execution of the lease; busybox init starts a new
    // agent, which knows no session. The host sees nothing on the
    // virtio-serial socket (it is QEMU's), so its keepalive finds out.
    let mut request = Execute::shell("(sleep 1; kill -9 $(pidof paddock-agent)) & sleep 120");
    request.timeout_ms = Some(300_000);
    let started = std::time::Instant::now();
    let ended = tokio::time::timeout(
        Duration::from_secs(60),
        lease.client().exec_collect(request),
    )
    .await
    .context("the execution ended long before its own timeout")?;
    let err = ended.expect_err("its agent is gone");
    ensure!(
        matches!(err, ClientError::ConnectionLost { .. }),
        "{err:?} after {:?}",
        started.elapsed()
    );
    eprintln!(
        "an exec whose agent was killed ended after {:?}: {err}",
        started.elapsed()
    );
    let fault = pool
        .backend()
        .check(&lease)
        .await
        .expect_err("the health check sees it");
    ensure!(
        matches!(
            fault.reason(),
            "agent_restarted" | "agent_error" | "agent_lost"
        ),
        "{fault:?}"
    );
    // The reset loads the golden's memory, the old agent included: the
    // slot comes back with the agent the golden holds.
    lease.release();
    let stats = settle(&pool, Duration::from_secs(120), |s| s.ready == 2).await?;
    ensure!(
        stats.failed_resets == 0 && stats.destroyed == 0 && stats.created == 2,
        "the reset brings the slot back: {stats:?} {:?}",
        pool.last_failure()
    );
    let first = pool.acquire().await?;
    let second = pool.acquire().await?;
    ensure!(first.index() == index || second.index() == index);
    for again in [&first, &second] {
        pool.backend().check(again).await?;
        let out = shell(again, "echo back").await?;
        ensure!(out.stdout == b"back\n");
    }
    drop((first, second));
    pool.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_out_of_memory_loses_the_job_not_the_agent() -> TestResult {
    if !enabled("a_guest_out_of_memory_loses_the_job_not_the_agent") {
        return Ok(());
    }
    let pool = pool().await?;
    let lease = pool.acquire().await?;
    // Three buffers of 150 MiB, more than the 256 MiB guest has, filled by
    // the kernel (fast even under TCG, unlike a shell building a string).
    // Each one alone passes the kernel's overcommit check; together they
    // wake the OOM killer, and the job fails if any of them is killed.
    let mut hog = Execute::shell(
        "pids=''; for i in 1 2 3; do dd if=/dev/zero of=/dev/null bs=150M count=1 2>/dev/null & \
         pids=\"$pids $!\"; done; failed=0; for p in $pids; do wait $p || failed=1; done; \
         [ $failed = 0 ] && echo survived; exit $failed",
    );
    hog.timeout_ms = Some(120_000);
    let out = lease.client().exec_collect(hog).await?;
    ensure!(
        out.result.signal == Some(9) || out.result.exit_code.is_some_and(|c| c != 0),
        "the OOM killer ended the job: {:?}",
        out.result
    );
    ensure!(!String::from_utf8_lossy(&out.stdout).contains("survived"));
    let dmesg = shell(&lease, "dmesg | grep -ci 'out of memory' || true").await?;
    ensure!(
        String::from_utf8_lossy(&dmesg.stdout).trim() != "0",
        "the kernel's OOM killer ran"
    );
    pool.backend().check(&lease).await?;
    lease.release();
    settle(&pool, Duration::from_secs(60), |s| s.ready == 2).await?;
    let stats = pool.stats();
    ensure!(
        stats.failed_resets == 0,
        "{stats:?}: {:?}",
        pool.last_failure().map(anyhow::Error::new)
    );
    pool.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_guest_disk_fails_the_put_and_the_reset_cleans_it() -> TestResult {
    if !enabled("a_full_guest_disk_fails_the_put_and_the_reset_cleans_it") {
        return Ok(());
    }
    let pool = pool().await?;
    let lease = pool.acquire().await?;
    let index = lease.index();
    let status = lease.client().status().await?;
    let room = status.disk_available_bytes;
    ensure!(room > 0, "the guest reports its disk: {status:?}");
    // One file larger than the guest's root file system has room for.
    let host = tempfile::tempdir()?;
    let big = host.path().join("big");
    let len = usize::try_from(room + (16 << 20))?;
    paddock_tests::write_random_file(&big, len, 7)?;
    let put = lease.client().put_file(&big, "/tmp/big").await;
    let err = put.expect_err("no room for it");
    ensure!(
        matches!(err, ClientError::Agent { .. }),
        "the agent refused it: {err:?}"
    );
    ensure!(
        err.to_string().contains("No space") || format!("{err:?}").contains("No space"),
        "it says why: {err:?}"
    );
    let left = shell(&lease, "ls /tmp/big* 2>/dev/null | wc -l").await?;
    ensure!(
        String::from_utf8_lossy(&left.stdout).trim() == "0",
        "no partial file is left under its name or a temporary one"
    );
    lease.release();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let again = loop {
        let lease = pool.acquire().await?;
        if lease.index() == index {
            break lease;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "slot {index} did not come back: {:?}",
            pool.stats()
        );
        drop(lease);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let after = again.client().status().await?;
    ensure!(
        after.disk_available_bytes + (1 << 20) >= room,
        "the reset gave the room back: {} then {}",
        room,
        after.disk_available_bytes
    );
    drop(again);
    pool.close().await?;
    Ok(())
}
