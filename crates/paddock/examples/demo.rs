//! Paddock's main job end to end: what `cargo xtask demo` runs once the
//! host is set up and the guest image built.
//!
//! Boots a sandbox VM through libvirt (TCG on a machine without KVM) and
//! drives it through the guest agent: a command, streamed output, files both
//! ways, a timeout that kills a process tree. Then it takes a golden
//! snapshot, changes the guest, resets it to the golden state and shows the
//! change is gone, saves the guest to a file and restores it, and tears it
//! down. Last, a pool of two warm sandboxes serves four jobs in a row, each
//! reset to the pool's golden after its lease. Every step prints its
//! timings; at the end the demo checks that nothing is left: no domain, no
//! socket, no file.
//!
//! Run it by hand (as root, with libvirtd running and the image built):
//!
//! ```sh
//! cargo run -p paddock --example demo -- target/paddock-image/current.json
//! ```

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use paddock::agent::{AgentClient, Execute};
use paddock::libvirt::{Libvirt, RestoreMode, SnapshotSpec};
use paddock::{GuestImage, Paddock, PaddockConfig, PoolConfig, Sandbox, SandboxConfig, VmPoolSpec};

/// The libvirt daemon the demo uses.
const URI: &str = "qemu:///system";

/// Guest memory: what the figures in the docs are measured with.
const MEMORY_MIB: u64 = 256;

/// How many `true` round trips the timing uses.
const ROUND_TRIPS: usize = 30;

fn main() -> anyhow::Result<()> {
    let manifest = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/paddock-image/current.json".into());
    let image = GuestImage::load(manifest.as_ref()).with_context(|| {
        format!("loading the guest image {manifest} (build it with `cargo xtask image`)")
    })?;
    let work = tempfile::Builder::new().prefix("paddock-demo-").tempdir()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let name = format!("paddock-demo-{}", std::process::id());
    let leftover_dir = Path::new(paddock::DEFAULT_STATE_ROOT).join(&name);
    let pool_name = format!("demo{}", std::process::id());
    let pool_dir = Path::new(paddock::DEFAULT_STATE_ROOT).join(&pool_name);
    runtime.block_on(demo(&image, &name, work.path()))?;
    runtime.block_on(pool_demo(&image, &pool_name))?;
    let host_dir = work.path().to_path_buf();
    work.close().context("removing the demo's host directory")?;

    section("nothing left behind");
    let domains = std::process::Command::new("virsh")
        .args(["-c", URI, "list", "--all", "--name"])
        .output()
        .context("running virsh")?;
    let domains = String::from_utf8_lossy(&domains.stdout);
    ensure!(
        !domains.lines().any(|line| line.trim() == name),
        "domain {name} is still defined"
    );
    let pool_prefix = format!("paddock-{pool_name}-");
    ensure!(
        !domains
            .lines()
            .any(|line| line.trim().starts_with(&pool_prefix)),
        "a domain of pool {pool_name} is still defined: {domains}"
    );
    ensure!(!leftover_dir.exists(), "{} is left", leftover_dir.display());
    ensure!(!pool_dir.exists(), "{} is left", pool_dir.display());
    ensure!(!host_dir.exists(), "{} is left", host_dir.display());
    println!(
        "no domain {name}; {} (console log, agent socket, disks) removed;",
        leftover_dir.display()
    );
    println!("{} (saved image, downloads) removed", host_dir.display());
    println!(
        "no domain of pool {pool_name}; {} (golden, slots) removed",
        pool_dir.display()
    );
    Ok(())
}

/// A pool of two warm sandboxes serves four jobs in a row: each job sees
/// the golden (the warm-up's file) and nothing of the jobs before it.
async fn pool_demo(image: &GuestImage, pool_name: &str) -> anyhow::Result<()> {
    section("a pool of warm sandboxes");
    let mut config = PaddockConfig::new(image.clone());
    config.libvirt_uri = URI.into();
    let paddock = Paddock::connect(config).await?;
    let mut spec = VmPoolSpec::new(pool_name);
    spec.memory_mib = MEMORY_MIB;
    spec.warmup = vec!["echo warmed up > /tmp/warm".into()];
    let started = Instant::now();
    let pool = paddock
        .create_pool(
            spec,
            PoolConfig {
                min_ready: 2,
                max_size: 2,
                acquire_timeout: Duration::from_secs(60),
                ..PoolConfig::default()
            },
        )
        .await?;
    let result = async {
        pool.wait_ready(Duration::from_secs(120)).await?;
        let golden = pool.backend().golden();
        println!(
            "golden {} captured (template booted in {}); 2 slots restored from it; \
             ready {} after the start",
            &golden.id.id[..8],
            ms(golden.boot_to_ready),
            ms(started.elapsed())
        );
        for job in 0..4 {
            let t = Instant::now();
            let lease = pool.acquire().await?;
            let acquired = t.elapsed();
            let t = Instant::now();
            let out = lease
                .client()
                .exec_collect(Execute::shell(format!(
                    "cat /tmp/warm; echo \"$(ls /tmp/job-* 2>/dev/null | wc -l) earlier jobs' files\"; \
                     touch /tmp/job-{job}"
                )))
                .await?;
            let ran = t.elapsed();
            let seen = String::from_utf8_lossy(&out.stdout).trim().replace('\n', "; ");
            ensure!(
                seen == "warmed up; 0 earlier jobs' files",
                "job {job} saw {seen:?}"
            );
            let reset = if lease.uses() == 0 {
                "fresh from the golden".to_owned()
            } else {
                let phases = lease.last_reset();
                format!(
                    "reset in place before it: loadvm {}, agent {}, rewarm {}",
                    ms(phases.stop_or_revert),
                    ms(phases.agent),
                    ms(phases.rewarm)
                )
            };
            println!(
                "job {job}: slot {} acquired in {}, ran in {}: {seen} ({reset})",
                lease.index(),
                short(acquired),
                ms(ran)
            );
            lease.release();
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    pool.close().await?;
    result?;
    println!("pool closed: its domains and files are gone");
    Ok(())
}

async fn demo(image: &GuestImage, name: &str, work: &Path) -> anyhow::Result<()> {
    let libvirt = Libvirt::open(URI).await?;
    section("boot a sandbox VM");
    let mut config = SandboxConfig::new(name);
    config.memory_mib = MEMORY_MIB;
    config.pool = "demo".into();
    println!(
        "image {} (kernel {}), {} MiB, 1 vCPU, no network, agent on virtio-serial",
        image.hash,
        image.kernel.display(),
        MEMORY_MIB
    );
    let sandbox = Sandbox::boot(&libvirt, image, config).await?;
    let client = sandbox.client();
    let session = client.session().await.context("no session")?;
    println!(
        "domain {} running; agent {} ready {} after start (protocol v{}, boot id {})",
        sandbox.name(),
        session.agent_version,
        ms(sandbox.boot_to_ready()),
        session.version,
        session.boot_id
    );
    let outcome = drive(&libvirt, &sandbox, client, work).await;
    section("teardown");
    let destroyed = sandbox.destroy().await;
    outcome?;
    destroyed?;
    println!("domain destroyed and undefined, sandbox directory removed");
    Ok(())
}

async fn drive(
    libvirt: &Libvirt,
    sandbox: &Sandbox,
    client: &AgentClient,
    work: &Path,
) -> anyhow::Result<()> {
    section("run a command in the guest");
    let out = client.exec_collect(Execute::argv(["uname", "-a"])).await?;
    print!("$ uname -a\n{}", String::from_utf8_lossy(&out.stdout));
    println!(
        "exit {:?}, {} µs in the guest",
        out.result.exit_code, out.result.duration_us
    );

    section("stream output as it is produced");
    let streamed = Instant::now();
    let mut execution = client
        .exec(Execute::shell(
            "for i in 1 2 3 4 5; do echo \"line $i\"; sleep 0.3; done",
        ))
        .await?;
    let mut stdout = execution.take_stdout().context("stdout")?;
    while let Some(chunk) = stdout.chunk().await? {
        for line in String::from_utf8_lossy(&chunk).lines() {
            println!("[{:>9}] {line}", ms(streamed.elapsed()));
        }
    }
    println!("exit {:?}", execution.wait().await?.exit_code);

    section("files both ways");
    client
        .exec_collect(Execute::shell(
            "mkdir -p /work && uname -r > /work/report.txt && echo written in the guest >> /work/report.txt",
        ))
        .await?;
    let cat = client
        .exec_collect(Execute::argv(["cat", "/work/report.txt"]))
        .await?;
    print!(
        "guest: cat /work/report.txt\n{}",
        String::from_utf8_lossy(&cat.stdout)
    );
    let fetched = work.join("report.txt");
    let download = client.get_file("/work/report.txt", &fetched).await?;
    ensure!(
        std::fs::read(&fetched)? == cat.stdout,
        "fetched file differs"
    );
    println!(
        "host: fetched {} bytes to {} (crc32 {:#010x} verified)",
        download.size,
        fetched.display(),
        download.crc32
    );
    let upload = work.join("upload.bin");
    let size = 8 << 20;
    std::fs::write(&upload, pattern(size))?;
    let t = Instant::now();
    let done = client.put_file(&upload, "/work/upload.bin").await?;
    let put_time = t.elapsed();
    let back = work.join("download.bin");
    let t = Instant::now();
    client.get_file("/work/upload.bin", &back).await?;
    let get_time = t.elapsed();
    ensure!(
        std::fs::read(&back)? == std::fs::read(&upload)?,
        "round trip altered the file"
    );
    println!(
        "host -> guest {} MiB in {} ({}), back in {} ({}): crc32 {:#010x}, identical",
        size >> 20,
        ms(put_time),
        rate(size, put_time),
        ms(get_time),
        rate(size, get_time),
        done.crc32
    );

    section("a command that exceeds its timeout");
    let mut request = Execute::shell("sleep 300 & sleep 300; echo never");
    request.timeout_ms = Some(2000);
    request.kill_grace_ms = Some(500);
    let out = client.exec_collect(request).await?;
    let left = client
        .exec_collect(Execute::shell("ps -o args | grep -c '^sleep 300' || true"))
        .await?;
    println!(
        "$ sleep 300 & sleep 300 (timeout 2 s): timed_out={} signal={:?} after {}; sleeps left in the guest: {}",
        out.result.timed_out,
        out.result.signal,
        ms(Duration::from_micros(out.result.duration_us)),
        String::from_utf8_lossy(&left.stdout).trim()
    );
    ensure!(out.result.timed_out, "the timeout did not fire");

    section("exec round trip");
    let mut round_trips = Vec::with_capacity(ROUND_TRIPS);
    for _ in 0..ROUND_TRIPS {
        let t = Instant::now();
        client.exec_collect(Execute::argv(["true"])).await?;
        round_trips.push(t.elapsed());
    }
    let (median, p99) = median_p99(&mut round_trips);
    println!(
        "`true` through the agent: median {} p99 {} ({ROUND_TRIPS} runs, TCG guest)",
        ms(median),
        ms(p99)
    );

    section("golden snapshot, change, reset");
    let t = Instant::now();
    sandbox
        .snapshot(&SnapshotSpec {
            name: "golden".into(),
            description: "the demo's clean state".into(),
            tags: vec!["demo".into()],
        })
        .await?;
    println!("golden snapshot taken in {}", ms(t.elapsed()));
    client
        .exec_collect(Execute::shell(
            // The agent ends every process of an execution with it (a cgroup
            // per execution); this one escapes, as root in the guest may, by
            // moving itself to the root cgroup and leaving the process group.
            // Only the reset can end it. Wait until it has exec'd sleep, so
            // that it moved before the execution ends.
            "echo tampered > /work/marker; \
             setsid sh -c 'echo $$ > /sys/fs/cgroup/cgroup.procs && exec sleep 1000' \
               > /dev/null 2>&1 & \
             rm /work/report.txt; \
             until ps -o args | grep -q '^sleep 1000'; do sleep 0.1; done",
        ))
        .await?;
    let changed = guest_state(client).await?;
    println!("changed: {changed}");
    ensure!(changed.contains("1 sleeps"), "the change did not take");
    let t = Instant::now();
    sandbox.load_snapshot_in_place("golden").await?;
    println!(
        "reset to golden in {} (snapshot loaded in the running QEMU, agent reconnected; \
         the agent reports a restored guest)",
        ms(t.elapsed())
    );
    let after = guest_state(client).await?;
    println!("after reset: {after}");
    ensure!(
        after.contains("no marker") && after.contains("0 sleeps"),
        "the reset left changes"
    );

    section("save to a file and restore");
    let saved = work.join("saved.img");
    let t = Instant::now();
    sandbox.vm().save(&saved).await?;
    let save_time = t.elapsed();
    let saved_mib = std::fs::metadata(&saved).map_or(0, |m| m.len() >> 20);
    let t = Instant::now();
    libvirt.restore(&saved, None, RestoreMode::Running).await?;
    let restore_time = t.elapsed();
    client.reconnect().await?;
    let ready_time = t.elapsed();
    let echo = client
        .exec_collect(Execute::argv(["echo", "alive"]))
        .await?;
    if echo.stdout != b"alive\n" {
        bail!("the restored guest answered {:?}", echo.stdout);
    }
    println!(
        "saved {saved_mib} MiB in {}; restored in {} (agent answering after {})",
        ms(save_time),
        ms(restore_time),
        ms(ready_time)
    );
    Ok(())
}

/// A line describing what the golden reset must undo.
async fn guest_state(client: &AgentClient) -> anyhow::Result<String> {
    let out = client
        .exec_collect(Execute::shell(
            "cat /work/marker 2>/dev/null || echo no marker; \
             echo \"$(ps -o args | grep -c '^sleep 1000') sleeps\"; \
             ls /work | tr '\\n' ' '",
        ))
        .await?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .collect::<Vec<_>>()
        .join("; "))
}

fn median_p99(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort();
    let at = |q: usize| samples[(samples.len() * q / 100).min(samples.len() - 1)];
    (at(50), at(99))
}

fn section(title: &str) {
    println!("\n== {title}");
}

/// Microseconds below a millisecond, else [`ms`].
fn short(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{} µs", d.as_micros())
    } else {
        ms(d)
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn rate(bytes: usize, took: Duration) -> String {
    let mb = f64::from(u32::try_from(bytes).unwrap_or(u32::MAX)) / 1e6;
    format!("{:.0} MB/s", mb / took.as_secs_f64().max(1e-9))
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| u8::try_from(i % 251).unwrap_or(0))
        .collect()
}
