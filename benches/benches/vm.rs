//! End-to-end figures for one sandbox VM on the real libvirtd (TCG here):
//! boot to agent ready, exec round trip of `true`, internal snapshot,
//! revert (libvirt's, which starts a new QEMU), loading the snapshot in the
//! running QEMU, save and restore of a 256 MiB guest. Each step is repeated
//! and reported as median and p99 in one JSON object on stdout; the revert,
//! load and restore figures are split into libvirt's call and the agent's
//! reconnect.
//!
//! Run with `cargo xtask bench-vm` (it starts libvirtd and builds the image
//! first); it needs root and takes about two minutes.

use std::time::Instant;

use anyhow::Context as _;
use paddock::agent::Execute;
use paddock::libvirt::{Libvirt, RestoreMode, SnapshotSpec};
use paddock::{Sandbox, SandboxConfig};
use paddock_benches::Samples;
use paddock_tests::vm::{SYSTEM_URI, test_image};

const BOOTS: usize = 3;
const ROUND_TRIPS: usize = 50;
const REVERTS: usize = 7;
const SAVES: usize = 5;

fn main() -> anyhow::Result<()> {
    paddock_benches::run_harness(run())
}

async fn run() -> anyhow::Result<()> {
    let image = test_image()?;
    let libvirt = Libvirt::open(SYSTEM_URI).await?;
    let config = |i: usize| {
        let mut config = SandboxConfig::new(format!("paddock-bench-{}-{i}", std::process::id()));
        config.pool = "bench".into();
        config
    };

    let mut boot = Samples::default();
    let mut sandbox = None;
    for i in 0..BOOTS {
        let booted = Sandbox::boot(&libvirt, &image, config(i)).await?;
        boot.push(booted.boot_to_ready());
        eprintln!("boot {i}: {:?}", booted.boot_to_ready());
        if let Some(previous) = sandbox.replace(booted) {
            Sandbox::destroy(previous).await?;
        }
    }
    let sandbox = sandbox.context("no sandbox")?;
    let client = sandbox.client();

    let mut exec = Samples::default();
    for _ in 0..ROUND_TRIPS {
        let t = Instant::now();
        client.exec_collect(Execute::argv(["true"])).await?;
        exec.push(t.elapsed());
    }

    let t = Instant::now();
    sandbox
        .snapshot(&SnapshotSpec {
            name: "golden".into(),
            description: "bench".into(),
            tags: Vec::new(),
        })
        .await?;
    let mut snapshot = Samples::default();
    snapshot.push(t.elapsed());

    let (mut revert_call, mut revert_ready) = (Samples::default(), Samples::default());
    for i in 0..REVERTS {
        client
            .exec_collect(Execute::shell("echo dirty > /tmp/dirt"))
            .await?;
        let t = Instant::now();
        sandbox.vm().revert_to_snapshot("golden").await?;
        revert_call.push(t.elapsed());
        client.reconnect().await?;
        revert_ready.push(t.elapsed());
        eprintln!(
            "revert {i}: libvirt {:?}, agent {:?}",
            revert_call.0[i], revert_ready.0[i]
        );
    }

    let (mut load_call, mut load_ready) = (Samples::default(), Samples::default());
    for i in 0..REVERTS {
        client
            .exec_collect(Execute::shell("echo dirty > /tmp/dirt"))
            .await?;
        let t = Instant::now();
        client.close().await;
        sandbox.vm().load_snapshot_in_place("golden").await?;
        load_call.push(t.elapsed());
        client.reconnect().await?;
        load_ready.push(t.elapsed());
        eprintln!(
            "load in place {i}: libvirt {:?}, agent {:?}",
            load_call.0[i], load_ready.0[i]
        );
    }

    let dir = tempfile::Builder::new()
        .prefix("paddock-bench-")
        .tempdir_in("/dev/shm")?;
    let file = dir.path().join("saved.img");
    let (mut save, mut restore_call, mut restore_ready) =
        (Samples::default(), Samples::default(), Samples::default());
    for i in 0..SAVES {
        let t = Instant::now();
        sandbox.vm().save(&file).await?;
        save.push(t.elapsed());
        let t = Instant::now();
        libvirt.restore(&file, None, RestoreMode::Running).await?;
        restore_call.push(t.elapsed());
        client.reconnect().await?;
        restore_ready.push(t.elapsed());
        eprintln!(
            "save {i}: {:?}; restore: libvirt {:?}, agent {:?}",
            save.0[i], restore_call.0[i], restore_ready.0[i]
        );
    }
    let saved_bytes = std::fs::metadata(&file).map_or(0, |m| m.len());
    sandbox.destroy().await?;

    let report = serde_json::json!({
        "guest_memory_mib": 256,
        "accelerator": "tcg",
        "boot_to_agent_ready": boot.json(),
        "exec_true_round_trip": exec.json(),
        "snapshot_create": snapshot.json(),
        "revert_libvirt_call": revert_call.json(),
        "revert_to_agent_ready": revert_ready.json(),
        "load_in_place_call": load_call.json(),
        "load_in_place_to_agent_ready": load_ready.json(),
        "save": save.json(),
        "saved_image_mib": saved_bytes >> 20,
        "restore_libvirt_call": restore_call.json(),
        "restore_to_agent_ready": restore_ready.json(),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
