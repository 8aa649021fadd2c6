//! Session identity, reconnection, status and stopping the agent.
#![cfg(test)]

use std::time::Duration;

use paddock_agent_client::{Continuity, Execute};
use paddock_tests::{
    AgentProcess, all_gone, processes_running, start_marked_sleep, unique_marker, wait_until_async,
};

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

/// Starts `trap '' TERM; sleep 100.<marker>` (deaf to SIGTERM, so only
/// SIGKILL ends it) with `kill_grace_ms` and waits until it runs.
async fn start_deaf_sleep(
    client: &paddock_agent_client::AgentClient,
    kill_grace_ms: u64,
) -> anyhow::Result<(paddock_agent_client::Execution, String)> {
    let marker = unique_marker();
    let mut request = Execute::shell(format!("trap '' TERM; sleep 100.{marker}"));
    request.kill_grace_ms = Some(kill_grace_ms);
    let execution = client.exec(request).await?;
    let cmdline = format!("sleep 100.{marker}");
    anyhow::ensure!(
        wait_until_async(Duration::from_secs(5), || {
            processes_running(&cmdline).len() == 1
        })
        .await,
        "`{cmdline}` did not start"
    );
    Ok((execution, marker))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_executions_removes_the_socket_and_exits_0() -> TestResult {
    let mut agent = AgentProcess::start(&["--kill-grace-ms", "300"])?;
    let client = agent.client().await?;
    let (_execution, marker) = start_deaf_sleep(&client, 300).await?;
    agent.signal(libc::SIGTERM)?;
    let status = agent.wait_exit(Duration::from_secs(10));
    assert!(
        status.is_some_and(|status| status.success()),
        "agent after SIGTERM: {status:?}"
    );
    assert!(!agent.socket().exists(), "the socket file was left behind");
    assert!(all_gone(&marker).await, "an execution outlived the agent");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_the_agent_too() -> TestResult {
    let mut agent = AgentProcess::start(&[])?;
    let client = agent.client().await?;
    let (_execution, marker) = start_marked_sleep(&client).await?;
    agent.signal(libc::SIGINT)?;
    let status = agent.wait_exit(Duration::from_secs(10));
    assert!(
        status.is_some_and(|status| status.success()),
        "agent after SIGINT: {status:?}"
    );
    assert!(!agent.socket().exists(), "the socket file was left behind");
    assert!(all_gone(&marker).await, "an execution outlived the agent");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_agent_bounds_a_huge_kill_grace() -> TestResult {
    let mut agent = AgentProcess::start(&[])?;
    let client = agent.client().await?;
    // An hour between SIGTERM and SIGKILL, for a process deaf to SIGTERM.
    let (_execution, marker) = start_deaf_sleep(&client, 3_600_000).await?;
    client.stop_agent().await?;
    let status = agent.wait_exit(Duration::from_secs(30));
    assert!(
        status.is_some_and(|status| status.success()),
        "agent 30 s after STOP: {status:?}"
    );
    assert!(all_gone(&marker).await, "an execution outlived the agent");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_hello_keeps_the_session_and_another_starts_one() -> TestResult {
    use paddock_proto::{Message, Stop, StopScope};
    let agent = AgentProcess::start(&[])?;
    let mut peer = paddock_tests::RawPeer::connect(&agent)?;
    let hello = paddock_proto::Hello {
        session_token: "token-a".into(),
        ..paddock_tests::raw_hello()
    };
    let first = peer.hello_with(1, hello.clone())?;
    let marker = unique_marker();
    let argv = ["sleep".to_owned(), format!("100.{marker}")];
    peer.send(5, &Message::Execute(Execute::argv(argv)))?;
    let cmdline = format!("sleep 100.{marker}");
    assert!(
        wait_until_async(Duration::from_secs(5), || {
            processes_running(&cmdline).len() == 1
        })
        .await
    );

    // The same token again, on another request id: the same session.
    let resent = peer.hello_with(2, hello)?;
    assert_eq!(resent.session_seq, first.session_seq);
    assert_eq!(resent.previous_token, first.previous_token);
    let stop = Message::Stop(Stop {
        scope: StopScope::Execution,
    });
    peer.send(5, &stop)?;
    match peer.recv()? {
        (5, Message::ExecResult(result)) => assert!(result.stopped, "{result:?}"),
        other => panic!("the execution did not survive the resent HELLO: {other:?}"),
    }

    // Another token: a new session, and the execution of the old one ends.
    let marker = unique_marker();
    let argv = ["sleep".to_owned(), format!("100.{marker}")];
    peer.send(6, &Message::Execute(Execute::argv(argv)))?;
    let cmdline = format!("sleep 100.{marker}");
    assert!(
        wait_until_async(Duration::from_secs(5), || {
            processes_running(&cmdline).len() == 1
        })
        .await
    );
    let other = paddock_proto::Hello {
        session_token: "token-b".into(),
        ..paddock_tests::raw_hello()
    };
    let next = peer.hello_with(3, other)?;
    assert_eq!(next.session_seq, first.session_seq + 1);
    assert_eq!(next.previous_token, "token-a");
    assert!(
        all_gone(&marker).await,
        "the old session's execution survived"
    );
    peer.ping(4)?;
    Ok(())
}
