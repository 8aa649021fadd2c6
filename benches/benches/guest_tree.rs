//! Directory transfers into and out of one real guest (TCG here): a tree
//! of 1,000 files of 1 KiB (in 10 directories) and one of 4 files of
//! 16 MiB, each put (TREE_PUT) and got (TREE_GET) several times. Reported
//! as median and p99 per transfer, and MB/s of file content at the median,
//! in one JSON object on stdout.
//!
//! Run with `cargo bench -p paddock-benches --bench guest_tree` on a host
//! set up as `cargo xtask bench-vm` sets it up (libvirtd running, the image
//! built; `PADDOCK_IMAGE` picks another); it needs root.

use std::path::Path;
use std::time::Instant;

use paddock::agent::{Execute, TreeOptions};
use paddock::libvirt::Libvirt;
use paddock::{Sandbox, SandboxConfig};
use paddock_benches::Samples;
use paddock_tests::vm::{SYSTEM_URI, test_image};

const SMALL_REPS: usize = 7;
const LARGE_REPS: usize = 5;

fn main() -> anyhow::Result<()> {
    paddock_benches::run_harness(run())
}

/// Fills `root` with `dirs` directories of `per_dir` files of `size` bytes
/// each; returns the bytes of content.
fn make_tree(root: &Path, dirs: usize, per_dir: usize, size: usize) -> anyhow::Result<u64> {
    let mut total = 0;
    for d in 0..dirs {
        let dir = root.join(format!("d{d:02}"));
        std::fs::create_dir_all(&dir)?;
        for f in 0..per_dir {
            let data: Vec<u8> = (0..size)
                .map(|i| u8::try_from((i * 31 + f * 7 + d) % 251).unwrap_or(0))
                .collect();
            std::fs::write(dir.join(format!("f{f:04}.bin")), &data)?;
            total += size as u64;
        }
    }
    Ok(total)
}

/// Puts `local` into the guest and gets it back `reps` times each.
async fn measure(
    client: &paddock::agent::AgentClient,
    local: &Path,
    name: &str,
    reps: usize,
) -> anyhow::Result<(Samples, Samples, u64)> {
    let options = TreeOptions::default();
    let (mut put, mut get) = (Samples::default(), Samples::default());
    let mut stream = 0;
    for i in 0..reps {
        let remote = format!("/tmp/bench-{name}");
        client
            .exec_collect(Execute::argv(["rm", "-rf", &remote]))
            .await?;
        let t = Instant::now();
        let done = client.put_tree(local, &remote, &options).await?;
        put.push(t.elapsed());
        stream = done.stream_bytes;
        let back = tempfile::tempdir()?;
        let t = Instant::now();
        client.get_tree(&remote, back.path(), &options).await?;
        get.push(t.elapsed());
        eprintln!("{name} {i}: put {:?}, get {:?}", put.0[i], get.0[i]);
    }
    Ok((put, get, stream))
}

/// MB/s (10^6 bytes) of `bytes` at the median of `samples`.
fn rate(samples: &Samples, bytes: u64) -> f64 {
    let mut sorted = samples.0.clone();
    sorted.sort();
    let median = sorted
        .get(sorted.len() / 2)
        .map_or(0.0, |d| d.as_secs_f64());
    (bytes as f64 / 1e6) / median
}

async fn run() -> anyhow::Result<()> {
    let image = test_image()?;
    let libvirt = Libvirt::open(SYSTEM_URI).await?;
    let mut config = SandboxConfig::new(format!("paddock-bench-tree-{}", std::process::id()));
    config.pool = "bench".into();
    let sandbox = Sandbox::boot(&libvirt, &image, config).await?;
    let outcome = async {
        let client = sandbox.client();
        let small = tempfile::tempdir()?;
        let small_bytes = make_tree(small.path(), 10, 100, 1024)?;
        let large = tempfile::tempdir()?;
        let large_bytes = make_tree(large.path(), 1, 4, 16 << 20)?;
        let (mut small_put, mut small_get, small_stream) =
            measure(client, small.path(), "small", SMALL_REPS).await?;
        let (mut large_put, mut large_get, large_stream) =
            measure(client, large.path(), "large", LARGE_REPS).await?;
        let report = serde_json::json!({
            "accelerator": "tcg",
            "channel": "virtio-serial",
            "small_tree": {
                "files": 1000, "file_bytes": 1024, "content_bytes": small_bytes,
                "stream_bytes": small_stream,
                "put": small_put.json(), "get": small_get.json(),
                "put_mb_per_s_at_median": rate(&small_put, small_bytes),
                "get_mb_per_s_at_median": rate(&small_get, small_bytes),
            },
            "large_tree": {
                "files": 4, "file_bytes": 16 << 20, "content_bytes": large_bytes,
                "stream_bytes": large_stream,
                "put": large_put.json(), "get": large_get.json(),
                "put_mb_per_s_at_median": rate(&large_put, large_bytes),
                "get_mb_per_s_at_median": rate(&large_get, large_bytes),
            },
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
        anyhow::Ok(())
    }
    .await;
    sandbox.destroy().await?;
    outcome
}
