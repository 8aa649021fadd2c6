//! QEMU confined, on real VMs: every domain's QEMU runs under QEMU's seccomp
//! sandbox with libvirt's deny options, in cgroups with its profile's CPU,
//! memory and thread limits (after every new QEMU: a boot, a slot restored
//! from the golden, a `Restore` or `Revert` reset), and a guest that spins
//! every vCPU, forks, or makes QEMU translate more code than its cache
//! holds is held to those limits.
//!
//! The checks read `/proc` and `/sys/fs/cgroup` themselves, not through
//! Paddock's own cgroup code, so a wrong cgroup there fails here.
#![cfg(test)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use paddock::agent::{ClientError, Execute};
use paddock::{PoolConfig, ResetStrategy, SlotBackend, VmError, VmPool, VmPoolSpec};
use paddock_libvirt::{CpuQuota, DomainState, Profile, Resources, Tuning};
use paddock_tests::test_config;
use paddock_tests::unique_marker;
use paddock_tests::vm::{TestSandbox, TestSandboxOptions, enabled, test_paddock};

type TestResult = anyhow::Result<()>;

/// Where libvirt's system QEMU driver writes `<domain>.pid`.
const PID_DIR: &str = "/var/run/libvirt/qemu";

/// The pid of `domain`'s QEMU, from libvirt's pid file, checked against
/// the process's command line.
fn qemu_pid(domain: &str) -> anyhow::Result<u32> {
    let text = std::fs::read_to_string(Path::new(PID_DIR).join(format!("{domain}.pid")))
        .with_context(|| format!("the pid file of {domain}"))?;
    let pid: u32 = text.trim().parse()?;
    let args = qemu_args(pid)?;
    ensure!(
        args.iter()
            .any(|a| a.starts_with(&format!("guest={domain},"))),
        "process {pid} is no QEMU of {domain}: {args:?}"
    );
    Ok(pid)
}

/// The command line of process `pid`, argument by argument.
fn qemu_args(pid: u32) -> anyhow::Result<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline"))?;
    Ok(raw
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect())
}

/// The value that follows `option` on a command line.
fn option_value<'a>(args: &'a [String], option: &str) -> anyhow::Result<&'a str> {
    let at = args
        .iter()
        .position(|a| a == option)
        .with_context(|| format!("no {option} in {args:?}"))?;
    args.get(at + 1)
        .map(String::as_str)
        .with_context(|| format!("{option} without a value"))
}

/// The directory of `pid`'s cgroup for a v1 `controller` (this host mounts
/// each at `/sys/fs/cgroup/<controller>`).
fn cgroup_of(pid: u32, controller: &str) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let path = text
        .lines()
        .find_map(|line| {
            let mut fields = line.splitn(3, ':');
            let _ = fields.next()?;
            let controllers = fields.next()?;
            let path = fields.next()?;
            controllers
                .split(',')
                .any(|c| c == controller)
                .then_some(path)
        })
        .with_context(|| format!("process {pid} has no {controller} cgroup: {text}"))?;
    Ok(Path::new("/sys/fs/cgroup")
        .join(controller)
        .join(path.trim_start_matches('/')))
}

/// The domain-level cgroup holding `dir` (libvirt puts QEMU's own threads
/// in an `emulator` leaf for some controllers).
fn domain_level(dir: PathBuf) -> PathBuf {
    if dir.file_name().is_some_and(|leaf| leaf == "emulator") {
        dir.parent().map(Path::to_path_buf).unwrap_or(dir)
    } else {
        dir
    }
}

fn read_u64(path: &Path) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    text.trim()
        .parse()
        .with_context(|| format!("{}: {text:?}", path.display()))
}

fn read_i64(path: &Path) -> anyhow::Result<i64> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    text.trim()
        .parse()
        .with_context(|| format!("{}: {text:?}", path.display()))
}

/// `key value` lines of a cgroup stat file.
fn stat_file(path: &Path) -> anyhow::Result<HashMap<String, u64>> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(' ')?;
            Some((key.to_owned(), value.trim().parse().ok()?))
        })
        .collect())
}

/// CPU time process `pid` (all its threads, live and ended) has used.
fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("stat")?
        .1
        .split_whitespace()
        .collect();
    // utime and stime: fields 14 and 15, the 12th and 13th after the name.
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf only reads a system constant.
    let per_second = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })?;
    Ok(Duration::from_secs_f64(ticks as f64 / per_second as f64))
}

fn threads_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, Iterator::count)
}

/// The limits libvirt and Paddock applied to `pid`, checked against
/// `tuning`: CPU weight and quota on the domain's cpu cgroup, the memory
/// hard limit (memory and memory + swap) on its memory cgroup, and
/// `pids.max` on the pids cgroup QEMU is in. Returns that pids cgroup.
fn assert_cgroups_applied(pid: u32, tuning: &Tuning) -> anyhow::Result<PathBuf> {
    let cpu = domain_level(cgroup_of(pid, "cpu")?);
    ensure!(
        cpu.file_name()
            .is_some_and(|n| n.to_string_lossy().ends_with(".libvirt-qemu")),
        "QEMU's cpu cgroup {} is the domain's",
        cpu.display()
    );
    let shares = tuning.cpu_shares.context("a CPU weight")?;
    ensure!(read_u64(&cpu.join("cpu.shares"))? == u64::from(shares));
    let quota = tuning.cpu_quota.context("a CPU quota")?;
    ensure!(read_u64(&cpu.join("cpu.cfs_period_us"))? == quota.period_us);
    ensure!(
        read_i64(&cpu.join("cpu.cfs_quota_us"))? == i64::try_from(quota.quota_us)?,
        "the domain's CPU quota"
    );
    let memory = domain_level(cgroup_of(pid, "memory")?);
    ensure!(
        memory
            .file_name()
            .is_some_and(|n| n.to_string_lossy().ends_with(".libvirt-qemu")),
        "QEMU's memory cgroup {} is the domain's",
        memory.display()
    );
    let hard = tuning.memory_hard_limit_mib.context("a memory limit")? << 20;
    ensure!(
        read_u64(&memory.join("memory.limit_in_bytes"))? == hard,
        "memory.limit_in_bytes of {}",
        memory.display()
    );
    let memsw = memory.join("memory.memsw.limit_in_bytes");
    if memsw.exists() {
        ensure!(read_u64(&memsw)? == hard, "memory + swap is held too");
    }
    let pids = cgroup_of(pid, "pids")?;
    let max = tuning.pids_max.context("a thread limit")?;
    ensure!(
        std::fs::read_to_string(pids.join("pids.max"))?.trim() == max.to_string(),
        "pids.max of {}",
        pids.display()
    );
    let members = std::fs::read_to_string(pids.join("cgroup.procs"))?;
    ensure!(
        members.lines().any(|p| p.trim() == pid.to_string()),
        "QEMU is in {}",
        pids.display()
    );
    let threads = threads_of(pid);
    ensure!(
        threads > 0 && threads <= usize::try_from(max)?,
        "{threads} threads within pids.max {max}"
    );
    Ok(pids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_runs_under_the_seccomp_sandbox_with_its_cgroup_limits() -> TestResult {
    if !enabled("qemu_runs_under_the_seccomp_sandbox_with_its_cgroup_limits") {
        return Ok(());
    }
    let sandbox = TestSandbox::boot(TestSandboxOptions::default()).await?;
    let pid = qemu_pid(sandbox.name())?;
    let args = qemu_args(pid)?;
    let sandbox_option = option_value(&args, "-sandbox")?;
    let mut parts = sandbox_option.split(',');
    ensure!(
        parts.next() == Some("on"),
        "the seccomp sandbox is on: {sandbox_option}"
    );
    let options: HashMap<&str, &str> = parts.filter_map(|p| p.split_once('=')).collect();
    for option in ["obsolete", "elevateprivileges", "spawn", "resourcecontrol"] {
        ensure!(
            options.get(option) == Some(&"deny"),
            "-sandbox {sandbox_option} denies {option}"
        );
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    ensure!(
        status
            .lines()
            .any(|l| l.starts_with("Seccomp:") && l.trim_end().ends_with('2')),
        "the kernel has QEMU in seccomp filter mode"
    );
    let tuning = sandbox.spec().tuning;
    ensure!(
        tuning
            == Profile::Custom(Resources {
                vcpus: 1,
                memory_mib: 256
            })
            .tuning()
    );
    let accel = option_value(&args, "-accel")?;
    ensure!(
        accel.split(',').any(|o| o == "tb-size=256"),
        "the translation cache is bounded: -accel {accel}"
    );
    let pids = assert_cgroups_applied(pid, &tuning)?;
    ensure!(
        pids.ends_with(Path::new("paddock").join(sandbox.name())),
        "libvirt makes no pids cgroup: QEMU is in Paddock's, {}",
        pids.display()
    );
    let name = sandbox.name().to_owned();
    sandbox.destroy().await?;
    ensure!(!pids.exists(), "the pids cgroup of {name} went with it");
    Ok(())
}

/// A pool of one slot of 1 vCPU and 256 MiB with `tuning` (the defaults
/// if `None`), reset by `reset`.
async fn one_slot_pool(reset: ResetStrategy, tuning: Option<Tuning>) -> anyhow::Result<VmPool> {
    let paddock = test_paddock().await?;
    let mut spec = VmPoolSpec::new(format!("cf{}", unique_marker()));
    spec.reset = reset;
    spec.tuning = tuning;
    spec.client = test_config();
    let pool = paddock
        .create_pool(
            spec,
            PoolConfig {
                min_ready: 1,
                max_size: 1,
                acquire_timeout: Duration::from_secs(120),
                health_check_interval: None,
                ..PoolConfig::default()
            },
        )
        .await?;
    pool.wait_ready(Duration::from_secs(180)).await?;
    Ok(pool)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_new_qemu_of_a_slot_is_confined() -> TestResult {
    if !enabled("every_new_qemu_of_a_slot_is_confined") {
        return Ok(());
    }
    let tuning = Tuning {
        pids_max: Some(100),
        ..Profile::Custom(Resources {
            vcpus: 1,
            memory_mib: 256,
        })
        .tuning()
    };
    // `Restore` and `Revert` start a new QEMU at every reset; the slot's
    // first QEMU is restored from the golden's memory.
    for reset in [ResetStrategy::Restore, ResetStrategy::Revert] {
        let pool = one_slot_pool(reset, Some(tuning)).await?;
        let lease = pool.acquire().await?;
        let name = lease.name().to_owned();
        let first = qemu_pid(&name)?;
        let pids = assert_cgroups_applied(first, &tuning)?;
        lease.release();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let lease = pool.acquire().await?;
        ensure!(lease.name() == name, "the same slot came back");
        let second = qemu_pid(&name)?;
        ensure!(second != first, "a {reset:?} reset started a new QEMU");
        ensure!(
            assert_cgroups_applied(second, &tuning)? == pids,
            "the new QEMU is in the slot's pids cgroup"
        );
        drop(lease);
        pool.close().await?;
        ensure!(!pids.exists(), "the slot's pids cgroup went with the pool");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_limit_below_what_qemu_needs_is_enforced() -> TestResult {
    if !enabled("a_thread_limit_below_what_qemu_needs_is_enforced") {
        return Ok(());
    }
    // An idle 1-vCPU QEMU has 4 threads; parallel disk writes make it
    // start block workers (7 threads in all here). A limit of 4 leaves no
    // room for one.
    let tuning = Tuning {
        pids_max: Some(4),
        ..Profile::Custom(Resources {
            vcpus: 1,
            memory_mib: 256,
        })
        .tuning()
    };
    let sandbox = TestSandbox::boot(TestSandboxOptions {
        tuning: Some(tuning),
        scratch_disk_mib: Some(64),
        ..TestSandboxOptions::default()
    })
    .await?;
    let pid = qemu_pid(sandbox.name())?;
    // Not `assert_cgroups_applied`: QEMU may have more threads than that
    // when it is moved in (the kernel lets it; only new ones are refused).
    let pids = cgroup_of(pid, "pids")?;
    ensure!(std::fs::read_to_string(pids.join("pids.max"))?.trim() == "4");
    // Block workers the boot started end after 10 s idle; the writes must
    // need new ones.
    ensure!(
        paddock_tests::wait_until_async(Duration::from_secs(30), || threads_of(pid) <= 4).await,
        "QEMU's idle block workers ended: {} threads",
        threads_of(pid)
    );
    let events = || stat_file(&pids.join("pids.events"));
    let refused_before = events()?.get("max").copied().unwrap_or(0);
    let mut writes = Execute::shell(
        "for i in 1 2 3 4 5 6 7 8; do dd if=/dev/urandom of=/dev/vda bs=64k count=100 \
         seek=$((i * 100)) oflag=direct 2>/dev/null & done; wait; echo written",
    );
    writes.timeout_ms = Some(60_000);
    let outcome = sandbox.client().exec_collect(writes).await;
    let alive = qemu_pid(sandbox.name()).is_ok_and(|now| now == pid);
    if alive {
        let refused = events()?.get("max").copied().unwrap_or(0) - refused_before;
        eprintln!("QEMU alive; thread creations refused: {refused}");
        ensure!(
            refused > 0,
            "the kernel refused QEMU a thread beyond pids.max"
        );
        ensure!(threads_of(pid) <= 4, "{} threads", threads_of(pid));
    } else {
        // QEMU aborts when it cannot start a thread (its cgroup goes with
        // it): why the default leaves room for all of them.
        let log = std::fs::read_to_string(
            Path::new("/var/log/libvirt/qemu").join(format!("{}.log", sandbox.name())),
        )?;
        eprintln!("QEMU ended; the writes: {:?}", outcome.map(|o| o.result));
        ensure!(
            log.contains("qemu_thread_create: Resource temporarily unavailable"),
            "QEMU ended because a thread was refused: {}",
            log.lines().rev().take(3).collect::<Vec<_>>().join(" | ")
        );
    }
    sandbox.destroy().await?;
    Ok(())
}

/// Guest CPU time a QEMU may use over `elapsed` under `quota`, with room
/// for the scheduler's accounting (a period's overrun, 10 ms ticks).
fn quota_bound(quota: CpuQuota, elapsed: Duration) -> Duration {
    let share = quota.quota_us as f64 / quota.period_us as f64;
    elapsed.mul_f64(share * 1.2) + Duration::from_millis(100)
}

/// QEMU `pid`'s CPU time over `seconds`, the time that took, and how many
/// periods its domain's cpu cgroup `cpu` was throttled in meanwhile.
async fn measure(pid: u32, cpu: &Path, seconds: u64) -> anyhow::Result<(Duration, Duration, u64)> {
    let throttled = || -> anyhow::Result<u64> {
        stat_file(&cpu.join("cpu.stat"))?
            .get("nr_throttled")
            .copied()
            .context("nr_throttled")
    };
    let (cpu_before, throttled_before) = (cpu_time(pid)?, throttled()?);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let used = cpu_time(pid)?.saturating_sub(cpu_before);
    let elapsed = started.elapsed();
    Ok((used, elapsed, throttled()? - throttled_before))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_spinning_every_vcpu_and_forking_is_held_to_its_cpu_quota() -> TestResult {
    if !enabled("a_guest_spinning_every_vcpu_and_forking_is_held_to_its_cpu_quota") {
        return Ok(());
    }
    // A quarter of one host CPU for two vCPUs: spinning, the two vCPU
    // threads could use up to two host CPUs, eight times the quota, so
    // the quota, not the guest or the host, is what binds.
    let quota = CpuQuota::percent_of_one_cpu(25);
    let resources = Resources {
        vcpus: 2,
        memory_mib: 256,
    };
    let tuning = Tuning {
        cpu_quota: Some(quota),
        ..Profile::Custom(resources).tuning()
    };
    let sandbox = TestSandbox::boot(TestSandboxOptions {
        vcpus: 2,
        tuning: Some(tuning),
        ..TestSandboxOptions::default()
    })
    .await?;
    let pid = qemu_pid(sandbox.name())?;
    let pids = assert_cgroups_applied(pid, &tuning)?;
    let cpu = domain_level(cgroup_of(pid, "cpu")?);
    // Every vCPU spinning, and 32 more processes forked, all for 60 s.
    let mut spin = Execute::shell(
        "for i in $(seq 34); do (end=$(($(date +%s) + 60)); \
         while [ $(date +%s) -lt $end ]; do :; done) & done; wait",
    );
    spin.timeout_ms = Some(120_000);
    let spinning = sandbox.client().exec(spin).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let (used, elapsed, throttled) = measure(pid, &cpu, 6).await?;
    let bound = quota_bound(quota, elapsed);
    eprintln!(
        "under the quota: QEMU used {used:?} of CPU in {elapsed:?} (bound {bound:?}), \
         throttled in {throttled} periods"
    );
    ensure!(
        used <= bound,
        "QEMU used {used:?} in {elapsed:?}, over {bound:?}"
    );
    ensure!(
        throttled > 0,
        "the quota never throttled QEMU, so it is not what held the guest"
    );
    let peak: u64 = std::fs::read_to_string(pids.join("pids.peak"))
        .ok()
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or(0);
    ensure!(
        threads_of(pid) <= 16,
        "guest processes are not QEMU threads: {} threads (peak {peak})",
        threads_of(pid)
    );

    // No control run with the quota lifted: on a host shared with other
    // tests' guests, how much CPU a free QEMU gets is not known. The
    // throttled periods above show the quota was reached and held it.
    drop(spinning);
    sandbox.destroy().await?;
    Ok(())
}

/// A static x86-64 Linux program of `instructions` straight-line
/// `inc dword [rsp-8]` followed by `exit(0)`: every instruction sits at its
/// own address, so QEMU translates all of them, and each load and store
/// becomes a software TLB lookup in host code, tens of bytes per guest
/// byte.
fn straight_line_program(instructions: usize) -> Vec<u8> {
    const BASE: u64 = 0x40_0000;
    const HEADERS: usize = 64 + 56;
    let mut code = Vec::with_capacity(instructions * 4 + 16);
    for _ in 0..instructions {
        code.extend_from_slice(&[0xff, 0x44, 0x24, 0xf8]); // inc dword [rsp-8]
    }
    code.extend_from_slice(&[0xb8, 0x3c, 0, 0, 0]); // mov eax, 60 (exit)
    code.extend_from_slice(&[0x31, 0xff]); // xor edi, edi
    code.extend_from_slice(&[0x0f, 0x05]); // syscall
    let size = (HEADERS + code.len()) as u64;
    let mut elf = Vec::with_capacity(HEADERS + code.len());
    // ELF header.
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&(BASE + HEADERS as u64).to_le_bytes()); // entry
    elf.extend_from_slice(&64u64.to_le_bytes()); // program headers
    elf.extend_from_slice(&0u64.to_le_bytes()); // no section headers
    elf.extend_from_slice(&0u32.to_le_bytes());
    for half in [64u16, 56, 1, 64, 0, 0] {
        elf.extend_from_slice(&half.to_le_bytes());
    }
    // One loadable, readable and executable segment: the whole file.
    elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // R + X
    elf.extend_from_slice(&0u64.to_le_bytes());
    elf.extend_from_slice(&BASE.to_le_bytes());
    elf.extend_from_slice(&BASE.to_le_bytes());
    elf.extend_from_slice(&size.to_le_bytes());
    elf.extend_from_slice(&size.to_le_bytes());
    elf.extend_from_slice(&0x1000u64.to_le_bytes());
    elf.extend_from_slice(&code);
    elf
}

/// Three 150 MiB buffers at once in a 256 MiB guest: its kernel's OOM
/// killer ends one.
async fn fill_guest_memory(lease: &paddock::Lease<paddock::VmBackend>) -> anyhow::Result<()> {
    let mut hog = Execute::shell(
        "pids=''; for i in 1 2 3; do dd if=/dev/zero of=/dev/null bs=150M count=1 2>/dev/null & \
         pids=\"$pids $!\"; done; failed=0; for p in $pids; do wait $p || failed=1; done; \
         exit $failed",
    );
    hog.timeout_ms = Some(120_000);
    let out = lease.client().exec_collect(hog).await?;
    ensure!(
        out.result.exit_code != Some(0),
        "the guest's OOM killer ended a buffer: {:?}",
        out.result
    );
    Ok(())
}

/// Runs 16 MiB of straight-line code in the guest: its translation is more
/// than QEMU's 256 MiB translation cache holds, so the cache fills.
async fn fill_translation_cache(lease: &paddock::Lease<paddock::VmBackend>) -> anyhow::Result<()> {
    let program = straight_line_program(4 << 20);
    lease
        .client()
        .put_reader(&mut program.as_slice(), "/tmp/straight", 0o755)
        .await?;
    let mut run = Execute::shell("/tmp/straight && echo translated");
    run.timeout_ms = Some(300_000);
    let out = lease.client().exec_collect(run).await?;
    ensure!(
        out.stdout == b"translated\n",
        "the program ran: {:?} {}",
        out.result,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_eating_memory_is_held_by_its_own_oom_and_qemu_stays_within_its_limit() -> TestResult
{
    if !enabled("a_guest_eating_memory_is_held_by_its_own_oom_and_qemu_stays_within_its_limit") {
        return Ok(());
    }
    let pool = one_slot_pool(ResetStrategy::InPlace, None).await?;
    let lease = pool.acquire().await?;
    let pid = qemu_pid(lease.name())?;
    let tuning = lease.spec().tuning;
    assert_cgroups_applied(pid, &tuning)?;
    let memory = domain_level(cgroup_of(pid, "memory")?);
    let limit = read_u64(&memory.join("memory.limit_in_bytes"))?;
    let rss = || paddock_tests::proc_status_kib(pid, "RssAnon").context("RssAnon");
    let rss_before = rss()?;
    fill_guest_memory(&lease).await?;
    let rss_before_code = rss()?;
    fill_translation_cache(&lease).await?;
    let rss_after = rss()?;
    let peak = read_u64(&memory.join("memory.max_usage_in_bytes"))?;
    let oom = stat_file(&memory.join("memory.oom_control"))?;
    eprintln!(
        "QEMU anonymous memory {rss_before} KiB, {rss_before_code} KiB once the guest filled \
         its memory, {rss_after} KiB after the code; cgroup peak {} MiB of {} MiB; {oom:?}",
        peak >> 20,
        limit >> 20
    );
    ensure!(qemu_pid(lease.name())? == pid, "the same QEMU still runs");
    ensure!(
        oom.get("oom_kill").copied().unwrap_or(0) == 0,
        "the cgroup killed nothing"
    );
    ensure!(peak <= limit, "peak {peak} within {limit}");
    // The translation grew QEMU by most of its cache: the limit was
    // pressed by what the guest did, not idle.
    ensure!(
        rss_after >= rss_before_code + (150 << 10),
        "QEMU grew with the guest's code: {rss_before_code} -> {rss_after} KiB"
    );
    pool.backend().check(&lease).await?;
    let out = lease
        .client()
        .exec_collect(Execute::shell("echo still here"))
        .await?;
    ensure!(out.stdout == b"still here\n");
    drop(lease);
    pool.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_limit_below_what_qemu_needs_stops_the_guest_with_a_typed_error() -> TestResult {
    if !enabled("a_memory_limit_below_what_qemu_needs_stops_the_guest_with_a_typed_error") {
        return Ok(());
    }
    // Room for the guest's RAM and what QEMU needs idle (about 95 MiB
    // here), not for a full translation cache: the control that shows the
    // limit binds.
    let tight = Tuning {
        memory_hard_limit_mib: Some(256 + 160),
        ..Profile::Custom(Resources {
            vcpus: 1,
            memory_mib: 256,
        })
        .tuning()
    };
    let pool = one_slot_pool(ResetStrategy::InPlace, Some(tight)).await?;
    let lease = pool.acquire().await?;
    let pid = qemu_pid(lease.name())?;
    assert_cgroups_applied(pid, &tight)?;
    let eat = async {
        fill_guest_memory(&lease).await?;
        fill_translation_cache(&lease).await
    };
    let Err(eaten) = eat.await else {
        bail!("QEMU translated more than its limit holds and lived");
    };
    let lost = eaten
        .chain()
        .any(|e| matches!(e.downcast_ref(), Some(ClientError::ConnectionLost { .. })));
    ensure!(lost, "the agent's connection went with QEMU: {eaten:#}");
    let killed = format!("Memory cgroup out of memory: Killed process {pid} (qemu-system-x86)");
    let found = paddock_tests::wait_until_async(Duration::from_secs(10), || {
        std::process::Command::new("dmesg")
            .output()
            .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains(&killed))
    })
    .await;
    ensure!(
        found,
        "the kernel log says the cgroup's OOM killer ended QEMU: {killed}"
    );
    match pool.backend().check(&lease).await {
        Err(VmError::GuestStopped { state, reason, .. }) => {
            eprintln!("the slot's guest is {state} ({reason})");
            ensure!(state == DomainState::Shutoff, "{state} ({reason})");
        }
        other => bail!("a typed error for the stopped guest, not {other:?}"),
    }
    drop(lease);
    pool.close().await?;
    Ok(())
}

/// A system user of a test's own, in the `libvirt-qemu` group (QEMU reads
/// its per-domain files under `/var/lib/libvirt/qemu`, `0750` on Debian),
/// removed with its group on drop.
struct TestUser {
    name: String,
    uid: u32,
    gid: u32,
}

impl TestUser {
    fn create() -> anyhow::Result<Self> {
        let name = format!("paddock-t{}", unique_marker());
        let made = std::process::Command::new("useradd")
            .args(["--system", "--no-create-home", "--home-dir", "/nonexistent"])
            .args(["--shell", "/usr/sbin/nologin", "--user-group"])
            .args(["--groups", "libvirt-qemu", &name])
            .output()?;
        ensure!(
            made.status.success(),
            "useradd {name}: {}",
            String::from_utf8_lossy(&made.stderr)
        );
        // From here on the drop removes it.
        let mut user = Self {
            name,
            uid: 0,
            gid: 0,
        };
        user.uid = id(&["-u", &user.name])?;
        user.gid = id(&["-g", &user.name])?;
        Ok(user)
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("userdel")
            .arg(&self.name)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

fn id(args: &[&str]) -> anyhow::Result<u32> {
    let out = std::process::Command::new("id").args(args).output()?;
    ensure!(out.status.success(), "id {args:?}");
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

/// The ids of a `/proc/<pid>/status` line (`Uid:`, `Gid:`, `Groups:`).
fn status_ids(pid: u32, field: &str) -> anyhow::Result<Vec<u32>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .with_context(|| format!("no {field} in the status of {pid}"))?;
    Ok(line
        .split_whitespace()
        .filter_map(|id| id.parse().ok())
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_can_run_its_qemus_as_a_user_of_its_own() -> TestResult {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    if !enabled("a_pool_can_run_its_qemus_as_a_user_of_its_own") {
        return Ok(());
    }
    let user = TestUser::create()?;
    let group = std::process::Command::new("getent")
        .args(["group", "libvirt-qemu"])
        .output()?;
    let libvirt_qemu: u32 = String::from_utf8_lossy(&group.stdout)
        .split(':')
        .nth(2)
        .context("the libvirt-qemu group")?
        .parse()?;
    let label = paddock_libvirt::DacLabel {
        uid: user.uid,
        gid: user.gid,
    };
    let paddock = test_paddock().await?;
    let mut spec = VmPoolSpec::new(format!("cu{}", unique_marker()));
    // A new QEMU and a new overlay at every reset.
    spec.reset = ResetStrategy::Restore;
    spec.run_as = Some(label);
    spec.client = test_config();
    let pool = paddock
        .create_pool(
            spec,
            PoolConfig {
                min_ready: 1,
                max_size: 1,
                acquire_timeout: Duration::from_secs(120),
                health_check_interval: None,
                ..PoolConfig::default()
            },
        )
        .await?;
    pool.wait_ready(Duration::from_secs(180)).await?;
    // A sandbox of libvirt's own user, from the same kernel and
    // initramfs, at the same time: libvirt relabels no shared file for the
    // pool, so neither is refused.
    let neighbour = TestSandbox::boot(TestSandboxOptions::default()).await?;
    let neighbour_pid = qemu_pid(neighbour.name())?;
    ensure!(status_ids(neighbour_pid, "Uid:")?[0] != user.uid);
    let mut pids = Vec::new();
    for round in 0..2 {
        let lease = pool.acquire().await?;
        let pid = qemu_pid(lease.name())?;
        ensure!(
            status_ids(pid, "Uid:")? == [user.uid; 4],
            "round {round}: QEMU runs as {}",
            user.name
        );
        ensure!(status_ids(pid, "Gid:")? == [user.gid; 4]);
        ensure!(
            status_ids(pid, "Groups:")?.contains(&libvirt_qemu),
            "libvirt gave QEMU the user's groups"
        );
        let overlay = &lease.spec().disk.as_ref().context("a disk")?.overlay;
        let meta = std::fs::metadata(overlay)?;
        ensure!(
            (meta.uid(), meta.gid(), meta.permissions().mode() & 0o777)
                == (user.uid, user.gid, 0o600),
            "the overlay {} is the user's alone",
            overlay.display()
        );
        assert_cgroups_applied(pid, &lease.spec().tuning)?;
        let out = lease
            .client()
            .exec_collect(Execute::shell(
                "echo written | dd of=/dev/vda conv=fsync 2>/dev/null && \
                 echo 3 > /proc/sys/vm/drop_caches && head -c 8 /dev/vda",
            ))
            .await?;
        ensure!(
            out.stdout == b"written\n",
            "the guest writes its disk through QEMU: {:?} {}",
            out.result,
            String::from_utf8_lossy(&out.stderr)
        );
        pids.push(pid);
        lease.release();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ensure!(
        pids[0] != pids[1],
        "the reset ran a new QEMU, as the user too"
    );
    neighbour.destroy().await?;
    pool.close().await?;
    drop(user);
    Ok(())
}
