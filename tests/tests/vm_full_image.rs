//! The full image: a Debian root file system on a disk, for real agent work.
#![cfg(test)]

use paddock_agent_client::Execute;
use paddock_tests::vm::{
    TestSandbox, TestSandboxOptions, assert_escaped_processes_end_with_their_execution, enabled,
    full_image,
};

type TestResult = anyhow::Result<()>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_git_and_curl_run_in_the_full_image() -> TestResult {
    if !enabled("python_git_and_curl_run_in_the_full_image") {
        return Ok(());
    }
    let sandbox = TestSandbox::boot(TestSandboxOptions {
        image: Some(full_image()?),
        memory_mib: 512,
        ..TestSandboxOptions::default()
    })
    .await?;
    eprintln!(
        "full image: boot to agent ready {:?}",
        sandbox.boot_to_ready()
    );
    let client = sandbox.client();

    let out = client
        .exec_collect(Execute::argv(["python3", "-c", "print(6*7)"]))
        .await?;
    assert_eq!(
        (out.result.exit_code, out.stdout.as_slice()),
        (Some(0), b"42\n".as_slice()),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The root is the disk, writable, with Debian's userland on it.
    let out = client
        .exec_collect(Execute::shell(
            "git --version && curl --version | head -n 1 && \
             awk '$2 == \"/\" {print $1, $3}' /proc/mounts && \
             . /etc/os-release && echo $ID && touch /root/written",
        ))
        .await?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.result.exit_code,
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("git version 2."), "{text}");
    assert!(lines[1].starts_with("curl 7."), "{text}");
    assert_eq!(lines[2], "/dev/vda ext4", "{text}");
    assert_eq!(lines[3], "debian", "{text}");
    assert_escaped_processes_end_with_their_execution(&sandbox).await?;
    sandbox.destroy().await?;
    Ok(())
}
