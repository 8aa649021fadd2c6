//! Byte-stream transports to a guest agent.
//!
//! | transport        | host side                                    | when                           |
//! |------------------|----------------------------------------------|--------------------------------|
//! | `Vsock`          | AF_VSOCK to (cid, port)                      | the host has `/dev/vhost-vsock` |
//! | `HybridVsock`    | Unix socket + `CONNECT <port>\n` / `OK ..\n` | vhost-user-vsock, Firecracker  |
//! | `VirtioSerial`   | the Unix socket of a libvirt channel         | any QEMU host                  |
//! | `Unix`           | a plain Unix socket                          | an agent running on the host   |
//!
//! A virtio-serial stream never closes from the guest's side: a new host
//! connection simply continues it, so stale bytes of an earlier session may
//! arrive first. The session layer copes (HELLO resets the agent's session,
//! the decoder skips garbage, request ids start at a random offset).

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::net::UnixStream;

/// Longest reply line accepted from a hybrid-vsock multiplexer.
const MAX_HANDSHAKE_LINE: u64 = 128;

/// Where the agent listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// Kernel vsock: the guest's context id and port.
    Vsock {
        /// Guest context id.
        cid: u32,
        /// Agent port.
        port: u32,
    },
    /// Hybrid vsock: a Unix socket speaking the `CONNECT <port>` handshake.
    HybridVsock {
        /// The multiplexer's Unix socket.
        path: PathBuf,
        /// Agent port inside the guest.
        port: u32,
    },
    /// A libvirt/QEMU virtio-serial channel's Unix socket.
    VirtioSerial {
        /// The channel's Unix socket.
        path: PathBuf,
    },
    /// A plain Unix socket the agent itself listens on.
    Unix {
        /// The socket path.
        path: PathBuf,
    },
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Vsock { cid, port } => write!(f, "vsock://{cid}:{port}"),
            Self::HybridVsock { path, port } => write!(f, "hvsock://{}:{port}", path.display()),
            Self::VirtioSerial { path } => write!(f, "virtio-serial://{}", path.display()),
            Self::Unix { path } => write!(f, "unix://{}", path.display()),
        }
    }
}

/// Why one connection attempt failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AttemptError {
    /// The endpoint is not there yet or refused; worth another attempt.
    #[error("Transport I/O failed")]
    Io(#[from] io::Error),
    /// The multiplexer answered something other than `OK`.
    #[error("Handshake refused: {0:?}")]
    Refused(String),
}

/// A connected, bidirectional byte stream.
#[derive(Debug)]
pub(crate) enum Stream {
    Unix(UnixStream),
    Vsock(tokio_vsock::VsockStream),
}

impl Transport {
    /// Makes one connection attempt.
    pub(crate) async fn connect_once(&self) -> Result<Stream, AttemptError> {
        match self {
            Self::Vsock { cid, port } => {
                let addr = tokio_vsock::VsockAddr::new(*cid, *port);
                Ok(Stream::Vsock(
                    tokio_vsock::VsockStream::connect(addr).await?,
                ))
            }
            Self::HybridVsock { path, port } => {
                let stream = UnixStream::connect(path).await?;
                hybrid_handshake(stream, *port).await.map(Stream::Unix)
            }
            Self::VirtioSerial { path } | Self::Unix { path } => {
                Ok(Stream::Unix(UnixStream::connect(path).await?))
            }
        }
    }
}

/// Opens a raw byte stream to the guest's vsock `port` through the
/// hybrid-vsock multiplexer listening on `path` (one `CONNECT` handshake, no
/// agent protocol): what a program in the guest other than the agent serves,
/// e.g. `paddock-agent probe` measuring the channel's own speed. A refused
/// handshake is an [`io::ErrorKind::ConnectionRefused`] error.
pub async fn connect_hybrid_vsock(path: &std::path::Path, port: u32) -> io::Result<UnixStream> {
    let stream = UnixStream::connect(path).await?;
    hybrid_handshake(stream, port)
        .await
        .map_err(|err| match err {
            AttemptError::Io(err) => err,
            AttemptError::Refused(reply) => io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("multiplexer refused port {port}: {reply:?}"),
            ),
        })
}

/// Performs the `CONNECT <port>\n` -> `OK <host port>\n` exchange that
/// vhost-device-vsock and Firecracker expect on their Unix socket. Reads the
/// reply byte by byte so no byte of the agent's stream is consumed.
async fn hybrid_handshake(mut stream: UnixStream, port: u32) -> Result<UnixStream, AttemptError> {
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await?;
    let mut line = Vec::new();
    {
        let limited = tokio::io::AsyncReadExt::take(&mut stream, MAX_HANDSHAKE_LINE);
        // A 1-byte buffer: the reply line must be consumed exactly, the agent's
        // frames may follow it in the same segment.
        let mut reader = BufReader::with_capacity(1, limited);
        reader.read_until(b'\n', &mut line).await?;
    }
    let reply = String::from_utf8_lossy(&line).trim_end().to_owned();
    if reply.starts_with("OK ") {
        Ok(stream)
    } else if line.is_empty() {
        Err(AttemptError::Io(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "multiplexer closed the connection during the handshake",
        )))
    } else {
        Err(AttemptError::Refused(reply))
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Self::Vsock(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Self::Vsock(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_flush(cx),
            Self::Vsock(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Self::Vsock(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;
    use tokio::net::UnixListener;

    use super::*;

    async fn fake_mux(reply: &'static [u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mux.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.expect("accept");
            let mut buf = [0u8; 13];
            conn.read_exact(&mut buf).await.expect("read");
            assert_eq!(&buf, b"CONNECT 1024\n");
            // The reply and the first agent bytes arrive in one segment.
            conn.write_all(&[reply, b"AGENT".as_slice()].concat())
                .await
                .expect("write");
        });
        (dir, path)
    }

    #[tokio::test]
    async fn hybrid_vsock_handshake_keeps_following_bytes() {
        let (_dir, path) = fake_mux(b"OK 1073741824\n").await;
        let transport = Transport::HybridVsock { path, port: 1024 };
        let mut stream = transport.connect_once().await.expect("connect");
        let mut rest = [0u8; 5];
        stream.read_exact(&mut rest).await.expect("agent bytes");
        assert_eq!(&rest, b"AGENT");
    }

    #[tokio::test]
    async fn hybrid_vsock_refusal_is_reported() {
        let (_dir, path) = fake_mux(b"NOPE\n").await;
        let transport = Transport::HybridVsock { path, port: 1024 };
        match transport.connect_once().await {
            Err(AttemptError::Refused(reply)) => assert_eq!(reply, "NOPE"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}
