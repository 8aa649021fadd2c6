//! What the protocol's documentation promises a client written from it
//! alone, checked against the real agent frame by frame: request ids and
//! slots, the HELLO rules, `null` and absent fields, and the edge values of
//! EXECUTE and SIGNAL.
#![cfg(test)]

use std::io::Write as _;
use std::time::Duration;

use paddock_agent_client::ErrorCode;
use paddock_proto::{Execute, Hello, Message, MessageKind, SignalRequest, encode_frame};
use paddock_tests::{
    AgentProcess, RawPeer, processes_running, raw_hello, unique_marker, wait_until,
};

type TestResult = anyhow::Result<()>;

/// Sends a frame of `kind` whose JSON payload is `json`, as written.
fn send_json(peer: &mut RawPeer, kind: MessageKind, id: u64, json: &str) -> anyhow::Result<()> {
    let mut bytes = Vec::new();
    encode_frame(&mut bytes, kind, id, json.as_bytes())?;
    peer.stream().write_all(&bytes)?;
    Ok(())
}

/// Reads frames of request `id` until its last one, returning credit for
/// output; the output and that last frame.
fn finish(peer: &mut RawPeer, id: u64) -> anyhow::Result<(Vec<u8>, Message)> {
    let mut stdout = Vec::new();
    loop {
        match peer.recv()? {
            (got, Message::Stdout(data)) if got == id => {
                let credit = u32::try_from(data.len())?;
                peer.send(id, &Message::WindowUpdate(credit))?;
                stdout.extend(data);
            }
            (got, Message::Stderr(data)) if got == id => {
                let credit = u32::try_from(data.len())?;
                peer.send(id, &Message::WindowUpdate(credit))?;
            }
            (got, Message::WindowUpdate(_)) if got == id => {}
            (got, last) if got == id => return Ok((stdout, last)),
            other => anyhow::bail!("a frame of another request: {other:?}"),
        }
    }
}

fn error_code(message: &Message) -> Option<ErrorCode> {
    match message {
        Message::Error(report) => Some(report.code),
        _ => None,
    }
}

/// Starts `sleep 100.<marker>` as request `id` and waits until it runs.
fn start_sleep(peer: &mut RawPeer, id: u64) -> anyhow::Result<String> {
    let marker = unique_marker();
    let argv = ["sleep".to_owned(), format!("100.{marker}")];
    peer.send(id, &Message::Execute(Execute::argv(argv)))?;
    let cmdline = format!("sleep 100.{marker}");
    anyhow::ensure!(
        wait_until(Duration::from_secs(5), || processes_running(&cmdline).len()
            == 1),
        "`{cmdline}` did not start"
    );
    Ok(marker)
}

fn stop_execution(peer: &mut RawPeer, id: u64) -> anyhow::Result<Message> {
    let stop = Message::Stop(paddock_proto::Stop {
        scope: paddock_proto::StopScope::Execution,
    });
    peer.send(id, &stop)?;
    Ok(finish(peer, id)?.1)
}

#[test]
fn hello_ping_and_stop_answer_on_their_id_and_take_no_slot() -> TestResult {
    let agent = AgentProcess::start(&["--max-requests", "1"])?;
    let mut peer = RawPeer::connect(&agent)?;
    // PING is answered before HELLO, on any id, 0 included.
    peer.ping(0)?;
    // HELLO's answer carries HELLO's id, whatever it is.
    peer.hello_with(0, raw_hello())?;
    peer.hello_with(0xdead_beef, raw_hello())?;
    // The one request slot is taken by an execution...
    let marker = start_sleep(&mut peer, 0xdead_beef)?;
    // ... and PING still answers: it takes none.
    peer.ping(0xdead_beef + 1)?;
    // STATUS_REQUEST takes a slot: refused while the execution runs.
    peer.send(9, &Message::StatusRequest)?;
    assert_eq!(peer.expect_error(ErrorCode::TooManyRequests)?, 9);
    let last = stop_execution(&mut peer, 0xdead_beef)?;
    assert!(
        matches!(last, Message::ExecResult(ref r) if r.stopped),
        "{last:?}"
    );
    assert!(wait_until(Duration::from_secs(5), || marker_cmd(&marker).is_empty()));
    peer.send(9, &Message::StatusRequest)?;
    assert!(matches!(peer.recv()?, (9, Message::StatusReport(_))));
    Ok(())
}

fn marker_cmd(marker: &str) -> Vec<u32> {
    paddock_tests::processes_matching(marker)
}

#[test]
fn a_refused_hello_leaves_the_session_as_it_was() -> TestResult {
    let agent = AgentProcess::start(&[])?;
    let mut peer = RawPeer::connect(&agent)?;
    peer.hello()?;
    start_sleep(&mut peer, 5)?;
    // The host's max_payload must be at least 4096.
    let small = Hello {
        max_payload: 4095,
        ..raw_hello()
    };
    peer.send(2, &Message::Hello(small))?;
    assert_eq!(peer.expect_error(ErrorCode::InvalidArgument)?, 2);
    // A token longer than 256 bytes is refused too.
    let long_token = Hello {
        session_token: "t".repeat(paddock_proto::MAX_SESSION_TOKEN_LEN + 1),
        ..raw_hello()
    };
    peer.send(4, &Message::Hello(long_token))?;
    assert_eq!(peer.expect_error(ErrorCode::InvalidArgument)?, 4);
    let last = stop_execution(&mut peer, 5)?;
    assert!(
        matches!(last, Message::ExecResult(ref r) if r.stopped),
        "the session did not survive a refused HELLO: {last:?}"
    );
    let exact = Hello {
        max_payload: 4096,
        ..raw_hello()
    };
    peer.hello_with(3, exact)?;
    Ok(())
}

#[test]
fn null_and_absent_fields_mean_their_default() -> TestResult {
    let agent = AgentProcess::start(&[])?;
    let mut peer = RawPeer::connect(&agent)?;
    peer.hello()?;
    let every_option_null = r#"{"command": {"shell": "echo ran"}, "env": null,
        "clear_env": null, "cwd": null, "timeout_ms": null, "stdout_cap": null,
        "stderr_cap": null, "stdin": null, "kill_grace_ms": null}"#;
    send_json(&mut peer, MessageKind::Execute, 1, every_option_null)?;
    let (stdout, last) = finish(&mut peer, 1)?;
    assert!(
        matches!(last, Message::ExecResult(ref r) if r.exit_code == Some(0)),
        "{last:?}"
    );
    assert_eq!(stdout, b"ran\n");

    let minimal = r#"{"command": {"argv": ["true"]}}"#;
    send_json(&mut peer, MessageKind::Execute, 2, minimal)?;
    let (_, last) = finish(&mut peer, 2)?;
    assert!(
        matches!(last, Message::ExecResult(ref r) if r.exit_code == Some(0)),
        "{last:?}"
    );

    let path = agent.dir().join("put-with-nulls");
    let put = format!(
        r#"{{"path": {}, "mode": null, "create_parents": null}}"#,
        serde_json::to_string(&path.display().to_string())?
    );
    send_json(&mut peer, MessageKind::FilePut, 3, &put)?;
    send_json(
        &mut peer,
        MessageKind::FileEnd,
        3,
        r#"{"size": 0, "crc32": 0}"#,
    )?;
    let (_, last) = finish(&mut peer, 3)?;
    assert!(matches!(last, Message::FileDone(_)), "{last:?}");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&path)?.permissions().mode() & 0o7777,
        0o644
    );

    // A required field is required: null is not a command.
    send_json(&mut peer, MessageKind::Execute, 4, r#"{"command": null}"#)?;
    assert_eq!(peer.expect_error(ErrorCode::BadPayload)?, 4);
    Ok(())
}

#[test]
fn edge_values_of_execute_are_defined() -> TestResult {
    let agent = AgentProcess::start(&[])?;
    let mut peer = RawPeer::connect(&agent)?;
    peer.hello()?;

    // timeout_ms 0 is refused: absent (or null) is "no limit".
    let mut execute = Execute::argv(["true"]);
    execute.timeout_ms = Some(0);
    peer.send(1, &Message::Execute(execute))?;
    let (_, last) = finish(&mut peer, 1)?;
    assert_eq!(
        error_code(&last),
        Some(ErrorCode::InvalidArgument),
        "{last:?}"
    );

    // stdout_cap 0 forwards nothing and counts everything.
    let mut execute = Execute::shell("echo hidden; echo shown >&2");
    execute.stdout_cap = Some(0);
    peer.send(2, &Message::Execute(execute))?;
    let (stdout, last) = finish(&mut peer, 2)?;
    assert!(stdout.is_empty());
    match last {
        Message::ExecResult(result) => {
            assert_eq!(result.stdout_bytes, 7);
            assert!(result.stdout_truncated && !result.stderr_truncated);
            assert_eq!(result.stderr_bytes, 6);
        }
        other => panic!("expected RESULT, got {other:?}"),
    }

    // A program that does not exist, and one that is not executable.
    peer.send(
        3,
        &Message::Execute(Execute::argv(["paddock-no-such-program"])),
    )?;
    let (_, last) = finish(&mut peer, 3)?;
    assert_eq!(error_code(&last), Some(ErrorCode::NotFound), "{last:?}");
    let plain = agent.dir().join("not-executable");
    std::fs::write(&plain, b"#!/bin/sh\n")?;
    peer.send(
        4,
        &Message::Execute(Execute::argv([plain.display().to_string()])),
    )?;
    let (_, last) = finish(&mut peer, 4)?;
    assert_eq!(error_code(&last), Some(ErrorCode::SpawnFailed), "{last:?}");
    // A working directory that does not exist.
    let mut execute = Execute::argv(["true"]);
    execute.cwd = Some(agent.dir().join("no-such-dir").display().to_string());
    peer.send(5, &Message::Execute(execute))?;
    let (_, last) = finish(&mut peer, 5)?;
    assert_eq!(error_code(&last), Some(ErrorCode::NotFound), "{last:?}");
    // A working directory that is a file, or holds a NUL byte.
    for (id, cwd) in [
        (51, plain.display().to_string()),
        (52, format!("{}\0x", agent.dir().display())),
    ] {
        let mut execute = Execute::argv(["true"]);
        execute.cwd = Some(cwd);
        peer.send(id, &Message::Execute(execute))?;
        let (_, last) = finish(&mut peer, id)?;
        assert_eq!(
            error_code(&last),
            Some(ErrorCode::InvalidArgument),
            "{last:?}"
        );
    }
    // The shell form runs the shell, which reports a missing program itself.
    peer.send(
        6,
        &Message::Execute(Execute::shell("paddock-no-such-program")),
    )?;
    let (_, last) = finish(&mut peer, 6)?;
    assert!(
        matches!(last, Message::ExecResult(ref r) if r.exit_code == Some(127)),
        "{last:?}"
    );
    // A NUL byte cannot be passed to a program.
    peer.send(7, &Message::Execute(Execute::argv(["echo", "a\0b"])))?;
    let (_, last) = finish(&mut peer, 7)?;
    assert_eq!(
        error_code(&last),
        Some(ErrorCode::InvalidArgument),
        "{last:?}"
    );
    // An empty argv.
    send_json(
        &mut peer,
        MessageKind::Execute,
        8,
        r#"{"command": {"argv": []}}"#,
    )?;
    let (_, last) = finish(&mut peer, 8)?;
    assert_eq!(
        error_code(&last),
        Some(ErrorCode::InvalidArgument),
        "{last:?}"
    );
    Ok(())
}

#[test]
fn signal_numbers_outside_1_to_64_end_the_execution() -> TestResult {
    let agent = AgentProcess::start(&["--kill-grace-ms", "300"])?;
    let mut peer = RawPeer::connect(&agent)?;
    peer.hello()?;
    for (id, signal) in [(1, 0), (2, 65), (3, -15), (4, i32::MAX)] {
        let marker = start_sleep(&mut peer, id)?;
        peer.send(id, &Message::Signal(SignalRequest { signal }))?;
        let (_, last) = finish(&mut peer, id)?;
        assert_eq!(
            error_code(&last),
            Some(ErrorCode::InvalidArgument),
            "SIGNAL {signal}: {last:?}"
        );
        assert!(
            wait_until(Duration::from_secs(5), || marker_cmd(&marker).is_empty()),
            "the execution survived SIGNAL {signal}"
        );
    }
    // A valid one is delivered and not answered; its effect is in RESULT.
    start_sleep(&mut peer, 5)?;
    peer.send(5, &Message::Signal(SignalRequest { signal: 64 }))?;
    let (_, last) = finish(&mut peer, 5)?;
    assert!(
        matches!(last, Message::ExecResult(ref r) if r.signal == Some(64)),
        "{last:?}"
    );
    Ok(())
}

#[test]
fn frames_for_no_open_request_are_answered_on_id_0() -> TestResult {
    let agent = AgentProcess::start(&[])?;
    let mut peer = RawPeer::connect(&agent)?;
    peer.hello()?;
    // Frames that belong to a request answer on id 0 when it is not open,
    // so that they never follow a request's last frame on its id.
    for (id, message) in [
        (17, Message::Stdin(b"x".to_vec())),
        (18, Message::StdinClose),
        (19, Message::Signal(SignalRequest { signal: 15 })),
        (20, Message::FileData(b"x".to_vec())),
        (21, Message::Stdout(b"x".to_vec())),
    ] {
        peer.send(id, &message)?;
        match peer.recv()? {
            (0, Message::Error(report)) => {
                assert!(
                    matches!(
                        report.code,
                        ErrorCode::UnknownRequest | ErrorCode::UnknownKind
                    ),
                    "{report:?}"
                );
                assert!(report.message.contains(&id.to_string()), "{report:?}");
            }
            other => panic!("{message:?} on {id}: expected ERROR on id 0, got {other:?}"),
        }
    }
    // Credit for a request that is not open is ignored.
    peer.send(22, &Message::WindowUpdate(5))?;
    peer.ping(23)?;
    Ok(())
}
