//! What an orchestrator writes: a pool of pre-warmed sandboxes, a lease per
//! job, and a reset after every one.
//!
//! Run it (as root, after `cargo xtask image`, with libvirtd running, e.g.
//! after `cargo xtask demo`):
//!
//! ```sh
//! cargo run -p paddock --example pool
//! ```

use std::time::{Duration, Instant};

use paddock::agent::Execute;
use paddock::{GuestImage, Paddock, PaddockConfig, PoolConfig, VmPoolSpec};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/paddock-image/current.json".into());
    let paddock =
        Paddock::connect(PaddockConfig::new(GuestImage::load(manifest.as_ref())?)).await?;

    // A golden guest with a warmed-up file; two slots kept ready.
    let mut spec = VmPoolSpec::new("example");
    spec.warmup = vec!["echo ready > /tmp/warmed-up".into()];
    let pool = paddock
        .create_pool(
            spec,
            PoolConfig {
                min_ready: 2,
                max_size: 4,
                acquire_timeout: Duration::from_secs(60),
                ..PoolConfig::default()
            },
        )
        .await?;
    pool.wait_ready(Duration::from_secs(120)).await?;

    for job in 0..3 {
        let started = Instant::now();
        let lease = pool.acquire().await?;
        let acquired = started.elapsed();
        let out = lease
            .client()
            .exec_collect(Execute::shell(format!(
                "cat /tmp/warmed-up; ls /tmp/job-* 2>/dev/null; touch /tmp/job-{job}"
            )))
            .await?;
        println!(
            "job {job} on slot {} (acquired in {acquired:?}): {}",
            lease.index(),
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .replace('\n', " | ")
        );
        // Back to the pool: reset to the golden in the background, so the
        // next job never sees /tmp/job-*.
        lease.release();
    }

    pool.close().await?;
    Ok(())
}
