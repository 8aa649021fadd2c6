//! Faults of the host under a live pool: libvirtd stopped and started again
//! the way the set-up starts it. The pool must go on serving, lose no slot
//! to the outage, forget no domain it could not remove, and leave nothing
//! behind. These tests restart the host's libvirtd, so they run only with
//! `PADDOCK_HOST_FAULT_TESTS` set, alone (`cargo xtask test` does that).
#![cfg(test)]

use std::error::Error as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use paddock::agent::Execute;
use paddock::{PoolConfig, PoolError, PoolStats, SlotFailure, VmError, VmPool, VmPoolSpec};
use paddock_tests::libvirtd::{self, Restarter, host_fault_tests_enabled};
use paddock_tests::vm::{POOL_ROOT, test_paddock};
use paddock_tests::{test_config, unique_marker};

type TestResult = anyhow::Result<()>;

async fn pool(
    paddock: &paddock::Paddock,
    name: &str,
    config: PoolConfig,
) -> anyhow::Result<VmPool> {
    let mut spec = VmPoolSpec::new(name);
    spec.client = test_config();
    let pool = paddock.create_pool(spec, config).await?;
    pool.wait_ready(Duration::from_secs(180)).await?;
    Ok(pool)
}

fn config(min_ready: usize, max_size: usize) -> PoolConfig {
    PoolConfig {
        min_ready,
        max_size,
        acquire_timeout: Duration::from_secs(5),
        health_check_interval: None,
        ..PoolConfig::default()
    }
}

/// Waits up to `timeout` until `condition` holds on the pool's stats.
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

async fn stop_libvirtd() -> anyhow::Result<()> {
    tokio::task::spawn_blocking(libvirtd::stop).await?
}

async fn start_libvirtd() -> anyhow::Result<()> {
    tokio::task::spawn_blocking(libvirtd::start).await?
}

/// The domains of pool `name` that libvirt knows.
async fn pool_domains(paddock: &paddock::Paddock, name: &str) -> anyhow::Result<Vec<String>> {
    Ok(paddock
        .libvirt()
        .paddock_domains()
        .await?
        .into_iter()
        .filter(|(_, metadata)| metadata.pool == name)
        .map(|(vm, _)| vm.name().to_owned())
        .collect())
}

async fn exec_true(lease: &paddock::VmLease) -> anyhow::Result<()> {
    let out = lease.client().exec_collect(Execute::argv(["true"])).await?;
    ensure!(
        out.result.exit_code == Some(0),
        "true failed: {:?}",
        out.result
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_serves_through_a_libvirtd_restart() -> TestResult {
    if !host_fault_tests_enabled("a_pool_serves_through_a_libvirtd_restart") {
        return Ok(());
    }
    let _restarter = Restarter;
    // With events: the connection's loss and return are two of them.
    let (hub, recorder, _) = paddock_tests::EventRecorder::start("hf", 0);
    let mut observed = test_paddock().await?.config().clone();
    observed.events = Some(hub);
    let paddock = paddock::Paddock::connect(observed).await?;
    let name = format!("hf{}", unique_marker());
    let pool = pool(&paddock, &name, config(2, 2)).await?;
    let held = pool.acquire().await?;
    let slot_vm = held.vm().clone();

    stop_libvirtd().await?;
    paddock_tests::wait_until_async(Duration::from_secs(20), || {
        !paddock.libvirt().health().is_connected()
    })
    .await;
    ensure!(
        !pool.stats().backend_available,
        "the pool reports the outage: {:?}",
        pool.stats()
    );
    // The ready slot is still handed out, and its agent works: it does not
    // go through libvirtd.
    let ready = pool
        .acquire()
        .await
        .context("a ready slot during the outage")?;
    exec_true(&ready).await?;
    exec_true(&held).await?;
    // Its reset meets the outage: the slot is kept, not failed.
    drop(held);
    settle(&pool, Duration::from_secs(60), |s| s.outage_retries >= 1).await?;
    // An acquire that must wait says why it failed.
    let err = pool
        .acquire()
        .await
        .expect_err("the only other slot is waiting for libvirtd");
    let PoolError::Unavailable {
        last_failure: Some(SlotFailure::Outage { source, .. }),
        ..
    } = &err
    else {
        anyhow::bail!("not an outage: {err:?}");
    };
    let vm_error = source
        .downcast_ref::<VmError>()
        .context("the source is the VM backend's error")?;
    ensure!(vm_error.is_libvirt_outage(), "{vm_error:?}");
    ensure!(
        vm_error
            .source()
            .is_some_and(|s| s.to_string().contains("qemu:///system")),
        "the error names libvirtd's URI: {err}"
    );

    start_libvirtd().await?;
    paddock
        .libvirt()
        .wait_connected(Duration::from_secs(30))
        .await?;
    // The watcher emits from a task of its own: its event may come just
    // after `wait_connected` returns.
    let mut connection: Vec<bool> = Vec::new();
    for _ in 0..100 {
        connection.extend(recorder.take().iter().filter_map(|e| match e.kind {
            paddock::events::EventKind::BackendConnection { connected } => Some(connected),
            _ => None,
        }));
        if connection.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(
        connection == [false, true],
        "the loss and the return are events: {connection:?}"
    );
    drop(ready);
    let stats = settle(&pool, Duration::from_secs(120), |s| s.ready == 2).await?;
    ensure!(
        stats.failed_resets == 0 && stats.destroyed == 0 && stats.backend_available,
        "no slot was lost to the outage: {stats:?}"
    );
    // A handle taken before the restart works on the new connection.
    slot_vm
        .status()
        .await
        .context("a Vm from before the restart")?;
    // And the pool goes on: a full cycle with a reset.
    for _ in 0..3 {
        let lease = pool.acquire().await?;
        exec_true(&lease).await?;
        lease.release();
    }
    settle(&pool, Duration::from_secs(60), |s| s.ready == 2).await?;
    pool.close().await?;
    ensure!(pool_domains(&paddock, &name).await?.is_empty());
    ensure!(!Path::new(POOL_ROOT).join(&name).exists());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_that_failed_in_an_outage_is_done_once_libvirtd_is_back() -> TestResult {
    if !host_fault_tests_enabled("a_removal_that_failed_in_an_outage_is_done_once_libvirtd_is_back")
    {
        return Ok(());
    }
    let _restarter = Restarter;
    let paddock = test_paddock().await?;
    let name = format!("hf{}", unique_marker());
    let mut cfg = config(1, 1);
    // Every slot serves one lease, so a release destroys it.
    cfg.max_uses = Some(1);
    let pool = pool(&paddock, &name, cfg).await?;
    let lease = pool.acquire().await?;
    let worn_out = lease.name().to_owned();
    stop_libvirtd().await?;
    paddock_tests::wait_until_async(Duration::from_secs(20), || {
        !paddock.libvirt().health().is_connected()
    })
    .await;
    drop(lease);
    // The destruction waits for libvirtd, then gives up and is remembered.
    settle(&pool, Duration::from_secs(60), |s| s.worn_out == 1).await?;
    tokio::time::sleep(paddock.libvirt().policy().call_wait + Duration::from_secs(2)).await;
    // Its QEMU still runs at the end of the outage: nothing could remove
    // it. (Checked before libvirtd is back: once it is, the pool may finish
    // the removal at once, before a listing through libvirt could see it.)
    let pid_file =
        Path::new(paddock::libvirt::confine::QEMU_RUN_DIR).join(format!("{worn_out}.pid"));
    let pid = std::fs::read_to_string(&pid_file)?.trim().to_owned();
    ensure!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "the worn-out slot's QEMU (pid {pid}) did not outlive the outage"
    );
    start_libvirtd().await?;
    paddock
        .libvirt()
        .wait_connected(Duration::from_secs(30))
        .await?;
    // The replacement's creation finishes the removal.
    settle(&pool, Duration::from_secs(120), |s| s.ready == 1).await?;
    let domains = pool_domains(&paddock, &name).await?;
    ensure!(
        !domains.contains(&worn_out),
        "{worn_out} was forgotten: {domains:?}"
    );
    pool.close().await?;
    ensure!(pool_domains(&paddock, &name).await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_without_libvirtd_lists_what_is_left_and_a_new_pool_removes_it() -> TestResult {
    if !host_fault_tests_enabled(
        "a_close_without_libvirtd_lists_what_is_left_and_a_new_pool_removes_it",
    ) {
        return Ok(());
    }
    let _restarter = Restarter;
    let paddock = test_paddock().await?;
    let name = format!("hf{}", unique_marker());
    let pool = pool(&paddock, &name, config(2, 2)).await?;
    let slots = pool_domains(&paddock, &name).await?;
    ensure!(slots.len() == 2, "{slots:?}");
    stop_libvirtd().await?;
    let err = pool
        .close_within(Duration::from_secs(2))
        .await
        .expect_err("nothing can be removed without libvirtd");
    let VmError::NotClosed { domains, cause, .. } = &err else {
        anyhow::bail!("not a NotClosed: {err:?}");
    };
    let mut listed = domains.clone();
    listed.sort();
    let mut expected = slots.clone();
    expected.sort();
    ensure!(
        listed == expected,
        "it lists the slots it could not remove: {err}"
    );
    ensure!(
        cause.as_ref().is_some_and(|c| c.is_unreachable()),
        "and says why: {err:?}"
    );
    start_libvirtd().await?;
    paddock
        .libvirt()
        .wait_connected(Duration::from_secs(30))
        .await?;
    ensure!(pool_domains(&paddock, &name).await?.len() == 2);
    // A pool of the same name removes what the closed one left: its
    // domains (slot names are reused) all come from the new golden.
    let again = self::pool(&paddock, &name, config(1, 1)).await?;
    let golden = again.backend().golden().id.id.clone();
    let metadata: Vec<_> = paddock
        .libvirt()
        .paddock_domains()
        .await?
        .into_iter()
        .filter(|(_, metadata)| metadata.pool == name)
        .map(|(_, metadata)| metadata)
        .collect();
    ensure!(
        metadata.len() == 1 && metadata[0].golden.as_deref() == Some(golden.as_str()),
        "only the new pool's slot is left: {metadata:?}"
    );
    again.close().await?;
    ensure!(pool_domains(&paddock, &name).await?.is_empty());
    Ok(())
}

/// The faults the soak injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    QemuKilled,
    AgentKilled,
    LibvirtdRestarted,
    GuestPanic,
}

const FAULTS: [Fault; 4] = [
    Fault::QemuKilled,
    Fault::AgentKilled,
    Fault::LibvirtdRestarted,
    Fault::GuestPanic,
];

/// A small deterministic generator (xorshift64*), so a seed replays a run.
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Open file descriptors of this process.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

/// Kills the QEMU of `domain` with SIGKILL.
fn kill_qemu(domain: &str) -> anyhow::Result<()> {
    let pids = paddock_tests::processes_matching(&format!("guest={domain},"));
    ensure!(pids.len() == 1, "one QEMU for {domain}: {pids:?}");
    std::process::Command::new("kill")
        .args(["-KILL", &pids[0].to_string()])
        .status()?;
    Ok(())
}

/// The soak: `PADDOCK_SOAK_CYCLES` (default 60) acquire/exec/release cycles
/// on a pool of two while faults are injected at random at a fixed seed
/// (`PADDOCK_SOAK_SEED`), one cycle in `PADDOCK_SOAK_FAULT_EVERY` (default
/// 10) on average. Every exec succeeds or fails with a typed error within
/// its bound; the pool is back at `min_ready` after each fault (the time it
/// took is its recovery); nothing is left after `close()`; the process's
/// file descriptors and memory do not grow. It prints its figures as one
/// JSON object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_soak() -> TestResult {
    if !host_fault_tests_enabled("fault_soak") {
        return Ok(());
    }
    let _restarter = Restarter;
    let cycles = env_number("PADDOCK_SOAK_CYCLES", 60);
    let seed = env_number("PADDOCK_SOAK_SEED", 42);
    let every = env_number("PADDOCK_SOAK_FAULT_EVERY", 10).max(1);
    let mut dice = Dice(seed.max(1));
    let paddock = test_paddock().await?;
    let name = format!("soak{}", unique_marker());
    let mut cfg = config(2, 2);
    cfg.acquire_timeout = Duration::from_secs(180);
    let pool = pool(&paddock, &name, cfg).await?;
    // Warm the process up before its baseline is taken.
    for _ in 0..4 {
        let lease = pool.acquire().await?;
        exec_true(&lease).await?;
    }
    settle(&pool, Duration::from_secs(120), |s| s.ready == 2).await?;
    let fds_before = open_fds();
    let rss_before = paddock_tests::proc_status_kib(std::process::id(), "VmRSS").unwrap_or(0);

    let mut injected: std::collections::BTreeMap<Fault, u32> = Default::default();
    let mut recovery: std::collections::BTreeMap<Fault, Vec<Duration>> = Default::default();
    let mut outcomes: std::collections::BTreeMap<String, u32> = Default::default();
    let started = std::time::Instant::now();
    for cycle in 0..cycles {
        let lease = tokio::time::timeout(Duration::from_secs(200), pool.acquire())
            .await
            .context("an acquire hung past its timeout")?
            .with_context(|| format!("cycle {cycle}: acquire"))?;
        let fault =
            (dice.below(every) == 0).then(|| FAULTS[usize::try_from(dice.below(4)).unwrap_or(0)]);
        let t0 = std::time::Instant::now();
        let mut request = Execute::shell(match fault {
            Some(Fault::GuestPanic) => "echo c > /proc/sysrq-trigger".to_owned(),
            Some(Fault::QemuKilled) => "sleep 30".to_owned(),
            Some(Fault::AgentKilled) => {
                "(sleep 0.5; kill -9 $(pidof paddock-agent)) & sleep 20".to_owned()
            }
            _ => format!("echo {cycle}"),
        });
        request.timeout_ms = Some(30_000);
        let exec = lease.client().exec_collect(request);
        let killer = async {
            match fault {
                Some(Fault::QemuKilled) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    kill_qemu(lease.name())
                }
                Some(Fault::LibvirtdRestarted) => stop_libvirtd().await,
                _ => Ok(()),
            }
        };
        let (out, killed) =
            tokio::join!(tokio::time::timeout(Duration::from_secs(60), exec), killer);
        killed?;
        let outcome = match out.context("an exec hung past its bound")? {
            Ok(out) if out.result.exit_code == Some(0) => "ok".to_owned(),
            Ok(out) if out.result.timed_out => "timed_out".to_owned(),
            Ok(out) => format!(
                "exit_{:?}_signal_{:?}",
                out.result.exit_code, out.result.signal
            ),
            Err(err) => format!("error: {}", client_error_kind(&err)),
        };
        *outcomes.entry(outcome).or_default() += 1;
        drop(lease);
        if let Some(fault) = fault {
            *injected.entry(fault).or_default() += 1;
            if fault == Fault::LibvirtdRestarted {
                tokio::time::sleep(Duration::from_millis(dice.below(3000))).await;
                start_libvirtd().await?;
            }
            settle(&pool, Duration::from_secs(300), |s| s.ready == 2)
                .await
                .with_context(|| format!("cycle {cycle}: recovery from {fault:?}"))?;
            recovery.entry(fault).or_default().push(t0.elapsed());
        }
    }
    settle(&pool, Duration::from_secs(300), |s| s.ready == 2).await?;
    // Give the pool's background work a moment to drop what it held.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let fds_after = open_fds();
    let rss_after = paddock_tests::proc_status_kib(std::process::id(), "VmRSS").unwrap_or(0);
    let stats = pool.stats();
    pool.close().await?;
    let left = pool_domains(&paddock, &name).await?;
    let dir_left = Path::new(POOL_ROOT).join(&name).exists();

    let quantile = |samples: &mut Vec<Duration>, q: usize| {
        samples.sort();
        samples
            .get((samples.len() * q / 100).min(samples.len().saturating_sub(1)))
            .map_or(0, |d| d.as_millis())
    };
    let mut recovery_ms = serde_json::Map::new();
    for (fault, samples) in &mut recovery {
        recovery_ms.insert(
            format!("{fault:?}"),
            serde_json::json!({
                "n": samples.len(),
                "p50": quantile(samples, 50),
                "p99": quantile(samples, 99),
            }),
        );
    }
    let report = serde_json::json!({
        "cycles": cycles,
        "seed": seed,
        "seconds": started.elapsed().as_secs(),
        "faults": injected.iter().map(|(f, n)| (format!("{f:?}"), *n)).collect::<std::collections::BTreeMap<_, _>>(),
        "exec_outcomes": outcomes,
        "recovery_ms": recovery_ms,
        "pool": {
            "created": stats.created,
            "destroyed": stats.destroyed,
            "failed_resets": stats.failed_resets,
            "outage_retries": stats.outage_retries,
        },
        "fds": [fds_before, fds_after],
        "rss_kib": [rss_before, rss_after],
        "domains_left": left.len(),
        "pool_dir_left": dir_left,
    });
    println!("{report}");
    ensure!(left.is_empty() && !dir_left, "nothing is left: {report}");
    ensure!(
        fds_after <= fds_before + 8,
        "file descriptors did not grow: {fds_before} -> {fds_after}"
    );
    ensure!(
        rss_after <= rss_before + 32 * 1024,
        "memory did not grow: {rss_before} -> {rss_after} KiB"
    );
    Ok(())
}

/// A short name for how an exec failed.
fn client_error_kind(err: &paddock::agent::ClientError) -> String {
    use paddock::agent::ClientError;
    match err {
        ClientError::ConnectionLost { .. } => "connection_lost".into(),
        ClientError::Timeout { .. } => "timeout".into(),
        ClientError::Agent { code, .. } => format!("agent_{code:?}"),
        other => format!("{other}"),
    }
}
