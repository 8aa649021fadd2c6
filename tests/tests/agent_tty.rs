//! Terminals through the real agent binary over a Unix socket: an
//! interactive shell typed at, its window resized, Ctrl-C to its
//! foreground job, its exit status; the capability and the policy that
//! guard a terminal.
#![cfg(test)]

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use paddock_agent_client::{AgentClient, ClientConfig, ClientError, Execute, Tty};
use paddock_policy::{Policy, Rule};
use paddock_proto::{FrameDecoder, Message, decode_message, encode_message, read_frame};
use paddock_tests::terminal::read_until;
use paddock_tests::{
    AgentProcess, all_gone, fake_hello_ack, processes_running, test_config, unique_marker,
    wait_until_async,
};

type TestResult = anyhow::Result<()>;

/// An interactive shell with a plain prompt, on a 24 x 80 terminal.
fn shell() -> Execute {
    let mut request = Execute::argv(["/bin/sh", "-i"]);
    request.env.insert("PS1".into(), "$ ".into());
    request.timeout_ms = Some(60_000);
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interactive_shell_reads_lines_resizes_and_survives_ctrl_c() -> TestResult {
    let agent = AgentProcess::start(&[])?;
    let client = agent.client().await?;
    let mut terminal = client.terminal(shell(), Tty::new("vt100", 24, 80)).await?;
    read_until(&mut terminal, "$ ").await?;

    // A line typed is echoed by the line discipline, then run.
    terminal.write(b"echo hi-$((40+2))\n").await?;
    let out = read_until(&mut terminal, "hi-42\r\n").await?;
    assert!(out.contains("echo hi-$((40+2))\r\n"), "no echo in {out:?}");

    terminal
        .write(b"tty; test -t 0 && echo is-a-tty; echo TERM=$TERM\n")
        .await?;
    let out = read_until(&mut terminal, "TERM=vt100\r\n").await?;
    assert!(out.contains("/dev/pts/"), "{out:?}");
    assert!(out.contains("is-a-tty\r\n"), "{out:?}");

    terminal.write(b"stty size\n").await?;
    read_until(&mut terminal, "24 80\r\n").await?;
    terminal.resize(40, 100)?;
    terminal.write(b"stty size\n").await?;
    read_until(&mut terminal, "40 100\r\n").await?;

    // Ctrl-C as a byte reaches the foreground job through the line
    // discipline: the sleep ends, the shell reads on.
    let marker = unique_marker();
    let sleep = format!("sleep 1000.{marker}");
    terminal.write(format!("{sleep}\n").as_bytes()).await?;
    assert!(
        wait_until_async(Duration::from_secs(5), || processes_running(&sleep).len()
            == 1)
        .await,
        "the sleep did not start"
    );
    terminal.write(&[0x03]).await?;
    assert!(all_gone(&marker).await, "Ctrl-C did not end the sleep");
    terminal.write(b"echo alive-$((6*7))\n").await?;
    read_until(&mut terminal, "alive-42\r\n").await?;

    terminal.write(b"exit 7\n").await?;
    let resizer = terminal.resizer();
    // The output ends (the pty's EIO) before the result.
    while terminal.read().await?.is_some() {}
    let result = terminal.wait().await?;
    assert_eq!((result.exit_code, result.signal), (Some(7), None));
    assert!(!result.timed_out && !result.stopped);
    assert_eq!(result.stderr_bytes, 0, "stderr is the terminal too");

    // A resize after the end is harmless: the session goes on.
    resizer.resize(10, 10)?;
    client.ping().await?;
    let out = client.exec_collect(Execute::shell("echo still")).await?;
    assert_eq!(out.stdout, b"still\n");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_s_timeout_ends_everything_on_it() -> TestResult {
    let agent = AgentProcess::start(&[])?;
    let client = agent.client().await?;
    let marker = unique_marker();
    let mut request = Execute::shell(format!("sleep 1000.{marker} & sleep 1000.{marker}"));
    request.timeout_ms = Some(500);
    request.kill_grace_ms = Some(200);
    let terminal = client.terminal(request, Tty::new("", 0, 0)).await?;
    let result = terminal.wait().await?;
    assert!(result.timed_out, "{result:?}");
    assert!(all_gone(&marker).await, "a process outlived the terminal");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_without_exec_tty_denies_a_terminal() -> TestResult {
    let agent = AgentProcess::start(&[])?;
    let policy = |tty: bool| -> anyhow::Result<Arc<Policy>> {
        Ok(Arc::new(Policy::from_toml(&format!(
            "schema = 1\nname = \"tty-test\"\n[exec]\nprograms = [\"/bin/sh\"]\nshell = true\nenv = [\"PS1\"]\nstdin = true\ntty = {tty}\n"
        ))?))
    };
    let client = |tty: bool| -> anyhow::Result<_> {
        let config = ClientConfig {
            gate: Some(Arc::new(paddock_agent_client::PolicyGate::new(policy(
                tty,
            )?))),
            ..test_config()
        };
        Ok(AgentClient::connect(agent.transport(), config))
    };
    let denied = client(false)?.await?;
    match denied.terminal(shell(), Tty::new("", 24, 80)).await {
        Err(ClientError::Denied(denial)) => assert_eq!(denial.rule, Rule::ExecTty),
        other => panic!("not denied: {other:?}"),
    }
    // The same request without a terminal passes the same policy.
    let mut plain = shell();
    plain.command = paddock_agent_client::Command::Shell("echo plain".into());
    assert_eq!(denied.exec_collect(plain).await?.stdout, b"plain\n");

    let allowed = client(true)?.await?;
    let mut terminal = allowed.terminal(shell(), Tty::new("", 24, 80)).await?;
    terminal.write(b"exit 3\n").await?;
    assert_eq!(terminal.wait().await?.exit_code, Some(3));
    Ok(())
}

/// A fake agent that completes HELLO announcing no capability, and counts
/// the EXECUTE frames it gets: all of them, and those with a `tty`.
fn agent_without_terminals(
    dir: &std::path::Path,
) -> anyhow::Result<(std::path::PathBuf, Arc<[AtomicU32; 2]>)> {
    let path = dir.join("old-agent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path)?;
    let executes = Arc::new([AtomicU32::new(0), AtomicU32::new(0)]);
    let counters = Arc::clone(&executes);
    std::thread::spawn(move || -> anyhow::Result<()> {
        let (mut stream, _) = listener.accept()?;
        let mut decoder = FrameDecoder::default();
        let hello = read_frame(&mut stream, &mut decoder)?;
        let mut bytes = Vec::new();
        encode_message(&mut bytes, hello.request_id, &fake_hello_ack("old"))?;
        stream.write_all(&bytes)?;
        while let Ok(frame) = read_frame(&mut stream, &mut decoder) {
            if let Ok(Message::Execute(execute)) = decode_message(frame) {
                if execute.tty.is_some() {
                    counters[1].fetch_add(1, Ordering::SeqCst);
                }
                counters[0].fetch_add(1, Ordering::SeqCst);
            }
        }
        Ok(())
    });
    Ok((path, executes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_terminals_gets_no_terminal_request() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (path, executes) = agent_without_terminals(dir.path())?;
    let config = ClientConfig {
        keepalive_interval: None,
        ..test_config()
    };
    let client =
        AgentClient::connect(paddock_agent_client::Transport::Unix { path }, config).await?;
    match client.terminal(shell(), Tty::new("", 24, 80)).await {
        Err(err @ ClientError::Unsupported { capability: "tty" }) => {
            assert!(!err.is_retryable() && !err.should_reconnect());
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
    // A plain execution after it is sent: once the fake has it, it would
    // have had the terminal's request before it, on the same stream.
    let _plain = client.exec(Execute::argv(["true"])).await?;
    assert!(
        wait_until_async(Duration::from_secs(5), || executes[0]
            .load(Ordering::SeqCst)
            == 1)
        .await,
        "the plain execution did not arrive"
    );
    assert_eq!(
        executes[1].load(Ordering::SeqCst),
        0,
        "a terminal was asked for"
    );
    Ok(())
}
