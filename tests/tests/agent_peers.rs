//! Misbehaving peers on both sides: raw garbage sent to the real agent, and a
//! fake agent that sends corrupt frames to the client (fault injection).
#![cfg(test)]

use std::io::{Read as _, Write as _};
use std::time::Duration;

use paddock_agent_client::{AgentClient, ClientConfig, ClientError, ErrorCode, Transport};
use paddock_events::{EventKind, ExecOutcome};
use paddock_proto::{
    DEFAULT_MAX_PAYLOAD, FrameDecoder, Hello, Message, MessageKind, PROTOCOL_VERSION, encode_frame,
    encode_message, read_frame,
};
use paddock_tests::{AgentProcess, EventRecorder, RawPeer, fake_hello_ack, test_config};

type TestResult = anyhow::Result<()>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_answers_garbage_with_typed_errors_and_keeps_serving() -> TestResult {
    let agent = AgentProcess::start(&[])?;
    // A well-behaved client stays connected throughout.
    let client = agent.client().await?;

    let mut peer = RawPeer::connect(&agent)?;
    peer.send(5, &Message::StatusRequest)?;
    assert_eq!(peer.expect_error(ErrorCode::NotNegotiated)?, 5);
    peer.hello()?;

    // Corrupt CRC.
    let mut bytes = Vec::new();
    encode_frame(&mut bytes, MessageKind::Ping, 10, b"")?;
    bytes[24] ^= 0xff;
    peer.stream().write_all(&bytes)?;
    peer.expect_error(ErrorCode::BadFrame)?;
    peer.ping(11)?;

    // Oversized length: rejected from the header alone.
    let mut bytes = Vec::new();
    encode_frame(&mut bytes, MessageKind::Stdin, 12, b"")?;
    bytes[20..24].copy_from_slice(&(DEFAULT_MAX_PAYLOAD + 1).to_le_bytes());
    peer.stream().write_all(&bytes)?;
    peer.expect_error(ErrorCode::BadFrame)?;
    peer.ping(13)?;

    // Unknown kind, well formed: answered on its own request id.
    let mut bytes = Vec::new();
    encode_frame(&mut bytes, MessageKind::Ping, 14, b"")?;
    bytes[6..8].copy_from_slice(&999u16.to_le_bytes());
    let crc = crc32fast::hash(&bytes[..24]);
    bytes[24..28].copy_from_slice(&crc.to_le_bytes());
    peer.stream().write_all(&bytes)?;
    assert_eq!(peer.expect_error(ErrorCode::UnknownKind)?, 14);

    // A kind only the agent sends, for no open request: answered on id 0.
    peer.send(15, &Message::Stdout(b"x".to_vec()))?;
    assert_eq!(peer.expect_error(ErrorCode::UnknownKind)?, 0);

    // Valid frame, invalid JSON.
    let mut bytes = Vec::new();
    encode_frame(&mut bytes, MessageKind::Execute, 16, b"{\"command\": 42}")?;
    peer.stream().write_all(&bytes)?;
    assert_eq!(peer.expect_error(ErrorCode::BadPayload)?, 16);

    // Request id reuse and id 0.
    peer.send(0, &Message::StatusRequest)?;
    peer.expect_error(ErrorCode::DuplicateRequest)?;

    // Data for a request that does not exist: answered on id 0, so that it
    // can never be taken for the answer of a request that reuses the id.
    peer.send(17, &Message::Stdin(b"x".to_vec()))?;
    assert_eq!(peer.expect_error(ErrorCode::UnknownRequest)?, 0);

    // Random garbage, then a valid ping still works on the same stream.
    peer.stream()
        .write_all(b"this is not a frame at all, not even close")?;
    peer.expect_error(ErrorCode::BadFrame)?;
    peer.ping(18)?;

    // Truncated frame, then hang up mid-frame.
    let mut bytes = Vec::new();
    encode_message(&mut bytes, 19, &Message::Stdout(vec![7; 1000]))?;
    peer.stream().write_all(&bytes[..500])?;
    drop(peer);

    // The agent still serves new and existing connections.
    let mut fresh = RawPeer::connect(&agent)?;
    fresh.hello()?;
    fresh.ping(1_000)?;
    client.ping().await?;
    let out = client
        .exec_collect(paddock_agent_client::Execute::argv(["echo", "alive"]))
        .await?;
    assert_eq!(out.stdout, b"alive\n");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_version_is_refused() -> TestResult {
    let agent = AgentProcess::start(&[])?;
    let mut peer = RawPeer::connect(&agent)?;
    peer.send(
        1,
        &Message::Hello(Hello {
            min_version: PROTOCOL_VERSION + 10,
            max_version: PROTOCOL_VERSION + 20,
            client: "future".into(),
            max_payload: DEFAULT_MAX_PAYLOAD,
            initial_window: 1 << 16,
            session_token: String::new(),
            host_time_unix_ms: 0,
        }),
    )?;
    peer.expect_error(ErrorCode::UnsupportedVersion)?;
    Ok(())
}

/// A fake agent: completes HELLO like a real one, then answers the first
/// request with whatever `reply` produces.
fn fake_agent(
    dir: &std::path::Path,
    reply: impl FnOnce(u64) -> Vec<u8> + Send + 'static,
) -> anyhow::Result<std::path::PathBuf> {
    let path = dir.join("fake.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path)?;
    std::thread::spawn(move || -> anyhow::Result<()> {
        let (mut stream, _) = listener.accept()?;
        let mut decoder = FrameDecoder::default();
        let hello = read_frame(&mut stream, &mut decoder)?;
        let mut bytes = Vec::new();
        encode_message(&mut bytes, hello.request_id, &fake_hello_ack("fake-boot"))?;
        stream.write_all(&bytes)?;
        let request = read_frame(&mut stream, &mut decoder)?;
        stream.write_all(&reply(request.request_id))?;
        // Keep the socket open so only the corrupt bytes can end the session.
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).map(|n| n > 0).unwrap_or(false) {}
        Ok(())
    });
    Ok(path)
}

/// What a virtio-serial stream can hold before a restored agent answers a
/// new host: ERRORs about frames of an earlier session. None answers this
/// HELLO, so the handshake skips them; a real refusal still ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_errors_before_hello_ack_are_skipped_and_a_refusal_is_not() -> TestResult {
    let dir = tempfile::tempdir()?;
    let stale = |hello_id: u64| {
        let mut bytes = Vec::new();
        for (id, code) in [
            (0, ErrorCode::NotNegotiated),
            (hello_id, ErrorCode::NotNegotiated),
            (0, ErrorCode::BadFrame),
            (hello_id + 7, ErrorCode::UnknownRequest),
        ] {
            let report = paddock_proto::ErrorReport::new(code, "from an earlier session");
            encode_message(&mut bytes, id, &Message::Error(report)).expect("encode");
        }
        bytes
    };
    let path = fake_agent_with_prelude(dir.path(), "stale.sock", stale, true)?;
    let client = AgentClient::connect(Transport::Unix { path }, test_config()).await?;
    assert_eq!(
        client.session().await.map(|s| s.boot_id).as_deref(),
        Some("fake-boot")
    );

    let refusal = |hello_id: u64| {
        let mut bytes = Vec::new();
        let report = paddock_proto::ErrorReport::new(ErrorCode::InvalidArgument, "token too long");
        encode_message(&mut bytes, hello_id, &Message::Error(report)).expect("encode");
        bytes
    };
    let path = fake_agent_with_prelude(dir.path(), "refusing.sock", refusal, false)?;
    let err = AgentClient::connect(Transport::Unix { path }, test_config())
        .await
        .expect_err("refused HELLO");
    assert!(
        matches!(
            err,
            ClientError::Agent {
                code: ErrorCode::InvalidArgument,
                ..
            }
        ),
        "{err:?}"
    );
    Ok(())
}

/// A fake agent that answers the first HELLO with `prelude(hello id)`,
/// then (if `ack`) HELLO_ACK, and keeps the socket open.
fn fake_agent_with_prelude(
    dir: &std::path::Path,
    name: &str,
    prelude: impl FnOnce(u64) -> Vec<u8> + Send + 'static,
    ack: bool,
) -> anyhow::Result<std::path::PathBuf> {
    let path = dir.join(name);
    let listener = std::os::unix::net::UnixListener::bind(&path)?;
    std::thread::spawn(move || -> anyhow::Result<()> {
        let (mut stream, _) = listener.accept()?;
        let mut decoder = FrameDecoder::default();
        let hello = read_frame(&mut stream, &mut decoder)?;
        let mut bytes = prelude(hello.request_id);
        if ack {
            encode_message(&mut bytes, hello.request_id, &fake_hello_ack("fake-boot"))?;
        }
        stream.write_all(&bytes)?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).map(|n| n > 0).unwrap_or(false) {}
        Ok(())
    });
    Ok(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_rejects_a_corrupt_agent() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = fake_agent(dir.path(), |id| {
        let mut bytes = Vec::new();
        encode_message(&mut bytes, id, &Message::Pong).expect("encode");
        bytes[26] ^= 0x55; // CRC
        bytes
    })?;
    let (_hub, recorder, events) = EventRecorder::start("peers", 4);
    let config = ClientConfig {
        events,
        ..test_config()
    };
    let client = AgentClient::connect(Transport::Unix { path }, config).await?;
    let err = client.ping().await.expect_err("corrupt PONG");
    assert!(matches!(err, ClientError::Frame(_)), "{err:?}");
    assert!(err.should_reconnect());
    // A guest that sends bad frames is reported, with its slot.
    let reported: Vec<_> = recorder
        .take()
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::ProtocolError { kind } => Some((kind, e.source.slot)),
            _ => None,
        })
        .collect();
    assert_eq!(reported, [("crc", Some(4))]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_rejects_an_agent_that_overruns_its_window() -> TestResult {
    let dir = tempfile::tempdir()?;
    let window = test_config().window as usize;
    let path = fake_agent(dir.path(), move |id| {
        let mut bytes = Vec::new();
        // One byte more than the client granted, in max-size frames.
        let mut left = window + 1;
        while left > 0 {
            let n = left.min(60_000);
            encode_message(&mut bytes, id, &Message::Stdout(vec![b'x'; n])).expect("encode");
            left -= n;
        }
        bytes
    })?;
    let (_hub, recorder, events) = EventRecorder::start("peers", 5);
    let config = ClientConfig {
        events,
        ..test_config()
    };
    let client = AgentClient::connect(Transport::Unix { path }, config).await?;
    let mut execution = client
        .exec(paddock_agent_client::Execute::argv(["yes"]))
        .await?;
    // Held and never read: the client must not return credit for it.
    let _stdout = execution.take_stdout();
    let err = execution.wait().await.expect_err("overrun");
    assert!(matches!(err, ClientError::FlowControl(_)), "{err:?}");
    assert!(err.should_reconnect());
    let names: Vec<_> = recorder
        .take()
        .into_iter()
        .map(|e| match e.kind {
            EventKind::ProtocolError { kind } => kind,
            EventKind::ExecFinished { outcome, error, .. } => {
                assert_eq!(outcome, ExecOutcome::Error);
                assert_eq!(error, Some("flow_control"));
                "exec_finished"
            }
            other => other.name(),
        })
        .collect();
    assert_eq!(names, ["exec_started", "window_overrun", "exec_finished"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_times_out_on_a_silent_agent() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = fake_agent(dir.path(), |_| Vec::new())?;
    let mut config = test_config();
    config.request_timeout = Duration::from_millis(300);
    let client = AgentClient::connect(Transport::Unix { path }, config).await?;
    let err = client.status().await.expect_err("no answer");
    assert!(matches!(err, ClientError::Timeout { .. }), "{err:?}");
    assert!(err.is_retryable() && !err.should_reconnect());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_gives_up_at_its_deadline() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut config = test_config();
    config.connect_timeout = Duration::from_millis(300);
    let started = std::time::Instant::now();
    let err = AgentClient::connect(
        Transport::Unix {
            path: dir.path().join("nobody"),
        },
        config,
    )
    .await
    .expect_err("nobody listens");
    let ClientError::Connect { attempts, .. } = &err else {
        panic!("expected a connect error, got {err:?}");
    };
    assert!(*attempts > 1, "backoff should retry");
    assert!(started.elapsed() < Duration::from_secs(5));
    Ok(())
}

/// A guest's agent that ignores the caps it was asked for: what the host
/// collects is still held to them, and the result says it was truncated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collected_output_is_held_to_its_cap_on_the_host_too() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = fake_agent(dir.path(), |id| {
        let mut bytes = Vec::new();
        encode_message(&mut bytes, id, &Message::Stdout(vec![b'o'; 5000])).expect("encode");
        encode_message(&mut bytes, id, &Message::Stderr(vec![b'e'; 300])).expect("encode");
        // It claims it sent everything and truncated nothing.
        let result = paddock_proto::ExecResult {
            exit_code: Some(0),
            stdout_bytes: 5000,
            stderr_bytes: 300,
            ..paddock_proto::ExecResult::default()
        };
        encode_message(&mut bytes, id, &Message::ExecResult(result)).expect("encode");
        bytes
    })?;
    let client = AgentClient::connect(Transport::Unix { path }, test_config()).await?;
    let mut request = paddock_agent_client::Execute::argv(["yes"]);
    request.stdout_cap = Some(100);
    request.stderr_cap = Some(1000);
    let out = client.exec_collect(request).await?;
    assert_eq!(out.stdout, vec![b'o'; 100]);
    assert!(out.result.stdout_truncated, "{:?}", out.result);
    assert_eq!(out.stderr, vec![b'e'; 300], "within its cap: whole");
    assert!(!out.result.stderr_truncated, "{:?}", out.result);
    Ok(())
}
