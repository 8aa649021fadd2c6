//! Test infrastructure shared by Paddock's end-to-end tests.
//!
//! [`AgentProcess`] runs the real `paddock-agent` binary on this host over a
//! Unix socket in a private temporary directory and stops it on drop;
//! [`RawPeer`] drives it frame by frame, as a client written from the
//! protocol's documentation alone would. The
//! probes read `/proc` so tests can check what really happened to processes
//! and memory, not what the code under test reports about itself.

pub mod access;
pub mod daemon;
pub mod guest_net;
pub mod libvirtd;
pub mod netns;
pub mod probe;
pub mod prometheus_server;
pub mod subnet;
pub mod terminal;
pub mod tree;
pub mod vm;

use std::io::Write as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use paddock_agent_client::{AgentClient, ClientConfig, Execute, Execution, Transport};
use paddock_proto::{
    DEFAULT_MAX_PAYLOAD, ErrorCode, FrameDecoder, Hello, HelloAck, Message, PROTOCOL_VERSION,
    ReadFrameError, decode_message, encode_message, read_frame,
};

/// Path of the `paddock-agent` binary under test: `$PADDOCK_AGENT_BIN`, or
/// the one cargo built next to the test binary (`cargo test --workspace` and
/// `cargo xtask test` build it).
///
/// # Errors
/// When no binary is found, with the command that builds it.
pub fn agent_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("PADDOCK_AGENT_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("no current executable")?;
    // target/<profile>/deps/<test binary> -> target/<profile>/paddock-agent
    let candidate = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("paddock-agent"))
        .context("test binary has no target directory")?;
    if candidate.exists() {
        Ok(candidate)
    } else {
        bail!(
            "{} not found: run `cargo build -p paddock-guest-agent` or set PADDOCK_AGENT_BIN",
            candidate.display()
        )
    }
}

/// A `paddock-agent` process listening on a Unix socket; stopped on drop.
#[derive(Debug)]
pub struct AgentProcess {
    child: Child,
    socket: PathBuf,
    dir: tempfile::TempDir,
}

impl AgentProcess {
    /// Starts the agent with `extra_args` and waits until its socket exists.
    ///
    /// # Errors
    /// When the binary is missing, does not start, or never creates its socket.
    pub fn start(extra_args: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("temporary directory")?;
        let socket = dir.path().join("agent.sock");
        Self::start_at(dir, socket, extra_args)
    }

    fn start_at(
        dir: tempfile::TempDir,
        socket: PathBuf,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        let binary = agent_binary()?;
        let child = Command::new(&binary)
            .arg("--unix")
            .arg(&socket)
            .args(extra_args)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("spawning {}", binary.display()))?;
        let mut agent = Self { child, socket, dir };
        let socket = agent.socket.clone();
        if !wait_until(Duration::from_secs(10), || socket.exists()) {
            let status = agent.child.try_wait().ok().flatten();
            bail!(
                "agent did not create {} (exit status: {status:?})",
                socket.display()
            );
        }
        Ok(agent)
    }

    /// Kills this agent and starts a new one on the same socket path (what a
    /// rebooted guest looks like to the host).
    ///
    /// # Errors
    /// As [`AgentProcess::start`].
    pub fn restart(mut self, extra_args: &[&str]) -> anyhow::Result<Self> {
        self.kill();
        let _ = std::fs::remove_file(&self.socket);
        let dir = tempfile::tempdir().context("temporary directory")?;
        let old_dir = std::mem::replace(&mut self.dir, dir);
        let socket = self.socket.clone();
        let new = Self::start_at(old_dir, socket, extra_args);
        drop(self);
        new
    }

    /// The agent's process id.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The agent's socket path.
    #[must_use]
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A scratch directory that lives as long as the agent.
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The transport to reach this agent.
    #[must_use]
    pub fn transport(&self) -> Transport {
        Transport::Unix {
            path: self.socket.clone(),
        }
    }

    /// Connects a client with test-friendly timeouts.
    ///
    /// # Errors
    /// The client's connection error.
    pub async fn client(&self) -> anyhow::Result<AgentClient> {
        Ok(AgentClient::connect(self.transport(), test_config()).await?)
    }

    /// Whether the process has exited (reaping it if so).
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Kills the process and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` to the agent process.
    ///
    /// # Errors
    /// The error of kill(2).
    pub fn signal(&self, signal: i32) -> anyhow::Result<()> {
        let pid = libc::pid_t::try_from(self.child.id()).context("pid out of range")?;
        // SAFETY: kill(2) takes no pointers.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(std::io::Error::last_os_error()).context("kill");
        }
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit; its status, or `None`
    /// if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for AgentProcess {
    /// Stops the agent as an init system would (SIGTERM), so that it ends
    /// its executions and removes their cgroups, and kills it if it is
    /// still there after 5 s.
    fn drop(&mut self) {
        if self.signal(libc::SIGTERM).is_ok() && self.wait_exit(Duration::from_secs(5)).is_some() {
            return;
        }
        self.kill();
    }
}

/// Client settings for tests: short connect and request limits so a broken
/// agent fails a test quickly instead of hanging it.
#[must_use]
pub fn test_config() -> ClientConfig {
    ClientConfig {
        connect_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(10),
        io_timeout: Duration::from_secs(20),
        default_exec_timeout: Duration::from_secs(60),
        ..ClientConfig::default()
    }
}

/// Polls `condition` every 10 ms until it holds or `timeout` passes.
/// Returns whether it held.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Async [`wait_until`]: polls without blocking the runtime.
pub async fn wait_until_async(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Starts `sleep 100.<marker>` through `client` and waits until it runs.
/// Returns the execution and the marker that finds it in `/proc`.
///
/// # Errors
/// When the execution cannot start or does not show up within 5 s.
pub async fn start_marked_sleep(client: &AgentClient) -> anyhow::Result<(Execution, String)> {
    let marker = unique_marker();
    let cmdline = format!("sleep 100.{marker}");
    let request = Execute::argv(["sleep".to_owned(), format!("100.{marker}")]);
    let execution = client.exec(request).await?;
    if !wait_until_async(Duration::from_secs(5), || {
        processes_running(&cmdline).len() == 1
    })
    .await
    {
        bail!("`{cmdline}` did not start");
    }
    Ok((execution, marker))
}

/// Waits up to 5 s until no process carries `marker`; returns whether none does.
pub async fn all_gone(marker: &str) -> bool {
    wait_until_async(Duration::from_secs(5), || {
        processes_matching(marker).is_empty()
    })
    .await
}

/// A string unique to this test process and call, to tag processes a test
/// starts (e.g. `sleep 1000.<marker>`) so it can find them in `/proc`.
#[must_use]
pub fn unique_marker() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}{:04}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Pids of live (non-zombie) processes whose command line contains `needle`
/// (arguments joined by spaces).
#[must_use]
pub fn processes_matching(needle: &str) -> Vec<u32> {
    processes_where(|cmdline| cmdline.contains(needle))
}

/// Pids of live (non-zombie) processes whose whole command line (arguments
/// joined by spaces) is `cmdline`.
#[must_use]
pub fn processes_running(cmdline: &str) -> Vec<u32> {
    processes_where(|candidate| candidate == cmdline)
}

fn processes_where(matches: impl Fn(&str) -> bool) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id();
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|&pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    stat.rsplit(')')
                        .next()
                        .map(|rest| rest.trim_start().starts_with('Z'))
                })
                .unwrap_or(true);
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            !zombie && matches(cmdline.trim_end())
        })
        .collect()
}

/// A `/proc/<pid>/status` field in KiB (e.g. `VmRSS`, `VmHWM`).
#[must_use]
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Writes `len` pseudo-random (xorshift) bytes to `path`; returns their CRC-32.
///
/// # Errors
/// The file's I/O error.
pub fn write_random_file(path: &Path, len: usize, seed: u64) -> anyhow::Result<u32> {
    use std::io::Write as _;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut state = seed | 1;
    let mut crc = crc32fast::Hasher::new();
    let mut block = vec![0u8; 1 << 16];
    let mut left = len;
    while left > 0 {
        for word in block.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        let n = left.min(block.len());
        file.write_all(&block[..n])?;
        crc.update(&block[..n]);
        left -= n;
    }
    file.flush()?;
    Ok(crc.finalize())
}

/// CRC-32 of a file's contents.
///
/// # Errors
/// The file's I/O error.
pub fn file_crc32(path: &Path) -> anyhow::Result<u32> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path)?;
    let mut crc = crc32fast::Hasher::new();
    let mut block = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut block)?;
        if n == 0 {
            return Ok(crc.finalize());
        }
        crc.update(&block[..n]);
    }
}

/// The HELLO a [`RawPeer`] sends: every version this crate speaks, the
/// default payload limit, a 1 MiB window, no token.
#[must_use]
pub fn raw_hello() -> Hello {
    Hello {
        min_version: 1,
        max_version: PROTOCOL_VERSION,
        client: "raw-peer".into(),
        max_payload: DEFAULT_MAX_PAYLOAD,
        initial_window: 1 << 20,
        session_token: String::new(),
        host_time_unix_ms: 0,
    }
}

/// A protocol peer for the agent driven frame by frame, as a client written
/// from the protocol's documentation alone would: blocking reads with a 10 s
/// limit, no flow-control bookkeeping of its own.
#[derive(Debug)]
pub struct RawPeer {
    stream: UnixStream,
    decoder: FrameDecoder,
}

impl RawPeer {
    /// Connects to `agent`'s socket.
    ///
    /// # Errors
    /// The socket's connect error.
    pub fn connect(agent: &AgentProcess) -> anyhow::Result<Self> {
        Self::connect_to(agent.socket())
    }

    /// Connects to the agent socket at `path`.
    ///
    /// # Errors
    /// The socket's connect error.
    pub fn connect_to(path: &Path) -> anyhow::Result<Self> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Self {
            stream,
            decoder: FrameDecoder::new(DEFAULT_MAX_PAYLOAD),
        })
    }

    /// The stream, for writing raw bytes or closing it.
    pub fn stream(&mut self) -> &mut UnixStream {
        &mut self.stream
    }

    /// Sends one message on request `id`.
    ///
    /// # Errors
    /// An encoding or write error.
    pub fn send(&mut self, id: u64, message: &Message) -> anyhow::Result<()> {
        let mut bytes = Vec::new();
        encode_message(&mut bytes, id, message)?;
        self.stream.write_all(&bytes)?;
        Ok(())
    }

    /// Sends [`raw_hello`] on request id 1 and returns the HELLO_ACK.
    ///
    /// # Errors
    /// Any other answer, or a read error.
    pub fn hello(&mut self) -> anyhow::Result<HelloAck> {
        self.hello_with(1, raw_hello())
    }

    /// Sends `hello` on request `id` and returns the HELLO_ACK, which must
    /// carry the same id.
    ///
    /// # Errors
    /// Any other answer, or a read error.
    pub fn hello_with(&mut self, id: u64, hello: Hello) -> anyhow::Result<HelloAck> {
        self.send(id, &Message::Hello(hello))?;
        match self.recv()? {
            (got, Message::HelloAck(ack)) if got == id => Ok(ack),
            other => bail!("expected HELLO_ACK on request {id}, got {other:?}"),
        }
    }

    /// The next frame, or `None` at the end of the stream.
    ///
    /// # Errors
    /// A read error (a 10 s timeout included) or an invalid frame.
    pub fn try_recv(&mut self) -> anyhow::Result<Option<(u64, Message)>> {
        match read_frame(&mut self.stream, &mut self.decoder) {
            Ok(frame) => {
                let id = frame.request_id;
                Ok(Some((id, decode_message(frame)?)))
            }
            Err(ReadFrameError::Eof { buffered: 0 }) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    /// The next frame.
    ///
    /// # Errors
    /// The end of the stream, a read error or an invalid frame.
    pub fn recv(&mut self) -> anyhow::Result<(u64, Message)> {
        self.try_recv()?.context("the agent closed the connection")
    }

    /// Reads the next frame, which must be an ERROR with `code`; returns its
    /// request id.
    ///
    /// # Errors
    /// Any other frame, or a read error.
    pub fn expect_error(&mut self, code: ErrorCode) -> anyhow::Result<u64> {
        match self.recv()? {
            (id, Message::Error(report)) if report.code == code => Ok(id),
            other => bail!("expected ERROR {code:?}, got {other:?}"),
        }
    }

    /// Sends PING on `id` and expects its PONG next.
    ///
    /// # Errors
    /// Any other frame, or a read error.
    pub fn ping(&mut self, id: u64) -> anyhow::Result<()> {
        self.send(id, &Message::Ping)?;
        match self.recv()? {
            (got, Message::Pong) if got == id => Ok(()),
            other => bail!("expected PONG {id}, got {other:?}"),
        }
    }
}

/// The HELLO_ACK of a fake agent (fault injection) whose boot id is
/// `boot_id`.
#[must_use]
pub fn fake_hello_ack(boot_id: &str) -> Message {
    Message::HelloAck(HelloAck {
        version: PROTOCOL_VERSION,
        agent_version: "fake".into(),
        capabilities: Vec::new(),
        boot_id: boot_id.into(),
        session_seq: 1,
        previous_token: String::new(),
        uptime_ms: 0,
        max_payload: DEFAULT_MAX_PAYLOAD,
        initial_window: 1 << 16,
        clock_step_ms: 0,
    })
}

/// Keeps every event of the hub it subscribes to, for tests that check
/// what the pool, a sandbox or an agent client emitted.
#[derive(Debug, Default)]
pub struct EventRecorder(std::sync::Mutex<Vec<paddock_events::Event>>);

impl paddock_events::Subscriber for EventRecorder {
    fn on_event(&self, event: &paddock_events::Event) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(event.clone());
    }
}

impl EventRecorder {
    /// A hub with a recorder subscribed, and an emitter from the source
    /// `pool`/`slot`.
    #[must_use]
    pub fn start(
        pool: &str,
        slot: u32,
    ) -> (
        paddock_events::EventHub,
        std::sync::Arc<Self>,
        paddock_events::Emitter,
    ) {
        let hub = paddock_events::EventHub::new();
        let recorder = std::sync::Arc::new(Self::default());
        hub.subscribe(recorder.clone());
        let emitter = hub
            .emitter(paddock_events::Source {
                pool: Some(pool.into()),
                ..paddock_events::Source::default()
            })
            .for_slot(slot, None);
        (hub, recorder, emitter)
    }

    /// Takes the events recorded so far.
    pub fn take(&self) -> Vec<paddock_events::Event> {
        std::mem::take(
            &mut *self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

/// The repository's root (where `policies/` and `nwfilters/` are).
#[must_use]
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}
