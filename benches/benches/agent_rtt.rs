//! The agent's per-request cost next to its floors, in one run: round
//! trips of PING, STATUS and an exec of `true` (median and p99), the
//! process time the agent reports for `true`, and the guest's own spawn of
//! `true` from a busybox `sh` loop. Measured in rounds that interleave the
//! figures, so that a noisy neighbour hits all of them alike; one JSON
//! object on stdout.
//!
//! In a real guest (TCG here), as root with libvirtd running and an image
//! built: `PADDOCK_IMAGE=$(readlink -f target/paddock-image/current.json)
//! cargo bench -p paddock-benches --bench agent_rtt`.
//!
//! Against an agent already listening on this host (to profile it, e.g.
//! under `strace -f -c`): `PADDOCK_AGENT_RTT_SOCKET=/path/to/agent.sock
//! cargo bench -p paddock-benches --bench agent_rtt`; the floor is then
//! this host's `std::process::Command` spawn of `true`.

use std::time::Instant;

use paddock::agent::{AgentClient, Transport};
use paddock::libvirt::Libvirt;
use paddock::{Sandbox, SandboxConfig};
use paddock_benches::Samples;
use paddock_benches::agent_rtt::{
    exec_true_rtt, guest_primitives, guest_spawn_true, ping_rtt, status_rtt,
};
use paddock_tests::vm::{SYSTEM_URI, test_image};

/// Measuring rounds; each measures every figure.
const ROUNDS: usize = 5;
/// PING and STATUS round trips per round.
const CALLS: usize = 40;
/// Execs of `true` per round.
const EXECS: usize = 20;
/// Spawns of `true` in one timed guest loop.
const SPAWNS: u32 = 200;

fn main() -> anyhow::Result<()> {
    paddock_benches::run_harness(run())
}

async fn run() -> anyhow::Result<()> {
    if let Some(socket) = std::env::var_os("PADDOCK_AGENT_RTT_SOCKET") {
        let transport = Transport::Unix {
            path: socket.into(),
        };
        let client = AgentClient::connect(transport, paddock_tests::test_config()).await?;
        let report = measure(&client, Floor::HostSpawn).await?;
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let image = test_image()?;
    let libvirt = Libvirt::open(SYSTEM_URI).await?;
    let mut config = SandboxConfig::new(format!("paddock-bench-rtt-{}", std::process::id()));
    config.pool = "bench".into();
    let sandbox = Sandbox::boot(&libvirt, &image, config).await?;
    let outcome = measure(sandbox.client(), Floor::GuestShell).await;
    sandbox.destroy().await?;
    let report = outcome?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// What an exec of `true` is judged against.
#[derive(Debug, Clone, Copy)]
enum Floor {
    /// The guest's busybox `sh` loop of `/bin/true`.
    GuestShell,
    /// This host's `std::process::Command` spawn and wait of `true`.
    HostSpawn,
}

async fn measure(client: &AgentClient, floor: Floor) -> anyhow::Result<serde_json::Value> {
    // One of each first, so the measured rounds start warm.
    client.ping().await?;
    client.status().await?;
    exec_true_rtt(client, 2).await?;
    let (mut ping, mut status, mut exec, mut process, mut spawn) = (
        Samples::default(),
        Samples::default(),
        Samples::default(),
        Samples::default(),
        Samples::default(),
    );
    for _ in 0..ROUNDS {
        ping.0.extend(ping_rtt(client, CALLS).await?.0);
        status.0.extend(status_rtt(client, CALLS).await?.0);
        let (round_trips, lifetimes) = exec_true_rtt(client, EXECS).await?;
        exec.0.extend(round_trips.0);
        process.0.extend(lifetimes.0);
        match floor {
            Floor::GuestShell => spawn.0.extend(guest_spawn_true(client, SPAWNS, 1).await?.0),
            Floor::HostSpawn => {
                for _ in 0..EXECS {
                    let started = Instant::now();
                    let status = std::process::Command::new("true").status()?;
                    spawn.push(started.elapsed());
                    anyhow::ensure!(status.success(), "true failed: {status}");
                }
            }
        }
    }
    let primitives = match floor {
        Floor::GuestShell => guest_primitives(client).await?,
        Floor::HostSpawn => serde_json::Value::Null,
    };
    let (ping, status, exec, process, spawn) = (
        ping.json(),
        status.json(),
        exec.json(),
        process.json(),
        spawn.json(),
    );
    let ratio = |a: &serde_json::Value, b: &serde_json::Value| {
        let (a, b) = (
            a["p50"].as_f64().unwrap_or(0.0),
            b["p50"].as_f64().unwrap_or(0.0),
        );
        if b > 0.0 {
            ((a / b) * 100.0).round() / 100.0
        } else {
            0.0
        }
    };
    let over = |a: &serde_json::Value, b: &serde_json::Value| {
        let (a, b) = (
            a["p50"].as_f64().unwrap_or(0.0),
            b["p50"].as_f64().unwrap_or(0.0),
        );
        ((a - b) * 1000.0).round() / 1000.0
    };
    Ok(serde_json::json!({
        "where": match floor {
            Floor::GuestShell => "guest (TCG, 1 vCPU, virtio-serial)",
            Floor::HostSpawn => "host (Unix socket)",
        },
        "ping_rtt_ms": ping,
        "status_rtt_ms": status,
        "exec_true_rtt_ms": exec,
        "exec_true_process_ms": process,
        "spawn_true_floor_ms": spawn,
        "floor": match floor {
            Floor::GuestShell => "busybox sh loop of /bin/true, timed by /proc/uptime",
            Floor::HostSpawn => "std::process::Command::new(\"true\").status() on this host",
        },
        "status_over_ping_p50": ratio(&status, &ping),
        "exec_true_minus_floor_p50_ms": over(&exec, &spawn),
        "exec_true_minus_process_p50_ms": over(&exec, &process),
        "guest_primitives": primitives,
    }))
}
