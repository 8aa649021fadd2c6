//! `paddock serve`: make the configured pools, serve the API on the Unix
//! socket (and TCP), and drain on SIGTERM or SIGINT.

use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use paddock::observe::Observability;
use paddock::observe::audit::{AuditConfig, AuditOptions};
use paddock::{GuestImage, Paddock, PaddockConfig};
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::daemon::Daemon;
use crate::http::{Listener, http_requests_counter, router};

/// Why the daemon could not start, or did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The observability layer (metrics, audit log) could not be set up.
    #[error("Could not set up metrics and the audit log")]
    Observe(#[source] paddock::observe::ObserveError),
    /// The image manifest could not be loaded.
    #[error("Could not load the image manifest {}", path.display())]
    Image {
        /// The manifest.
        path: PathBuf,
        /// Why.
        #[source]
        source: paddock::ImageError,
    },
    /// libvirtd could not be reached.
    #[error("Could not connect to libvirt")]
    Libvirt(#[source] paddock::libvirt::LibvirtError),
    /// A pool could not be made.
    #[error("Could not make pool `{pool}`")]
    Pool {
        /// The pool.
        pool: String,
        /// Why.
        #[source]
        source: Box<paddock::VmError>,
    },
    /// A listener could not be opened.
    #[error("Could not listen on {what}")]
    Listen {
        /// The socket path or address.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The daemon's metric could not be registered.
    #[error("Could not register the daemon's metrics")]
    Metrics(#[source] prometheus::Error),
    /// The drain left domains or files of these pools behind.
    #[error("The drain left something of {0:?} behind")]
    Leftovers(Vec<(String, String)>),
}

/// Runs the daemon of `config` until SIGTERM or SIGINT, then drains it.
/// `ready` is told the listeners' addresses once the API serves.
///
/// # Errors
/// [`ServeError`].
pub async fn run(config: Config, ready: impl FnOnce(&Ready)) -> Result<(), ServeError> {
    let stop = CancellationToken::new();
    let signals = {
        let stop = stop.clone();
        tokio::spawn(async move {
            wait_for_stop_signal().await;
            stop.cancel();
        })
    };
    let result = run_until(config, ready, stop).await;
    signals.abort();
    result
}

/// Where the API serves.
#[derive(Debug, Clone)]
pub struct Ready {
    /// The Unix socket.
    pub socket: PathBuf,
    /// The TCP address, if any (with the port the kernel chose for port 0).
    pub tcp: Option<std::net::SocketAddr>,
}

/// Runs the daemon of `config` until `stop` is cancelled, then drains it.
///
/// # Errors
/// [`ServeError`].
pub async fn run_until(
    config: Config,
    ready: impl FnOnce(&Ready),
    stop: CancellationToken,
) -> Result<(), ServeError> {
    let registry = prometheus::Registry::new();
    let mut observability = Observability::new(&registry).map_err(ServeError::Observe)?;
    if let Some(dir) = &config.server.audit_dir {
        observability = observability
            .with_audit(dir, AuditConfig::default(), AuditOptions::default())
            .map_err(ServeError::Observe)?;
    }
    observability = observability
        .with_anomaly_detection(Default::default())
        .map_err(ServeError::Observe)?;
    let image_path = &config.server.image;
    let image = GuestImage::load(image_path).map_err(|source| ServeError::Image {
        path: image_path.clone(),
        source,
    })?;
    let mut paddock_config = PaddockConfig::new(image).observe(&observability);
    paddock_config
        .libvirt_uri
        .clone_from(&config.server.libvirt_uri);
    if let Some(root) = &config.server.state_root {
        paddock_config.state_root.clone_from(root);
    }
    let paddock = Paddock::connect(paddock_config)
        .await
        .map_err(ServeError::Libvirt)?;
    let requests = http_requests_counter(&registry).map_err(ServeError::Metrics)?;
    let declarations = config.pools.clone();
    let grace = Duration::from_secs(config.server.drain_grace_s);
    let daemon = Arc::new(Daemon::new(paddock, observability, config));
    for declaration in declarations {
        let name = declaration.spec.name.clone();
        tracing::info!(pool = %name, "making the pool (its golden first)");
        match daemon
            .paddock
            .create_pool(declaration.spec, declaration.config)
            .await
        {
            Ok(pool) => daemon.add_pool(pool),
            Err(source) => {
                // What was made before is removed: a daemon that failed to
                // start leaves nothing.
                let _ = daemon.drain(Duration::ZERO).await;
                return Err(ServeError::Pool {
                    pool: name,
                    source: Box::new(source),
                });
            }
        }
    }
    let server = &daemon.config.server;
    let unix = bind_unix(&server.socket)?;
    let tcp = match server.tcp {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Listen {
                    what: addr.to_string(),
                    source,
                })?,
        ),
        None => None,
    };
    let ready_at = Ready {
        socket: server.socket.clone(),
        tcp: tcp.as_ref().and_then(|l| l.local_addr().ok()),
    };
    let serving = CancellationToken::new();
    let header_timeout = Duration::from_secs(server.header_timeout_s);
    let mut servers = tokio::task::JoinSet::new();
    let app = router(Arc::clone(&daemon), Listener::Unix, requests.clone());
    servers.spawn(serve_connections(
        Accept::Unix(unix),
        app,
        header_timeout,
        serving.clone(),
    ));
    if let Some(tcp) = tcp {
        let app = router(Arc::clone(&daemon), Listener::Tcp, requests);
        servers.spawn(serve_connections(
            Accept::Tcp(tcp),
            app,
            header_timeout,
            serving.clone(),
        ));
    }
    let reloads = tokio::spawn(reload_on_sighup(Arc::clone(&daemon)));
    tracing::info!(socket = %ready_at.socket.display(), tcp = ?ready_at.tcp, "serving");
    ready(&ready_at);
    stop.cancelled().await;
    tracing::info!("draining: no new leases; running requests get {grace:?}");
    reloads.abort();
    let leftovers = daemon.drain(grace).await;
    serving.cancel();
    while servers.join_next().await.is_some() {}
    let _ = std::fs::remove_file(&ready_at.socket);
    // Every record appended so far is written and synced before the exit.
    if let Some(log) = daemon.observability.audit_log() {
        if let Err(err) = log.flush_async().await {
            tracing::error!(error = %err, "the audit log could not be flushed");
        }
    }
    if leftovers.is_empty() {
        tracing::info!("drained: nothing left");
        Ok(())
    } else {
        Err(ServeError::Leftovers(leftovers))
    }
}

/// A listener of either kind.
enum Accept {
    Unix(UnixListener),
    Tcp(TcpListener),
}

/// A connection of either kind.
enum Connection {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

/// Serves `app` on every connection `listener` accepts, each with a
/// header-read timeout, until `stop`; then lets the connections in flight
/// finish their requests.
async fn serve_connections(
    listener: Accept,
    app: axum::Router,
    header_timeout: Duration,
    stop: CancellationToken,
) {
    use hyper_util::rt::TokioTimer;
    // What hyper-util's GracefulShutdown does, for connections that may be
    // upgraded (it watches only plain ones): on `stop`, each connection
    // finishes its request in flight, and this waits for all of them.
    let connections = tokio_util::task::TaskTracker::new();
    let closing = CancellationToken::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_HEADER_BYTES);
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = accept(&listener) => accepted,
        };
        let connection = match accepted {
            Ok(connection) => connection,
            Err(err) => {
                // Out of descriptors, most likely: pause rather than spin.
                tracing::warn!(error = %err, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        match connection {
            Connection::Unix(stream) => {
                serve_one(&builder, &connections, &closing, stream, service);
            }
            Connection::Tcp(stream) => {
                serve_one(&builder, &connections, &closing, stream, service);
            }
        }
    }
    closing.cancel();
    connections.close();
    connections.wait().await;
}

/// Serves one connection in a task of `connections`; once `closing` is
/// cancelled it ends after its request in flight.
fn serve_one<S>(
    builder: &hyper::server::conn::http1::Builder,
    connections: &tokio_util::task::TaskTracker,
    closing: &CancellationToken,
    stream: S,
    service: hyper_util::service::TowerToHyperService<axum::Router>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // Upgrades: a terminal's WebSocket (`crate::terminal`) takes the
    // connection over once its request is answered.
    let served = builder
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .with_upgrades();
    let closing = closing.clone();
    connections.spawn(async move {
        let mut served = std::pin::pin!(served);
        let ended = tokio::select! {
            ended = served.as_mut() => ended,
            () = closing.cancelled() => {
                served.as_mut().graceful_shutdown();
                served.await
            }
        };
        if let Err(err) = ended {
            tracing::debug!(error = %err, "a connection ended with an error");
        }
    });
}

async fn accept(listener: &Accept) -> std::io::Result<Connection> {
    match listener {
        Accept::Unix(l) => l.accept().await.map(|(s, _)| Connection::Unix(s)),
        Accept::Tcp(l) => l.accept().await.map(|(s, _)| Connection::Tcp(s)),
    }
}

/// The largest request head (request line and headers) a client may send.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Binds the operator's socket, mode 0600, replacing a stale one.
fn bind_unix(path: &Path) -> Result<UnixListener, ServeError> {
    let listen_err = |source| ServeError::Listen {
        what: path.display().to_string(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(listen_err)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(listen_err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "another daemon answers on it",
                )));
            }
            std::fs::remove_file(path).map_err(listen_err)?;
        }
        Ok(_) => {
            return Err(listen_err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            )));
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).map_err(listen_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(listen_err)?;
    Ok(listener)
}

/// On every SIGHUP, reads the configuration file again and applies what
/// can change live ([`Daemon::reload`]); a file that does not load is
/// logged and changes nothing.
async fn reload_on_sighup(daemon: Arc<Daemon>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::warn!("no SIGHUP handler: reloads are off");
        return;
    };
    while hangups.recv().await.is_some() {
        let path = &daemon.config.path;
        match Config::load(path) {
            Ok(new) => {
                for change in daemon.reload(&new) {
                    tracing::info!(%change, "reloaded {}", path.display());
                }
            }
            Err(err) => {
                tracing::error!(error = %err, "the reloaded configuration was refused; nothing changed")
            }
        }
    }
}

async fn wait_for_stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the daemon runs until killed.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[tokio::test]
    async fn a_client_slow_with_its_request_head_is_cut_off() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("api.sock");
        let listener = bind_unix(&path).expect("bind");
        let mode = std::fs::metadata(&path)
            .expect("socket")
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "only root may talk to the operator socket"
        );
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve_connections(
            Accept::Unix(listener),
            app,
            Duration::from_millis(300),
            stop.clone(),
        ));
        // A whole request is served.
        let mut quick = tokio::net::UnixStream::connect(&path)
            .await
            .expect("connect");
        quick
            .write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut answer = String::new();
        quick.read_to_string(&mut answer).await.expect("read");
        assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
        // Half a head, then nothing: the connection is closed.
        let mut slow = tokio::net::UnixStream::connect(&path)
            .await
            .expect("connect");
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        let started = Instant::now();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "the slow client was never cut off");
        assert!(started.elapsed() < Duration::from_secs(5));
        // A live socket is not taken over by a second daemon.
        assert!(matches!(bind_unix(&path), Err(ServeError::Listen { .. })));
        stop.cancel();
        server.await.expect("the server ends");
    }
}
