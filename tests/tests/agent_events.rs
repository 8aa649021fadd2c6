//! What the agent client emits against the real agent: an event when an
//! execution starts (the variables' names, never their values) and when it
//! ends (with its outcome and result), one per file transfer (direction,
//! bytes, outcome), and the round trips of PING and STATUS. Every event
//! carries the emitter's source.
#![cfg(test)]

use std::time::Duration;

use paddock_agent_client::{AgentClient, ClientConfig, Execute};
use paddock_events::{EventKind, ExecOutcome, FileDirection};
use paddock_tests::{AgentProcess, EventRecorder, test_config, write_random_file};

type TestResult = anyhow::Result<()>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executions_files_and_round_trips_are_emitted() -> TestResult {
    let agent = AgentProcess::start(&[])?;
    let (_hub, recorder, events) = EventRecorder::start("events", 2);
    let config = ClientConfig {
        events,
        ..test_config()
    };
    let client = AgentClient::connect(agent.transport(), config).await?;

    let mut secret = Execute::shell("echo hi; echo err >&2");
    secret
        .env
        .insert("API_TOKEN".into(), "value-never-emitted".into());
    client.exec_collect(secret).await?;
    client.exec_collect(Execute::shell("exit 3")).await?;
    let mut slow = Execute::argv(["sleep", "5"]);
    slow.timeout_ms = Some(200);
    slow.kill_grace_ms = Some(100);
    client.exec_collect(slow).await?;
    let refused = client.exec_collect(Execute::argv(["/nonexistent"])).await;

    let dir = tempfile::tempdir()?;
    let local = dir.path().join("up.bin");
    write_random_file(&local, 100_000, 3)?;
    client
        .put_file(&local, "/tmp/paddock-events-up.bin")
        .await?;
    client
        .get_file("/tmp/paddock-events-up.bin", dir.path().join("down.bin"))
        .await?;
    let missing = client
        .get_file("/nonexistent/file", dir.path().join("none"))
        .await;
    assert!(missing.is_err());
    client.ping().await?;

    let events = recorder.take();
    assert!(
        events
            .iter()
            .all(|e| e.source.pool.as_deref() == Some("events") && e.source.slot == Some(2)),
        "{events:?}"
    );
    assert!(
        !format!("{events:?}").contains("value-never-emitted"),
        "a variable's value reached an event"
    );
    let started: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::ExecStarted {
                env_names, timeout, ..
            } => Some((env_names.clone(), *timeout)),
            _ => None,
        })
        .collect();
    assert_eq!(started.len(), 4);
    assert_eq!(started[0].0, ["API_TOKEN"]);
    // Each execution's two events carry its number; numbers differ.
    let numbers = |finished: bool| -> Vec<u64> {
        events
            .iter()
            .filter_map(|e| match e.kind {
                EventKind::ExecStarted { exec, .. } if !finished => Some(exec),
                EventKind::ExecFinished { exec, .. } if finished => Some(exec),
                _ => None,
            })
            .collect()
    };
    assert_eq!(numbers(false), numbers(true));
    let distinct: std::collections::BTreeSet<_> = numbers(false).into_iter().collect();
    assert_eq!(distinct.len(), 4);
    assert_eq!(started[2].1, Some(Duration::from_millis(200)));
    let finished: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::ExecFinished {
                outcome, result, ..
            } => Some((*outcome, result.clone())),
            _ => None,
        })
        .collect();
    let outcomes: Vec<_> = finished.iter().map(|(o, _)| *o).collect();
    // A program that cannot be spawned: an exit code of 127 from the
    // agent, or its refusal.
    let last = if refused.is_ok() {
        ExecOutcome::NonZero
    } else {
        ExecOutcome::Error
    };
    assert_eq!(
        outcomes,
        [
            ExecOutcome::Ok,
            ExecOutcome::NonZero,
            ExecOutcome::Timeout,
            last
        ]
    );
    let first = finished[0].1.as_ref().expect("a result");
    assert_eq!((first.stdout_bytes, first.stderr_bytes), (3, 4));

    let transfers: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::FileTransferred {
                direction,
                bytes,
                ok,
                error,
                ..
            } => Some((*direction, *bytes, *ok, *error)),
            _ => None,
        })
        .collect();
    assert_eq!(
        transfers,
        [
            (FileDirection::Put, 100_000, true, None),
            (FileDirection::Get, 100_000, true, None),
            (FileDirection::Get, 0, false, Some("agent")),
        ]
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e.kind, EventKind::AgentRoundTrip { .. }))
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_past_its_exec_rate_is_refused_before_anything_is_sent() -> TestResult {
    use paddock::{LeaseGate, RateLimit, RateLimits};
    use paddock_agent_client::ClientError;
    let agent = AgentProcess::start(&[])?;
    let (_hub, recorder, events) = EventRecorder::start("limits", 0);
    events.set_lease(Some((paddock_events::LeaseId(77), None)));
    let one = std::num::NonZeroU32::MIN;
    let gate = LeaseGate::new(&RateLimits {
        lease_execs: Some(RateLimit {
            per_second: one,
            burst: one,
        }),
        ..RateLimits::default()
    })
    .expect("a per-lease limit");
    let config = ClientConfig {
        events,
        gate: Some(std::sync::Arc::new(gate)),
        ..test_config()
    };
    let client = AgentClient::connect(agent.transport(), config).await?;
    client.exec_collect(Execute::argv(["true"])).await?;
    let err = client
        .exec_collect(Execute::argv(["true"]))
        .await
        .expect_err("past the rate");
    assert!(
        matches!(
            err,
            ClientError::Refused {
                limit: "lease_execs",
                retry_after: Some(_)
            }
        ),
        "{err:?}"
    );
    assert!(err.is_retryable());
    let kinds: Vec<_> = recorder.take().iter().map(|e| e.kind.name()).collect();
    assert_eq!(kinds, ["exec_started", "exec_finished", "rate_limited"]);
    Ok(())
}

/// The hub of a test and the recorder subscribed to it.
type Recording = (paddock_events::EventHub, std::sync::Arc<EventRecorder>);

/// A client of a new agent whose lease has the gate of `limits`, and the
/// recording of its events.
async fn limited_client(
    limits: &paddock::RateLimits,
    lease: u64,
) -> anyhow::Result<(AgentProcess, Recording, AgentClient)> {
    // Windows of 256 KiB and chunks of 64 KiB both ways (not the
    // defaults): the tests' arithmetic of what passes at once and what is
    // held back is in those sizes.
    let agent = AgentProcess::start(&["--window", "262144", "--max-payload", "65536"])?;
    let (hub, recorder, events) = EventRecorder::start("limits", 0);
    events.set_lease(Some((paddock_events::LeaseId(lease), None)));
    let gate = paddock::LeaseGate::new(limits).expect("a per-lease limit");
    let config = ClientConfig {
        events,
        gate: Some(std::sync::Arc::new(gate)),
        window: 256 * 1024,
        max_payload: 64 * 1024,
        ..test_config()
    };
    let client = AgentClient::connect(agent.transport(), config).await?;
    Ok((agent, (hub, recorder), client))
}

/// How long `limit` held flows back, over the recorded events.
fn held_by((_, recorder): &Recording, limit: &str) -> Duration {
    recorder
        .take()
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Throttled { limit: l, delay } if l == limit => Some(delay),
            _ => None,
        })
        .sum()
}

fn kib_per_s(kib: u32) -> Option<paddock::RateLimit> {
    std::num::NonZeroU32::new(kib).map(paddock::RateLimit::per_second)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_over_its_received_bytes_rate_is_slowed_down_and_loses_nothing() -> TestResult {
    let limits = paddock::RateLimits {
        lease_received_bytes: kib_per_s(256),
        ..paddock::RateLimits::default()
    };
    let (_agent, recording, client) = limited_client(&limits, 78).await?;
    let started = std::time::Instant::now();
    let out = client
        .exec_collect(Execute::shell("head -c 1048576 /dev/zero"))
        .await?;
    let took = started.elapsed();
    // Nothing lost or cut: pacing holds credit back, it drops nothing.
    assert_eq!(out.stdout.len(), 1 << 20);
    assert!(!out.result.stdout_truncated);
    assert_eq!(out.result.exit_code, Some(0));
    // The agent's first window and the limit's burst pass at once; the
    // other half MiB can come no faster than 256 KiB/s.
    let held = held_by(&recording, "lease_received_bytes");
    assert!(held >= Duration::from_millis(1500), "held back {held:?}");
    assert!(took >= Duration::from_millis(1500), "took {took:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_from_a_reader_is_paced_by_the_lease_file_bytes_rate() -> TestResult {
    let limits = paddock::RateLimits {
        lease_file_bytes: kib_per_s(64),
        ..paddock::RateLimits::default()
    };
    let (agent, recording, client) = limited_client(&limits, 79).await?;
    let data = vec![7u8; 192 * 1024];
    let remote = agent.dir().join("paced.bin");
    let done = client
        .put_reader(&mut data.as_slice(), &remote.to_string_lossy(), 0o644)
        .await?;
    assert_eq!(done.size, data.len() as u64);
    assert_eq!(std::fs::read(&remote)?, data);
    // 64 KiB pass at once; the other 128 KiB take two seconds at 64 KiB/s.
    let held = held_by(&recording, "lease_file_bytes");
    assert!(held >= Duration::from_millis(1500), "held back {held:?}");
    Ok(())
}
