//! Real sandbox VMs: the project's image booted by libvirt under TCG, driven
//! through the guest agent over virtio-serial and hybrid vsock.
#![cfg(test)]

use std::time::Duration;

use paddock::ChannelConfig;
use paddock_agent_client::{ClientError, Execute};
use paddock_tests::vm::{
    TestSandbox, TestSandboxOptions, assert_escaped_processes_end_with_their_execution, enabled,
    hybrid_vsock_backend,
};
use paddock_tests::write_random_file;

type TestResult = anyhow::Result<()>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_stream_files_and_status_over_virtio_serial() -> TestResult {
    if !enabled("exec_stream_files_and_status_over_virtio_serial") {
        return Ok(());
    }
    exec_stream_files_and_status(ChannelConfig::VirtioSerial).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_stream_files_and_status_over_hybrid_vsock() -> TestResult {
    if !enabled("exec_stream_files_and_status_over_hybrid_vsock") {
        return Ok(());
    }
    let backend = hybrid_vsock_backend()?;
    exec_stream_files_and_status(ChannelConfig::HybridVsock { backend }).await
}

/// What every channel must carry: exec with exit codes and stderr, streamed
/// output, a timeout that kills a tree in the guest, files both ways, status.
async fn exec_stream_files_and_status(channel: ChannelConfig) -> TestResult {
    let hybrid = matches!(channel, ChannelConfig::HybridVsock { .. });
    let sandbox = TestSandbox::boot(TestSandboxOptions {
        channel,
        ..TestSandboxOptions::default()
    })
    .await?;
    eprintln!("boot to agent ready: {:?}", sandbox.boot_to_ready());
    let client = sandbox.client();
    let expected_transport = if hybrid {
        "hvsock://"
    } else {
        "virtio-serial://"
    };
    assert!(
        client
            .transport()
            .to_string()
            .starts_with(expected_transport),
        "{}",
        client.transport()
    );

    let out = client.exec_collect(Execute::argv(["uname", "-sr"])).await?;
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("Linux 6.1"),
        "{out:?}"
    );
    let out = client
        .exec_collect(Execute::shell("echo err >&2; exit 7"))
        .await?;
    assert_eq!(
        (out.result.exit_code, out.stderr.as_slice()),
        (Some(7), b"err\n".as_slice())
    );

    // Output arrives while the process still runs.
    let mut execution = client
        .exec(Execute::shell("echo first; sleep 2; echo second"))
        .await?;
    let mut stdout = execution.take_stdout().expect("stdout");
    let first = tokio::time::timeout(Duration::from_millis(1500), stdout.chunk()).await;
    assert_eq!(
        first.expect("first line before the sleep ends")?.as_deref(),
        Some(b"first\n".as_slice())
    );
    assert_eq!(stdout.read_to_vec().await?, b"second\n");
    assert_eq!(execution.wait().await?.exit_code, Some(0));

    // A timeout kills the whole tree inside the guest.
    let mut request = Execute::shell("sleep 1000 & sleep 1000");
    request.timeout_ms = Some(1000);
    request.kill_grace_ms = Some(500);
    let out = client.exec_collect(request).await?;
    assert!(out.result.timed_out, "{:?}", out.result);
    let ps = client
        .exec_collect(Execute::shell("ps -o args | grep -c '^sleep 1000' || true"))
        .await?;
    assert_eq!(
        String::from_utf8_lossy(&ps.stdout).trim(),
        "0",
        "sleeps left in the guest"
    );

    // Files both ways, checksummed.
    let local = sandbox.dir().join("up.bin");
    let crc = write_random_file(&local, 8 << 20, 7)?;
    let done = client.put_file(&local, "/tmp/up.bin").await?;
    assert_eq!((done.size, done.crc32), (8 << 20, crc));
    let back = sandbox.dir().join("down.bin");
    let download = client.get_file("/tmp/up.bin", &back).await?;
    assert_eq!(download.crc32, crc);
    let out = client
        .exec_collect(Execute::argv(["wc", "-c", "/tmp/up.bin"]))
        .await?;
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&(8u64 << 20).to_string()));

    let status = client.status().await?;
    assert!(
        status.mem_total_bytes > 100 << 20 && status.mem_total_bytes <= 256 << 20,
        "{status:?}"
    );
    assert!(status.system_uptime_s > 0.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escaped_processes_end_with_their_execution_in_the_guest() -> TestResult {
    if !enabled("escaped_processes_end_with_their_execution_in_the_guest") {
        return Ok(());
    }
    let sandbox = TestSandbox::boot(TestSandboxOptions::default()).await?;
    assert_escaped_processes_end_with_their_execution(&sandbox).await?;
    sandbox.destroy().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_vms_at_once() -> TestResult {
    if !enabled("three_vms_at_once") {
        return Ok(());
    }
    let (a, b, c) = tokio::join!(
        TestSandbox::boot(TestSandboxOptions::default()),
        TestSandbox::boot(TestSandboxOptions::default()),
        TestSandbox::boot(TestSandboxOptions::default()),
    );
    let sandboxes = [a?, b?, c?];
    let work = |i: usize| {
        let line = format!(
            "echo sandbox-{i} > /tmp/who; cat /tmp/who; cat /proc/sys/kernel/random/boot_id"
        );
        sandboxes[i].client().exec_collect(Execute::shell(line))
    };
    let (a, b, c) = tokio::join!(work(0), work(1), work(2));
    let mut boot_ids = Vec::new();
    for (i, out) in [a?, b?, c?].into_iter().enumerate() {
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some(format!("sandbox-{i}").as_str()));
        boot_ids.push(lines.next().unwrap_or_default().to_owned());
    }
    boot_ids.sort();
    boot_ids.dedup();
    assert_eq!(boot_ids.len(), 3, "three separate kernels");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_mode_has_only_loopback() -> TestResult {
    if !enabled("isolated_mode_has_only_loopback") {
        return Ok(());
    }
    let sandbox = TestSandbox::boot(TestSandboxOptions::default()).await?;
    let out = sandbox
        .client()
        .exec_collect(Execute::argv(["ls", "/sys/class/net"]))
        .await?;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["lo"]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destroyed_vm_fails_its_execution_with_a_typed_error() -> TestResult {
    if !enabled("a_destroyed_vm_fails_its_execution_with_a_typed_error") {
        return Ok(());
    }
    let sandbox = TestSandbox::boot(TestSandboxOptions::default()).await?;
    let execution = sandbox
        .client()
        .exec(Execute::argv(["sleep", "600"]))
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    sandbox.vm().destroy().await?;
    let outcome = tokio::time::timeout(Duration::from_secs(30), execution.wait()).await;
    let err = outcome
        .expect("no hang after the VM died")
        .expect_err("the VM is gone");
    assert!(matches!(err, ClientError::ConnectionLost { .. }), "{err:?}");
    assert!(err.should_reconnect());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_that_never_gets_ready_reports_its_console() -> TestResult {
    if !enabled("a_vm_that_never_gets_ready_reports_its_console") {
        return Ok(());
    }
    // No such init: the kernel panics, so no agent ever answers.
    let options = TestSandboxOptions {
        ready_timeout: Duration::from_secs(20),
        cmdline: Some("console=ttyS0 rdinit=/paddock-no-such-init panic=-1".into()),
        ..TestSandboxOptions::default()
    };
    let err = TestSandbox::boot(options)
        .await
        .expect_err("must not become ready");
    let text = format!("{err:#}");
    assert!(text.contains("not ready"), "{text}");
    assert!(text.contains("--- console tail ---"), "{text}");
    assert!(
        text.contains("Kernel panic") || text.contains("Linux version"),
        "{text}"
    );
    Ok(())
}
