//! Paddock's guest agent: serves the host's requests inside a VM.
//!
//! The wire protocol is [`paddock_proto`]; its crate documentation is the
//! specification this agent implements. This crate adds the I/O: listeners,
//! connections, processes and files.
//!
//! # Tasks
//!
//! Everything runs on one tokio runtime with one thread (`main.rs` builds a
//! current-thread runtime): in a guest with one vCPU under TCG, a hand-off
//! between threads (a futex wake-up and a context switch) costs more than
//! a request's own work, so PING, STATUS and executions never leave that
//! thread (`tests/tests/agent_threads.rs`).
//!
//! - Each listener ([`Listener`]) runs an accept loop: Unix socket, AF_VSOCK,
//!   or a serial port (virtio-serial or a tty), which is one long-lived stream
//!   that carries one host connection after another. Unix and vsock
//!   connections are capped ([`Config::max_connections`]); one past the cap
//!   gets ERROR `too_many_connections` and is closed.
//! - Each connection ([`serve_connection`]) has a reader, the connection task
//!   itself, which decodes frames, answers the connection-level ones (HELLO,
//!   PING, malformed frames) and routes the others to their request; and one
//!   writer task, the only one writing to the stream, fed encoded frames
//!   through a bounded channel. The reader's buffer grows with what the host
//!   sends and shrinks back when it goes quiet, so an idle connection holds
//!   about 11 KiB.
//! - Each request (EXECUTE, FILE_PUT, FILE_GET, TREE_PUT, TREE_GET,
//!   STATUS_REQUEST, FS_REQUEST) runs in its own
//!   task, fed by a bounded inbox: data within the request's window, merged;
//!   identical SIGNAL / STOP / STDIN_CLOSE frames merged while they wait; at
//!   most [`paddock_proto::MAX_QUEUED_CONTROL`] other control frames, past
//!   which the request ends with ERROR `flow_control`. The reader never waits
//!   for a request. An execution polls its process, its output pipes and its
//!   stdin within its task; it stops reading a pipe while the host's window
//!   is closed, so a process that prints without end blocks in `write`.
//! - Blocking work (file I/O, directory walks) runs on tokio's blocking
//!   pool. STATUS reads `/proc` and `statvfs` on its own task: those copy
//!   kernel memory, and a hop to the pool costs more than they do.
//!   A put writes through one blocking task fed by a bounded queue, not one
//!   hand-off per chunk; a tree put unpacks, and a tree get packs, the same
//!   way (`tree`, over `paddock-tree`, which refuses every entry that would land
//!   outside the destination).
//!
//! # Requests
//!
//! The code is layered so that nothing calls upward:
//!
//! ```text
//!   listen ─▶ connection (router: reader, HELLO, dispatch, writer)
//!                 │ opens requests, routes their frames, runs the pipeline
//!                 ▼
//!    exec · files · tree · fs_ops · status (handlers)  cgroup (containment)
//!                 │ each knows only the request layer
//!                 ▼
//!             request (RequestCtx, Inputs, Handler, WireError, Session)
//! ```
//!
//! A request is opened by a message that implements the request layer's
//! `Handler` trait (`Execute`, `FilePut`, `FileGet`, `TreePut`, `TreeGet`,
//! `StatusRequest`, `FsRequest`), which
//! says which flow-controlled directions it uses and does the work. Its
//! handler gets a context to send frames and return credit, and the inputs
//! the router forwards to it; it never sees the router. The router runs
//! every request through one pipeline, in the kata agent's order: a tracing
//! span for the request (its id and kind), the policy gate (a place kept for
//! it; there is no gate yet), the handler, then the mapping of its error to
//! an ERROR frame with the error's wire code. The handler's result, or that
//! ERROR, is the request's last frame, and the last frame with its id: the
//! request stays open until the writer is about to write that frame, and an
//! ERROR about a frame for a request that is not open goes on request id 0.
//!
//! # Sessions
//!
//! A HELLO starts a session on its connection. A HELLO that repeats the
//! current session's (non-empty) token is a resend and is answered with the
//! same HELLO_ACK; any other HELLO the agent accepts ends the current session
//! and starts a new one; a HELLO it refuses changes nothing. A session ends
//! when its connection ends (end of stream or a read error), on a new
//! HELLO, or when the agent stops. Then every execution of it is ended
//! (SIGTERM to its process group, SIGKILL to the group and its cgroup after
//! the grace period), every unfinished put is discarded, and no frame of it
//! is written any more. On a serial port the device stays open: after the
//! end of stream the agent waits briefly and reads on, and the next host
//! connection begins with HELLO (bytes before it are skipped by the decoder).
//!
//! An ERROR always ends the request it names. When the agent rejects a frame
//! whose request id is open (a flow-control overrun, a malformed payload, a
//! frame kind the request does not take, an invalid signal number), that
//! request ends with the ERROR: an execution is ended, a put discarded. A
//! frame for a request that is not open gets ERROR `unknown_request` on
//! request id 0, except WINDOW_UPDATE and RESIZE, which are ignored: the
//! host returns credit as it consumes output, and forwards window changes as
//! they happen, so either for a request that just ended is normal. PONG and
//! ERROR from the host are not answered.
//!
//! # Containment and stopping
//!
//! Each execution runs in a process group of its own and, where the agent
//! finds a cgroup v2 hierarchy it may use ([`Containment::Auto`], checked at
//! start), in a cgroup of its own; then no process it starts outlives its
//! RESULT, and HELLO_ACK announces [`paddock_proto::capability::CONTAIN_TREE`].
//! An execution with a `tty` runs on a pseudo-terminal instead of pipes, as
//! the leader of a session of its own (whose process group is signalled as
//! a pipe execution's is); HELLO_ACK announces
//! [`paddock_proto::capability::TTY`].
//! `STOP {scope: agent}`, SIGTERM and SIGINT stop the agent the same way:
//! the listeners stop (a Unix socket file the agent made is removed), every
//! session ends with each execution's grace cut to [`Config::kill_grace`],
//! the connections close and [`run`] returns.

use std::fs::File;
use std::io::{self, Read};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

mod cgroup;
mod clock;
mod connection;
mod exec;
mod files;
mod fs_ops;
mod listen;
pub mod probe;
mod request;
mod status;
#[cfg(test)]
mod test_host;
mod tree;

pub use connection::serve_connection;
pub use listen::{Endpoint, ListenError, Listener, resolve_serial_port, run};

/// The agent's own version, as announced in HELLO_ACK and STATUS_REPORT.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The default of [`Config::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;

/// The default of [`Config::max_requests`].
pub const DEFAULT_MAX_REQUESTS: usize = 256;

/// How the agent keeps an execution's processes together, so that none
/// outlives its RESULT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Containment {
    /// A cgroup v2 per execution when the system allows it (which the
    /// agent checks at start), else the process group.
    #[default]
    Auto,
    /// The process group only: a process that leaves it (`setsid`) can
    /// outlive the execution.
    ProcessGroup,
}

/// Settings that apply to every connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Largest frame payload the agent accepts (announced in HELLO_ACK), at
    /// least [`paddock_proto::MIN_MAX_PAYLOAD`].
    pub max_payload: u32,
    /// Initial flow-control window for data the host sends, per request.
    pub window: u32,
    /// Most requests open at once on one session.
    pub max_requests: usize,
    /// Most connections served at once on the Unix and vsock listeners
    /// together; one more is answered with ERROR `too_many_connections` and
    /// closed. A serial port is always served.
    pub max_connections: usize,
    /// Time between SIGTERM and SIGKILL when an execution does not say
    /// (by default the protocol's [`paddock_proto::DEFAULT_KILL_GRACE_MS`],
    /// which hosts count on), and the longest grace any execution gets when
    /// the agent stops. At most [`paddock_proto::MAX_KILL_GRACE_MS`].
    pub kill_grace: Duration,
    /// Step the wall clock to the host's time in HELLO when it is off (in a
    /// guest; never for an agent running on the host).
    pub set_clock: bool,
    /// How executions are contained.
    pub containment: Containment,
    /// With cgroup containment, start each execution with the agent itself
    /// inside the execution's cgroup for the length of the spawn, so the
    /// child is born there and the spawn is a `posix_spawn` (vfork) instead
    /// of a fork of the agent (a child that joins its cgroup itself must run
    /// code between fork and exec). Under TCG the fork of the agent cost an
    /// exec of `true` about 8 ms of its 17. Only for a process whose other
    /// threads start no processes, which holds for the agent binary (one
    /// runtime thread; the blocking pool reads files): a process-wide move
    /// would take another thread's new child along. Off by default.
    pub spawn_inside_cgroup: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_payload: paddock_proto::DEFAULT_MAX_PAYLOAD,
            window: paddock_proto::DEFAULT_WINDOW,
            max_requests: DEFAULT_MAX_REQUESTS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            kill_grace: Duration::from_millis(paddock_proto::DEFAULT_KILL_GRACE_MS),
            set_clock: false,
            containment: Containment::Auto,
            spawn_inside_cgroup: false,
        }
    }
}

/// The sessions an agent accepted, as HELLO_ACK reports them.
#[derive(Debug, Default)]
struct SessionLedger {
    /// Sessions accepted; a HELLO resent with the current token does not count.
    seq: u64,
    /// The current session's token.
    token: String,
    /// The token of the session before the current one.
    previous: String,
}

impl SessionLedger {
    /// Records a HELLO carrying `token` and returns the session's number and
    /// the previous session's token.
    fn accept(&mut self, token: &str) -> (u64, String) {
        let resent = !token.is_empty() && token == self.token;
        if !resent {
            self.seq += 1;
            self.previous = std::mem::replace(&mut self.token, token.to_owned());
        }
        (self.seq, self.previous.clone())
    }
}

/// State shared by every connection of one agent process.
#[derive(Debug)]
pub struct Agent {
    config: Config,
    boot_id: String,
    started: Instant,
    /// Sessions started so far, resent HELLOs included: identifies a session
    /// inside the agent (the writer drops frames of ended sessions).
    sessions: AtomicU64,
    /// What HELLO_ACK announces: the session number and the tokens.
    ledger: Mutex<SessionLedger>,
    running_executions: AtomicU32,
    active_transfers: AtomicU32,
    shutdown: CancellationToken,
    /// Connection tasks, so [`run`] can wait for them to wind down.
    connections: TaskTracker,
    /// One permit per connection the listeners may serve.
    connection_slots: Arc<Semaphore>,
    /// One permit per refused connection being closed (see `listen`).
    refusal_slots: Arc<Semaphore>,
    /// Where executions' cgroups are made; `None`: process groups only.
    cgroups: Option<cgroup::CgroupRoot>,
}

impl Agent {
    /// An agent with `config` and a new random boot id read from
    /// `/dev/urandom`. Call it once, at process start.
    ///
    /// # Errors
    /// The error of reading `/dev/urandom`.
    pub fn new(config: Config) -> io::Result<Arc<Self>> {
        let mut id = [0u8; 16];
        File::open("/dev/urandom")?.read_exact(&mut id)?;
        let cgroups = match config.containment {
            Containment::ProcessGroup => None,
            Containment::Auto => match cgroup::CgroupRoot::detect() {
                Ok(root) => {
                    info!(cgroup = %root.dir().display(), "Executions run in cgroups of their own");
                    Some(root)
                }
                Err(err) => {
                    warn!(
                        error = %ErrorChain(&err),
                        "Executions are contained by their process group only"
                    );
                    None
                }
            },
        };
        Ok(Arc::new(Self {
            config,
            boot_id: id.iter().map(|byte| format!("{byte:02x}")).collect(),
            started: Instant::now(),
            sessions: AtomicU64::new(0),
            ledger: Mutex::new(SessionLedger::default()),
            running_executions: AtomicU32::new(0),
            active_transfers: AtomicU32::new(0),
            shutdown: CancellationToken::new(),
            connections: TaskTracker::new(),
            connection_slots: Arc::new(Semaphore::new(config.max_connections)),
            refusal_slots: Arc::new(Semaphore::new(config.max_connections)),
            cgroups,
        }))
    }

    /// Whether every execution runs in a cgroup of its own, so that none of
    /// its processes outlives it
    /// ([`paddock_proto::capability::CONTAIN_TREE`]).
    #[must_use]
    pub fn contains_trees(&self) -> bool {
        self.cgroups.is_some()
    }

    /// Records a session opened with `token` (see [`SessionLedger::accept`]).
    fn accept_session(&self, token: &str) -> (u64, String) {
        lock(&self.ledger).accept(token)
    }

    /// The random id chosen when the agent started (32 hex digits).
    #[must_use]
    pub fn boot_id(&self) -> &str {
        &self.boot_id
    }

    /// Stops the agent, as `STOP {scope: agent}` does: every session ends and
    /// the listeners stop accepting.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Completes once the agent is stopping.
    pub async fn stopping(&self) {
        self.shutdown.cancelled().await;
    }

    fn uptime_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// Displays an error with its whole source chain, for logs.
struct ErrorChain<'a>(&'a dyn std::error::Error);

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// Locks `mutex`, recovering it if a thread panicked while holding it: every
/// value the agent guards is left consistent between statements (no update
/// can panic half way), so a poisoned lock still holds good data.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Counts one running execution or transfer for as long as it lives.
#[derive(Debug)]
struct Gauge<'a>(&'a AtomicU32);

impl<'a> Gauge<'a> {
    fn new(counter: &'a AtomicU32) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::{DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_REQUESTS, SessionLedger};

    #[test]
    fn the_protocol_documents_the_agents_defaults() {
        let doc = include_str!("../../crates/paddock-proto/PROTOCOL.md");
        for (option, value) in [
            ("--max-requests", DEFAULT_MAX_REQUESTS),
            ("--max-connections", DEFAULT_MAX_CONNECTIONS),
        ] {
            let row = format!("| `{option}` | {value} |");
            assert!(doc.contains(&row), "PROTOCOL.md has no row {row:?}");
        }
    }

    #[test]
    fn the_ledger_counts_sessions_and_ignores_resent_hellos() {
        let mut ledger = SessionLedger::default();
        assert_eq!(ledger.accept("a"), (1, String::new()));
        // The same connection's HELLO again: same session.
        assert_eq!(ledger.accept("a"), (1, String::new()));
        assert_eq!(ledger.accept("b"), (2, "a".to_owned()));
        assert_eq!(ledger.accept("b"), (2, "a".to_owned()));
        // Hosts that send no token always open a new session.
        assert_eq!(ledger.accept(""), (3, "b".to_owned()));
        assert_eq!(ledger.accept(""), (4, String::new()));
    }
}
