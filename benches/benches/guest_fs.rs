//! Listing a directory of 10,000 files in a real guest (TCG here), every
//! page, through the agent's FS_REQUEST `read_dir`: the whole walk with the
//! default page size (1000 entries) and with the largest (4096), repeated
//! and reported as median and p99 in one JSON object on stdout, with an
//! exec of `ls -f | wc -l` in the guest, the same directory read by a
//! program, for scale.
//!
//! Run with `cargo xtask bench-fs` (it starts libvirtd and builds the
//! image first), or as root with libvirtd running and an image built:
//! `PADDOCK_IMAGE=$(readlink -f target/paddock-image/current.json) cargo
//! bench -p paddock-benches --bench guest_fs`.

use std::time::Instant;

use paddock::agent::Execute;
use paddock::libvirt::Libvirt;
use paddock::{Sandbox, SandboxConfig};
use paddock_benches::Samples;
use paddock_tests::vm::{SYSTEM_URI, test_image};

const FILES: usize = 10_000;
const RUNS: usize = 20;
const DIR: &str = "/tmp/bench-fs";

fn main() -> anyhow::Result<()> {
    paddock_benches::run_harness(run())
}

async fn run() -> anyhow::Result<()> {
    let image = test_image()?;
    let libvirt = Libvirt::open(SYSTEM_URI).await?;
    let mut config = SandboxConfig::new(format!("paddock-bench-fs-{}", std::process::id()));
    config.pool = "bench".into();
    let sandbox = Sandbox::boot(&libvirt, &image, config).await?;
    let outcome = measure(&sandbox).await;
    sandbox.destroy().await?;
    let report = outcome?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

async fn measure(sandbox: &Sandbox) -> anyhow::Result<serde_json::Value> {
    let client = sandbox.client();
    let made = client
        .exec_collect(Execute::shell(format!(
            "mkdir -p {DIR} && cd {DIR} && i=0; while [ $i -lt {FILES} ]; do : > f$i; i=$((i+1)); done"
        )))
        .await?;
    anyhow::ensure!(made.result.exit_code == Some(0), "{made:?}");

    let mut walks = Vec::new();
    for limit in [None, Some(paddock_proto::MAX_READ_DIR_LIMIT)] {
        let mut samples = Samples::default();
        let mut pages = 0;
        for run in 0..RUNS {
            let t = Instant::now();
            let mut cursor: Option<String> = None;
            let mut entries = 0;
            pages = 0;
            loop {
                let page = client.read_dir_page(DIR, cursor.as_deref(), limit).await?;
                entries += page.entries.len();
                pages += 1;
                match page.next {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
            samples.push(t.elapsed());
            anyhow::ensure!(entries == FILES, "run {run}: {entries} entries");
        }
        eprintln!("limit {limit:?}: {pages} pages, {:?}", samples.0);
        walks.push(serde_json::json!({
            "limit": limit.unwrap_or(paddock_proto::DEFAULT_READ_DIR_LIMIT),
            "pages": pages,
            "walk_ms": samples.json(),
        }));
    }

    let mut ls = Samples::default();
    for _ in 0..RUNS {
        let t = Instant::now();
        let out = client
            .exec_collect(Execute::shell(format!("ls -f {DIR} | wc -l")))
            .await?;
        ls.push(t.elapsed());
        anyhow::ensure!(out.result.exit_code == Some(0), "{out:?}");
    }
    Ok(serde_json::json!({
        "accelerator": "tcg",
        "files": FILES,
        "read_dir_all_pages": walks,
        "exec_ls_f_wc_l_ms": ls.json(),
    }))
}
