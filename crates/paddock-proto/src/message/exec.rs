//! EXECUTE and the messages of a running execution: RESULT, SIGNAL, STOP.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::nullable::or_default;
use super::tty::Tty;

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// An argument vector; `argv[0]` is looked up in `PATH`.
    Argv(Vec<String>),
    /// A command line for `/bin/sh -c`.
    Shell(String),
}

/// Starts a process (host -> agent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Execute {
    /// What to run.
    pub command: Command,
    /// Variables to set (added to the agent's environment unless `clear_env`).
    #[serde(default, deserialize_with = "or_default")]
    pub env: BTreeMap<String, String>,
    /// Start from an empty environment.
    #[serde(default, deserialize_with = "or_default")]
    pub clear_env: bool,
    /// Working directory; the agent's own when absent.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Wall-clock limit in milliseconds, at least 1; the execution is ended
    /// past it. Absent (or `null`): no limit. 0 is refused.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Most stdout bytes to forward; the rest is read, counted and
    /// discarded (0 forwards nothing). Absent: no cap.
    #[serde(default)]
    pub stdout_cap: Option<u64>,
    /// Most stderr bytes to forward, as `stdout_cap`.
    #[serde(default)]
    pub stderr_cap: Option<u64>,
    /// Whether the host streams stdin; otherwise stdin is `/dev/null`.
    #[serde(default, deserialize_with = "or_default")]
    pub stdin: bool,
    /// Milliseconds between SIGTERM and SIGKILL when the execution is
    /// ended; the agent's default when absent ([`DEFAULT_KILL_GRACE_MS`]
    /// unless the agent was started with another). Values above
    /// [`MAX_KILL_GRACE_MS`] count as that maximum.
    #[serde(default)]
    pub kill_grace_ms: Option<u64>,
    /// Run on a pseudo-terminal (only to an agent that announces
    /// [`capability::TTY`](crate::capability::TTY)); absent: pipes. With a
    /// terminal, `stdin` is implied, all output comes as STDOUT, and
    /// `stderr_cap` is unused.
    #[serde(default)]
    pub tty: Option<Tty>,
}

/// The longest grace period between SIGTERM and SIGKILL an agent applies
/// (one minute): a larger [`Execute::kill_grace_ms`] is clamped to it, so
/// ending an execution is always bounded.
pub const MAX_KILL_GRACE_MS: u64 = 60_000;

/// The highest signal number a SIGNAL may carry (Linux's `SIGRTMAX`).
pub const MAX_SIGNAL: i32 = 64;

/// The grace period between SIGTERM and SIGKILL, in milliseconds, that an
/// agent applies when [`Execute::kill_grace_ms`] is absent: to a timeout, a
/// STOP, and the end of the session. An agent may be configured with another
/// (`paddock-agent --kill-grace-ms`); a host that sets no grace counts this
/// one when it bounds its wait for RESULT.
pub const DEFAULT_KILL_GRACE_MS: u64 = 1_000;

impl Execute {
    /// An execution of `argv` with every option at its default.
    #[must_use]
    pub fn argv<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::new(Command::Argv(argv.into_iter().map(Into::into).collect()))
    }

    /// An execution of `sh -c line` with every option at its default.
    #[must_use]
    pub fn shell(line: impl Into<String>) -> Self {
        Self::new(Command::Shell(line.into()))
    }

    fn new(command: Command) -> Self {
        Self {
            command,
            env: BTreeMap::new(),
            clear_env: false,
            cwd: None,
            timeout_ms: None,
            stdout_cap: None,
            stderr_cap: None,
            stdin: false,
            kill_grace_ms: None,
            tty: None,
        }
    }
}

/// How an execution ended (agent -> host). The last frame of its request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecResult {
    /// Exit status, when the process exited normally.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Signal number, when the process was killed by a signal.
    #[serde(default)]
    pub signal: Option<i32>,
    /// The agent ended the process group because `timeout_ms` passed.
    #[serde(default, deserialize_with = "or_default")]
    pub timed_out: bool,
    /// The agent ended the process group because of a STOP.
    #[serde(default, deserialize_with = "or_default")]
    pub stopped: bool,
    /// Stdout was longer than `stdout_cap`; only the first bytes were sent.
    #[serde(default, deserialize_with = "or_default")]
    pub stdout_truncated: bool,
    /// Stderr was longer than `stderr_cap`; only the first bytes were sent.
    #[serde(default, deserialize_with = "or_default")]
    pub stderr_truncated: bool,
    /// Bytes the process wrote to stdout (sent or not).
    #[serde(default, deserialize_with = "or_default")]
    pub stdout_bytes: u64,
    /// Bytes the process wrote to stderr (sent or not).
    #[serde(default, deserialize_with = "or_default")]
    pub stderr_bytes: u64,
    /// Wall-clock time from spawn to exit, in microseconds.
    #[serde(default, deserialize_with = "or_default")]
    pub duration_us: u64,
}

/// Sends a signal to a running execution's process group (host -> agent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalRequest {
    /// Linux signal number, `1..=`[`MAX_SIGNAL`].
    pub signal: i32,
}

impl SignalRequest {
    /// Whether the number names a signal (`1..=`[`MAX_SIGNAL`]); 0, the
    /// "is it alive" probe of kill(2), is not a signal to send.
    #[must_use]
    pub fn is_valid(&self) -> bool {
        (1..=MAX_SIGNAL).contains(&self.signal)
    }
}

/// What a STOP ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopScope {
    /// The execution with the frame's request id (SIGTERM, grace, SIGKILL).
    Execution,
    /// The whole agent: every execution ends, then the agent exits.
    Agent,
}

/// Cancels an execution or stops the agent (host -> agent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stop {
    /// What to stop.
    pub scope: StopScope,
}
