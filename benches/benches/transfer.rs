//! File transfers through the agent against the raw throughput of the same
//! channel, in one run, on real guests (TCG here): 8 MiB and 256 MiB, host
//! to guest (`put_file`) and guest to host (`get_file`), over virtio-serial
//! and hybrid vsock.
//!
//! The guest's file lives in its `/tmp` (tmpfs, half the guest's memory):
//! 8 MiB in a 256 MiB guest, 256 MiB in a 1024 MiB guest (a 256 MiB file
//! does not fit a 256 MiB guest's tmpfs). The floor, in the same runs: as
//! many bytes each way through `paddock-agent probe stream` on the
//! sandbox's probe port (virtio-serial) or a second port of the same
//! hybrid-vsock multiplexer ([`paddock_benches::transfer`]). One JSON object
//! on stdout.
//!
//! Run as root with libvirtd up, the image built and `vhost-device-vsock`
//! installed: `PADDOCK_IMAGE=$(readlink -f target/paddock-image/current.json)
//! cargo bench -p paddock-benches --bench transfer`. `PADDOCK_TRANSFER_CHANNELS`
//! (`serial`, `vsock`, or both, comma-separated) and
//! `PADDOCK_TRANSFER_SIZES_MIB` (e.g. `8`) narrow the matrix;
//! `PADDOCK_TRANSFER_RUNS` sets the runs per size (7 up to 16 MiB, else 3).

use anyhow::Context as _;
use paddock::agent::{AgentClient, Execute};
use paddock::libvirt::Libvirt;
use paddock::{ChannelConfig, Sandbox, SandboxConfig};
use paddock_benches::transfer::put_and_get;
use paddock_tests::vm::{SYSTEM_URI, hybrid_vsock_backend, test_image};

fn main() -> anyhow::Result<()> {
    paddock_benches::run_harness(run())
}

/// Runs per size: enough for a median and a tail, few enough for 256 MiB
/// under TCG.
fn runs(mib: usize) -> usize {
    let default = if mib <= 16 { 7 } else { 3 };
    std::env::var("PADDOCK_TRANSFER_RUNS")
        .ok()
        .and_then(|runs| runs.parse().ok())
        .unwrap_or(default)
}

/// The guest memory a file of `mib` needs in its tmpfs (half the memory).
fn guest_mib(mib: usize) -> u64 {
    if mib <= 64 { 256 } else { 1024 }
}

fn list(var: &str, default: &str) -> Vec<String> {
    std::env::var(var)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

async fn guest_line(client: &AgentClient, line: &str) -> anyhow::Result<String> {
    let out = client.exec_collect(Execute::shell(line.to_owned())).await?;
    anyhow::ensure!(out.result.exit_code == Some(0), "{line}: {out:?}");
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

async fn run() -> anyhow::Result<()> {
    let image = test_image()?;
    let libvirt = Libvirt::open(SYSTEM_URI).await?;
    let host_dir = tempfile::Builder::new()
        .prefix("paddock-bench-transfer-")
        .tempdir()?;
    let mut results = Vec::new();
    for channel_name in list("PADDOCK_TRANSFER_CHANNELS", "serial,vsock") {
        let channel = match channel_name.as_str() {
            "serial" => ChannelConfig::VirtioSerial,
            "vsock" => ChannelConfig::HybridVsock {
                backend: hybrid_vsock_backend()?,
            },
            other => anyhow::bail!("unknown channel {other}"),
        };
        for mib in list("PADDOCK_TRANSFER_SIZES_MIB", "8,256") {
            let mib: usize = mib.parse().context("PADDOCK_TRANSFER_SIZES_MIB")?;
            let mut config = SandboxConfig::new(format!(
                "paddock-bench-xfer-{}-{channel_name}-{mib}",
                std::process::id()
            ));
            config.pool = "bench".into();
            config.channel = channel.clone();
            config.memory_mib = guest_mib(mib);
            config.probe_port = channel_name == "serial";
            let sandbox = Sandbox::boot(&libvirt, &image, config).await?;
            let outcome = measure(&sandbox, channel_name == "vsock", host_dir.path(), mib).await;
            sandbox.destroy().await?;
            let mut figures = outcome?;
            figures["channel"] = channel_name.clone().into();
            figures["guest_memory_mib"] = guest_mib(mib).into();
            eprintln!("{figures}");
            results.push(figures);
        }
    }
    let report = serde_json::json!({
        "accelerator": "tcg",
        "vcpus": 1,
        "unit": "MB/s (10^6 bytes per second); p99 is the slow tail",
        "transfers": results,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

async fn measure(
    sandbox: &Sandbox,
    hybrid: bool,
    host_dir: &std::path::Path,
    mib: usize,
) -> anyhow::Result<serde_json::Value> {
    let client = sandbox.client();
    // What crc32fast could use in the guest (it needs pclmulqdq and
    // sse4_1); empty: none, CRC-32 runs on tables.
    let cpu_flags = guest_line(
        client,
        "grep -o -w -e pclmulqdq -e sse4_1 -e sse4_2 -e avx2 /proc/cpuinfo | sort -u | tr '\\n' ' '",
    )
    .await?;
    let channel = paddock_benches::floors::probe_channel(sandbox, hybrid)?;
    let mut files = put_and_get(
        client,
        host_dir,
        "/tmp/bench-transfer.bin",
        mib << 20,
        runs(mib),
        &channel,
    )
    .await?;
    let mut figures = files.json();
    figures["mib"] = mib.into();
    figures["guest_cpu_flags"] = cpu_flags.into();
    Ok(figures)
}
