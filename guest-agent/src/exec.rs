//! EXECUTE: runs a process and streams its output.
//!
//! One request task polls four things at once: the supervisor (the process,
//! its timeout, the host's STDIN / SIGNAL / STOP; `supervise`), one pump per
//! output pipe, and the stdin feeder (`pipes`).
//!
//! - The process runs in a process group of its own and, when the agent
//!   contains executions in cgroups (`crate::cgroup`), in a cgroup of its
//!   own, which it is born in (or joins before it execs): then every
//!   process it starts, those that leave the group included, is the
//!   execution's.
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
//! - With a `tty` (`pty`), the process leads a session of its own on a
//!   pseudo-terminal instead of a process group on pipes: its output is the
//!   master's, sent as STDOUT, and the host's STDIN is typed into the
//!   master. RESIZE sets the window. Everything else above holds.

use std::io;
use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;

use paddock_proto::{
    Command as Program, ErrorCode, ExecResult, Execute, MAX_KILL_GRACE_MS, Message, MessageKind,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::process::Command;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::Gauge;
use crate::cgroup::{CgroupError, ExecCgroup};
use crate::request::{Flow, Handler, Inputs, Interrupted, Rejection, RequestCtx, WireError};
use pipes::{StdinQueue, feed_stdin, pump};
use pty::Pty;
use supervise::{Limits, ProcessGroup, supervise};

mod pipes;
mod pty;
mod supervise;

/// Where a pump reads output from: a pipe, or a terminal's master.
trait OutputSource: AsyncRead + AsFd + Unpin + Send {}
impl<T: AsyncRead + AsFd + Unpin + Send> OutputSource for T {}

/// Where the feeder writes the host's stdin: a pipe, or a terminal's master.
type InputSink = Box<dyn AsyncWrite + Unpin + Send>;

/// An output source of either kind.
type Output = Box<dyn OutputSource>;

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
    /// The execution's pseudo-terminal could not be made.
    #[error("Could not open a terminal")]
    Pty(#[source] io::Error),
    /// RESIZE of an execution that runs without a terminal.
    #[error("The execution has no terminal to resize")]
    NoTerminal,
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
            Self::EmptyArgv | Self::ZeroTimeout | Self::BadSignal(_) | Self::NoTerminal => {
                ErrorCode::InvalidArgument
            }
            Self::WorkingDirectory { source, .. } => match source.kind() {
                io::ErrorKind::NotFound => ErrorCode::NotFound,
                io::ErrorKind::PermissionDenied => ErrorCode::PermissionDenied,
                // Not a directory, or a NUL byte in the path.
                io::ErrorKind::NotADirectory | io::ErrorKind::InvalidInput => {
                    ErrorCode::InvalidArgument
                }
                _ => ErrorCode::Io,
            },
            Self::Cgroup(_) | Self::Pty(_) => ErrorCode::SpawnFailed,
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
/// from the host if the request asks for it (always, on a terminal).
impl Handler for Execute {
    type Error = ExecError;

    fn flow(&self) -> Flow {
        Flow {
            sends: true,
            takes: self.stdin || self.tty.is_some(),
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
    let pty = execute
        .tty
        .as_ref()
        .map(|tty| Pty::open(tty.rows, tty.cols))
        .transpose()
        .map_err(ExecError::Pty)?;
    let mut cgroup = cgroup;
    // A terminal's child runs code before exec anyway (it takes its
    // terminal), so it joins the cgroup there too.
    let inside = ctx.config().spawn_inside_cgroup && pty.is_none();
    let joins_itself = cgroup.as_ref().filter(|_| !inside);
    let (mut command, program) = command(execute, joins_itself, pty.as_ref())?;
    let spawned = match cgroup.as_mut().filter(|_| inside) {
        Some(cgroup) => cgroup.spawn_inside(|| command.spawn()),
        None => command.spawn(),
    };
    let mut child = spawned.map_err(|source| ExecError::Spawn { program, source })?;
    let started = Instant::now();
    // The command holds the child's copies of the terminal's slave: without
    // them, the master reads its end once the processes close theirs.
    drop(command);
    let (stdin_pipe, stdout, stderr, window) = match pty {
        Some(pty) => {
            let (reader, writer, window) = pty.into_master();
            let writer: InputSink = Box::new(writer);
            let reader: Output = Box::new(reader);
            (Some(writer), Some(reader), None, Some(window))
        }
        None => (
            child.stdin.take().map(|pipe| Box::new(pipe) as InputSink),
            child.stdout.take().map(|pipe| Box::new(pipe) as Output),
            child.stderr.take().map(|pipe| Box::new(pipe) as Output),
            None,
        ),
    };
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
        window: window.as_ref(),
        timeout: execute.timeout_ms.map(Duration::from_millis),
        grace,
    };
    // `exited`: the leader is gone, pumps drain. `abandon`: output is no
    // longer wanted (the request failed, or the session ended).
    let exited = CancellationToken::new();
    let abandon = ctx.child_token();
    let stdin = StdinQueue::default();
    let stdin_queue = stdin_pipe.is_some().then_some(&stdin);
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

/// The command for `execute`, in `cgroup` if any, on the terminal `pty` if
/// any, and the program name for errors.
fn command(
    execute: &Execute,
    cgroup: Option<&ExecCgroup>,
    pty: Option<&Pty>,
) -> Result<(Command, String), ExecError> {
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
        check_directory(cwd).map_err(|source| ExecError::WorkingDirectory {
            path: cwd.clone(),
            source,
        })?;
        command.current_dir(cwd);
    }
    command.kill_on_drop(true);
    match (pty, &execute.tty) {
        (Some(pty), Some(tty)) => {
            let [stdin, stdout, stderr] = pty.stdio().map_err(ExecError::Pty)?;
            command
                .stdin(stdin)
                .stdout(stdout)
                .stderr(stderr)
                .env("TERM", tty.term_or_default());
        }
        _ => {
            command
                .stdin(if execute.stdin {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0);
        }
    }
    if let Some(cgroup) = cgroup {
        let procs = cgroup.procs();
        // SAFETY: the closure runs in the child between fork and exec;
        // `join` makes only async-signal-safe calls and allocates nothing.
        unsafe {
            command.pre_exec(move || crate::cgroup::join(&procs));
        }
    }
    if pty.is_some() {
        // A session of its own instead of `process_group(0)` (setsid fails
        // in a group leader); its group's id is the child's pid all the
        // same, so the supervisor signals it as it does a group.
        // SAFETY: the closure runs in the child between fork and exec;
        // `become_controlled` makes only async-signal-safe calls and
        // allocates nothing.
        unsafe {
            command.pre_exec(pty::become_controlled);
        }
    }
    Ok((command, program))
}

/// Whether the agent can start a process in `dir`. Checked before the
/// spawn so that the error names the directory, not the program: the
/// child's chdir would fail with the same errno.
fn check_directory(dir: &str) -> io::Result<()> {
    if !std::fs::metadata(dir)?.is_dir() {
        return Err(io::ErrorKind::NotADirectory.into());
    }
    let path = std::ffi::CString::new(dir).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: access(2) reads a NUL-terminated path valid for the call.
    if unsafe { libc::access(path.as_ptr(), libc::X_OK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
