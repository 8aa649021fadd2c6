//! The agent's per-request cost and transfer speed next to their floors,
//! measured in one sandbox per channel in one run
//! ([`paddock_benches::floors`]): STATUS against a raw 64-byte echo, exec
//! `true` against the guest's own spawn of `/bin/true`, 8 MiB file
//! transfers against 8 MiB through a raw stream of the same kind of
//! channel. Virtio-serial always; hybrid vsock too when `vhost-device-vsock`
//! is installed. Prints one JSON object.
//!
//! Run with `cargo xtask bench-floors` (root; about two minutes under TCG).

use paddock::libvirt::Libvirt;
use paddock::{ChannelConfig, Sandbox, SandboxConfig};
use paddock_tests::vm::{SYSTEM_URI, hybrid_vsock_backend, test_image};

fn main() -> anyhow::Result<()> {
    paddock_benches::run_harness(run())
}

async fn run() -> anyhow::Result<()> {
    let image = test_image()?;
    let libvirt = Libvirt::open(SYSTEM_URI).await?;
    let mut report = serde_json::Map::new();
    let mut channels = vec![("virtio-serial", ChannelConfig::VirtioSerial)];
    if let Ok(backend) = hybrid_vsock_backend() {
        channels.push(("hybrid vsock", ChannelConfig::HybridVsock { backend }));
    }
    for (label, channel) in channels {
        let hybrid = matches!(channel, ChannelConfig::HybridVsock { .. });
        let mut config = SandboxConfig::new(format!(
            "paddock-bench-floors-{}-{}",
            std::process::id(),
            u8::from(hybrid)
        ));
        config.pool = "bench".into();
        config.channel = channel;
        config.probe_port = !hybrid;
        let sandbox = Sandbox::boot(&libvirt, &image, config).await?;
        let outcome = paddock_benches::floors::measure(&sandbox, hybrid).await;
        sandbox.destroy().await?;
        report.insert(label.into(), outcome?);
        eprintln!("{label} done");
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
