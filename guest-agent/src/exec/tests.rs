//! The execution handler against a scripted host.

use std::collections::BTreeMap;

use paddock_proto::{ErrorCode, SignalRequest, Stop, StopScope};

use super::pipes::DRAIN_TIMEOUT;
use super::*;
use crate::test_host::{
    Collected, TEST_WINDOW, TestHost, assert_no_process_with, hello, processes_with, test_config,
    wait_for_process,
};

fn exec_result(collected: &Collected) -> &ExecResult {
    match &collected.last {
        Message::ExecResult(result) => result,
        other => panic!("expected RESULT, got {other:?}"),
    }
}

async fn run(host: &mut TestHost, id: u64, execute: Execute) -> Collected {
    host.send(id, &Message::Execute(execute)).await;
    host.collect(id).await
}

fn error(collected: &Collected) -> &paddock_proto::ErrorReport {
    match &collected.last {
        Message::Error(report) => report,
        other => panic!("expected ERROR, got {other:?}"),
    }
}

#[tokio::test]
async fn reports_exit_code_and_output() {
    let mut host = TestHost::ready().await;
    let out = run(
        &mut host,
        1,
        Execute::shell("echo out; echo err >&2; exit 3"),
    )
    .await;
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    let result = exec_result(&out);
    assert_eq!((result.exit_code, result.signal), (Some(3), None));
    assert_eq!((result.stdout_bytes, result.stderr_bytes), (4, 4));
    assert!(!result.timed_out && !result.stopped);
    assert!(!result.stdout_truncated && !result.stderr_truncated);
    assert!(result.duration_us > 0);
}

#[tokio::test]
async fn reports_the_killing_signal() {
    let mut host = TestHost::ready().await;
    let out = run(&mut host, 1, Execute::shell("kill -TERM $$")).await;
    let result = exec_result(&out);
    assert_eq!(
        (result.exit_code, result.signal),
        (None, Some(libc::SIGTERM))
    );
}

#[tokio::test]
async fn timeout_kills_the_whole_group() {
    let mut host = TestHost::ready().await;
    let marker = "1000.101";
    // The shell and its children ignore SIGTERM: only SIGKILL ends them.
    let mut execute = Execute::shell(format!("trap '' TERM; sleep {marker} & sleep {marker}"));
    execute.timeout_ms = Some(300);
    execute.kill_grace_ms = Some(200);
    host.send(1, &Message::Execute(execute)).await;
    wait_for_process(marker).await;
    let out = host.collect(1).await;
    let result = exec_result(&out);
    assert!(result.timed_out && !result.stopped);
    assert_eq!(result.signal, Some(libc::SIGKILL));
    assert!(result.duration_us >= 500_000, "{}", result.duration_us);
    assert_no_process_with(marker).await;
}

#[tokio::test]
async fn stop_and_signal_end_an_execution() {
    let mut host = TestHost::ready().await;
    host.send(1, &Message::Execute(Execute::argv(["sleep", "1000.102"])))
        .await;
    wait_for_process("1000.102").await;
    let stop = Stop {
        scope: StopScope::Execution,
    };
    host.send(1, &Message::Stop(stop)).await;
    let out = host.collect(1).await;
    let result = exec_result(&out);
    assert!(result.stopped && !result.timed_out);
    assert_eq!(result.signal, Some(libc::SIGTERM));

    host.send(2, &Message::Execute(Execute::argv(["sleep", "1000.103"])))
        .await;
    wait_for_process("1000.103").await;
    let kill = SignalRequest {
        signal: libc::SIGKILL,
    };
    host.send(2, &Message::Signal(kill)).await;
    let out = host.collect(2).await;
    let result = exec_result(&out);
    assert!(!result.stopped);
    assert_eq!(result.signal, Some(libc::SIGKILL));
}

#[tokio::test]
async fn limits_beyond_any_clock_are_accepted() {
    let mut host = TestHost::ready().await;
    let mut execute = Execute::argv(["sleep", "1000.107"]);
    execute.timeout_ms = Some(u64::MAX);
    execute.kill_grace_ms = Some(u64::MAX / 2);
    host.send(1, &Message::Execute(execute)).await;
    wait_for_process("1000.107").await;
    let stop = Stop {
        scope: StopScope::Execution,
    };
    host.send(1, &Message::Stop(stop)).await;
    let out = host.collect(1).await;
    assert!(exec_result(&out).stopped);
}

#[tokio::test]
async fn caps_truncate_output_but_count_it() {
    let mut host = TestHost::ready().await;
    let mut execute = Execute::shell("head -c 100000 /dev/zero; head -c 300 /dev/zero >&2");
    execute.stdout_cap = Some(100);
    execute.stderr_cap = Some(1000);
    let out = run(&mut host, 1, execute).await;
    assert_eq!(out.stdout, vec![0; 100]);
    assert_eq!(out.stderr, vec![0; 300]);
    let result = exec_result(&out);
    assert_eq!(result.exit_code, Some(0));
    assert!(result.stdout_truncated && !result.stderr_truncated);
    assert_eq!((result.stdout_bytes, result.stderr_bytes), (100_000, 300));
}

#[tokio::test]
async fn stdin_round_trips_within_the_window() {
    let mut host = TestHost::ready().await;
    let mut execute = Execute::argv(["cat"]);
    execute.stdin = true;
    host.send(1, &Message::Execute(execute)).await;
    let input: Vec<u8> = (0..251u8).cycle().take(300_000).collect();
    let mut output = host
        .send_within_window(1, MessageKind::Stdin, &input, 16 * 1024)
        .await;
    host.send(1, &Message::StdinClose).await;
    let rest = host.collect(1).await;
    output.extend(&rest.stdout);
    assert_eq!(output.len(), input.len());
    assert!(output == input);
    assert_eq!(exec_result(&rest).exit_code, Some(0));
}

#[tokio::test]
async fn stdin_past_the_window_ends_the_execution() {
    let mut host = TestHost::ready().await;
    let mut execute = Execute::argv(["cat"]);
    execute.stdin = true;
    host.send(1, &Message::Execute(execute)).await;
    let too_much = vec![b'x'; usize::try_from(TEST_WINDOW).expect("small") + 1];
    host.send(1, &Message::Stdin(too_much)).await;
    assert_eq!(error(&host.collect(1).await).code, ErrorCode::FlowControl);

    // Stdin that was not asked for is refused too.
    host.send(2, &Message::Execute(Execute::argv(["sleep", "1000.106"])))
        .await;
    host.send(2, &Message::Stdin(b"x".to_vec())).await;
    assert_eq!(
        error(&host.collect(2).await).code,
        ErrorCode::InvalidArgument
    );
    assert_no_process_with("1000.106").await;
}

#[tokio::test]
async fn env_and_cwd_are_honoured() {
    let mut host = TestHost::ready().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut execute = Execute::shell("echo \"$PADDOCK_TEST\"; pwd");
    execute.env.insert("PADDOCK_TEST".into(), "value".into());
    execute.cwd = Some(dir.path().display().to_string());
    let out = run(&mut host, 1, execute).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("value\n{}\n", dir.path().display())
    );

    let mut execute = Execute::argv(["/usr/bin/env"]);
    execute.clear_env = true;
    execute.env = BTreeMap::from([("ONLY".to_owned(), "this".to_owned())]);
    let out = run(&mut host, 2, execute).await;
    assert_eq!(out.stdout, b"ONLY=this\n");
}

#[tokio::test]
async fn spawn_failures_are_reported() {
    let mut host = TestHost::ready().await;
    let out = run(&mut host, 1, Execute::argv(["/nonexistent/paddock-test"])).await;
    assert_eq!(error(&out).code, ErrorCode::NotFound);
    let out = run(&mut host, 2, Execute::argv(Vec::<String>::new())).await;
    assert_eq!(error(&out).code, ErrorCode::InvalidArgument);
    let file = tempfile::NamedTempFile::new().expect("temp file");
    let out = run(
        &mut host,
        3,
        Execute::argv([file.path().display().to_string()]),
    )
    .await;
    assert_eq!(error(&out).code, ErrorCode::SpawnFailed);
    assert!(
        error(&out).message.contains("Permission denied"),
        "{}",
        error(&out).message
    );
}

#[tokio::test]
async fn withheld_credit_pauses_output_until_window_update() {
    let mut host = TestHost::ready().await;
    let marker = "paddock-withheld-credit";
    let execute = Execute::argv(["sh", "-c", "head -c 1000000 /dev/zero", marker]);
    host.send(1, &Message::Execute(execute)).await;
    let mut received = 0;
    while received < TEST_WINDOW as usize {
        match host.recv().await {
            (1, Message::Stdout(data)) => received += data.len(),
            other => panic!("expected STDOUT, got {other:?}"),
        }
    }
    assert_eq!(received, TEST_WINDOW as usize);
    assert!(
        host.quiet_for(Duration::from_millis(300)).await,
        "sent past the window"
    );
    assert!(
        !processes_with(marker).is_empty(),
        "the process should be blocked, not gone"
    );
    host.grant(1, 100_000).await;
    let rest = host.collect(1).await;
    assert_eq!(received + rest.stdout.len(), 1_000_000);
    assert_eq!(exec_result(&rest).stdout_bytes, 1_000_000);
}

#[tokio::test]
async fn output_left_in_the_pipe_at_exit_is_delivered() {
    let mut host = TestHost::ready().await;
    host.send(
        1,
        &Message::Execute(Execute::argv(["head", "-c", "100000", "/dev/zero"])),
    )
    .await;
    let mut received = 0;
    while received < TEST_WINDOW as usize {
        match host.recv().await {
            (1, Message::Stdout(data)) => received += data.len(),
            other => panic!("expected STDOUT, got {other:?}"),
        }
    }
    // The process exits while the window is closed. Then the host opens
    // the window a little at a time, more slowly than the drain timeout:
    // what was in the pipe at exit is still delivered.
    assert!(host.quiet_for(Duration::from_millis(300)).await);
    host.grant(1, 10_000).await;
    match host.recv().await {
        (1, Message::Stdout(data)) => received += data.len(),
        other => panic!("expected STDOUT, got {other:?}"),
    }
    assert!(host.quiet_for(DRAIN_TIMEOUT * 3).await);
    host.grant(1, 100_000).await;
    let rest = host.collect(1).await;
    assert_eq!(received + rest.stdout.len(), 100_000);
    assert_eq!(exec_result(&rest).stdout_bytes, 100_000);
}

#[tokio::test]
async fn nothing_outlives_the_leader_and_escapees_cannot_hold_the_request() {
    let mut host = TestHost::ready().await;
    let out = run(&mut host, 1, Execute::shell("sleep 1000.104 & echo done")).await;
    assert_eq!(out.stdout, b"done\n");
    assert_no_process_with("1000.104").await;

    // Contained by its process group only, `setsid` leaves the group but
    // keeps the output pipe open: it cannot hold the request either.
    let mut config = test_config();
    config.containment = crate::Containment::ProcessGroup;
    let mut host = TestHost::start(config);
    host.hello(hello()).await;
    let started = std::time::Instant::now();
    let out = run(
        &mut host,
        2,
        Execute::shell("setsid sleep 1000.105 & echo done"),
    )
    .await;
    assert_eq!(out.stdout, b"done\n");
    assert_eq!(exec_result(&out).exit_code, Some(0));
    assert!(started.elapsed() < Duration::from_secs(2));
    for pid in processes_with("1000.105") {
        // SAFETY: kill(2) takes no pointers.
        unsafe { libc::kill(libc::pid_t::try_from(pid).expect("pid"), libc::SIGKILL) };
    }
}

/// Reads STDOUT of request `id`, returning its credit, until `want` is in
/// what arrived; returns everything that arrived.
async fn stdout_until(host: &mut TestHost, id: u64, want: &str) -> String {
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains(want) {
        match host.recv().await {
            (got, Message::Stdout(data)) if got == id => {
                host.grant(id, data.len()).await;
                seen.extend(data);
            }
            (got, Message::WindowUpdate(_)) if got == id => {}
            other => panic!("waiting for {want:?} after {seen:?}: {other:?}"),
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test]
async fn a_tty_execution_runs_on_a_terminal_of_its_size() {
    let mut host = TestHost::ready().await;
    let mut execute = Execute::shell(
        "test -t 0 && test -t 1 && test -t 2 && echo tty=yes; echo term=$TERM; stty size; echo err >&2",
    );
    execute.tty = Some(paddock_proto::Tty::new("vt100", 33, 111));
    let out = run(&mut host, 1, execute).await;
    let text = String::from_utf8_lossy(&out.stdout);
    // The line discipline turns "\n" into "\r\n"; stderr is the terminal too.
    assert!(text.contains("tty=yes\r\n"), "{text:?}");
    assert!(text.contains("term=vt100\r\n"), "{text:?}");
    assert!(text.contains("33 111\r\n"), "{text:?}");
    assert!(text.contains("err\r\n"), "{text:?}");
    assert!(out.stderr.is_empty());
    let result = exec_result(&out);
    assert_eq!(result.exit_code, Some(0));
    assert_eq!(result.stdout_bytes, out.stdout.len() as u64);
}

#[tokio::test]
async fn resize_and_ctrl_c_reach_the_terminal_s_foreground() {
    let mut host = TestHost::ready().await;
    let mut execute = Execute::argv(["/bin/sh", "-i"]);
    execute.tty = Some(paddock_proto::Tty::new("", 24, 80));
    execute.timeout_ms = Some(20_000);
    execute.env.insert("PS1".into(), "$ ".into());
    host.send(1, &Message::Execute(execute)).await;
    stdout_until(&mut host, 1, "$ ").await;
    host.send(
        1,
        &Message::Resize(paddock_proto::Resize {
            rows: 40,
            cols: 100,
        }),
    )
    .await;
    host.send(1, &Message::Stdin(b"stty size\n".to_vec())).await;
    stdout_until(&mut host, 1, "40 100").await;
    let marker = "1000.303";
    host.send(1, &Message::Stdin(format!("sleep {marker}\n").into_bytes()))
        .await;
    wait_for_process(marker).await;
    // Ctrl-C as a byte: the line discipline signals the foreground group.
    host.send(1, &Message::Stdin(vec![0x03])).await;
    assert_no_process_with(marker).await;
    host.send(1, &Message::Stdin(b"echo alive-$((6*7))\n".to_vec()))
        .await;
    stdout_until(&mut host, 1, "alive-42").await;
    host.send(1, &Message::Stdin(b"exit 5\n".to_vec())).await;
    let out = host.collect(1).await;
    assert_eq!(exec_result(&out).exit_code, Some(5));
    // A RESIZE after RESULT is dropped without an answer.
    host.send(
        1,
        &Message::Resize(paddock_proto::Resize { rows: 1, cols: 1 }),
    )
    .await;
    assert!(host.quiet_for(Duration::from_millis(200)).await);
}

#[tokio::test]
async fn resize_without_a_terminal_is_refused() {
    let mut host = TestHost::ready().await;
    host.send(1, &Message::Execute(Execute::argv(["sleep", "10"])))
        .await;
    host.send(
        1,
        &Message::Resize(paddock_proto::Resize { rows: 1, cols: 1 }),
    )
    .await;
    let out = host.collect(1).await;
    assert_eq!(error(&out).code, ErrorCode::InvalidArgument);
}

#[tokio::test]
async fn a_timeout_ends_a_tty_execution_and_its_output() {
    let mut host = TestHost::ready().await;
    let marker = "1000.404";
    let mut execute = Execute::shell(format!("sleep {marker} & sleep {marker}"));
    execute.tty = Some(paddock_proto::Tty::new("", 0, 0));
    execute.timeout_ms = Some(300);
    execute.kill_grace_ms = Some(100);
    host.send(1, &Message::Execute(execute)).await;
    wait_for_process(marker).await;
    let out = host.collect(1).await;
    let result = exec_result(&out);
    assert!(result.timed_out);
    assert_no_process_with(marker).await;
}
