//! A guest reset to an earlier state: the agent answers again, on the same
//! boot, and the guest's later changes are gone.
#![cfg(test)]

use paddock_agent_client::{AgentClient, Continuity, Execute};
use paddock_libvirt::{RestoreMode, SnapshotSpec};
use paddock_tests::vm::{Sandbox, SandboxOptions, enabled};

type TestResult = anyhow::Result<()>;

async fn guest_files(client: &AgentClient) -> anyhow::Result<String> {
    let out = client
        .exec_collect(Execute::shell(
            "ls /tmp/golden /tmp/later 2>/dev/null; true",
        ))
        .await?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_survives_snapshot_revert_and_save_restore() -> TestResult {
    if !enabled("agent_survives_snapshot_revert_and_save_restore") {
        return Ok(());
    }
    let options = SandboxOptions {
        scratch_disk_mib: Some(64),
        ..SandboxOptions::default()
    };
    let sandbox = Sandbox::boot(options).await?;
    let client = sandbox.client();
    client
        .exec_collect(Execute::shell("touch /tmp/golden"))
        .await?;
    let golden = client.session().await.expect("session");

    sandbox
        .vm()
        .create_snapshot(&SnapshotSpec {
            name: "golden".into(),
            description: "test golden state".into(),
            tags: vec!["test".into()],
        })
        .await?;
    // Later sessions and a later change: the guest runs on.
    client.reconnect().await?;
    let latest = client.reconnect().await?;
    assert_eq!(latest.boot_id, golden.boot_id);
    assert_eq!(latest.session_seq, golden.session_seq + 2, "{latest:?}");
    assert_eq!(client.continuity(), Some(Continuity::Continued));
    client
        .exec_collect(Execute::shell("touch /tmp/later"))
        .await?;
    assert_eq!(guest_files(client).await?, "/tmp/golden\n/tmp/later");

    // Revert: same QEMU process, memory back to the snapshot: the same boot,
    // the later change gone, and the agent's memory of sessions is the
    // golden one's, so the host can tell that the guest was restored.
    sandbox.vm().revert_to_snapshot("golden").await?;
    let reverted = client.reconnect().await?;
    assert_eq!(reverted.boot_id, golden.boot_id, "same boot");
    assert_eq!(reverted.session_seq, golden.session_seq + 1);
    assert_eq!(client.continuity(), Some(Continuity::Restored));
    assert_eq!(guest_files(client).await?, "/tmp/golden");

    // Save to a file and restore: a new QEMU process, and the host reconnects
    // to the channel. The guest continues exactly where it was saved.
    client
        .exec_collect(Execute::shell("touch /tmp/later"))
        .await?;
    let before_save = client.reconnect().await?;
    let image = sandbox.dir().join("saved.img");
    sandbox.vm().save(&image).await?;
    sandbox
        .libvirt()
        .restore(&image, None, RestoreMode::Running)
        .await?;
    let restored = client.reconnect().await?;
    assert_eq!(restored.boot_id, golden.boot_id);
    assert_eq!(restored.session_seq, before_save.session_seq + 1);
    // Saved after `before_save` began, so the guest follows on from it.
    assert_eq!(client.continuity(), Some(Continuity::Continued));
    assert!(
        restored.uptime_ms >= before_save.uptime_ms,
        "continues where it was saved"
    );
    assert_eq!(guest_files(client).await?, "/tmp/golden\n/tmp/later");
    let out = client
        .exec_collect(Execute::argv(["echo", "alive"]))
        .await?;
    assert_eq!(out.stdout, b"alive\n");

    // The same saved image once more, as a pool resets a slot: the guest is
    // back at the save, behind the session just used, and the host sees it.
    client.exec_collect(Execute::shell("rm /tmp/later")).await?;
    sandbox.vm().destroy().await?;
    sandbox
        .libvirt()
        .restore(&image, None, RestoreMode::Running)
        .await?;
    let again = client.reconnect().await?;
    assert_eq!(again.boot_id, golden.boot_id);
    assert_eq!(client.continuity(), Some(Continuity::Restored));
    assert_eq!(guest_files(client).await?, "/tmp/golden\n/tmp/later");
    Ok(())
}
