//! `cargo xtask demo`: Paddock's main job end to end.
//!
//! Starts the real guest agent on this host over a Unix socket, drives it
//! through the host client (streamed output, files both ways, a timeout that
//! kills a process tree), prints outputs and timings, and tears everything
//! down. Until the VM layer lands, "the guest" is this host: the agent and
//! client code paths are the ones a VM uses, only the byte stream differs.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use paddock_agent_client::{AgentClient, ClientConfig, Execute, Transport};

/// Kills the agent if the demo fails half way.
struct AgentGuard(Child);

impl Drop for AgentGuard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Runs the demo.
pub fn run() -> anyhow::Result<()> {
    let agent_bin = crate::build_release_agent()?;
    let work = tempfile::Builder::new().prefix("paddock-demo-").tempdir()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(demo(&agent_bin, work.path()))?;
    let leftover = work.path().to_path_buf();
    work.close().context("removing the demo directory")?;
    anyhow::ensure!(!leftover.exists(), "{} was left behind", leftover.display());
    println!(
        "\nteardown: agent stopped, {} removed, nothing left behind",
        leftover.display()
    );
    Ok(())
}

async fn demo(agent_bin: &Path, work: &Path) -> anyhow::Result<()> {
    let socket = work.join("agent.sock");
    let guest_dir = work.join("guest");
    std::fs::create_dir_all(&guest_dir)?;

    section("start the guest agent and connect");
    let started = Instant::now();
    let mut agent = AgentGuard(
        std::process::Command::new(agent_bin)
            .args(["--unix"])
            .arg(&socket)
            .args(["--log", "warn"])
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", agent_bin.display()))?,
    );
    let client = AgentClient::connect(
        Transport::Unix {
            path: socket.clone(),
        },
        ClientConfig::default(),
    )
    .await?;
    let ready = started.elapsed();
    let session = client.session().await.context("no session")?;
    println!(
        "agent {} ready in {} (protocol v{}, boot id {}, capabilities {})",
        session.agent_version,
        ms(ready),
        session.version,
        session.boot_id,
        session.capabilities.join(",")
    );

    section("run a command");
    let out = client.exec_collect(Execute::argv(["uname", "-a"])).await?;
    print!("$ uname -a\n{}", String::from_utf8_lossy(&out.stdout));
    println!(
        "exit {:?} in {} µs",
        out.result.exit_code, out.result.duration_us
    );

    section("stream output as it is produced");
    let streamed = Instant::now();
    let mut execution = client
        .exec(Execute::shell(
            "for i in 1 2 3 4 5; do echo \"line $i\"; sleep 0.2; done; echo done >&2",
        ))
        .await?;
    let mut stdout = execution.take_stdout().context("stdout")?;
    while let Some(chunk) = stdout.chunk().await? {
        for line in String::from_utf8_lossy(&chunk).lines() {
            println!("[{:>6}] {line}", ms(streamed.elapsed()));
        }
    }
    let result = execution.wait().await?;
    println!(
        "exit {:?}, stderr discarded unread ({} bytes)",
        result.exit_code, result.stderr_bytes
    );

    section("move files both ways");
    let upload = work.join("upload.bin");
    let size = 32 * 1024 * 1024;
    std::fs::write(&upload, pattern(size))?;
    let guest_file = guest_dir.join("data/upload.bin");
    let guest_file = guest_file.to_str().context("non-UTF-8 path")?;
    let t = Instant::now();
    let done = client.put_file(&upload, guest_file).await?;
    println!(
        "put {} MiB -> {guest_file}: crc32 {:#010x}, {}",
        size >> 20,
        done.crc32,
        rate(size, t.elapsed())
    );
    let out = client
        .exec_collect(Execute::argv(["wc", "-c", guest_file]))
        .await?;
    print!("guest says: {}", String::from_utf8_lossy(&out.stdout));
    let report = guest_dir.join("report.txt");
    let report = report.to_str().context("non-UTF-8 path")?;
    client
        .exec_collect(Execute::shell(format!(
            "echo 'written in the guest at' $(date -u +%T) > {report}"
        )))
        .await?;
    let fetched = work.join("report.txt");
    let t = Instant::now();
    let download = client.get_file(report, &fetched).await?;
    print!(
        "get {report} ({} bytes, crc32 {:#010x}, {}): {}",
        download.size,
        download.crc32,
        ms(t.elapsed()),
        std::fs::read_to_string(&fetched)?
    );
    let back = work.join("download.bin");
    let t = Instant::now();
    let download = client.get_file(guest_file, &back).await?;
    anyhow::ensure!(
        std::fs::read(&back)? == std::fs::read(&upload)?,
        "round trip altered the file"
    );
    println!(
        "get {} MiB back: checksum verified, {}",
        download.size >> 20,
        rate(size, t.elapsed())
    );

    section("a command that exceeds its timeout");
    let mut request = Execute::shell("sleep 30 & sleep 30; echo never");
    request.timeout_ms = Some(1000);
    request.kill_grace_ms = Some(500);
    let out = client.exec_collect(request).await?;
    println!(
        "$ sleep 30 & sleep 30 (timeout 1 s): timed_out={} signal={:?} after {} ms, stdout {:?}",
        out.result.timed_out,
        out.result.signal,
        out.result.duration_us / 1000,
        String::from_utf8_lossy(&out.stdout)
    );
    if !out.result.timed_out {
        bail!("the timeout did not fire");
    }

    section("timings");
    let mut round_trips = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        client.exec_collect(Execute::argv(["true"])).await?;
        round_trips.push(t.elapsed());
    }
    round_trips.sort();
    let mut pings = Vec::new();
    for _ in 0..200 {
        pings.push(client.ping().await?);
    }
    pings.sort();
    println!("agent ready after start:  {}", ms(ready));
    println!(
        "exec round trip of `true`: median {} p99 {} (50 runs)",
        ms(round_trips[round_trips.len() / 2]),
        ms(round_trips[round_trips.len() * 99 / 100])
    );
    println!(
        "ping round trip:          median {} p99 {} (200 runs)",
        ms(pings[pings.len() / 2]),
        ms(pings[pings.len() * 99 / 100])
    );

    section("teardown");
    client.stop_agent().await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while matches!(agent.0.try_wait(), Ok(None)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = agent
        .0
        .try_wait()?
        .context("agent did not exit after STOP")?;
    println!("agent exited: {status}");
    drop(agent);
    Ok(())
}

fn section(title: &str) {
    println!("\n== {title}");
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
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
