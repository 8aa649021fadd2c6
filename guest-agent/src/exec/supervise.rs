//! The supervisor of one execution: its process group, its timeout, and the
//! host's STDIN, SIGNAL and STOP.
//!
//! Ending the execution means SIGTERM to the whole group, then SIGKILL to
//! the group and its cgroup after the grace period. When the leader exits,
//! whatever is left in its group and cgroup gets SIGKILL: nothing of a
//! request outlives its RESULT. When the agent stops, the grace of every
//! execution is cut to the agent's own (`Config::kill_grace`), so that
//! stopping is bounded whatever an execution asked for.

use std::io;
use std::process::ExitStatus;
use std::time::Duration;

use paddock_proto::{Message, MessageKind, Stop, StopScope};
use tokio::process::Child;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::ExecError;
use super::pipes::StdinQueue;
use super::pty::PtyWindow;
use crate::cgroup::ExecCgroup;
use crate::request::{Input, Inputs, Rejection, RequestCtx};

/// A process group, named by its leader's pid.
#[derive(Debug, Clone, Copy)]
pub(super) struct ProcessGroup(pub(super) libc::pid_t);

impl ProcessGroup {
    fn signal(self, signal: i32) {
        // SAFETY: kill(2) takes no pointers; a negative pid names the group.
        let rc = unsafe { libc::kill(-self.0, signal) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ESRCH) {
                warn!(%err, signal, "Could not signal the process group");
            }
        }
    }
}

/// What the supervisor enforces.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits<'a> {
    pub(super) group: ProcessGroup,
    /// The execution's cgroup, when the agent contains executions in them.
    pub(super) cgroup: Option<&'a ExecCgroup>,
    /// The execution's terminal, when it runs on one.
    pub(super) window: Option<&'a PtyWindow>,
    pub(super) timeout: Option<Duration>,
    pub(super) grace: Duration,
}

impl Limits<'_> {
    /// SIGKILL to the group and to the cgroup.
    fn kill(&self) {
        self.group.signal(libc::SIGKILL);
        if let Some(cgroup) = self.cgroup {
            cgroup.kill();
        }
    }
}

/// How the leader ended.
#[derive(Debug)]
pub(super) struct Ended {
    pub(super) status: ExitStatus,
    pub(super) exited: Instant,
    pub(super) timed_out: bool,
    pub(super) stopped: bool,
}

/// Waits for the leader while applying the timeout and the host's inputs;
/// then kills what is left of the group and lets the pumps drain.
pub(super) async fn supervise(
    ctx: &RequestCtx,
    child: &mut Child,
    limits: Limits<'_>,
    inputs: &mut Inputs,
    stdin: Option<&StdinQueue>,
    exited: &CancellationToken,
    abandon: &CancellationToken,
) -> Result<Ended, ExecError> {
    let group = limits.group;
    // A limit too far away to represent is no limit.
    let mut deadline = limits
        .timeout
        .and_then(|timeout| Instant::now().checked_add(timeout));
    let mut kill_at: Option<Instant> = None;
    let (mut timed_out, mut stopped) = (false, false);
    let (mut session_over, mut stdin_open) = (false, stdin.is_some());
    let mut terminating = false;
    let mut failure: Option<ExecError> = None;
    let waited = loop {
        let terminate = tokio::select! {
            status = child.wait() => break status,
            () = at(deadline) => {
                deadline = None;
                timed_out = true;
                true
            }
            () = at(kill_at) => {
                kill_at = None;
                limits.kill();
                false
            }
            () = ctx.ended(), if !session_over => {
                session_over = true;
                if ctx.agent_stopping() {
                    // Stopping the agent is bounded by its own grace.
                    let cut = Instant::now().checked_add(ctx.config().kill_grace.min(limits.grace));
                    kill_at = earliest(kill_at, cut);
                }
                true
            }
            input = inputs.recv(), if failure.is_none() => match input {
                Input::Frame(Message::Stdin(data)) => match stdin.filter(|_| stdin_open) {
                    Some(stdin) => {
                        stdin.push(data);
                        false
                    }
                    None => {
                        failure = Some(Rejection::Unexpected(MessageKind::Stdin).into());
                        true
                    }
                },
                Input::Frame(Message::StdinClose) => {
                    if let Some(stdin) = stdin {
                        stdin.close();
                    }
                    stdin_open = false;
                    false
                }
                Input::Frame(Message::Signal(request)) if request.is_valid() => {
                    group.signal(request.signal);
                    false
                }
                Input::Frame(Message::Signal(request)) => {
                    failure = Some(ExecError::BadSignal(request.signal));
                    true
                }
                Input::Frame(Message::Resize(size)) => match limits.window {
                    Some(window) => {
                        if let Err(err) = window.resize(size.rows, size.cols) {
                            warn!(%err, "Could not resize the terminal");
                        }
                        false
                    }
                    None => {
                        failure = Some(ExecError::NoTerminal);
                        true
                    }
                },
                Input::Frame(Message::Stop(Stop { scope: StopScope::Execution })) => {
                    stopped = true;
                    true
                }
                Input::Frame(message) => {
                    failure = Some(Rejection::Unexpected(message.kind()).into());
                    true
                }
                Input::Reject(report) => {
                    failure = Some(Rejection::Report(report).into());
                    true
                }
            },
        };
        if failure.is_some() {
            abandon.cancel();
        }
        if terminate && !terminating {
            terminating = true;
            group.signal(libc::SIGTERM);
            // The agent's stop may already have set an earlier kill.
            kill_at = earliest(kill_at, Instant::now().checked_add(limits.grace));
        }
    };
    let exited_at = Instant::now();
    limits.kill();
    exited.cancel();
    if let Some(failure) = failure {
        return Err(failure);
    }
    let status = waited.map_err(ExecError::Wait)?;
    debug!(?status, timed_out, stopped, "Leader exited");
    Ok(Ended {
        status,
        exited: exited_at,
        timed_out,
        stopped,
    })
}

/// The earlier of two optional instants (`None`: never).
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Completes at `instant`, or never.
async fn at(instant: Option<Instant>) {
    match instant {
        Some(instant) => sleep_until(instant).await,
        None => std::future::pending().await,
    }
}
