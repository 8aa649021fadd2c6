//! The observability layer's price on real VMs: acquire (from a pool whose
//! slots are ready) and the exec round trip of `true` in a lease, with the
//! layer off and with everything on (metrics, the audit log with batched
//! fsync, the anomaly detector), on the same kind of pool of two. Prints
//! one JSON object (medians and p99 in milliseconds).
//!
//! Run with `cargo xtask bench-observe` (root; it starts libvirtd and
//! builds the image first). It takes about three minutes.

use std::time::{Duration, Instant};

use paddock::agent::Execute;
use paddock::observe::Observability;
use paddock::{Paddock, PaddockConfig, PoolConfig, VmPool, VmPoolSpec};
use paddock_benches::Samples;
use paddock_tests::vm::{SYSTEM_URI, test_image};

const CYCLES: usize = 60;
const EXECS_PER_LEASE: usize = 5;

async fn wait_all_ready(pool: &VmPool) -> anyhow::Result<()> {
    pool.wait_ready(Duration::from_secs(120)).await?;
    while pool.stats().ready < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

async fn measure(config: PaddockConfig, name: &str) -> anyhow::Result<serde_json::Value> {
    let paddock = Paddock::connect(config).await?;
    let pool = paddock
        .create_pool(
            VmPoolSpec::new(name),
            PoolConfig {
                min_ready: 2,
                max_size: 2,
                health_check_interval: None,
                ..PoolConfig::default()
            },
        )
        .await?;
    let (mut acquire, mut exec) = (Samples::default(), Samples::default());
    for _ in 0..CYCLES {
        wait_all_ready(&pool).await?;
        let t = Instant::now();
        let lease = pool.acquire().await?;
        acquire.push(t.elapsed());
        for _ in 0..EXECS_PER_LEASE {
            let t = Instant::now();
            lease.client().exec_collect(Execute::argv(["true"])).await?;
            exec.push(t.elapsed());
        }
        lease.release();
    }
    pool.close().await?;
    Ok(serde_json::json!({ "acquire_ms": acquire.json(), "exec_true_ms": exec.json() }))
}

fn main() -> anyhow::Result<()> {
    paddock_benches::run_harness(async {
        let mut base = PaddockConfig::new(test_image()?);
        base.libvirt_uri = SYSTEM_URI.into();
        let off = measure(base.clone(), "bench-observe-off").await?;
        let audit = tempfile::tempdir()?;
        let registry = prometheus::Registry::new();
        let observability = Observability::new(&registry)?
            .with_audit(audit.path(), Default::default(), Default::default())?
            .with_anomaly_detection(Default::default())?;
        let on = measure(base.observe(&observability), "bench-observe-on").await?;
        let records = observability
            .audit_log()
            .map_or(0, |log| log.stats().records_written);
        observability.close()?;
        println!(
            "{}",
            serde_json::json!({ "off": off, "everything_on": on, "audit_records": records })
        );
        Ok(())
    })
}
