//! The agent's per-request cost: round trips of PING, STATUS and an exec of
//! `true` through the real client, next to the floors they are judged
//! against, measured in the same run.
//!
//! Shared by the `agent_rtt` bench (a sandbox, or an agent on this host)
//! and the SLO harness (a leased slot). Every figure is a [`Samples`]
//! (median and p99 in milliseconds).
//!
//! - PING is answered by the agent's connection reader itself: the channel
//!   plus the agent's reader and writer, no request task.
//! - STATUS opens a request: PING's path plus the request's task, its
//!   inbox, the status gathered from `/proc` and `statvfs`, and the JSON
//!   of the report.
//! - An exec of `true` adds the process: its cgroup, pipes, the spawn, the
//!   wait, the drain of its pipes and the removal of its cgroup. The agent
//!   reports the process's own lifetime (`duration_us`), so the rest of the
//!   round trip is what the agent and the channel add around it.
//! - The guest's own spawn of `true`, from a busybox `sh` loop timed in the
//!   guest, is the floor an exec is judged against.

use std::time::{Duration, Instant};

use anyhow::ensure;
use paddock::agent::{AgentClient, Execute};

use crate::Samples;

/// Round trips of PING.
///
/// # Errors
/// A failed round trip.
pub async fn ping_rtt(client: &AgentClient, runs: usize) -> anyhow::Result<Samples> {
    let mut samples = Samples::default();
    for _ in 0..runs {
        let started = Instant::now();
        client.ping().await?;
        samples.push(started.elapsed());
    }
    Ok(samples)
}

/// Round trips of STATUS (request to STATUS_REPORT).
///
/// # Errors
/// A failed round trip.
pub async fn status_rtt(client: &AgentClient, runs: usize) -> anyhow::Result<Samples> {
    let mut samples = Samples::default();
    for _ in 0..runs {
        let started = Instant::now();
        client.status().await?;
        samples.push(started.elapsed());
    }
    Ok(samples)
}

/// Round trips of an exec of `true` (`exec_collect`, request to RESULT),
/// and the process's lifetime as the agent reports it (`duration_us`).
///
/// # Errors
/// A failed exec, or `true` not exiting 0.
pub async fn exec_true_rtt(
    client: &AgentClient,
    runs: usize,
) -> anyhow::Result<(Samples, Samples)> {
    let (mut round_trips, mut process) = (Samples::default(), Samples::default());
    for _ in 0..runs {
        let started = Instant::now();
        let out = client.exec_collect(Execute::argv(["true"])).await?;
        round_trips.push(started.elapsed());
        ensure!(out.result.exit_code == Some(0), "true failed: {out:?}");
        process.push(Duration::from_micros(out.result.duration_us));
    }
    Ok((round_trips, process))
}

/// The guest's own cost of a fork and exec of `true`: one busybox `sh`
/// loop of `spawns` runs of `/bin/true`, timed by the guest's
/// `/proc/uptime` (10 ms resolution, so `spawns` should take a second or
/// more), repeated `rounds` times; each sample is one round's time per
/// spawn.
///
/// # Errors
/// The loop failed or printed something else than two uptimes.
pub async fn guest_spawn_true(
    client: &AgentClient,
    spawns: u32,
    rounds: usize,
) -> anyhow::Result<Samples> {
    let script = format!(
        "read a _ < /proc/uptime; i=0; while [ $i -lt {spawns} ]; do /bin/true; i=$((i+1)); done; \
         read b _ < /proc/uptime; echo $a $b"
    );
    let mut samples = Samples::default();
    for _ in 0..rounds {
        let out = client.exec_collect(Execute::shell(script.clone())).await?;
        ensure!(
            out.result.exit_code == Some(0),
            "spawn loop failed: {out:?}"
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let times: Vec<f64> = text
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        ensure!(times.len() == 2, "spawn loop printed {text:?}");
        let per_spawn = (times[1] - times[0]) / f64::from(spawns);
        samples.push(Duration::from_secs_f64(per_spawn.max(0.0)));
    }
    Ok(samples)
}

/// The guest's own time per iteration of a busybox `sh` loop body, timed by
/// `/proc/uptime` over `iterations` runs (so they should take a second or
/// more); `setup` runs before the timed loop and `teardown` after it.
///
/// # Errors
/// The script failed or printed something else than two uptimes.
pub async fn guest_loop(
    client: &AgentClient,
    setup: &str,
    body: &str,
    teardown: &str,
    iterations: u32,
) -> anyhow::Result<Duration> {
    let script = format!(
        "{setup}\nread a _ < /proc/uptime; i=0; while [ $i -lt {iterations} ]; do {body}; i=$((i+1)); done; \
         read b _ < /proc/uptime\n{teardown}\necho $a $b"
    );
    let out = client.exec_collect(Execute::shell(script)).await?;
    ensure!(
        out.result.exit_code == Some(0),
        "guest loop failed: {out:?}"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let times: Vec<f64> = text
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    ensure!(times.len() == 2, "guest loop printed {text:?}");
    Ok(Duration::from_secs_f64(
        ((times[1] - times[0]) / f64::from(iterations)).max(0.0),
    ))
}

/// What the exec path's kernel primitives cost in the guest, per operation
/// (milliseconds), each from a timed `sh` loop: an empty iteration (the
/// loop's own cost, to subtract), a cgroup made and removed, a process
/// moved into a cgroup (what the agent's child does before exec), and a
/// fork of the shell that exits at once (`( : )`, no exec).
///
/// # Errors
/// A loop failed.
pub async fn guest_primitives(client: &AgentClient) -> anyhow::Result<serde_json::Value> {
    let ms = |d: Duration| (d.as_secs_f64() * 1_000_000.0).round() / 1000.0;
    let empty = guest_loop(client, "", ":", "", 2000).await?;
    let mkdir = guest_loop(
        client,
        "cd /sys/fs/cgroup",
        "mkdir paddock-bench-cg; rmdir paddock-bench-cg",
        "",
        500,
    )
    .await?;
    let migrate = guest_loop(
        client,
        "read own < /proc/self/cgroup; own=/sys/fs/cgroup${own#0::}; \
         mkdir -p /sys/fs/cgroup/paddock-bench-a /sys/fs/cgroup/paddock-bench-b",
        "echo $$ > /sys/fs/cgroup/paddock-bench-a/cgroup.procs; \
         echo $$ > /sys/fs/cgroup/paddock-bench-b/cgroup.procs",
        "echo $$ > $own/cgroup.procs; rmdir /sys/fs/cgroup/paddock-bench-a /sys/fs/cgroup/paddock-bench-b",
        500,
    )
    .await?;
    let fork = guest_loop(client, "", "( : )", "", 300).await?;
    let loop_ms = ms(empty);
    Ok(serde_json::json!({
        "loop_iteration_ms": loop_ms,
        "cgroup_mkdir_rmdir_ms": ms(mkdir.saturating_sub(empty)),
        "cgroup_migrate_ms": ms(migrate.saturating_sub(empty)) / 2.0,
        "fork_exit_ms": ms(fork.saturating_sub(empty)),
    }))
}
