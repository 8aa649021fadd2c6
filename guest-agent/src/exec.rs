//! EXECUTE: runs a process and streams its output.
//!
//! One request task polls four things at once: the supervisor (the process,
//! its timeout, the host's STDIN / SIGNAL / STOP; `supervise`), one pump per
//! output pipe, and the stdin feeder (`pipes`).
//!
//! - The process runs in a process group of its own and, when the agent
//!   contains executions in cgroups (`crate::cgroup`), in a cgroup of its
//!   own, which it joins before it execs: then every process it starts,
//!   those that leave the group included, is the execution's.
//! - A pump reads its pipe only while the host's window is open, so a process
//!   that prints without end blocks in `write`. Past the stream's cap it reads
//!   and discards without waiting, so the process never blocks on a cap.
//! - Ending the execution means SIGTERM to the whole group, then SIGKILL to
//!   the group and the cgroup after the grace period. When the leader exits,
//!   whatever is left in its group and its cgroup gets SIGKILL, and RESULT
//!   waits until the cgroup is empty: nothing of a request outlives its
//!   RESULT. Without a cgroup, a process that left the group is beyond
//!   reach.
//! - After the leader exits, the pumps forward what is still in the pipes,
//!   then wait at most [`DRAIN_TIMEOUT`](pipes::DRAIN_TIMEOUT) for the end of
//!   the pipe, so a process that escaped the group (`setsid`) and keeps the
//!   pipe open cannot hold the request. Data already in a pipe is forwarded
//!   however long the host takes to open its window; only waiting for new
//!   data is bounded.
//! - RESULT is sent after the last STDOUT / STDERR frame.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;

use paddock_proto::{
    Command as Program, ErrorCode, ExecResult, Execute, MAX_KILL_GRACE_MS, Message, MessageKind,
};
use tokio::process::Command;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::Gauge;
use crate::cgroup::{CgroupError, ExecCgroup};
use crate::request::{Flow, Handler, Inputs, Interrupted, Rejection, RequestCtx, WireError};
use pipes::{StdinQueue, feed_stdin, pump};
use supervise::{Limits, ProcessGroup, supervise};

mod pipes;
mod supervise;

/// Why an execution failed (as opposed to the process failing).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExecError {
    /// `argv` has no program.
    #[error("The argument vector is empty")]
    EmptyArgv,
    /// `timeout_ms` is 0 (no limit is written by leaving it out).
    #[error("timeout_ms must be at least 1")]
    ZeroTimeout,
    /// `cwd` is not a directory the process can start in.
    #[error("Cannot use `{path}` as the working directory")]
    WorkingDirectory {
        path: String,
        #[source]
        source: io::Error,
    },
    /// SIGNAL with a number that names no signal.
    #[error("{0} is not a signal number (1..={max})", max = paddock_proto::MAX_SIGNAL)]
    BadSignal(i32),
    /// The execution's cgroup could not be made.
    #[error("Could not contain the execution")]
    Cgroup(#[source] CgroupError),
    /// The process could not be started.
    #[error("Could not start `{program}`")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    /// The spawned process has no pid (it cannot have been reaped yet).
    #[error("The process has no pid")]
    NoPid,
    /// Waiting for the process failed.
    #[error("Could not wait for the process")]
    Wait(#[source] io::Error),
    /// The host broke the protocol on this request.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The session ended.
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
}

impl WireError for ExecError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::EmptyArgv | Self::ZeroTimeout | Self::BadSignal(_) => ErrorCode::InvalidArgument,
            Self::WorkingDirectory { source, .. } => match source.kind() {
                io::ErrorKind::NotFound => ErrorCode::NotFound,
                io::ErrorKind::PermissionDenied => ErrorCode::PermissionDenied,
                io::ErrorKind::NotADirectory => ErrorCode::InvalidArgument,
                _ => ErrorCode::Io,
            },
            Self::Cgroup(_) => ErrorCode::SpawnFailed,
            Self::Spawn { source, .. } => match source.kind() {
                io::ErrorKind::NotFound => ErrorCode::NotFound,
                // A NUL byte in an argument, a variable or the directory.
                io::ErrorKind::InvalidInput => ErrorCode::InvalidArgument,
                _ => ErrorCode::SpawnFailed,
            },
            Self::NoPid | Self::Wait(_) => ErrorCode::Internal,
            Self::Rejected(rejection) => rejection.code(),
            Self::Interrupted(interrupted) => interrupted.code(),
        }
    }
}

/// An execution: the process's output goes to the host, and its stdin comes
/// from the host if the request asks for it.
impl Handler for Execute {
    type Error = ExecError;

    fn flow(&self) -> Flow {
        Flow {
            sends: true,
            takes: self.stdin,
        }
    }

    /// Runs the process to its RESULT.
    async fn handle(self, ctx: &RequestCtx, inputs: Inputs) -> Result<Message, ExecError> {
        do_execute(ctx, &self, inputs)
            .await
            .map(Message::ExecResult)
    }
}

async fn do_execute(
    ctx: &RequestCtx,
    execute: &Execute,
    mut inputs: Inputs,
) -> Result<ExecResult, ExecError> {
    if execute.timeout_ms == Some(0) {
        return Err(ExecError::ZeroTimeout);
    }
    let cgroup = ctx
        .agent()
        .cgroups
        .as_ref()
        .map(|root| root.create(&format!("paddock-exec-{}", ctx.unique_name())))
        .transpose()
        .map_err(ExecError::Cgroup)?;
    let (mut command, program) = command(execute, cgroup.as_ref())?;
    let mut child = command
        .spawn()
        .map_err(|source| ExecError::Spawn { program, source })?;
    let started = Instant::now();
    let _running = Gauge::new(&ctx.agent().running_executions);
    // kill_on_drop covers the leader if this returns early, and dropping
    // the cgroup the rest.
    let group = child
        .id()
        .and_then(|pid| libc::pid_t::try_from(pid).ok())
        .map(ProcessGroup)
        .ok_or(ExecError::NoPid)?;
    debug!(pid = group.0, "Started");

    let grace = execute
        .kill_grace_ms
        .map_or(ctx.config().kill_grace, Duration::from_millis)
        .min(Duration::from_millis(MAX_KILL_GRACE_MS));
    let limits = Limits {
        group,
        cgroup: cgroup.as_ref(),
        timeout: execute.timeout_ms.map(Duration::from_millis),
        grace,
    };
    // `exited`: the leader is gone, pumps drain. `abandon`: output is no
    // longer wanted (the request failed, or the session ended).
    let exited = CancellationToken::new();
    let abandon = ctx.child_token();
    let stdin_pipe = child.stdin.take();
    let stdin = StdinQueue::default();
    let stdin_queue = stdin_pipe.is_some().then_some(&stdin);
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let (end, (), out, err) = tokio::join!(
        supervise(
            ctx,
            &mut child,
            limits,
            &mut inputs,
            stdin_queue,
            &exited,
            &abandon
        ),
        feed_stdin(ctx, stdin_pipe, &stdin, &exited),
        pump(
            ctx,
            stdout,
            MessageKind::Stdout,
            execute.stdout_cap,
            &exited,
            &abandon
        ),
        pump(
            ctx,
            stderr,
            MessageKind::Stderr,
            execute.stderr_cap,
            &exited,
            &abandon
        ),
    );
    if let Some(cgroup) = cgroup {
        // Nothing of the execution may outlive its RESULT.
        cgroup.end().await;
    }
    let status = end?;
    Ok(ExecResult {
        exit_code: status.status.code(),
        signal: status.status.signal(),
        timed_out: status.timed_out,
        stopped: status.stopped,
        stdout_truncated: out.truncated,
        stderr_truncated: err.truncated,
        stdout_bytes: out.bytes,
        stderr_bytes: err.bytes,
        duration_us: u64::try_from((status.exited - started).as_micros()).unwrap_or(u64::MAX),
    })
}

/// The command for `execute`, in `cgroup` if any, and the program name for
/// errors.
fn command(execute: &Execute, cgroup: Option<&ExecCgroup>) -> Result<(Command, String), ExecError> {
    let (mut command, program) = match &execute.command {
        Program::Argv(argv) => {
            let (program, args) = argv.split_first().ok_or(ExecError::EmptyArgv)?;
            let mut command = Command::new(program);
            command.args(args);
            (command, program.clone())
        }
        Program::Shell(line) => {
            let mut command = Command::new("/bin/sh");
            command.arg("-c").arg(line);
            (command, "/bin/sh".to_owned())
        }
    };
    if execute.clear_env {
        command.env_clear();
    }
    command.envs(&execute.env);
    if let Some(cwd) = &execute.cwd {
        // Checked here so that the error names the directory, not the
        // program (the child's chdir fails with the same errno).
        let checked = std::fs::metadata(cwd).and_then(|metadata| {
            if metadata.is_dir() {
                Ok(())
            } else {
                Err(io::ErrorKind::NotADirectory.into())
            }
        });
        checked.map_err(|source| ExecError::WorkingDirectory {
            path: cwd.clone(),
            source,
        })?;
        command.current_dir(cwd);
    }
    command
        .stdin(if execute.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(cgroup) = cgroup {
        let procs = cgroup.procs();
        // SAFETY: the closure runs in the child between fork and exec;
        // `join` makes only async-signal-safe calls and allocates nothing.
        unsafe {
            command.pre_exec(move || crate::cgroup::join(&procs));
        }
    }
    Ok((command, program))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use paddock_proto::{ErrorCode, SignalRequest, Stop, StopScope};

    use super::pipes::DRAIN_TIMEOUT;
    use super::*;
    use crate::test_host::{
        Collected, TEST_WINDOW, TestHost, assert_no_process_with, hello, processes_with,
        test_config, wait_for_process,
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
}
