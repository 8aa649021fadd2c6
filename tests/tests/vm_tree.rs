//! Directory transfers on real VMs: a lease of a pool held to the shipped
//! `ci-runner` policy moves a tree into its guest and back, as one tar
//! stream each way over virtio-serial, with links kept as links.
#![cfg(test)]

use std::sync::Arc;
use std::time::Duration;

use paddock::agent::{ClientError, Execute, TreeOptions, TreeProgress};
use paddock::policy::{Policy, Rule};
use paddock::{PoolConfig, VmPoolSpec};
use paddock_tests::tree::{assert_progress, assert_same_tree, record_progress, sample_tree};
use paddock_tests::vm::{enabled, test_paddock};
use paddock_tests::{repo_root, test_config, unique_marker};

type TestResult = anyhow::Result<()>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_moves_a_tree_into_its_guest_and_back() -> TestResult {
    if !enabled("a_lease_moves_a_tree_into_its_guest_and_back") {
        return Ok(());
    }
    let policy = Arc::new(Policy::load(repo_root().join("policies/ci-runner.toml"))?);
    let paddock = test_paddock().await?;
    let name = format!("tr{}", unique_marker());
    let mut spec = VmPoolSpec::new(&name);
    spec.client = test_config();
    let pool = paddock
        .create_pool(
            spec,
            PoolConfig {
                min_ready: 1,
                max_size: 1,
                acquire_timeout: Duration::from_secs(120),
                policy: Some(policy),
                ..PoolConfig::default()
            },
        )
        .await?;
    let outcome = async {
        pool.wait_ready(Duration::from_secs(180)).await?;
        let lease = pool.acquire().await?;
        moves_a_tree(lease.client()).await?;
        lease.release();
        anyhow::Ok(())
    }
    .await;
    // Also on failure: the pool's domains and files go.
    let closed = pool.close().await;
    outcome?;
    Ok(closed?)
}

async fn moves_a_tree(client: &paddock::agent::AgentClient) -> TestResult {
    let local = tempfile::tempdir()?;
    let (files, dirs, symlinks) = sample_tree(local.path())?;
    let (progress, watched) = tokio::sync::watch::channel(TreeProgress::default());
    let recorder = record_progress(watched);
    let options = TreeOptions {
        progress: Some(progress),
        ..TreeOptions::default()
    };
    let put = client.put_tree(local.path(), "/tmp/tree", &options).await?;
    drop(options);
    anyhow::ensure!(
        (put.done.files, put.done.dirs, put.done.symlinks) == (files, dirs, symlinks),
        "{put:?}"
    );
    assert_progress(&recorder.await?, put.stream_bytes, files)?;

    // What the guest sees: the tree, modes and links as they were.
    let mut look = Execute::shell(
        "cd /tmp/tree && readlink outside-link && readlink inside-link && \
         stat -c '%a %n' empty private private/key src/run.sh && \
         cat src/nested/deeper/leaf.txt && find . | wc -l",
    );
    look.cwd = Some("/tmp".into());
    let out = client.exec_collect(look).await?;
    anyhow::ensure!(
        String::from_utf8_lossy(&out.stdout)
            == "/etc\nsrc/nested/deeper/leaf.txt\n750 empty\n700 private\n600 private/key\n\
                755 src/run.sh\na leaf\n12\n",
        "{out:?}"
    );

    let back = tempfile::tempdir()?;
    let got = client
        .get_tree("/tmp/tree", back.path(), &TreeOptions::default())
        .await?;
    anyhow::ensure!(got.done == put.done, "{got:?} != {put:?}");
    assert_same_tree(back.path(), local.path())?;

    // The policy governs trees as it does files.
    let Err(err) = client
        .put_tree(local.path(), "/etc/planted", &TreeOptions::default())
        .await
    else {
        anyhow::bail!("a put outside put.paths passed");
    };
    anyhow::ensure!(
        matches!(&err, ClientError::Denied(denial) if denial.rule == Rule::PutPath),
        "{err:?}"
    );
    Ok(())
}
