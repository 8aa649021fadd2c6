//! [`AgentClient`]: connect with a deadline and capped backoff, keep one
//! session, reconnect when it is lost, and offer the agent's operations.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use paddock_proto::{
    DEFAULT_KILL_GRACE_MS, DEFAULT_MAX_PAYLOAD, DEFAULT_WINDOW, Execute, FileDone, HelloAck,
    Message, StatusReport, Stop, StopScope, capability,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Mutex;

use crate::connection::{Connection, Keepalive, Pacing, SessionParams};
use crate::error::ClientError;
use crate::exec::{ExecOutput, ExecStart, ExecTracking, Execution, exec_failed};
use crate::files::{self, Download};
use crate::gate::{GateRequest, Gatekeeper, RequestGate, Size};
use crate::transport::{AttemptError, Transport};
use crate::tree::{self, TreeOptions, TreeTransfer};
use paddock_events::{EventKind, FileDirection};

/// How the client connects and how long it waits.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Total time to keep trying to connect and complete HELLO (a HELLO
    /// begun near the end still gets at least `request_timeout`).
    pub connect_timeout: Duration,
    /// First pause between connection attempts; doubled after each failure.
    pub backoff_initial: Duration,
    /// Longest pause between connection attempts.
    pub backoff_max: Duration,
    /// Limit for one control request (ping, status, stop) and for HELLO.
    pub request_timeout: Duration,
    /// Longest pause without progress in a stream (stdin credit, file data).
    pub io_timeout: Duration,
    /// Timeout sent with executions that set none: every execution has one.
    pub default_exec_timeout: Duration,
    /// Extra time the client waits for a result beyond the execution's own
    /// timeout and kill grace period, before it gives up on the agent. The
    /// grace counted is the request's `kill_grace_ms`, or else
    /// [`paddock_proto::DEFAULT_KILL_GRACE_MS`], the agent's default.
    pub exec_timeout_margin: Duration,
    /// Largest payload accepted from the agent.
    pub max_payload: u32,
    /// Flow-control window granted to the agent per request.
    pub window: u32,
    /// Name sent in HELLO, for the agent's logs.
    pub client_name: String,
    /// How often the client asks the agent for its STATUS while requests
    /// are open, so that they end at once (with
    /// [`ClientError::ConnectionLost`]) when the agent was restarted in the
    /// guest or hangs, instead of at their own timeouts. Each ask may take
    /// `request_timeout`. `None` turns it off.
    pub keepalive_interval: Option<Duration>,
    /// Where the client's events go: executions started and finished,
    /// file transfers, round trips, the agent's protocol errors (see
    /// [`paddock_events`]). Disabled by default; a pool sets it per slot.
    pub events: paddock_events::Emitter,
    /// What every execution and file upload passes before it is sent
    /// (rate limits; see [`RequestGate`]). `None` (the default) admits
    /// everything; a pool sets its per-lease limits here.
    pub gate: Option<Arc<dyn RequestGate>>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(30),
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(500),
            request_timeout: Duration::from_secs(10),
            io_timeout: Duration::from_secs(30),
            default_exec_timeout: Duration::from_secs(600),
            exec_timeout_margin: Duration::from_secs(10),
            max_payload: DEFAULT_MAX_PAYLOAD,
            window: DEFAULT_WINDOW,
            client_name: concat!("paddock-agent-client/", env!("CARGO_PKG_VERSION")).to_owned(),
            keepalive_interval: Some(Duration::from_secs(5)),
            events: paddock_events::Emitter::disabled(),
            gate: None,
        }
    }
}

/// A client for one guest agent. Cheap to clone; clones share the session.
///
/// Every call runs on the current session. When the session was lost (the
/// VM was restored, the agent restarted), the next call reconnects first,
/// within [`ClientConfig::connect_timeout`]; [`AgentClient::session`] then
/// shows the new agent identity, so a caller can tell that the guest was
/// restored or rebooted.
#[derive(Debug, Clone)]
pub struct AgentClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    transport: Transport,
    config: ClientConfig,
    connection: Mutex<Option<Arc<Connection>>>,
    /// Bytes received from the agent and not yet read by a consumer.
    buffered: Arc<AtomicU64>,
    /// The token and boot id of this client's latest session, and how that
    /// session relates to the one before it.
    lineage: std::sync::Mutex<Lineage>,
    /// Set by [`AgentClient::revoke`]: requests are refused until the next
    /// [`AgentClient::reconnect`].
    revoked: std::sync::atomic::AtomicBool,
    /// Executions started through this client whose handle is alive (what
    /// a policy's `exec.max_concurrent` counts).
    running: Arc<AtomicUsize>,
}

#[derive(Debug, Default)]
struct Lineage {
    last: Option<(String, String)>,
    continuity: Option<Continuity>,
}

/// How the guest behind a new session relates to this client's previous
/// session, from the tokens in HELLO and HELLO_ACK (see
/// [`paddock_proto::HelloAck::previous_token`]). It assumes this client is
/// the agent's only host peer, as in Paddock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Continuity {
    /// This client's first session.
    First,
    /// The guest ran on from this client's previous session.
    Continued,
    /// Same boot, but the guest's memory is from before this client's
    /// previous session: it was reverted to a snapshot or restored from a
    /// saved image.
    Restored,
    /// The agent has a new boot id: the guest (or the agent) restarted.
    Rebooted,
}

impl Continuity {
    fn judge(last: Option<&(String, String)>, session: &HelloAck) -> Self {
        match last {
            None => Self::First,
            Some((_, boot_id)) if *boot_id != session.boot_id => Self::Rebooted,
            Some((token, _)) if *token == session.previous_token => Self::Continued,
            Some(_) => Self::Restored,
        }
    }
}

impl AgentClient {
    /// Connects to the agent and completes the HELLO handshake.
    ///
    /// # Errors
    /// [`ClientError::Connect`] if no connection succeeded before the
    /// deadline, [`ClientError::UnsupportedVersion`], or a handshake error.
    pub async fn connect(transport: Transport, config: ClientConfig) -> Result<Self, ClientError> {
        let client = Self {
            inner: Arc::new(Inner {
                transport,
                config,
                connection: Mutex::new(None),
                buffered: Arc::new(AtomicU64::new(0)),
                lineage: std::sync::Mutex::new(Lineage::default()),
                revoked: std::sync::atomic::AtomicBool::new(false),
                running: Arc::new(AtomicUsize::new(0)),
            }),
        };
        client.connection().await?;
        Ok(client)
    }

    /// The transport this client uses.
    #[must_use]
    pub fn transport(&self) -> &Transport {
        &self.inner.transport
    }

    /// The configuration this client uses.
    #[must_use]
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The agent's identity from the current session's HELLO_ACK.
    pub async fn session(&self) -> Option<HelloAck> {
        self.inner
            .connection
            .lock()
            .await
            .as_ref()
            .map(|c| c.session.clone())
    }

    /// How the current session's guest relates to this client's previous
    /// session: whether it was restored or rebooted in between. `None`
    /// before the first session.
    #[must_use]
    pub fn continuity(&self) -> Option<Continuity> {
        self.inner
            .lineage
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .continuity
    }

    /// Bytes of agent output received but not yet read by any consumer
    /// (bounded by one flow-control window per open request).
    #[must_use]
    pub fn buffered_bytes(&self) -> u64 {
        self.inner.buffered.load(Ordering::Relaxed)
    }

    /// Drops the current session (ending its executions in the guest) and
    /// opens a new one.
    ///
    /// # Errors
    /// As [`AgentClient::connect`].
    pub async fn reconnect(&self) -> Result<HelloAck, ClientError> {
        let mut slot = self.inner.connection.lock().await;
        if let Some(old) = slot.take() {
            old.close();
        }
        self.inner.revoked.store(false, Ordering::SeqCst);
        let conn = self.establish().await?;
        let session = conn.session.clone();
        *slot = Some(conn);
        Ok(session)
    }

    /// Ends the current session: the agent ends its executions and discards
    /// its unfinished uploads; open requests fail with
    /// [`ClientError::ConnectionLost`]. The next call opens a new session.
    pub async fn close(&self) {
        if let Some(old) = self.inner.connection.lock().await.take() {
            old.close();
        }
    }

    /// Ends the current session ([`AgentClient::close`]) and refuses every
    /// later request with [`ClientError::Refused`] (`lease_ended`, no retry)
    /// until [`AgentClient::reconnect`]: how a lease is ended at once (an
    /// anomaly rule's `end_lease`), before the pool resets its slot.
    pub async fn revoke(&self) {
        self.inner.revoked.store(true, Ordering::SeqCst);
        self.close().await;
    }

    /// The live session, reconnecting if it was lost.
    pub(crate) async fn connection(&self) -> Result<Arc<Connection>, ClientError> {
        if self.inner.revoked.load(Ordering::SeqCst) {
            return Err(ClientError::Refused {
                limit: "lease_ended",
                retry_after: None,
            });
        }
        let mut slot = self.inner.connection.lock().await;
        if let Some(conn) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(Arc::clone(conn));
        }
        *slot = None;
        let conn = self.establish().await?;
        *slot = Some(Arc::clone(&conn));
        Ok(conn)
    }

    /// Remembers a new session and judges its continuity.
    fn record_session(&self, token: &str, session: &HelloAck) {
        let mut lineage = self
            .inner
            .lineage
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        lineage.continuity = Some(Continuity::judge(lineage.last.as_ref(), session));
        lineage.last = Some((token.to_owned(), session.boot_id.clone()));
    }

    /// Connects with capped exponential backoff until the connect deadline.
    async fn establish(&self) -> Result<Arc<Connection>, ClientError> {
        let config = &self.inner.config;
        let deadline = Instant::now() + config.connect_timeout;
        let mut params = SessionParams {
            client_name: config.client_name.clone(),
            max_payload: config.max_payload,
            window: config.window,
            handshake_timeout: config.request_timeout,
            session_token: crate::connection::new_session_token(),
            events: config.events.clone(),
            gate: config.gate.clone(),
        };
        let mut pause = config.backoff_initial;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let attempt =
                tokio::time::timeout(remaining, self.inner.transport.connect_once()).await;
            let last_error = match attempt {
                Ok(Ok(stream)) => {
                    // A virtio-serial socket accepts long before the guest's
                    // agent opens its port: HELLO_ACK may take the whole boot.
                    params.handshake_timeout = deadline
                        .saturating_duration_since(Instant::now())
                        .max(config.request_timeout);
                    match Connection::establish(
                        stream,
                        &params,
                        self.keepalive(),
                        Arc::clone(&self.inner.buffered),
                    )
                    .await
                    {
                        Ok(conn) => {
                            self.record_session(&params.session_token, &conn.session);
                            tracing::debug!(
                                transport = %self.inner.transport,
                                attempts,
                                boot_id = %conn.session.boot_id,
                                session_seq = conn.session.session_seq,
                                "agent session established"
                            );
                            return Ok(conn);
                        }
                        // The agent is there but the stream broke: retry.
                        Err(ClientError::ConnectionLost { source }) => {
                            source.unwrap_or_else(|| {
                                std::io::Error::new(
                                    std::io::ErrorKind::ConnectionReset,
                                    "connection closed during HELLO",
                                )
                            })
                        }
                        Err(err) => return Err(err),
                    }
                }
                Ok(Err(AttemptError::Refused(reply))) => {
                    return Err(ClientError::VsockHandshake { reply });
                }
                Ok(Err(AttemptError::Io(err))) => err,
                Err(_) => std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
            };
            let now = Instant::now();
            if now + pause >= deadline {
                return Err(ClientError::Connect {
                    endpoint: self.inner.transport.to_string(),
                    attempts,
                    source: last_error,
                });
            }
            tracing::trace!(attempts, error = %last_error, "agent not reachable yet");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(config.backoff_max);
        }
    }

    /// The keepalive of new sessions, from the configuration.
    fn keepalive(&self) -> Keepalive {
        Keepalive {
            interval: self.inner.config.keepalive_interval,
            timeout: self.inner.config.request_timeout,
        }
    }

    /// Sends a control request and waits for its single answer.
    async fn call(&self, message: Message, what: &'static str) -> Result<Message, ClientError> {
        self.call_within(message, what, self.inner.config.request_timeout)
            .await
    }

    /// Sends a request whose answer is a single frame and waits for it, up
    /// to `timeout`.
    pub(crate) async fn call_within(
        &self,
        message: Message,
        what: &'static str,
        timeout: Duration,
    ) -> Result<Message, ClientError> {
        let conn = self.connection().await?;
        let mut request = conn.open(false)?;
        conn.send(request.id, &message)?;
        match tokio::time::timeout(timeout, request.events.recv()).await {
            Err(_) => Err(ClientError::Timeout {
                what,
                after: timeout,
            }),
            Ok(None) => Err(ClientError::lost(None)),
            Ok(Some(Err(err))) => Err(err),
            Ok(Some(Ok(Message::Error(report)))) => Err(ClientError::Agent {
                code: report.code,
                message: report.message,
            }),
            Ok(Some(Ok(answer))) => Ok(answer),
        }
    }

    /// Measures one PING/PONG round trip.
    ///
    /// # Errors
    /// A connection error or [`ClientError::Timeout`].
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        let started = Instant::now();
        match self.call(Message::Ping, "PONG").await? {
            Message::Pong => {
                let duration = started.elapsed();
                self.inner
                    .config
                    .events
                    .emit(|| EventKind::AgentRoundTrip { duration });
                Ok(duration)
            }
            other => Err(ClientError::Unexpected { kind: other.kind() }),
        }
    }

    /// Asks the agent for its guest's status.
    ///
    /// # Errors
    /// A connection error or [`ClientError::Timeout`].
    pub async fn status(&self) -> Result<StatusReport, ClientError> {
        self.admit(&mut GateRequest::Status)?;
        let started = Instant::now();
        match self.call(Message::StatusRequest, "STATUS_REPORT").await? {
            Message::StatusReport(report) => {
                let duration = started.elapsed();
                self.inner
                    .config
                    .events
                    .emit(|| EventKind::AgentRoundTrip { duration });
                Ok(report)
            }
            other => Err(ClientError::Unexpected { kind: other.kind() }),
        }
    }

    /// Stops the agent: every execution ends and the agent exits.
    ///
    /// # Errors
    /// A connection error or [`ClientError::Timeout`].
    pub async fn stop_agent(&self) -> Result<(), ClientError> {
        self.admit(&mut GateRequest::StopAgent)?;
        match self
            .call(
                Message::Stop(Stop {
                    scope: StopScope::Agent,
                }),
                "STOP ack",
            )
            .await?
        {
            Message::Stop(_) => Ok(()),
            other => Err(ClientError::Unexpected { kind: other.kind() }),
        }
    }

    /// Starts an execution. Output, stdin and the result are on the handle.
    ///
    /// An execution without `timeout_ms` gets
    /// [`ClientConfig::default_exec_timeout`]: nothing runs unbounded.
    ///
    /// A request with a `tty` runs on a terminal (see
    /// [`AgentClient::terminal`] for a handle made for one).
    ///
    /// # Errors
    /// [`ClientError::InvalidRequest`] for an empty command,
    /// [`ClientError::Unsupported`] for a `tty` to an agent without
    /// the capability, or a connection error. Spawn failures arrive from
    /// [`Execution::wait`].
    pub async fn exec(&self, mut request: Execute) -> Result<Execution, ClientError> {
        let config = &self.inner.config;
        match &request.command {
            paddock_proto::Command::Argv(argv) if argv.is_empty() => {
                return Err(ClientError::InvalidRequest("argv is empty".into()));
            }
            _ => {}
        }
        let timeout_defaulted = request.timeout_ms.is_none();
        request.timeout_ms.get_or_insert(
            u64::try_from(config.default_exec_timeout.as_millis()).unwrap_or(u64::MAX),
        );
        // Counted from here, so that two executions checked at once cannot
        // both pass a policy's last free place.
        let running = RunningExec::start(&self.inner.running);
        self.admit(&mut GateRequest::Exec {
            request: &mut request,
            timeout_defaulted,
            running: running.others(),
        })?;
        // A policy may have lowered a default timeout.
        let timeout_ms = request.timeout_ms.unwrap_or(u64::MAX);
        // The grace the agent applies: the request's, or the protocol's
        // default. An agent started with a longer default needs a larger
        // `exec_timeout_margin`.
        let grace = Duration::from_millis(request.kill_grace_ms.unwrap_or(DEFAULT_KILL_GRACE_MS));
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(timeout_ms)
                .saturating_add(grace)
                .saturating_add(config.exec_timeout_margin);
        // A terminal takes input whatever `stdin` says.
        let stdin = request.stdin || request.tty.is_some();
        let needs_tty = request.tty.is_some();
        let caps = [request.stdout_cap, request.stderr_cap];
        let started = ExecStart::next();
        config.events.emit(|| EventKind::ExecStarted {
            exec: started.exec,
            command: request.command.clone(),
            env_names: request.env.keys().cloned().collect(),
            cwd: request.cwd.clone(),
            timeout: Some(Duration::from_millis(timeout_ms)),
        });
        let sent = async {
            let conn = self.connection().await?;
            if needs_tty
                && !conn
                    .session
                    .capabilities
                    .iter()
                    .any(|c| c == capability::TTY)
            {
                // An agent without it would ignore `tty` and run on pipes.
                return Err(ClientError::Unsupported {
                    capability: capability::TTY,
                });
            }
            let pending = conn.open(true)?;
            conn.send(pending.id, &Message::Execute(request))?;
            Ok(pending)
        };
        match sent.await {
            Ok(pending) => Ok(Execution::new(
                pending,
                stdin,
                deadline,
                config.io_timeout,
                ExecTracking {
                    caps,
                    events: config.events.clone(),
                    started,
                    gate: self.gatekeeper(),
                    running,
                },
            )),
            Err(err) => {
                exec_failed(&config.events, &err, started);
                Err(err)
            }
        }
    }

    /// Runs an execution to its end and returns its output, each stream
    /// held to the request's cap (or [`crate::MAX_COLLECTED_BYTES`]) on the
    /// host as well (see [`Execution::collect`]).
    ///
    /// # Errors
    /// As [`AgentClient::exec`] and [`Execution::wait`].
    pub async fn exec_collect(&self, request: Execute) -> Result<ExecOutput, ClientError> {
        self.exec(request).await?.collect().await
    }

    /// Uploads what `reader` yields to the absolute guest path `remote`.
    /// With a gate that limits uploaded bytes, each chunk waits until the
    /// gate lets it (the length is not known up front, so it is paced
    /// rather than refused).
    ///
    /// # Errors
    /// [`ClientError::Agent`] if the agent cannot write the file,
    /// [`ClientError::ChecksumMismatch`], or a connection error.
    pub async fn put_reader<R: AsyncRead + Unpin>(
        &self,
        reader: &mut R,
        remote: &str,
        mode: u32,
    ) -> Result<FileDone, ClientError> {
        self.admit(&mut GateRequest::Put {
            path: remote,
            size: Size::Unknown,
        })?;
        let config = &self.inner.config;
        let pacing = config.gate.clone().map(|gate| Pacing {
            gate,
            events: config.events.clone(),
        });
        self.put(reader, remote, mode, pacing.as_ref()).await
    }

    /// An upload, paced by `pacing` if given.
    async fn put<R: AsyncRead + Unpin>(
        &self,
        reader: &mut R,
        remote: &str,
        mode: u32,
        pacing: Option<&Pacing>,
    ) -> Result<FileDone, ClientError> {
        self.transfer(FileDirection::Put, remote, async {
            let conn = self.connection().await?;
            let io_timeout = self.inner.config.io_timeout;
            files::put(&conn, reader, remote, mode, io_timeout, pacing).await
        })
        .await
    }

    /// Asks the gate, if there is one; a refusal is emitted and returned.
    pub(crate) fn admit(&self, request: &mut GateRequest<'_>) -> Result<(), ClientError> {
        self.gatekeeper()
            .map_or(Ok(()), |keeper| keeper.admit(request))
    }

    /// The gate's pacing of what this client sends, if there is a gate.
    fn pacing(&self) -> Option<Pacing> {
        let config = &self.inner.config;
        config.gate.clone().map(|gate| Pacing {
            gate,
            events: config.events.clone(),
        })
    }

    /// The gate with this client's emitter, if there is a gate.
    fn gatekeeper(&self) -> Option<Gatekeeper> {
        let config = &self.inner.config;
        config.gate.as_ref().map(|gate| Gatekeeper {
            gate: Arc::clone(gate),
            events: config.events.clone(),
        })
    }

    /// Runs a file transfer and emits its end (bytes, outcome, time).
    async fn transfer<T: Transferred>(
        &self,
        direction: FileDirection,
        remote: &str,
        work: impl Future<Output = Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        let started = Instant::now();
        let result = work.await;
        self.inner
            .config
            .events
            .emit(|| EventKind::FileTransferred {
                direction,
                path: remote.to_owned(),
                bytes: result.as_ref().map_or(0, Transferred::size),
                ok: result.is_ok(),
                error: result.as_ref().err().map(ClientError::kind_name),
                duration: started.elapsed(),
            });
        result
    }

    /// Uploads the local file `local` to the absolute guest path `remote`,
    /// keeping its permission bits.
    ///
    /// # Errors
    /// As [`AgentClient::put_reader`], or [`ClientError::LocalIo`].
    pub async fn put_file(
        &self,
        local: impl AsRef<Path>,
        remote: &str,
    ) -> Result<FileDone, ClientError> {
        use std::os::unix::fs::PermissionsExt as _;
        let local = local.as_ref();
        let local_err = |source| ClientError::LocalIo {
            path: local.to_owned(),
            source,
        };
        let file = tokio::fs::File::open(local).await.map_err(local_err)?;
        let metadata = file.metadata().await.map_err(local_err)?;
        self.admit(&mut GateRequest::Put {
            path: remote,
            size: Size::Known(metadata.len()),
        })?;
        let mode = metadata.permissions().mode() & 0o7777;
        let mut reader = tokio::io::BufReader::with_capacity(256 * 1024, file);
        // Admitted (and charged) whole above: not paced again.
        self.put(&mut reader, remote, mode, None).await
    }

    /// Downloads the guest file `remote` into `writer`.
    ///
    /// # Errors
    /// [`ClientError::Agent`] (e.g. `NotFound`), [`ClientError::ChecksumMismatch`],
    /// or a connection error.
    pub async fn get_writer<W: AsyncWrite + Unpin>(
        &self,
        remote: &str,
        writer: &mut W,
    ) -> Result<Download, ClientError> {
        self.admit(&mut GateRequest::Get {
            path: remote,
            size: Size::Unknown,
        })?;
        let keeper = self.gatekeeper();
        self.transfer(FileDirection::Get, remote, async {
            let conn = self.connection().await?;
            let io_timeout = self.inner.config.io_timeout;
            files::get(&conn, remote, writer, io_timeout, keeper.as_ref()).await
        })
        .await
    }

    /// Downloads the guest file `remote` to the local path `local`, with the
    /// guest file's permission bits (set-ID and sticky bits dropped). Nothing is
    /// left under `local` on failure.
    ///
    /// # Errors
    /// As [`AgentClient::get_writer`], or [`ClientError::LocalIo`].
    pub async fn get_file(
        &self,
        remote: &str,
        local: impl AsRef<Path>,
    ) -> Result<Download, ClientError> {
        self.admit(&mut GateRequest::Get {
            path: remote,
            size: Size::Unknown,
        })?;
        let keeper = self.gatekeeper();
        self.transfer(FileDirection::Get, remote, async {
            let conn = self.connection().await?;
            let io_timeout = self.inner.config.io_timeout;
            files::get_to_path(&conn, remote, local.as_ref(), io_timeout, keeper.as_ref()).await
        })
        .await
    }
}

impl AgentClient {
    /// Uploads the local directory `local` into the guest directory
    /// `remote` (made if missing) as one tar stream (TREE_PUT): regular
    /// files, directories and symlinks (never followed), with their
    /// permission bits (no set-ID or sticky bits) and mtimes; sockets,
    /// FIFOs and devices are skipped. The agent refuses any entry that
    /// would land outside `remote`. The gate sees the stream's size as it
    /// is packed (a policy's `put.max_bytes`, `put.trees`).
    ///
    /// # Errors
    /// [`ClientError::Agent`] (`unsafe_path`, `too_large`...),
    /// [`ClientError::Tree`] for a local failure, [`ClientError::Timeout`]
    /// past [`TreeOptions::timeout`], a refusal, or a connection error.
    pub async fn put_tree(
        &self,
        local: impl AsRef<Path>,
        remote: &str,
        options: &TreeOptions,
    ) -> Result<TreeTransfer, ClientError> {
        let local = local.as_ref();
        self.tree_transfer(FileDirection::Put, remote, options, async |transfer| {
            tree::put(transfer, local).await
        })
        .await
    }

    /// Downloads the guest directory `remote` into the local directory
    /// `local` (made if missing) as one tar stream (TREE_GET). The host
    /// unpacks it as strictly as the agent unpacks a put: an entry that
    /// would land outside `local` ends the download with
    /// [`TreeError::UnsafePath`](crate::TreeError::UnsafePath), and what
    /// was already written inside `local` stays. The gate sees the stream's
    /// size as it arrives (a policy's `get.max_bytes`, `get.trees`).
    ///
    /// # Errors
    /// As [`AgentClient::put_tree`], and [`ClientError::ChecksumMismatch`].
    pub async fn get_tree(
        &self,
        remote: &str,
        local: impl AsRef<Path>,
        options: &TreeOptions,
    ) -> Result<TreeTransfer, ClientError> {
        let local = local.as_ref();
        self.tree_transfer(FileDirection::Get, remote, options, async |transfer| {
            tree::get(transfer, local).await
        })
        .await
    }
}

impl AgentClient {
    /// Sends the tar stream `reader` yields (a caller's archive, e.g. the
    /// daemon's request body) into the guest directory `remote`, as
    /// [`AgentClient::put_tree`] sends a packed one. The agent judges every
    /// entry (`unsafe_path`, kinds a tree does not carry); the host counts
    /// the bytes against [`TreeOptions::max_bytes`] and the gate.
    ///
    /// # Errors
    /// As [`AgentClient::put_tree`]; [`ClientError::LocalIo`] when
    /// `reader` fails.
    pub async fn put_tree_reader<R: AsyncRead + Unpin>(
        &self,
        reader: &mut R,
        remote: &str,
        options: &TreeOptions,
    ) -> Result<TreeTransfer, ClientError> {
        self.tree_transfer(FileDirection::Put, remote, options, async |transfer| {
            tree::put_reader(transfer, reader).await
        })
        .await
    }

    /// Receives the guest directory `remote` as a tar stream into `writer`,
    /// as it arrives, without unpacking it: whoever unpacks it must judge
    /// its entries (the guest is untrusted). Its size and CRC-32 are
    /// checked against the agent's FILE_END; the counts of the result are
    /// zero.
    ///
    /// # Errors
    /// As [`AgentClient::get_tree`]; [`ClientError::LocalIo`] when
    /// `writer` fails.
    pub async fn get_tree_writer<W: AsyncWrite + Unpin>(
        &self,
        remote: &str,
        writer: &mut W,
        options: &TreeOptions,
    ) -> Result<TreeTransfer, ClientError> {
        self.tree_transfer(FileDirection::Get, remote, options, async |transfer| {
            tree::get_writer(transfer, writer).await
        })
        .await
    }
    /// Admits a tree transfer of `remote` at the gate (its size is not
    /// known yet), then runs `work` on this session with the gate's
    /// accounting (and, for a put, its pacing), and reports it as one
    /// file transfer event.
    async fn tree_transfer(
        &self,
        direction: FileDirection,
        remote: &str,
        options: &TreeOptions,
        work: impl AsyncFnOnce(&tree::Transfer<'_>) -> Result<TreeTransfer, ClientError>,
    ) -> Result<TreeTransfer, ClientError> {
        let put = matches!(direction, FileDirection::Put);
        self.admit(&mut if put {
            GateRequest::PutTree {
                path: remote,
                size: Size::Unknown,
            }
        } else {
            GateRequest::GetTree {
                path: remote,
                size: Size::Unknown,
            }
        })?;
        let keeper = self.gatekeeper();
        // Only a put's chunks wait for the gate's byte budget; a get is
        // paced by the credit it returns.
        let pacing = if put { self.pacing() } else { None };
        self.transfer(direction, remote, async {
            let conn = self.connection().await?;
            let transfer = tree::Transfer {
                conn: &conn,
                remote,
                options,
                io_timeout: self.inner.config.io_timeout,
                keeper: keeper.as_ref(),
                pacing: pacing.as_ref(),
            };
            work(&transfer).await
        })
        .await
    }
}

impl Transferred for TreeTransfer {
    fn size(&self) -> u64 {
        self.stream_bytes
    }
}

/// What a finished transfer says of its size.
trait Transferred {
    fn size(&self) -> u64;
}

impl Transferred for FileDone {
    fn size(&self) -> u64 {
        self.size
    }
}

impl Transferred for Download {
    fn size(&self) -> u64 {
        self.size
    }
}

/// An execution counted in its client's running executions from before it
/// is checked until its handle is dropped.
#[derive(Debug)]
pub(crate) struct RunningExec(Arc<AtomicUsize>);

impl RunningExec {
    fn start(running: &Arc<AtomicUsize>) -> Self {
        running.fetch_add(1, Ordering::SeqCst);
        Self(Arc::clone(running))
    }

    /// The other executions running.
    fn others(&self) -> usize {
        self.0.load(Ordering::SeqCst).saturating_sub(1)
    }
}

impl Drop for RunningExec {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
