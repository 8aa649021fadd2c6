//! The observability layer on a real pool: a few leases (a job that works,
//! one that fails, one that times out, an upload), then the pool's metrics
//! in Prometheus' text format, and the audit log of it all verified.
//!
//! Run it as root with libvirtd running and the image built:
//!
//! ```sh
//! cargo xtask observe                 # sets the host up first
//! cargo run -p paddock --example observability -- target/paddock-image/current.json
//! ```

use std::time::Duration;

use paddock::agent::Execute;
use paddock::observe::Observability;
use paddock::observe::audit::{AuditConfig, AuditOptions, verify};
use paddock::{GuestImage, Paddock, PaddockConfig, PoolConfig, VmPoolSpec};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/paddock-image/current.json".into());
    let audit_dir = tempfile::tempdir()?;
    let registry = prometheus::Registry::new();
    let observability = Observability::new(&registry)?
        .with_audit(
            audit_dir.path(),
            AuditConfig::default(),
            AuditOptions::default(),
        )?
        .with_anomaly_detection(Default::default())?;
    let config = PaddockConfig::new(GuestImage::load(manifest.as_ref())?).observe(&observability);
    let paddock = Paddock::connect(config).await?;

    let name = format!("observed{}", std::process::id());
    let pool = paddock
        .create_pool(
            VmPoolSpec::new(&name),
            PoolConfig {
                min_ready: 2,
                max_size: 2,
                acquire_timeout: Duration::from_secs(120),
                ..PoolConfig::default()
            },
        )
        .await?;
    pool.wait_ready(Duration::from_secs(180)).await?;

    let upload = tempfile::NamedTempFile::new()?;
    std::fs::write(upload.path(), vec![7u8; 256 * 1024])?;
    let jobs: [(&str, Execute); 3] = [
        ("works", Execute::shell("uname -r; echo done")),
        ("fails", Execute::shell("echo broken >&2; exit 3")),
        ("times out", {
            let mut slow = Execute::argv(["sleep", "30"]);
            slow.timeout_ms = Some(500);
            slow
        }),
    ];
    for (what, job) in jobs {
        let lease = pool.acquire_for("example-tenant").await?;
        let out = lease.client().exec_collect(job).await?;
        println!(
            "job that {what}: slot {}, {}, exit {:?}, timed out {}",
            lease.index(),
            lease.id(),
            out.result.exit_code,
            out.result.timed_out
        );
        lease
            .client()
            .put_file(upload.path(), "/tmp/upload.bin")
            .await?;
        lease.release();
    }
    pool.wait_ready(Duration::from_secs(120)).await?;
    let recorded = pool.record_slot_resources(observability.metrics()).await?;
    println!("resource figures of {recorded} slots from one bulk libvirt call\n");

    println!("== metrics (Prometheus text format, paddock_ series with values)");
    for line in observability.render()?.lines() {
        let counted = line.rsplit_once(' ').is_some_and(|(_, value)| value != "0");
        if line.starts_with("paddock_") && counted && !line.contains("_bucket{") {
            println!("{line}");
        }
    }

    pool.close().await?;
    observability.close()?;
    println!("\n== audit log");
    let report = verify(audit_dir.path())?;
    println!("{report}");
    if !report.is_intact() {
        return Err("the audit log does not verify".into());
    }
    let first = std::fs::read_dir(audit_dir.path())?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .min()
        .ok_or("no audit file")?;
    for line in std::fs::read_to_string(first)?.lines().take(3) {
        println!("{line}");
    }
    Ok(())
}
