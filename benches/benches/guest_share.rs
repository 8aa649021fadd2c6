//! Moving a 64 MiB file between the host and a real guest (TCG here): through
//! a shared folder (virtiofs) against through the agent's file transfer
//! (virtio-serial).
//!
//! Both directions copy between a host directory and the guest's `/tmp`
//! (tmpfs): "into the guest" is `cat /mnt/share/in.bin > /tmp/in.bin` in the
//! guest against `put_file`, "out of the guest" is `cat /tmp/in.bin >
//! /mnt/share/out.bin && sync` against `get_file`. The share's times are
//! measured on the host around the execution, so they include one exec
//! round trip (milliseconds); the guest drops its page cache before each
//! read, the host keeps its own. Every copy's CRC-32 is checked. One JSON
//! object on stdout: medians and p99 in ms, and MiB/s of the medians.
//!
//! Run as root with libvirtd up and the image built (with the `fuse` and
//! `virtiofs` modules): `cargo bench -p paddock-benches --bench guest_share`.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use paddock::agent::{AgentClient, Execute};
use paddock::libvirt::{Libvirt, SharedFolder};
use paddock::{Sandbox, SandboxConfig};
use paddock_benches::Samples;
use paddock_tests::vm::{SYSTEM_URI, test_image};
use paddock_tests::{file_crc32, write_random_file};

const FILE_MIB: usize = 64;
const ROUNDS: usize = 3;

fn main() -> anyhow::Result<()> {
    paddock_benches::run_harness(run())
}

async fn guest(client: &AgentClient, line: &str) -> anyhow::Result<String> {
    let out = client.exec_collect(Execute::shell(line.to_owned())).await?;
    anyhow::ensure!(
        out.result.exit_code == Some(0),
        "{line}: {:?} {}",
        out.result.exit_code,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The size of a guest file (its contents are checked where the host can
/// read them: the share's and the agent's copies out of the guest).
async fn guest_size(client: &AgentClient, path: &str) -> anyhow::Result<u64> {
    Ok(guest(client, &format!("stat -c %s {path}"))
        .await?
        .parse()?)
}

fn mib_per_s(samples: &Samples) -> f64 {
    let mut sorted = samples.0.clone();
    sorted.sort();
    let median = sorted
        .get(sorted.len() / 2)
        .copied()
        .unwrap_or(Duration::ZERO);
    if median.is_zero() {
        return 0.0;
    }
    #[allow(clippy::cast_precision_loss)]
    let mib = FILE_MIB as f64;
    (mib / median.as_secs_f64() * 10.0).round() / 10.0
}

async fn run() -> anyhow::Result<()> {
    let image = test_image()?;
    let libvirt = Libvirt::open(SYSTEM_URI).await?;
    let share = tempfile::Builder::new()
        .prefix("paddock-bench-share-")
        .tempdir()?;
    let local = tempfile::Builder::new()
        .prefix("paddock-bench-local-")
        .tempdir()?;
    // A read-write folder must not be root's (the guest's root writes
    // there as its owner): give it to an unused id.
    std::os::unix::fs::chown(share.path(), Some(4242), Some(4242))?;
    let input = share.path().join("in.bin");
    let crc = write_random_file(&input, FILE_MIB << 20, 0x5eed)?;

    let mut config = SandboxConfig::new(format!("paddock-bench-share-{}", std::process::id()));
    config.pool = "bench".into();
    config.memory_mib = 512;
    config.shared_folders = vec![SharedFolder::read_write(
        share.path(),
        "bench",
        "/mnt/share",
    )];
    let sandbox = Sandbox::boot(&libvirt, &image, config).await?;
    let client = sandbox.client();
    let size = u64::try_from(FILE_MIB << 20)?;

    let (mut share_in, mut share_out) = (Samples::default(), Samples::default());
    let (mut agent_in, mut agent_out) = (Samples::default(), Samples::default());
    for round in 0..ROUNDS {
        // Into the guest through the share.
        guest(
            client,
            "rm -f /tmp/in.bin; sync; echo 3 > /proc/sys/vm/drop_caches",
        )
        .await?;
        let t = Instant::now();
        guest(client, "cat /mnt/share/in.bin > /tmp/in.bin").await?;
        share_in.push(t.elapsed());
        anyhow::ensure!(guest_size(client, "/tmp/in.bin").await? == size);

        // Out of the guest through the share.
        let output = share.path().join("out.bin");
        let _ = std::fs::remove_file(&output);
        let t = Instant::now();
        guest(client, "cat /tmp/in.bin > /mnt/share/out.bin && sync").await?;
        share_out.push(t.elapsed());
        anyhow::ensure!(file_crc32(&output)? == crc, "the share's copy differs");

        // Into the guest through the agent.
        guest(client, "rm -f /tmp/in.bin").await?;
        let t = Instant::now();
        client.put_file(&input, "/tmp/in.bin").await?;
        agent_in.push(t.elapsed());

        // Out of the guest through the agent.
        let fetched = local.path().join("out.bin");
        let _ = std::fs::remove_file(&fetched);
        let t = Instant::now();
        client.get_file("/tmp/in.bin", &fetched).await?;
        agent_out.push(t.elapsed());
        anyhow::ensure!(file_crc32(&fetched)? == crc, "the agent's copy differs");
        eprintln!(
            "round {round}: share in {:?} out {:?}; agent in {:?} out {:?}",
            share_in.0[round], share_out.0[round], agent_in.0[round], agent_out.0[round]
        );
    }
    sandbox.destroy().await.context("destroy the sandbox")?;

    let report = serde_json::json!({
        "file_mib": FILE_MIB,
        "guest_memory_mib": 512,
        "accelerator": "tcg",
        "share": "virtiofs (QEMU 7.2 virtiofsd)",
        "agent_channel": "virtio-serial",
        "into_guest_share": share_in.json(),
        "into_guest_share_mib_s": mib_per_s(&share_in),
        "into_guest_agent": agent_in.json(),
        "into_guest_agent_mib_s": mib_per_s(&agent_in),
        "out_of_guest_share": share_out.json(),
        "out_of_guest_share_mib_s": mib_per_s(&share_out),
        "out_of_guest_agent": agent_out.json(),
        "out_of_guest_agent_mib_s": mib_per_s(&agent_out),
    });
    println!("{report}");
    Ok(())
}
