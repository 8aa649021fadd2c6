//! A guest reset to an earlier state: the agent answers again, on the same
//! boot, and the guest's later changes are gone.
#![cfg(test)]

use paddock_agent_client::{AgentClient, Continuity, Execute, Transport};
use paddock_libvirt::{AgentChannel, RestoreMode, SnapshotSpec, Uuid};
use paddock_tests::vm::{DomainGuard, TestSandbox, TestSandboxOptions, domain_dir, enabled};
use paddock_tests::{test_config, unique_marker};

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
    let options = TestSandboxOptions {
        scratch_disk_mib: Some(64),
        ..TestSandboxOptions::default()
    };
    let sandbox = TestSandbox::boot(options).await?;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_saved_image_becomes_many_domains() -> TestResult {
    if !enabled("one_saved_image_becomes_many_domains") {
        return Ok(());
    }
    let sandbox = TestSandbox::boot(TestSandboxOptions::default()).await?;
    let client = sandbox.client();
    client
        .exec_collect(Execute::shell("echo golden > /tmp/state"))
        .await?;
    let golden_session = client.session().await.expect("session");
    let golden = sandbox.dir().join("golden.img");
    sandbox.vm().save(&golden).await?;

    // Two domains from the one image, each with its own name, UUID, socket
    // and console log, running side by side.
    let mut slots = Vec::new();
    for slot in 0..2 {
        let name = format!("paddock-test-{}", unique_marker());
        let dir = domain_dir(&name)?;
        let guard = DomainGuard {
            name: name.clone(),
            dir: dir.clone(),
        };
        let mut spec = sandbox.spec().clone();
        spec.name = name;
        spec.uuid = Uuid::new_v4();
        spec.metadata.role = paddock_libvirt::DomainRole::Slot(slot);
        spec.console_log = dir.join("console.log");
        if let AgentChannel::VirtioSerial { socket, .. } = &mut spec.channel {
            *socket = dir.join("agent.sock");
        }
        let vm = sandbox
            .libvirt()
            .restore_derived(&golden, &spec, &dir.join("slot.img"), RestoreMode::Running)
            .await?;
        assert_eq!(vm.name(), spec.name);
        let slot_client = AgentClient::connect(
            Transport::VirtioSerial {
                path: dir.join("agent.sock"),
            },
            test_config(),
        )
        .await?;
        let session = slot_client.session().await.expect("session");
        assert_eq!(
            session.boot_id, golden_session.boot_id,
            "the golden's guest"
        );
        slots.push((guard, slot_client));
    }
    for (slot, (_, slot_client)) in slots.iter().enumerate() {
        let out = slot_client
            .exec_collect(Execute::shell(format!(
                "cat /tmp/state; echo slot-{slot} > /tmp/state"
            )))
            .await?;
        assert_eq!(out.stdout, b"golden\n", "every slot starts from the golden");
    }
    for (slot, (_, slot_client)) in slots.iter().enumerate() {
        let out = slot_client
            .exec_collect(Execute::argv(["cat", "/tmp/state"]))
            .await?;
        assert_eq!(
            out.stdout,
            format!("slot-{slot}\n").as_bytes(),
            "separate guests"
        );
    }
    Ok(())
}
