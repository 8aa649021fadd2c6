//! The observability layer on a real pool: a lease whose executions keep
//! timing out raises `repeated_exec_timeouts`, whose action here ends the
//! lease at once (its next request is refused) and recycles the slot (it
//! is destroyed, not reset, and replaced); a lease whose guest floods its
//! output raises `output_rate_spike`, which recycles its slot. The metrics
//! count it all, and the audit log verifies.
#![cfg(test)]

use std::time::Duration;

use paddock::PoolConfig;
use paddock::agent::{ClientError, Execute};
use paddock::events::{DestroyCause, EventKind};
use paddock::observe::Observability;
use paddock::observe::anomaly::{Action, DetectorConfig};
use paddock::observe::audit::{AuditConfig, AuditOptions, verify};
use paddock::{Paddock, VmPoolSpec};
use paddock_tests::vm::{enabled, test_paddock};
use paddock_tests::{EventRecorder, test_config, unique_marker};

type TestResult = anyhow::Result<()>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anomalies_in_a_lease_end_it_or_recycle_its_slot_and_everything_is_counted() -> TestResult {
    if !enabled("anomalies_in_a_lease_end_it_or_recycle_its_slot_and_everything_is_counted") {
        return Ok(());
    }
    let mut rules = DetectorConfig::default();
    rules.repeated_exec_timeouts.action = Action::EndLease;
    // A short history is enough here: three quiet buckets, then a flood
    // well above the 1 MiB/s floor.
    rules.output_rate_spike.min_samples = 3;
    rules.output_rate_spike.action = Action::RecycleSlot;
    // A guest that spins its CPU for a few seconds, sampled twice a second.
    // The threshold is low because this TCG host shares two cores with the
    // other tests' guests: an idle slot here uses a few percent of a core,
    // a spinning one gets what the host can give it.
    rules.cpu_pinned.utilization = 0.3;
    rules.cpu_pinned.duration_ms = 3_000;
    let audit = tempfile::tempdir()?;
    let registry = prometheus::Registry::new();
    let observability = Observability::new(&registry)?
        .with_audit(
            audit.path(),
            AuditConfig::default(),
            AuditOptions::default(),
        )?
        .with_anomaly_detection(rules)?;
    let recorder = std::sync::Arc::new(EventRecorder::default());
    observability.hub().subscribe(recorder.clone());
    let base = test_paddock().await?;
    let paddock = Paddock::connect(base.config().clone().observe(&observability)).await?;
    let name = format!("ob{}", unique_marker());
    let mut spec = VmPoolSpec::new(&name);
    spec.client = test_config();
    let pool = paddock
        .create_pool(
            spec,
            PoolConfig {
                min_ready: 2,
                max_size: 2,
                acquire_timeout: Duration::from_secs(120),
                health_check_interval: None,
                ..PoolConfig::default()
            },
        )
        .await?;
    pool.wait_ready(Duration::from_secs(180)).await?;
    let sampler = observability.spawn_sampler(pool.clone(), Duration::from_millis(500));

    // A spinning guest: `cpu_pinned` fires for its slot.
    let lease = pool.acquire().await?;
    let spun_slot = lease.index();
    // It ends by itself, not by a timeout: the timeouts below are the
    // only ones.
    let spin =
        Execute::shell("end=$(($(date +%s) + 8)); while [ $(date +%s) -lt $end ]; do :; done");
    let out = lease.client().exec_collect(spin).await?;
    anyhow::ensure!(out.result.exit_code == Some(0), "{:?}", out.result);
    drop(lease);

    // Three timeouts in a row: the third ends the lease.
    let lease = pool.acquire().await?;
    let timed_out_slot = lease.index();
    for _ in 0..3 {
        let mut slow = Execute::argv(["sleep", "30"]);
        slow.timeout_ms = Some(300);
        slow.kill_grace_ms = Some(100);
        let out = lease.client().exec_collect(slow).await?;
        anyhow::ensure!(out.result.timed_out, "{:?}", out.result);
    }
    // The action runs on a task of the pool: give it a moment.
    let mut refused = None;
    for _ in 0..50 {
        match lease.client().exec_collect(Execute::argv(["true"])).await {
            Err(err @ ClientError::Refused { .. }) => {
                refused = Some(err);
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let refused = refused.ok_or_else(|| anyhow::anyhow!("the lease was not ended"))?;
    anyhow::ensure!(
        matches!(
            refused,
            ClientError::Refused {
                limit: "lease_ended",
                retry_after: None
            }
        ),
        "{refused:?}"
    );
    drop(lease);

    // Quiet output for a few seconds, then a flood.
    let lease = pool.acquire().await?;
    let flooded_slot = lease.index();
    for _ in 0..4 {
        lease
            .client()
            .exec_collect(Execute::shell("echo quiet"))
            .await?;
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let mut flood = Execute::shell("head -c 33554432 /dev/zero");
    flood.stdout_cap = Some(1024);
    let out = lease.client().exec_collect(flood).await?;
    anyhow::ensure!(out.result.stdout_bytes == 32 << 20, "{:?}", out.result);
    drop(lease);

    let stats = tokio::time::timeout(Duration::from_secs(180), async {
        loop {
            let stats = pool.stats();
            if stats.ready == 2 && stats.destroyed >= 2 {
                return stats;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await?;
    anyhow::ensure!(stats.failed_resets == 0, "{stats:?}");
    let events = recorder.take();
    let alerts: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Alert { rule, action, .. } => Some((*rule, *action, e.source.slot)),
            _ => None,
        })
        .collect();
    anyhow::ensure!(
        alerts.contains(&("repeated_exec_timeouts", "end_lease", Some(timed_out_slot))),
        "{alerts:?}"
    );
    anyhow::ensure!(
        alerts.contains(&("output_rate_spike", "recycle_slot", Some(flooded_slot))),
        "{alerts:?}"
    );
    anyhow::ensure!(
        alerts.contains(&("cpu_pinned", "log", Some(spun_slot))),
        "{alerts:?}"
    );
    sampler.abort();
    let recycled: Vec<_> = events
        .iter()
        .filter(|e| {
            matches!(
                e.kind,
                EventKind::SlotDestroyed {
                    cause: DestroyCause::Recycled,
                    ..
                }
            )
        })
        .filter_map(|e| e.source.slot)
        .collect();
    anyhow::ensure!(
        recycled.contains(&timed_out_slot) && recycled.contains(&flooded_slot),
        "{recycled:?}"
    );

    let text = observability.render()?;
    for expected in [
        format!(
            "paddock_anomalies_total{{action=\"end_lease\",pool=\"{name}\",rule=\"repeated_exec_timeouts\"}}"
        ),
        format!(
            "paddock_slot_recycles_total{{cause=\"recycled\",pool=\"{name}\",reason=\"none\"}} 2"
        ),
        format!("paddock_execs_total{{outcome=\"timeout\",pool=\"{name}\"}} 3"),
        format!("paddock_slots{{pool=\"{name}\",state=\"ready\"}} 2"),
        format!("paddock_anomalies_total{{action=\"log\",pool=\"{name}\",rule=\"cpu_pinned\"}}"),
        format!("paddock_slot_cpu_seconds_total{{pool=\"{name}\",slot="),
    ] {
        anyhow::ensure!(text.contains(&expected), "missing {expected}");
    }
    pool.close().await?;
    observability.close()?;
    let report = verify(audit.path())?;
    anyhow::ensure!(report.is_intact(), "{report}");
    let log = std::fs::read_dir(audit.path())?
        .filter_map(Result::ok)
        .map(|entry| std::fs::read_to_string(entry.path()))
        .collect::<Result<String, _>>()?;
    anyhow::ensure!(log.contains("\"verb\":\"alert\""));
    Ok(())
}
