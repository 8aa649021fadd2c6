//! Session identity, reconnection, status and stopping the agent.
#![cfg(test)]

use std::time::Duration;

use paddock_agent_client::{Continuity, Execute};
use paddock_tests::{AgentProcess, processes_running, unique_marker, wait_until_async};

type TestResult = anyhow::Result<()>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_identify_the_agent_boot() -> TestResult {
    let agent = AgentProcess::start(&[])?;
    let client = agent.client().await?;
    let first = client.session().await.expect("session");
    assert_eq!(first.version, paddock_proto::PROTOCOL_VERSION);
    assert!(!first.boot_id.is_empty());
    assert_eq!(first.previous_token, "");
    assert_eq!(client.continuity(), Some(Continuity::First));

    // Same agent, new session: same boot id, the next sequence number, and
    // the agent remembers this client's previous session.
    let second = client.reconnect().await?;
    assert_eq!(second.boot_id, first.boot_id);
    assert_eq!(second.session_seq, first.session_seq + 1);
    assert_ne!(second.previous_token, "");
    assert_eq!(client.continuity(), Some(Continuity::Continued));

    // Another host's session in between: to this client the guest's memory
    // no longer follows on from its own last session.
    let other = agent.client().await?;
    assert_eq!(other.continuity(), Some(Continuity::First));
    client.reconnect().await?;
    assert_eq!(client.continuity(), Some(Continuity::Restored));
    drop(other);

    // A restarted agent (a rebooted guest) has a new boot id; the client
    // reconnects on its next call by itself.
    let agent = agent.restart(&[])?;
    let out = client
        .exec_collect(Execute::argv(["echo", "again"]))
        .await?;
    assert_eq!(out.stdout, b"again\n");
    let third = client.session().await.expect("session");
    assert_ne!(third.boot_id, first.boot_id);
    assert_eq!(client.continuity(), Some(Continuity::Rebooted));
    drop(agent);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_the_guest() -> TestResult {
    let agent = AgentProcess::start(&[])?;
    let client = agent.client().await?;
    let marker = unique_marker();
    let execution = client
        .exec(Execute::argv(["sleep".to_owned(), format!("5.{marker}")]))
        .await?;
    assert!(
        wait_until_async(Duration::from_secs(5), || {
            !processes_running(&format!("sleep 5.{marker}")).is_empty()
        })
        .await
    );
    let status = client.status().await?;
    assert!(status.mem_total_bytes > 0 && status.mem_available_bytes <= status.mem_total_bytes);
    assert!(status.disk_total_bytes > 0);
    assert!(status.system_uptime_s > 0.0);
    assert_eq!(status.running_executions, 1);
    assert_eq!(
        status.boot_id,
        client.session().await.expect("session").boot_id
    );
    assert!(!status.agent_version.is_empty());
    execution.stop()?;
    assert!(execution.wait().await?.stopped);
    assert!(client.ping().await? < Duration::from_secs(5));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_agent_ends_the_process() -> TestResult {
    let mut agent = AgentProcess::start(&[])?;
    let client = agent.client().await?;
    client.stop_agent().await?;
    let mut exited = false;
    for _ in 0..500 {
        if agent.has_exited() {
            exited = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(exited, "agent still running after STOP");
    assert!(
        !wait_until_async(Duration::from_millis(50), || agent.socket().exists()
            && std::os::unix::net::UnixStream::connect(agent.socket()).is_ok())
        .await
    );
    Ok(())
}
