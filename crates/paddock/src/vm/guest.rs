//! One running guest: its libvirt domain, the agent client connected to it,
//! the spec it was defined from and its directory on the host. A single
//! [`crate::Sandbox`] and a pool's [`crate::VmSlot`] are both a [`Guest`]
//! with a little more; both dereference to it.
//!
//! A guest dropped without being discarded (a panicking caller, a reset task
//! dropped with its runtime) still destroys its domain and removes its
//! directory, on a helper thread that the drop waits for.

use std::future::Future;
use std::path::{Path, PathBuf};

use paddock_agent_client::{AgentClient, Continuity};
use paddock_libvirt::{DomainSpec, Vm};

use super::VmError;

/// A running domain and its connected agent.
#[derive(Debug)]
pub struct Guest {
    vm: Vm,
    client: AgentClient,
    spec: DomainSpec,
    dir: PathBuf,
    /// The agent's boot id in the state resets return to (a snapshot, the
    /// golden's memory), once known: see [`Guest::mark_restore_point`].
    restore_point: std::sync::Mutex<Option<String>>,
    /// Set once the domain and files are gone; until then the drop removes
    /// them.
    discarded: bool,
}

impl Guest {
    /// A guest whose domain runs and whose agent answers; it owns `dir`.
    pub(crate) fn new(vm: Vm, client: AgentClient, spec: DomainSpec, dir: PathBuf) -> Self {
        Self {
            vm,
            client,
            spec,
            dir,
            restore_point: std::sync::Mutex::new(None),
            discarded: false,
        }
    }

    /// Remembers the current session's boot id as the one the state that
    /// resets return to holds: called right after that state is taken (a
    /// snapshot) or entered (a guest restored from the golden's memory).
    pub(crate) async fn mark_restore_point(&self) {
        let boot_id = self.client.session().await.map(|session| session.boot_id);
        *self
            .restore_point
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = boot_id;
    }

    /// The agent client: exec, terminals, files, file system operations
    /// (`read_dir`, `metadata`, `create_dir`...), status. A lease reaches it
    /// through its slot (`lease.client()`), and every request passes the
    /// pool's gate (its policy and rate limits).
    #[must_use]
    pub fn client(&self) -> &AgentClient {
        &self.client
    }

    /// The libvirt domain.
    #[must_use]
    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    /// The domain's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The spec the domain was defined from.
    #[must_use]
    pub fn spec(&self) -> &DomainSpec {
        &self.spec
    }

    /// The guest's directory on the host (console log, socket, disks).
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The host side of the agent's channel: the virtio-serial socket, or
    /// the hybrid-vsock backend's socket.
    #[must_use]
    pub fn agent_socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }

    /// The last `lines` lines of the guest's serial console.
    #[must_use]
    pub fn console_tail(&self, lines: usize) -> String {
        console_tail(&self.spec.console_log, lines)
    }

    /// Puts the handle of a domain restored into a new QEMU in place.
    pub(crate) fn replace_vm(&mut self, vm: Vm) {
        self.vm = vm;
    }

    /// Reconnects the agent after a reset and checks that its session shows
    /// a restored guest; `reset` names the reset for the error. A reset
    /// that started a new QEMU (restore, revert) had libvirt bind the agent
    /// socket again: its mode is restricted first.
    pub(crate) async fn reconnect_restored(
        &self,
        reset: impl FnOnce() -> String,
    ) -> Result<(), VmError> {
        self.open_restored_session(reset).await?;
        self.settle_session().await
    }

    /// The first half of [`Guest::reconnect_restored`]: the new session and
    /// its continuity, without the check that it still stands
    /// ([`Guest::settle_session`]), for callers that time the two apart.
    pub(crate) async fn open_restored_session(
        &self,
        reset: impl FnOnce() -> String,
    ) -> Result<(), VmError> {
        super::files::restrict_sockets(&self.dir)?;
        let session = self.client.reconnect().await?;
        let restore_point = self
            .restore_point
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        match self.client.continuity() {
            Some(Continuity::Restored) => {}
            // The agent was restarted in the guest after the restore point
            // (killed, respawned by init): the session before the reset was
            // the new agent's, but the reset brought back the agent the
            // state holds, boot id and all.
            Some(Continuity::Rebooted) if restore_point.as_ref() == Some(&session.boot_id) => {}
            found => {
                return Err(VmError::NotRestored {
                    reset: reset(),
                    found,
                });
            }
        }
        Ok(())
    }

    /// Makes sure the session of a guest just restored still stands.
    ///
    /// A restored guest's virtio-serial port starts from the saved state,
    /// in which the host was connected. QEMU then tells the guest that the
    /// host's socket was closed (it was, for the restore) and opened again;
    /// when the guest handles the "closed" after the agent answered the new
    /// HELLO, the agent reads an end of stream and ends that session, and
    /// the next request is refused with `not_negotiated` (seen in CI: a
    /// reset's rewarm command, once in a few hundred resets). A STATUS
    /// round trip finds that out; the session is then opened again.
    pub(crate) async fn settle_session(&self) -> Result<(), VmError> {
        self.settle_session_with(|| async {
            self.client.status().await.map(drop).map_err(VmError::from)
        })
        .await
    }

    /// [`Guest::settle_session`] with `first` as the round trip that finds
    /// out: a reset's rewarm commands serve as well as a STATUS, and save
    /// its round trip. `first` is run again on a new session if the agent
    /// refused a request of it as `not_negotiated` (that request never
    /// ran; requests of `first` before it did, and run again).
    pub(crate) async fn settle_session_with<T, F, Fut>(&self, first: F) -> Result<T, VmError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, VmError>>,
    {
        settle_with(&self.client, self.name(), first).await
    }

    /// Loads the internal snapshot `name` inside the running QEMU and
    /// reconnects the agent, which must report a restored guest.
    pub(crate) async fn load_snapshot_in_place(&self, name: &str) -> Result<(), VmError> {
        // Nothing may be in flight while the guest is rewound.
        self.client.close().await;
        self.vm.load_snapshot_in_place(name).await?;
        self.reconnect_restored(|| format!("loading {name} in place"))
            .await
    }

    /// Closes the agent session, destroys and undefines the domain, and
    /// removes the directory. A domain libvirt could not remove is tried
    /// again by the drop.
    pub(crate) async fn discard(&mut self) -> Result<(), VmError> {
        self.client.close().await;
        let domain = self.vm.discard().await;
        let files = remove_dir(&self.dir).await;
        self.discarded = domain.is_ok();
        domain?;
        files
    }

    /// Gives up on removing the guest here: its removal is someone else's
    /// (the pool remembers it), and the drop must not block on it.
    pub(crate) fn forget(&mut self) {
        self.discarded = true;
    }

    /// [`Guest::discard`] on the calling thread, best effort: for drops,
    /// when the runtime may be going away.
    pub(crate) fn discard_blocking(&mut self) {
        let _ = self.vm.discard_blocking();
        let _ = std::fs::remove_dir_all(&self.dir);
        self.discarded = true;
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if !self.discarded {
            discard_on_thread(Some(self.vm.clone()), Some(self.dir.clone()));
        }
    }
}

/// [`Guest::settle_session_with`] on `client`, the agent of `domain`.
pub(crate) async fn settle_with<T, F, Fut>(
    client: &AgentClient,
    domain: &str,
    first: F,
) -> Result<T, VmError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, VmError>>,
{
    const TRIES: u32 = 4;
    let mut last = None;
    for attempt in 0..TRIES {
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            client.reconnect().await?;
        }
        match first().await {
            Ok(done) => return Ok(done),
            Err(VmError::Agent(
                err @ paddock_agent_client::ClientError::Agent {
                    code: paddock_agent_client::ErrorCode::NotNegotiated,
                    ..
                },
            )) => {
                tracing::debug!(
                    domain,
                    attempt,
                    "the restored agent dropped its new session; opening it again"
                );
                last = Some(err);
            }
            Err(err) => return Err(err),
        }
    }
    Err(last.map_or(VmError::Config("no session"), VmError::from))
}

/// Discards a domain and a directory from a `Drop`: on a thread of its own
/// (libvirt calls block, and a drop may run on an async worker), waited for
/// so that the process does not exit with the domain still there.
pub(crate) fn discard_on_thread(vm: Option<Vm>, dir: Option<PathBuf>) {
    let work = move || {
        if let Some(vm) = vm {
            // A libvirt job of the dropped work (a reset's snapshot load)
            // may still hold the domain for a moment: try again briefly
            // rather than leave it behind.
            for _ in 0..5 {
                if vm.discard_blocking().is_ok() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(300));
            }
        }
        if let Some(dir) = dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    };
    if let Ok(thread) = std::thread::Builder::new()
        .name("paddock-discard".into())
        .spawn(work)
    {
        let _ = thread.join();
    }
}

/// Removes `dir` and everything in it; a missing one is fine.
pub(crate) async fn remove_dir(dir: &Path) -> Result<(), VmError> {
    match tokio::fs::remove_dir_all(dir).await {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(VmError::io("remove", dir)(err))
        }
        _ => Ok(()),
    }
}

/// The most of a console log [`Guest::console_tail`] reads: the guest
/// writes the log, so it can be of any size; only its end is read.
pub const CONSOLE_TAIL_MAX_BYTES: u64 = 64 * 1024;

/// The last `lines` lines of a console log (empty if there is none yet),
/// from at most its last [`CONSOLE_TAIL_MAX_BYTES`], decoded as lossy
/// UTF-8.
pub(crate) fn console_tail(path: &Path, lines: usize) -> String {
    let bytes = read_tail(path, CONSOLE_TAIL_MAX_BYTES).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The last `max` bytes of the file at `path` (all of it if shorter). When
/// the file is longer, the first, partial line of what was read is dropped.
fn read_tail(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read as _, Seek as _};
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let start = len.saturating_sub(max);
    file.seek(std::io::SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    // The guest may still be writing: `take` keeps the bound.
    file.take(max).read_to_end(&mut bytes)?;
    if start > 0 {
        let first_line_end = bytes
            .iter()
            .position(|&b| b == b'\n')
            .map_or(0, |at| at + 1);
        bytes.drain(..first_line_end);
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    #[test]
    fn the_console_tail_reads_only_the_end_of_a_large_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("console.log");
        let mut file = std::fs::File::create(&path).expect("create");
        // 32 MiB of one endless line, then invalid UTF-8 and a few lines.
        let block = vec![b'x'; 1 << 20];
        for _ in 0..32 {
            file.write_all(&block).expect("write");
        }
        file.write_all(b"\nbad \xff\xfe bytes\nline 1\nline 2\nlast line")
            .expect("write");
        drop(file);
        let tail = console_tail(&path, 3);
        assert_eq!(tail, "line 1\nline 2\nlast line");
        let tail = console_tail(&path, 4);
        assert_eq!(
            tail,
            "bad \u{fffd}\u{fffd} bytes\nline 1\nline 2\nlast line"
        );
        // Asked for more lines than the window holds: what the window has,
        // without the megabytes of `x` cut at its start.
        let tail = console_tail(&path, 1_000_000);
        assert_eq!(
            tail,
            "bad \u{fffd}\u{fffd} bytes\nline 1\nline 2\nlast line"
        );
        let window = read_tail(&path, CONSOLE_TAIL_MAX_BYTES).expect("read");
        assert!(window.len() as u64 <= CONSOLE_TAIL_MAX_BYTES);
    }

    /// A fake agent on `path`: every connection gets a HELLO_ACK; the
    /// first `refusals` requests (over all sessions) are refused as
    /// `not_negotiated`, as a restored agent that dropped its new session
    /// does, the others are answered with a STATUS report. Returns the
    /// number of HELLOs it answered.
    fn fake_agent(path: &Path, refusals: u32) -> std::sync::Arc<std::sync::atomic::AtomicU32> {
        use paddock_proto::{
            ErrorCode, ErrorReport, FrameDecoder, HelloAck, Message, StatusReport, encode_message,
            read_frame,
        };
        use std::sync::atomic::Ordering;
        let listener = std::os::unix::net::UnixListener::bind(path).expect("bind");
        let hellos = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counted = std::sync::Arc::clone(&hellos);
        std::thread::spawn(move || {
            let mut refused = 0;
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut decoder = FrameDecoder::default();
                let Ok(hello) = read_frame(&mut stream, &mut decoder) else {
                    continue;
                };
                let seq = counted.fetch_add(1, Ordering::SeqCst) + 1;
                let ack = Message::HelloAck(HelloAck {
                    version: paddock_proto::PROTOCOL_VERSION,
                    agent_version: "fake".into(),
                    capabilities: Vec::new(),
                    boot_id: "fake-boot".into(),
                    session_seq: u64::from(seq),
                    previous_token: String::new(),
                    uptime_ms: 0,
                    max_payload: paddock_proto::DEFAULT_MAX_PAYLOAD,
                    initial_window: 1 << 16,
                    clock_step_ms: 0,
                });
                let mut bytes = Vec::new();
                encode_message(&mut bytes, hello.request_id, &ack).expect("encode");
                if stream.write_all(&bytes).is_err() {
                    continue;
                }
                while let Ok(frame) = read_frame(&mut stream, &mut decoder) {
                    let answer = if refused < refusals {
                        refused += 1;
                        Message::Error(ErrorReport::new(ErrorCode::NotNegotiated, "HELLO first"))
                    } else {
                        Message::StatusReport(StatusReport {
                            boot_id: "fake-boot".into(),
                            ..StatusReport::default()
                        })
                    };
                    let mut bytes = Vec::new();
                    encode_message(&mut bytes, frame.request_id, &answer).expect("encode");
                    if stream.write_all(&bytes).is_err() {
                        break;
                    }
                }
            }
        });
        hellos
    }

    /// The reset's rewarm settles the new session in place of a STATUS: a
    /// request the agent refused as `not_negotiated` is sent again on a new
    /// session, and after four refusals the error is the agent's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_first_request_runs_again_on_a_new_session() {
        use paddock_agent_client::{ClientConfig, ClientError, ErrorCode, Transport};
        use std::sync::atomic::Ordering;
        for (refusals, settles) in [(0, true), (2, true), (4, false)] {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("agent.sock");
            let hellos = fake_agent(&path, refusals);
            let config = ClientConfig {
                keepalive_interval: None,
                ..ClientConfig::default()
            };
            let client = AgentClient::connect(Transport::Unix { path }, config)
                .await
                .expect("connect");
            let asked = std::sync::atomic::AtomicU32::new(0);
            let settled = settle_with(&client, "fake", || async {
                asked.fetch_add(1, Ordering::SeqCst);
                client.status().await.map_err(VmError::from)
            })
            .await;
            let tries = asked.load(Ordering::SeqCst);
            if settles {
                let report = settled.expect("settled");
                assert_eq!(report.boot_id, "fake-boot");
                assert_eq!(tries, refusals + 1);
            } else {
                let err = settled.expect_err("four refusals settled");
                assert!(
                    matches!(
                        err,
                        VmError::Agent(ClientError::Agent {
                            code: ErrorCode::NotNegotiated,
                            ..
                        })
                    ),
                    "{err:?}"
                );
                assert_eq!(tries, 4);
            }
            // One session, and a new one for each try after a refusal.
            assert_eq!(hellos.load(Ordering::SeqCst), tries, "refusals {refusals}");
        }
    }

    #[test]
    fn a_short_or_missing_log_is_read_whole_or_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("console.log");
        assert_eq!(console_tail(&path, 10), "");
        std::fs::write(&path, "one\ntwo\nthree\n").expect("write");
        assert_eq!(console_tail(&path, 2), "two\nthree");
        assert_eq!(console_tail(&path, 10), "one\ntwo\nthree");
    }
}
