//! The client's keepalive against a fake agent that never answers an
//! execution: a request whose agent restarted (it knows no session, or has a
//! new boot id) or hangs ends at once with `ConnectionLost`; one whose agent
//! is alive waits for its answer, however long.
#![cfg(test)]

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use paddock_agent_client::{AgentClient, ClientError, Execute, Transport};
use paddock_proto::{
    ErrorCode, ErrorReport, FrameDecoder, Message, MessageKind, StatusReport, encode_message,
    read_frame,
};
use paddock_tests::{fake_hello_ack, test_config};

type TestResult = anyhow::Result<()>;

/// How the fake answers a keepalive's STATUS.
#[derive(Debug, Clone, Copy)]
enum Status {
    /// As the agent the session began with.
    Alive,
    /// As a new agent that knows no session.
    NoSession,
    /// As a new agent with another boot id.
    Rebooted,
    /// Not at all.
    Hung,
}

const BOOT_ID: &str = "fake-boot";

/// A fake agent that completes HELLO, never answers an EXECUTE, answers
/// STATUS as `status` says, and counts the STATUS requests.
fn fake_agent(
    dir: &std::path::Path,
    status: Status,
) -> anyhow::Result<(std::path::PathBuf, Arc<AtomicU32>)> {
    let path = dir.join("fake.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path)?;
    let asked = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&asked);
    std::thread::spawn(move || -> anyhow::Result<()> {
        let (mut stream, _) = listener.accept()?;
        let mut decoder = FrameDecoder::default();
        let hello = read_frame(&mut stream, &mut decoder)?;
        let ack = fake_hello_ack(BOOT_ID);
        let mut bytes = Vec::new();
        encode_message(&mut bytes, hello.request_id, &ack)?;
        stream.write_all(&bytes)?;
        loop {
            let Ok(frame) = read_frame(&mut stream, &mut decoder) else {
                return Ok(());
            };
            if frame.kind != MessageKind::StatusRequest {
                continue;
            }
            counter.fetch_add(1, Ordering::SeqCst);
            let answer = match status {
                Status::Alive => Message::StatusReport(StatusReport {
                    boot_id: BOOT_ID.into(),
                    ..StatusReport::default()
                }),
                Status::Rebooted => Message::StatusReport(StatusReport {
                    boot_id: "another-boot".into(),
                    ..StatusReport::default()
                }),
                Status::NoSession => {
                    Message::Error(ErrorReport::new(ErrorCode::NotNegotiated, "HELLO first"))
                }
                Status::Hung => continue,
            };
            let mut bytes = Vec::new();
            encode_message(&mut bytes, frame.request_id, &answer)?;
            stream.write_all(&bytes)?;
        }
    });
    Ok((path, asked))
}

async fn client(
    path: std::path::PathBuf,
    keepalive: Option<Duration>,
) -> anyhow::Result<AgentClient> {
    let mut config = test_config();
    config.keepalive_interval = keepalive;
    config.request_timeout = Duration::from_millis(500);
    Ok(AgentClient::connect(Transport::Unix { path }, config).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_ends_at_once_when_its_agent_restarted_or_hangs() -> TestResult {
    for status in [Status::NoSession, Status::Rebooted, Status::Hung] {
        let dir = tempfile::tempdir()?;
        let (path, asked) = fake_agent(dir.path(), status)?;
        let client = client(path, Some(Duration::from_millis(100))).await?;
        let mut request = Execute::shell("sleep 300");
        request.timeout_ms = Some(300_000);
        let execution = client.exec(request).await?;
        let ended = tokio::time::timeout(Duration::from_secs(10), execution.wait())
            .await
            .map_err(|_| anyhow::anyhow!("{status:?}: the execution waited for its own timeout"))?;
        let err = ended.expect_err("no answer can come");
        assert!(
            matches!(err, ClientError::ConnectionLost { .. }) && err.should_reconnect(),
            "{status:?}: {err:?}"
        );
        let why = format!("{:?}", err);
        let expected = match status {
            Status::NoSession => "knows no session",
            Status::Rebooted => "boot id changed",
            _ => "did not answer a keepalive",
        };
        assert!(why.contains(expected), "{status:?}: {why}");
        assert!(asked.load(Ordering::SeqCst) >= 1);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_whose_agent_is_alive_waits_for_its_answer() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (path, asked) = fake_agent(dir.path(), Status::Alive)?;
    let client = client(path, Some(Duration::from_millis(100))).await?;
    let execution = client.exec(Execute::shell("sleep 300")).await?;
    let waited = tokio::time::timeout(Duration::from_secs(2), execution.wait()).await;
    assert!(
        waited.is_err(),
        "the execution is still running: {waited:?}"
    );
    assert!(
        asked.load(Ordering::SeqCst) >= 5,
        "asked {} times in 2 s",
        asked.load(Ordering::SeqCst)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_keepalive_is_sent_when_it_is_off_or_nothing_is_open() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (path, asked) = fake_agent(dir.path(), Status::Alive)?;
    let off = client(path, None).await?;
    let execution = off.exec(Execute::shell("sleep 300")).await?;
    let _ = tokio::time::timeout(Duration::from_millis(600), execution.wait()).await;
    assert_eq!(asked.load(Ordering::SeqCst), 0, "turned off");

    let dir = tempfile::tempdir()?;
    let (path, asked) = fake_agent(dir.path(), Status::Alive)?;
    let _idle = client(path, Some(Duration::from_millis(100))).await?;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(asked.load(Ordering::SeqCst), 0, "nothing open");
    Ok(())
}
