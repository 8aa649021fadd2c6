//! A guest that speaks garbage to the host loses its slot: on a real pool
//! (the default anomaly rules), a lease's guest kills its agent, takes the
//! agent's virtio-serial port and writes bytes that are no frame. The host
//! client's session ends with a typed protocol error, reported as a
//! `ProtocolError` event of that slot; `agent_protocol_errors` fires with
//! its default action, `recycle_slot`; at its release the slot is
//! destroyed with cause `recycled` (not reset, which would have brought it
//! back: the golden's memory holds a healthy agent) and replaced, and the
//! pool serves again.
#![cfg(test)]

use std::time::Duration;

use paddock::PoolConfig;
use paddock::agent::{ClientError, Execute};
use paddock::events::{DestroyCause, EventKind};
use paddock::observe::Observability;
use paddock::observe::anomaly::DetectorConfig;
use paddock::{Paddock, VmPoolSpec};
use paddock_tests::vm::{enabled, test_paddock};
use paddock_tests::{EventRecorder, test_config, unique_marker};

type TestResult = anyhow::Result<()>;

/// Run in the guest: find the agent's port, kill the agent (its respawn
/// waits a second), and write non-frames to the port as soon as it is
/// free. Nothing is printed once the agent is gone: its pipes are.
const SPEAK_GARBAGE: &str = r#"
port=
for p in /sys/class/virtio-ports/vport*; do
    [ "$(cat "$p/name")" = org.paddock.agent.0 ] && port="/dev/${p##*/}"
done
[ -n "$port" ] || { echo "no agent port" >&2; exit 2; }
i=0
while [ $i -lt 64 ]; do echo "this is not a frame of the protocol"; i=$((i + 1)); done > /tmp/garbage
exec >/dev/null 2>&1
kill -9 $(pidof paddock-agent)
tries=0
until cat /tmp/garbage > "$port"; do
    tries=$((tries + 1))
    [ $tries -gt 200 ] && exit 3
    sleep 0.01
done
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_sends_bad_frames_gets_its_slot_recycled() -> TestResult {
    if !enabled("a_guest_that_sends_bad_frames_gets_its_slot_recycled") {
        return Ok(());
    }
    let registry = prometheus::Registry::new();
    let observability =
        Observability::new(&registry)?.with_anomaly_detection(DetectorConfig::default())?;
    let recorder = std::sync::Arc::new(EventRecorder::default());
    observability.hub().subscribe(recorder.clone());
    let base = test_paddock().await?;
    let paddock = Paddock::connect(base.config().clone().observe(&observability)).await?;
    let name = format!("hg{}", unique_marker());
    let mut spec = VmPoolSpec::new(&name);
    spec.client = test_config();
    let pool = paddock
        .create_pool(
            spec,
            PoolConfig {
                min_ready: 1,
                max_size: 1,
                acquire_timeout: Duration::from_secs(120),
                health_check_interval: None,
                ..PoolConfig::default()
            },
        )
        .await?;
    let outcome = garbage_then_recycle(&pool, &recorder, &observability, &name).await;
    pool.close().await?;
    observability.close()?;
    outcome
}

async fn garbage_then_recycle(
    pool: &paddock::VmPool,
    recorder: &EventRecorder,
    observability: &Observability,
    name: &str,
) -> TestResult {
    pool.wait_ready(Duration::from_secs(180)).await?;
    let created_before = pool.stats().created;
    let lease = pool.acquire().await?;
    let slot = lease.index();
    let err = lease
        .client()
        .exec_collect(Execute::shell(SPEAK_GARBAGE))
        .await
        .expect_err("the session ends on the garbage");
    anyhow::ensure!(
        matches!(
            err,
            ClientError::Frame(_) | ClientError::Decode(_) | ClientError::Unexpected { .. }
        ),
        "a protocol error, not {err:?}"
    );

    // The alert's action runs on a task of the pool: wait for its event.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    let alerted = loop {
        seen.extend(recorder.take());
        let alerted = seen.iter().any(|e| {
            matches!(
                e.kind,
                EventKind::Alert {
                    rule: "agent_protocol_errors",
                    action: "recycle_slot",
                    ..
                }
            ) && e.source.slot == Some(slot)
        });
        if alerted || tokio::time::Instant::now() > deadline {
            break alerted;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let reported: Vec<_> = seen
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::ProtocolError { kind } => Some((kind, e.source.slot)),
            _ => None,
        })
        .collect();
    anyhow::ensure!(
        reported.iter().any(|(_, from)| *from == Some(slot)),
        "the slot's protocol error was reported: {reported:?}"
    );
    anyhow::ensure!(alerted, "agent_protocol_errors fired for slot {slot}");

    lease.release();
    let stats = tokio::time::timeout(Duration::from_secs(180), async {
        loop {
            let stats = pool.stats();
            if stats.ready == 1 && stats.destroyed >= 1 && stats.preparing == 0 {
                return stats;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await?;
    anyhow::ensure!(stats.failed_resets == 0, "destroyed, not reset: {stats:?}");
    anyhow::ensure!(stats.created > created_before, "replaced: {stats:?}");
    seen.extend(recorder.take());
    let recycled = seen.iter().any(|e| {
        matches!(
            e.kind,
            EventKind::SlotDestroyed {
                cause: DestroyCause::Recycled,
                ..
            }
        ) && e.source.slot == Some(slot)
    });
    anyhow::ensure!(recycled, "slot {slot} was destroyed as recycled");
    let text = observability.render()?;
    let expected = format!(
        "paddock_slot_recycles_total{{cause=\"recycled\",pool=\"{name}\",reason=\"none\"}} 1"
    );
    anyhow::ensure!(text.contains(&expected), "missing {expected}");

    // The replacement serves.
    let lease = pool.acquire().await?;
    let out = lease
        .client()
        .exec_collect(Execute::shell("echo served"))
        .await?;
    anyhow::ensure!(out.stdout == b"served\n", "{out:?}");
    lease.release();
    Ok(())
}
