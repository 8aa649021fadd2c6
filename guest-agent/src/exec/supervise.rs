//! The supervisor of one execution: its process group, its timeout, and the
//! host's STDIN, SIGNAL and STOP.
//!
//! Ending the group means SIGTERM to the whole group, then SIGKILL after the
//! grace period. When the leader exits, whatever is left in its group gets
//! SIGKILL: nothing of a request outlives its RESULT.

use std::io;
use std::process::ExitStatus;
use std::time::Duration;

use paddock_proto::{Message, MessageKind, Stop, StopScope};
use tokio::process::Child;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::ExecError;
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
pub(super) struct Limits {
    pub(super) group: ProcessGroup,
    pub(super) timeout: Option<Duration>,
    pub(super) grace: Duration,
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
    limits: Limits,
    inputs: &mut Inputs,
    mut stdin: Option<mpsc::UnboundedSender<Vec<u8>>>,
    exited: &CancellationToken,
    abandon: &CancellationToken,
) -> Result<Ended, ExecError> {
    let group = limits.group;
    // A limit too far away to represent is no limit.
    let mut deadline = limits
        .timeout
        .and_then(|timeout| Instant::now().checked_add(timeout));
    let mut kill_at = None;
    let (mut timed_out, mut stopped) = (false, false);
    let (mut session_over, mut inputs_open) = (false, true);
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
                group.signal(libc::SIGKILL);
                false
            }
            () = ctx.ended(), if !session_over => {
                session_over = true;
                true
            }
            input = inputs.recv(), if inputs_open && failure.is_none() => match input {
                Some(Input::Frame(Message::Stdin(data))) => match &stdin {
                    Some(stdin) => {
                        // Fails only once the feeder stopped: the leader exited.
                        let _ = stdin.send(data);
                        false
                    }
                    None => {
                        failure = Some(Rejection::Unexpected(MessageKind::Stdin).into());
                        true
                    }
                },
                Some(Input::Frame(Message::StdinClose)) => {
                    stdin = None;
                    false
                }
                Some(Input::Frame(Message::Signal(request))) => {
                    group.signal(request.signal);
                    false
                }
                Some(Input::Frame(Message::Stop(Stop { scope: StopScope::Execution }))) => {
                    stopped = true;
                    true
                }
                Some(Input::Frame(message)) => {
                    failure = Some(Rejection::Unexpected(message.kind()).into());
                    true
                }
                Some(Input::Reject(report)) => {
                    failure = Some(Rejection::Report(report).into());
                    true
                }
                // The session ended; `ctx.ended()` handles that.
                None => {
                    inputs_open = false;
                    false
                }
            },
        };
        if failure.is_some() {
            abandon.cancel();
        }
        if terminate && !terminating {
            terminating = true;
            group.signal(libc::SIGTERM);
            kill_at = Instant::now().checked_add(limits.grace);
        }
    };
    let exited_at = Instant::now();
    group.signal(libc::SIGKILL);
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

/// Completes at `instant`, or never.
async fn at(instant: Option<Instant>) {
    match instant {
        Some(instant) => sleep_until(instant).await,
        None => std::future::pending().await,
    }
}
