//! File system operations in a real guest, through a pool's lease held to
//! the shipped `ci-runner` policy (file system operations under `/work` and
//! `/tmp`): every operation, checked from inside the guest with a command,
//! a typed error from the guest's file system, and a denial by the policy
//! that never reaches the guest.
#![cfg(test)]

use std::sync::Arc;
use std::time::Duration;

use paddock::agent::{ClientError, ErrorCode, Execute, FileType};
use paddock::policy::{Policy, Rule};
use paddock::{PoolConfig, VmPoolSpec};
use paddock_tests::vm::{enabled, test_paddock};
use paddock_tests::{repo_root, test_config, unique_marker};

type TestResult = anyhow::Result<()>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_does_every_fs_operation_in_its_guest() -> TestResult {
    if !enabled("a_lease_does_every_fs_operation_in_its_guest") {
        return Ok(());
    }
    let policy = Arc::new(Policy::load(repo_root().join("policies/ci-runner.toml"))?);
    let paddock = test_paddock().await?;
    let name = format!("fs{}", unique_marker());
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
        let client = lease.client();
        let shell = |line: &str| Execute::shell(line);

        client.create_dir_all("/work/fs/a/b").await?;
        client
            .create_dir_with_mode("/work/fs/private", 0o700)
            .await?;
        let mut file = &b"hello from the host\n"[..];
        client
            .put_reader(&mut file, "/work/fs/file.txt", 0o644)
            .await?;
        let made = client
            .exec_collect(shell(
                "cd /work/fs && ln -s file.txt link && stat -c '%a' private && ls",
            ))
            .await?;
        assert_eq!(made.result.exit_code, Some(0), "{made:?}");
        assert!(String::from_utf8_lossy(&made.stdout).starts_with("700\n"));

        assert!(client.exists("/work/fs/file.txt").await?);
        assert!(!client.exists("/work/fs/missing").await?);
        let metadata = client.metadata("/work/fs/link").await?;
        assert_eq!((metadata.file_type, metadata.size), (FileType::File, 20));
        let link = client.symlink_metadata("/work/fs/link").await?;
        assert_eq!(link.file_type, FileType::Symlink);
        assert_eq!(client.read_link("/work/fs/link").await?, "file.txt");
        client.set_permissions("/work/fs/file.txt", 0o600).await?;
        client
            .rename("/work/fs/file.txt", "/work/fs/moved.txt")
            .await?;
        let names: Vec<(String, FileType)> = client
            .read_dir("/work/fs")
            .await?
            .into_iter()
            .map(|entry| (entry.name, entry.metadata.file_type))
            .collect();
        assert_eq!(
            names,
            [
                ("a".to_owned(), FileType::Dir),
                ("link".to_owned(), FileType::Symlink),
                ("moved.txt".to_owned(), FileType::File),
                ("private".to_owned(), FileType::Dir),
            ]
        );
        let seen = client
            .exec_collect(shell("stat -c '%a %n' /work/fs/moved.txt"))
            .await?;
        assert_eq!(
            String::from_utf8_lossy(&seen.stdout),
            "600 /work/fs/moved.txt\n"
        );

        // The guest's own errors, typed.
        let err = client.remove("/work/fs/a").await.expect_err("not empty");
        assert_eq!(
            err.agent_code(),
            Some(ErrorCode::DirectoryNotEmpty),
            "{err}"
        );
        let err = client
            .create_dir("/work/fs/private")
            .await
            .expect_err("exists");
        assert_eq!(err.agent_code(), Some(ErrorCode::AlreadyExists), "{err}");

        // A link out of the tree survives its removal.
        client.create_dir("/tmp/outside").await?;
        let linked = client
            .exec_collect(shell(
                "echo keep > /tmp/outside/keep && ln -s /tmp/outside /work/fs/a/b/out",
            ))
            .await?;
        assert_eq!(linked.result.exit_code, Some(0), "{linked:?}");
        client.remove("/work/fs/link").await?;
        client.remove_dir_all("/work/fs").await?;
        assert!(!client.exists("/work/fs").await?);
        let kept = client.exec_collect(shell("cat /tmp/outside/keep")).await?;
        assert_eq!(kept.stdout, b"keep\n");

        // Outside the policy's trees: denied on the host.
        match client.create_dir("/etc/denied").await {
            Err(ClientError::Denied(denial)) => assert_eq!(denial.rule, Rule::FsWritePath),
            other => anyhow::bail!("not denied: {other:?}"),
        }
        let absent = client.exec_collect(shell("test -e /etc/denied")).await?;
        assert_eq!(absent.result.exit_code, Some(1), "{absent:?}");
        lease.release();
        anyhow::Ok(())
    }
    .await;
    pool.close().await?;
    outcome
}
