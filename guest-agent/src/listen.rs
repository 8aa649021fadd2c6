//! Listeners: Unix sockets, AF_VSOCK and serial ports.
//!
//! Unix and vsock listeners accept connections and serve each in its own
//! task, at most [`Config::max_connections`](crate::Config) at once. A
//! connection past that is answered with one ERROR `too_many_connections`
//! on request id 0 and closed: the agent writes the ERROR, shuts its side
//! down, and reads (and drops) what the host sends for up to
//! [`REFUSAL_LINGER`], so that the host reads the ERROR and then the end of
//! the stream rather than a reset.
//!
//! A serial port (virtio-serial, or any tty or character device) is one
//! stream that outlives host connections: the agent opens it once and keeps
//! reading it. At the end of the stream (virtio-serial reports that while no
//! host is connected) or on a read error, the session ends, the agent waits
//! [`SERIAL_RETRY_DELAY`] and reads on.
//!
//! When the agent stops, the listeners stop accepting and a Unix socket the
//! agent created is removed, unless another socket has taken its path.

use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use paddock_proto::{ErrorCode, ErrorReport, Message, encode_message};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::UnixListener;
use tokio::task::JoinSet;
use tokio_vsock::{VMADDR_CID_ANY, VsockAddr, VsockListener};
use tracing::{debug, info, warn};

use crate::{Agent, serve_connection};

/// Where virtio-serial ports list their names.
const VIRTIO_PORTS: &str = "/sys/class/virtio-ports";

/// Pause before reading a serial port again after its stream ended.
const SERIAL_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Pause after a failed accept (for instance, out of file descriptors).
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// How long a refused connection is read from after its ERROR, at most.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// Bytes read from a refused connection after its ERROR, at most.
const REFUSAL_DRAIN: usize = 64 * 1024;

/// Why a listener could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Binding the Unix socket failed.
    #[error("Could not listen on the Unix socket `{path}`")]
    Unix {
        /// The socket path.
        path: PathBuf,
        /// The failure.
        #[source]
        source: io::Error,
    },
    /// Binding the vsock port failed.
    #[error("Could not listen on vsock port {port} (is the vsock transport loaded?)")]
    Vsock {
        /// The port.
        port: u32,
        /// The failure.
        #[source]
        source: io::Error,
    },
    /// Opening the serial port failed.
    #[error("Could not open the serial port `{path}`")]
    Serial {
        /// The device path.
        path: PathBuf,
        /// The failure.
        #[source]
        source: io::Error,
    },
    /// No virtio-serial port has the name.
    #[error("No virtio-serial port is named `{name}` (looked in {VIRTIO_PORTS})")]
    NoSuchPort {
        /// The port name.
        name: String,
    },
}

/// Where the agent listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A Unix socket path.
    Unix(PathBuf),
    /// An AF_VSOCK port, on any CID.
    Vsock(u32),
    /// A serial port or other character device path.
    Serial(PathBuf),
}

/// A bound listener or an open serial port.
#[derive(Debug)]
pub struct Listener(Bound);

#[derive(Debug)]
enum Bound {
    /// A Unix socket the agent created, and the file it created for it.
    Unix(UnixListener, SocketFile),
    /// An AF_VSOCK socket.
    Vsock(VsockListener),
    /// A serial port.
    Serial(Arc<AsyncFd<File>>),
}

/// The file of a Unix socket the agent bound: its path, and the device and
/// inode it had, so that the agent removes only its own.
#[derive(Debug)]
struct SocketFile {
    path: PathBuf,
    id: (u64, u64),
}

impl SocketFile {
    fn of(path: &Path) -> io::Result<Self> {
        use std::os::unix::fs::MetadataExt as _;
        let metadata = std::fs::symlink_metadata(path)?;
        Ok(Self {
            path: path.to_owned(),
            id: (metadata.dev(), metadata.ino()),
        })
    }

    /// Removes the file if it is still the socket the agent bound.
    fn remove(&self) {
        use std::os::unix::fs::MetadataExt as _;
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|metadata| (metadata.dev(), metadata.ino()) == self.id);
        if !ours {
            return;
        }
        match std::fs::remove_file(&self.path) {
            Ok(()) => debug!(path = %self.path.display(), "Removed the socket file"),
            Err(err) => {
                warn!(%err, path = %self.path.display(), "Could not remove the socket file")
            }
        }
    }
}

impl Listener {
    /// Binds or opens `endpoint`. A stale Unix socket file is removed first,
    /// and the new socket gets mode 0600; a tty is put in raw mode. Blocks
    /// briefly; call it within a tokio runtime context, before serving.
    ///
    /// # Errors
    /// [`ListenError`] naming the endpoint.
    pub fn bind(endpoint: &Endpoint) -> Result<Self, ListenError> {
        let bound = match endpoint {
            Endpoint::Unix(path) => bind_unix(path).map_err(|source| ListenError::Unix {
                path: path.clone(),
                source,
            })?,
            Endpoint::Vsock(port) => VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, *port))
                .map(Bound::Vsock)
                .map_err(|source| ListenError::Vsock {
                    port: *port,
                    source,
                })?,
            Endpoint::Serial(path) => open_serial(path)
                .map(|port| Bound::Serial(Arc::new(port)))
                .map_err(|source| ListenError::Serial {
                    path: path.clone(),
                    source,
                })?,
        };
        Ok(Self(bound))
    }

    async fn serve(self, agent: Arc<Agent>) {
        match self.0 {
            Bound::Unix(listener, file) => {
                let listener = &listener;
                accept_loop(&agent, move || async move {
                    listener.accept().await.map(|(stream, _)| stream)
                })
                .await;
                file.remove();
            }
            Bound::Vsock(listener) => {
                let listener = &listener;
                accept_loop(&agent, move || async move {
                    listener.accept().await.map(|(stream, _)| stream)
                })
                .await;
            }
            Bound::Serial(port) => serve_serial(&agent, &port).await,
        }
    }
}

/// Serves every listener until the agent stops and every connection has
/// wound down.
pub async fn run(agent: Arc<Agent>, listeners: Vec<Listener>) {
    let mut serving = JoinSet::new();
    for listener in listeners {
        serving.spawn(listener.serve(Arc::clone(&agent)));
    }
    while serving.join_next().await.is_some() {}
    agent.connections.close();
    agent.connections.wait().await;
    info!("Agent stopped");
}

/// The device path of the virtio-serial port called `name`.
///
/// # Errors
/// [`ListenError::NoSuchPort`] if no port has that name.
pub fn resolve_serial_port(name: &str) -> Result<PathBuf, ListenError> {
    let not_found = || ListenError::NoSuchPort {
        name: name.to_owned(),
    };
    let ports = std::fs::read_dir(VIRTIO_PORTS).map_err(|_| not_found())?;
    ports
        .filter_map(Result::ok)
        .find(|port| {
            std::fs::read_to_string(port.path().join("name"))
                .is_ok_and(|port_name| port_name.trim_end() == name)
        })
        .map(|port| Path::new("/dev").join(port.file_name()))
        .ok_or_else(not_found)
}

fn bind_unix(path: &Path) -> io::Result<Bound> {
    match std::fs::symlink_metadata(path) {
        Ok(metadata) if metadata.file_type().is_socket() => std::fs::remove_file(path)?,
        // Anything else is left alone: bind reports it.
        Ok(_) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(Bound::Unix(listener, SocketFile::of(path)?))
}

async fn accept_loop<A, F, S>(agent: &Arc<Agent>, mut accept: A)
where
    A: FnMut() -> F,
    F: Future<Output = io::Result<S>>,
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            accepted = accept() => accepted,
            () = agent.stopping() => return,
        };
        let stream = match accepted {
            Ok(stream) => stream,
            Err(err) => {
                warn!(%err, "Could not accept a connection");
                tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&agent.connection_slots).try_acquire_owned() else {
            warn!(
                max = agent.config.max_connections,
                "Refused a connection: too many connections"
            );
            // Closing politely takes up to a second; a flood of connections
            // past the limit is closed at once instead.
            if let Ok(refusal) = Arc::clone(&agent.refusal_slots).try_acquire_owned() {
                let max = agent.config.max_connections;
                agent.connections.spawn(async move {
                    refuse(stream, max).await;
                    drop(refusal);
                });
            }
            continue;
        };
        let connection = serve_connection(Arc::clone(agent), stream);
        agent.connections.spawn(async move {
            match connection.await {
                Ok(()) => info!("Connection closed"),
                Err(err) => warn!(%err, "Connection failed"),
            }
            drop(slot);
        });
    }
}

/// Answers a connection past the limit with ERROR `too_many_connections`
/// and closes it (see the module documentation).
async fn refuse<S: AsyncRead + AsyncWrite>(stream: S, max: usize) {
    let report = ErrorReport::new(
        ErrorCode::TooManyConnections,
        format!("The agent serves at most {max} connections at once"),
    );
    let mut frame = Vec::new();
    if let Err(err) = encode_message(&mut frame, 0, &Message::Error(report)) {
        warn!(%err, "Could not encode the refusal");
        return;
    }
    let mut stream = std::pin::pin!(stream);
    let closed = async {
        stream.write_all(&frame).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 512];
        let mut drained = 0;
        while drained < REFUSAL_DRAIN {
            match stream.read(&mut sink).await? {
                0 => break,
                read => drained += read,
            }
        }
        io::Result::Ok(())
    };
    match tokio::time::timeout(REFUSAL_LINGER, closed).await {
        Ok(Ok(())) | Err(_) => {}
        Ok(Err(err)) => debug!(%err, "Could not close a refused connection politely"),
    }
}

/// Serves one host connection after another on a serial port.
async fn serve_serial(agent: &Arc<Agent>, port: &Arc<AsyncFd<File>>) {
    let mut failing = false;
    loop {
        match serve_connection(Arc::clone(agent), Port(Arc::clone(port))).await {
            Ok(()) => failing = false,
            // A port that keeps failing would otherwise log ten times a second.
            Err(err) if !failing => {
                warn!(%err, "Could not read the serial port; retrying");
                failing = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            () = tokio::time::sleep(SERIAL_RETRY_DELAY) => {}
            () = agent.stopping() => return,
        }
    }
}

fn open_serial(path: &Path) -> io::Result<AsyncFd<File>> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path)?;
    if file.is_terminal() {
        make_raw(&file)?;
    }
    // SAFETY: the File owns its descriptor, and the AsyncFd owns the File: the
    // descriptor stays open and the same for the AsyncFd's whole life.
    Ok(unsafe { AsyncFd::register(file) }?)
}

/// Puts a tty in raw mode: no echo, no line editing, no byte translation.
fn make_raw(tty: &File) -> io::Result<()> {
    let fd = tty.as_raw_fd();
    let mut termios = MaybeUninit::<libc::termios>::uninit();
    // SAFETY: tcgetattr writes one termios through a pointer valid for the call.
    if unsafe { libc::tcgetattr(fd, termios.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: tcgetattr succeeded, so it initialised `termios`.
    let mut termios = unsafe { termios.assume_init() };
    // SAFETY: cfmakeraw only modifies the termios it is given.
    unsafe { libc::cfmakeraw(&mut termios) };
    // SAFETY: tcsetattr reads one termios through a pointer valid for the call.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &termios) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One host connection's handle on a serial port; the port stays open.
#[derive(Debug)]
struct Port(Arc<AsyncFd<File>>);

impl AsyncRead for Port {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut ready = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match ready.try_io(|port| port.get_ref().read(unfilled)) {
                Ok(Ok(read)) => {
                    buf.advance(read);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(err)) => return Poll::Ready(Err(err)),
                Err(_would_block) => {}
            }
        }
    }
}

impl AsyncWrite for Port {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut ready = ready!(self.0.poll_write_ready(cx))?;
            if let Ok(written) = ready.try_io(|port| port.get_ref().write(data)) {
                return Poll::Ready(written);
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// The port stays open for the next host connection.
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::CStr;
    use std::os::fd::{FromRawFd, OwnedFd};

    use paddock_proto::{FrameDecoder, Message, decode_message, encode_message};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::test_host::{hello, test_config};

    async fn send<W: AsyncWrite + Unpin>(writer: &mut W, id: u64, message: &Message) {
        let mut bytes = Vec::new();
        encode_message(&mut bytes, id, message).expect("encode");
        writer.write_all(&bytes).await.expect("write");
    }

    async fn recv<R: AsyncRead + Unpin>(
        reader: &mut R,
        decoder: &mut FrameDecoder,
    ) -> (u64, Message) {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(frame) = decoder.next_frame().expect("valid frame") {
                return (
                    frame.request_id,
                    decode_message(frame).expect("valid message"),
                );
            }
            let read = tokio::time::timeout(Duration::from_secs(5), reader.read(&mut buf))
                .await
                .expect("answer in time")
                .expect("read");
            assert!(read > 0, "unexpected end of stream");
            decoder.feed(&buf[..read]);
        }
    }

    async fn stop(agent: &Arc<Agent>, running: tokio::task::JoinHandle<()>) {
        agent.shutdown();
        tokio::time::timeout(Duration::from_secs(5), running)
            .await
            .expect("run returns after shutdown")
            .expect("no panic");
    }

    #[tokio::test]
    async fn unix_listener_replaces_a_stale_socket_and_serves() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).expect("stale socket"));
        let listener = Listener::bind(&Endpoint::Unix(path.clone())).expect("bind");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let agent = Agent::new(test_config()).expect("agent");
        let running = tokio::spawn(run(Arc::clone(&agent), vec![listener]));
        let mut stream = tokio::net::UnixStream::connect(&path)
            .await
            .expect("connect");
        let mut decoder = FrameDecoder::default();
        send(&mut stream, 0, &Message::Hello(hello())).await;
        assert!(matches!(
            recv(&mut stream, &mut decoder).await,
            (0, Message::HelloAck(_))
        ));
        stop(&agent, running).await;
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.expect("read");
        assert!(rest.is_empty(), "the agent closes its connections");
        assert!(!path.exists(), "the agent removes its socket file");

        let file = dir.path().join("file");
        std::fs::write(&file, b"keep").expect("write");
        assert!(matches!(
            Listener::bind(&Endpoint::Unix(file.clone())),
            Err(ListenError::Unix { .. })
        ));
        assert_eq!(std::fs::read(&file).expect("kept"), b"keep");
    }

    /// A pty: the master for the test, the slave's path for the agent.
    fn open_pty() -> (Port, PathBuf) {
        // SAFETY: posix_openpt takes no pointers.
        let fd = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK) };
        assert!(fd >= 0, "posix_openpt: {}", io::Error::last_os_error());
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        let master = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        // SAFETY: grantpt and unlockpt take a descriptor only.
        assert_eq!(unsafe { libc::grantpt(fd) }, 0);
        // SAFETY: as above.
        assert_eq!(unsafe { libc::unlockpt(fd) }, 0);
        let mut name = [0 as libc::c_char; 128];
        // SAFETY: ptsname_r writes at most `name.len()` bytes into `name`.
        let rc = unsafe { libc::ptsname_r(fd, name.as_mut_ptr(), name.len()) };
        assert_eq!(rc, 0);
        // SAFETY: ptsname_r succeeded, so `name` holds a NUL-terminated string.
        let slave = unsafe { CStr::from_ptr(name.as_ptr()) };
        let slave = PathBuf::from(slave.to_str().expect("utf-8 name"));
        // SAFETY: the File owns its descriptor for the AsyncFd's whole life.
        let master = unsafe { AsyncFd::register(master) }.expect("register");
        (Port(Arc::new(master)), slave)
    }

    #[tokio::test]
    async fn serial_tty_is_raw_and_serves_one_host_after_another() {
        let (mut master, slave) = open_pty();
        let listener = Listener::bind(&Endpoint::Serial(slave)).expect("open");
        let agent = Agent::new(test_config()).expect("agent");
        let running = tokio::spawn(run(Arc::clone(&agent), vec![listener]));
        let mut decoder = FrameDecoder::default();

        // Control bytes (LF, CR, ^D, ^C, ^Z, ESC, XON, DEL) must pass as they
        // are, and nothing may be echoed.
        let id = 0x7f11_1b1a_0304_0d0a;
        send(&mut master, 0, &Message::Hello(hello())).await;
        send(&mut master, id, &Message::Ping).await;
        match recv(&mut master, &mut decoder).await {
            (0, Message::HelloAck(ack)) => assert_eq!(ack.session_seq, 1),
            other => panic!("expected HELLO_ACK, got {other:?}"),
        }
        assert_eq!(recv(&mut master, &mut decoder).await, (id, Message::Pong));

        // The next host connection on the same stream starts with garbage
        // left over and a new HELLO.
        master.write_all(b"\x00 left over").await.expect("write");
        send(&mut master, 0, &Message::Hello(hello())).await;
        match recv(&mut master, &mut decoder).await {
            (0, Message::Error(_)) => {}
            other => panic!("expected ERROR bad_frame, got {other:?}"),
        }
        match recv(&mut master, &mut decoder).await {
            (0, Message::HelloAck(ack)) => assert_eq!(ack.session_seq, 2),
            other => panic!("expected HELLO_ACK, got {other:?}"),
        }
        stop(&agent, running).await;
    }

    #[tokio::test]
    async fn listener_errors_name_the_endpoint() {
        let err = Listener::bind(&Endpoint::Serial("/nonexistent/port".into()))
            .expect_err("no such device");
        assert!(err.to_string().contains("/nonexistent/port"), "{err}");
        assert!(matches!(
            resolve_serial_port("paddock-no-such-port"),
            Err(ListenError::NoSuchPort { .. })
        ));
    }
}
