//! File transfers through the real agent binary over a Unix socket.
#![cfg(test)]

use paddock_agent_client::{ClientError, ErrorCode};
use paddock_tests::{AgentProcess, file_crc32, write_random_file};

type TestResult = anyhow::Result<()>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_mib_each_way_with_checksums() -> TestResult {
    const SIZE: usize = 100 * 1024 * 1024;
    let agent = AgentProcess::start(&[])?;
    let client = agent.client().await?;
    let local = agent.dir().join("upload.bin");
    let crc = write_random_file(&local, SIZE, 0x5eed)?;

    let remote = agent.dir().join("in-guest/nested/copy.bin");
    let remote = remote.to_str().expect("utf-8 path");
    let done = client.put_file(&local, remote).await?;
    assert_eq!((done.size, done.crc32), (SIZE as u64, crc));
    assert_eq!(
        file_crc32(std::path::Path::new(remote))?,
        crc,
        "agent wrote other bytes"
    );

    let back = agent.dir().join("download.bin");
    let download = client.get_file(remote, &back).await?;
    assert_eq!((download.size, download.crc32), (SIZE as u64, crc));
    assert_eq!(file_crc32(&back)?, crc);
    assert_eq!(std::fs::metadata(&back)?.len(), SIZE as u64);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modes_and_small_files_round_trip() -> TestResult {
    use std::os::unix::fs::PermissionsExt as _;
    let agent = AgentProcess::start(&[])?;
    let client = agent.client().await?;
    let remote = agent.dir().join("script.sh");
    let remote = remote.to_str().expect("utf-8 path");
    client
        .put_reader(&mut &b"#!/bin/sh\necho ran\n"[..], remote, 0o750)
        .await?;
    let mode = std::fs::metadata(remote)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o750);

    let mut empty = Vec::new();
    let empty_remote = agent.dir().join("empty");
    std::fs::write(&empty_remote, b"")?;
    let download = client
        .get_writer(empty_remote.to_str().expect("utf-8"), &mut empty)
        .await?;
    assert_eq!((download.size, empty.len()), (0, 0));

    let mut script = Vec::new();
    let download = client.get_writer(remote, &mut script).await?;
    assert_eq!(script, b"#!/bin/sh\necho ran\n");
    assert_eq!(download.mode & 0o777, 0o750);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_errors_are_typed_and_leave_nothing_behind() -> TestResult {
    let agent = AgentProcess::start(&[])?;
    let client = agent.client().await?;

    let missing = agent.dir().join("missing");
    let local = agent.dir().join("never-created");
    let err = client
        .get_file(missing.to_str().expect("utf-8"), &local)
        .await
        .expect_err("missing");
    assert_eq!(err.agent_code(), Some(ErrorCode::NotFound), "{err:?}");
    assert!(!local.exists());
    let leftovers: Vec<_> = std::fs::read_dir(agent.dir())?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "partial download left behind: {leftovers:?}"
    );

    let err = client
        .put_reader(&mut &b"x"[..], "relative/path", 0o644)
        .await
        .expect_err("relative");
    assert!(matches!(err, ClientError::InvalidRequest(_)), "{err:?}");

    // A directory is not a file to read.
    let mut sink = Vec::new();
    let err = client
        .get_writer(agent.dir().to_str().expect("utf-8"), &mut sink)
        .await
        .expect_err("dir");
    assert!(err.agent_code().is_some(), "{err:?}");

    // Writing below a regular file fails in the guest, not in the client.
    let blocker = agent.dir().join("blocker");
    std::fs::write(&blocker, b"file")?;
    let below = blocker.join("child");
    let err = client
        .put_reader(
            &mut &[1u8; 200_000][..],
            below.to_str().expect("utf-8"),
            0o644,
        )
        .await
        .expect_err("parent is a file");
    assert!(err.agent_code().is_some(), "{err:?}");
    client.ping().await?;
    Ok(())
}
