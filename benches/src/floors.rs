//! The agent's per-request figures next to their floors, measured in one
//! sandbox in one run (this machine is shared and noisy: the ratios are
//! what count):
//!
//! | figure | floor |
//! |---|---|
//! | `status_rtt_ms`: a STATUS round trip | `channel_echo_ms`: 64 bytes echoed by the probe over the probe port |
//! | `exec_true_ms`: an exec of `true`, request to RESULT | `guest_spawn_true_ms`: the guest's own spawn to exit of `/bin/true` |
//! | `file_mb_s`: an 8 MiB PUT and GET | `channel_raw_mb_s`: 8 MiB through the probe port, each way |
//!
//! The probe port is a second virtio-serial port on the agent's controller
//! ([`paddock::SandboxConfig::probe_port`]), or on a hybrid-vsock sandbox a
//! second vsock port behind the same multiplexer.

use std::time::Instant;

use paddock::Sandbox;
use paddock::agent::Execute;

use crate::Samples;
use paddock_tests::probe::{
    PROBE_VSOCK_PORT, ProbeChannel, ProbeMode, RunningProbe, guest_spawn, mb_per_s,
};

/// Round trips per measured figure (after as many unmeasured ones for
/// STATUS and the echo, and 10 for exec).
pub const ROUND_TRIPS: usize = 200;

/// Executions of `true`, and spawns in the guest.
pub const SPAWNS: usize = 100;

/// The bulk size for throughput.
pub const BULK_BYTES: u64 = 8 << 20;

/// Bulk rounds each way.
pub const BULK_ROUNDS: usize = 3;

/// Where `sandbox`'s probe listens: its probe port, or with `hybrid` its
/// multiplexer's [`PROBE_VSOCK_PORT`].
///
/// # Errors
/// A virtio-serial sandbox booted without a probe port.
pub fn probe_channel(sandbox: &Sandbox, hybrid: bool) -> anyhow::Result<ProbeChannel> {
    if hybrid {
        Ok(ProbeChannel::HybridVsock {
            socket: sandbox.dir().join("agent.sock"),
            port: PROBE_VSOCK_PORT,
        })
    } else {
        sandbox
            .probe_socket()
            .map(ProbeChannel::Serial)
            .ok_or_else(|| anyhow::anyhow!("the sandbox has no probe port"))
    }
}

/// Measures every figure and floor of this module in `sandbox`.
///
/// # Errors
/// The guest or a probe fails.
pub async fn measure(sandbox: &Sandbox, hybrid: bool) -> anyhow::Result<serde_json::Value> {
    let client = sandbox.client();
    let channel = probe_channel(sandbox, hybrid)?;

    let mut status = Samples::default();
    for round in 0..2 * ROUND_TRIPS {
        let started = Instant::now();
        client.status().await?;
        if round >= ROUND_TRIPS {
            status.push(started.elapsed());
        }
    }

    let mut probe = RunningProbe::start(client, ProbeMode::Echo, &channel).await?;
    let mut echo = Samples(probe.echo_rtt(64, ROUND_TRIPS, ROUND_TRIPS).await?);
    probe.finish().await?;

    let mut exec = Samples::default();
    for round in 0..10 + SPAWNS {
        let started = Instant::now();
        client.exec_collect(Execute::argv(["true"])).await?;
        if round >= 10 {
            exec.push(started.elapsed());
        }
    }
    let mut spawn = Samples(guest_spawn(client, "/bin/true", SPAWNS).await?);

    let mut probe = RunningProbe::start(client, ProbeMode::Stream, &channel).await?;
    let (mut raw_in, mut raw_out) = (Vec::new(), Vec::new());
    for _ in 0..BULK_ROUNDS {
        raw_in.push(mb_per_s(BULK_BYTES, probe.to_guest(BULK_BYTES).await?));
        raw_out.push(mb_per_s(BULK_BYTES, probe.from_guest(BULK_BYTES).await?));
    }
    probe.finish().await?;

    let local = tempfile_path("floors-put");
    std::fs::write(&local, vec![0x5a; usize::try_from(BULK_BYTES)?])?;
    let back = tempfile_path("floors-get");
    let (mut put, mut get) = (Vec::new(), Vec::new());
    for _ in 0..BULK_ROUNDS {
        let started = Instant::now();
        client.put_file(&local, "/tmp/floors.bin").await?;
        put.push(mb_per_s(BULK_BYTES, started.elapsed()));
        let started = Instant::now();
        client.get_file("/tmp/floors.bin", &back).await?;
        get.push(mb_per_s(BULK_BYTES, started.elapsed()));
    }
    let _ = std::fs::remove_file(&local);
    let _ = std::fs::remove_file(&back);
    client
        .exec_collect(Execute::argv(["rm", "-f", "/tmp/floors.bin"]))
        .await?;

    let status_json = status.json();
    let echo_json = echo.json();
    let exec_json = exec.json();
    let spawn_json = spawn.json();
    let ratio = |a: &serde_json::Value, b: &serde_json::Value| {
        let (a, b) = (
            a["p50"].as_f64().unwrap_or(0.0),
            b["p50"].as_f64().unwrap_or(0.0),
        );
        if b > 0.0 {
            (a / b * 100.0).round() / 100.0
        } else {
            0.0
        }
    };
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let (raw_in_mb, raw_out_mb) = (median(&mut raw_in), median(&mut raw_out));
    let (put_mb, get_mb) = (median(&mut put), median(&mut get));
    Ok(serde_json::json!({
        "channel": if hybrid { "hybrid vsock" } else { "virtio-serial" },
        "status_rtt_ms": status_json,
        "channel_echo_ms": echo_json,
        "status_over_echo": ratio(&status_json, &echo_json),
        "exec_true_ms": exec_json,
        "guest_spawn_true_ms": spawn_json,
        "exec_minus_spawn_ms": ((exec_json["p50"].as_f64().unwrap_or(0.0) - spawn_json["p50"].as_f64().unwrap_or(0.0)) * 1000.0).round() / 1000.0,
        "channel_raw_mb_s": { "to_guest": raw_in_mb, "from_guest": raw_out_mb, "bytes": BULK_BYTES, "rounds": BULK_ROUNDS },
        "file_mb_s": { "put": put_mb, "get": get_mb, "bytes": BULK_BYTES, "rounds": BULK_ROUNDS },
        "file_over_raw": {
            "put": if raw_in_mb > 0.0 { (put_mb / raw_in_mb * 100.0).round() / 100.0 } else { 0.0 },
            "get": if raw_out_mb > 0.0 { (get_mb / raw_out_mb * 100.0).round() / 100.0 } else { 0.0 },
        },
    }))
}

fn tempfile_path(what: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("paddock-{what}-{}", std::process::id()))
}
