//! Keystroke echo round trip of a terminal in a real guest (TCG here,
//! 256 MiB): one byte typed at a guest terminal over the agent channel
//! (virtio-serial), until the guest's line discipline echoes it back, as a
//! person at an interactive shell sees it. Reported as median and p99 in
//! one JSON object on stdout.
//!
//! The terminal runs `cat > /dev/null`, so what comes back is the echo
//! alone; a line is ended (unmeasured) every `LINE` keystrokes, so the
//! line buffer never fills.
//!
//! Run with `cargo bench -p paddock-benches --bench guest_tty` as root,
//! with libvirtd running and the image built (`cargo xtask image`;
//! `PADDOCK_IMAGE` names another); it takes about a minute.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use paddock::agent::{Execute, Terminal, Tty};
use paddock::libvirt::Libvirt;
use paddock::{Sandbox, SandboxConfig};
use paddock_benches::Samples;
use paddock_tests::vm::{SYSTEM_URI, test_image};

const WARMUP: usize = 50;
const KEYSTROKES: usize = 2000;
const LINE: usize = 64;

fn main() -> anyhow::Result<()> {
    paddock_benches::run_harness(run())
}

/// Reads until `want` arrives; what else comes is dropped.
async fn read_until(terminal: &mut Terminal, want: &[u8]) -> anyhow::Result<()> {
    let mut seen = Vec::new();
    let reading = async {
        while !seen.windows(want.len()).any(|w| w == want) {
            let chunk = terminal.read().await?.context("the terminal closed")?;
            seen.extend(chunk);
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(10), reading)
        .await
        .context("no echo within 10 s")?
}

async fn run() -> anyhow::Result<()> {
    let image = test_image()?;
    let libvirt = Libvirt::open(SYSTEM_URI).await?;
    let mut config = SandboxConfig::new(format!("paddock-bench-tty-{}", std::process::id()));
    config.pool = "bench".into();
    let sandbox = Sandbox::boot(&libvirt, &image, config).await?;
    let outcome = async {
        let mut request = Execute::shell("cat > /dev/null");
        request.timeout_ms = Some(600_000);
        let mut terminal = sandbox
            .client()
            .terminal(request, Tty::new("vt100", 24, 80))
            .await?;
        let mut echo = Samples::default();
        for i in 0..WARMUP + KEYSTROKES {
            if i % LINE == LINE - 1 {
                terminal.write(b"\n").await?;
                read_until(&mut terminal, b"\r\n").await?;
            }
            // A letter that differs from the one before, so its echo is
            // not mistaken for the last one's.
            let key = [b'a' + u8::try_from(i % 26)?];
            let t = Instant::now();
            terminal.write(&key).await?;
            read_until(&mut terminal, &key).await?;
            if i >= WARMUP {
                echo.push(t.elapsed());
            }
        }
        terminal.write(&[0x04]).await?;
        terminal.write(&[0x04]).await?;
        let result = terminal.wait().await?;
        eprintln!("cat ended: {result:?}");
        let report = serde_json::json!({
            "guest_memory_mib": 256,
            "accelerator": "tcg",
            "channel": "virtio-serial",
            "keystroke_echo_round_trip": echo.json(),
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
        anyhow::Ok(())
    }
    .await;
    sandbox.destroy().await?;
    outcome
}
