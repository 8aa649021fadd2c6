//! `paddock exec -t`: a terminal in a lease's guest over the daemon's
//! WebSocket (`GET /v1/leases/{id}/terminal`, `API.md`).
//!
//! When this process's stdin is a terminal it is put in raw mode for the
//! session (every key goes to the guest, Ctrl-C included) and restored on
//! every way out; SIGWINCH is forwarded as a resize. The exit status is the
//! guest command's, as for `paddock exec`.

use std::io::Write as _;
use std::os::fd::AsRawFd as _;

use anyhow::Context as _;
use futures_util::{SinkExt as _, StreamExt as _};
use paddock_server::terminal::{ClientControl, ServerControl};
use paddock_server::wire::{ErrorEnvelope, ExecEnd};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::Failure;
use crate::client::{CallError, Target};

/// The local terminal in raw mode until this is dropped.
struct RawMode {
    saved: libc::termios,
}

impl RawMode {
    /// Raw mode on stdin, if stdin is a terminal.
    fn enter() -> Option<Self> {
        let fd = std::io::stdin().as_raw_fd();
        // SAFETY: a zeroed termios is a valid value to be overwritten by
        // tcgetattr, which writes one termios through the pointer.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: isatty takes a descriptor; tcgetattr writes `saved`.
        if unsafe { libc::isatty(fd) } != 1 || unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw edits the termios it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: tcsetattr reads one termios through the pointer.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        Some(Self { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: tcsetattr reads one termios through the pointer.
        unsafe { libc::tcsetattr(std::io::stdin().as_raw_fd(), libc::TCSANOW, &self.saved) };
    }
}

/// The local terminal's window (rows, cols), if stdout is one.
fn window() -> Option<(u16, u16)> {
    // SAFETY: a zeroed winsize is valid; TIOCGWINSZ writes one through the
    // pointer.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let rc = unsafe { libc::ioctl(std::io::stdout().as_raw_fd(), libc::TIOCGWINSZ, &mut size) };
    (rc == 0 && size.ws_row > 0 && size.ws_col > 0).then_some((size.ws_row, size.ws_col))
}

/// `argv` as one line for `/bin/sh -c`, each argument quoted.
fn shell_line(argv: &[String]) -> String {
    argv.iter()
        .map(|arg| format!("'{}'", arg.replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The exit status of a terminal that ended as `end` says.
fn status_of(end: &ExecEnd) -> u8 {
    if end.timed_out {
        124
    } else if let Some(signal) = end.signal {
        u8::try_from(128 + signal.clamp(0, 127)).unwrap_or(255)
    } else {
        end.exit_code
            .and_then(|code| u8::try_from(code).ok())
            .unwrap_or(1)
    }
}

/// Runs `command` on a terminal in a new lease of `pool` (or in `lease`,
/// kept afterwards); returns its exit status.
pub async fn exec(
    target: &Target,
    pool: &str,
    lease: Option<&str>,
    command: &[String],
    timeout_ms: Option<u64>,
) -> Result<u8, Failure> {
    let (id, ours) = match lease {
        Some(id) => (id.to_owned(), false),
        None => (crate::acquire(target, pool, None).await?.id, true),
    };
    let result = run(target, &id, command, timeout_ms).await;
    if ours {
        if let Err(err) = crate::release(target, &id).await {
            eprintln!("paddock: releasing {id}: {err}");
        }
    }
    result
}

/// Runs `command` (an interactive shell when empty) on a terminal in lease
/// `id`; returns its exit status.
async fn run(
    target: &Target,
    id: &str,
    command: &[String],
    timeout_ms: Option<u64>,
) -> Result<u8, Failure> {
    let mut path = format!("/v1/leases/{id}/terminal?");
    let mut query = Vec::new();
    if !command.is_empty() {
        query.push(format!("cmd={}", encode(&shell_line(command))));
    }
    if let Ok(term) = std::env::var("TERM") {
        query.push(format!("term={}", encode(&term)));
    }
    if let Some((rows, cols)) = window() {
        query.push(format!("rows={rows}&cols={cols}"));
    }
    if let Some(ms) = timeout_ms {
        query.push(format!("timeout_ms={ms}"));
    }
    path.push_str(&query.join("&"));
    let socket = connect(target, &path).await?;
    let raw = RawMode::enter();
    let status = carry(socket).await;
    drop(raw);
    status
}

type Socket = tokio_tungstenite::WebSocketStream<Box<dyn Stream>>;

/// A byte stream to the daemon.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// Opens the WebSocket: an error answer is the daemon's [`CallError::Api`].
async fn connect(target: &Target, path: &str) -> Result<Socket, Failure> {
    let (stream, host, token): (Box<dyn Stream>, &str, Option<&str>) = match target {
        Target::Unix(socket) => {
            let stream = tokio::net::UnixStream::connect(socket)
                .await
                .with_context(|| format!("no daemon answers on {}", socket.display()))?;
            (Box::new(stream), "paddock", None)
        }
        Target::Tcp { authority, token } => {
            let stream = tokio::net::TcpStream::connect(authority.as_str())
                .await
                .with_context(|| format!("no daemon answers on {authority}"))?;
            (Box::new(stream), authority.as_str(), token.as_deref())
        }
    };
    let mut request = format!("ws://{host}{path}")
        .into_client_request()
        .context("building the request")?;
    if let Some(token) = token {
        let value = format!("Bearer {token}")
            .parse()
            .context("the token is not a header value")?;
        request.headers_mut().insert("authorization", value);
    }
    match tokio_tungstenite::client_async(request, stream).await {
        Ok((socket, _)) => Ok(socket),
        Err(tungstenite::Error::Http(response)) => {
            let status = response.status();
            let body = response.into_body().unwrap_or_default();
            let (code, message) = match serde_json::from_slice::<ErrorEnvelope>(&body) {
                Ok(envelope) => (envelope.error.code, envelope.error.message),
                Err(_) => (
                    status.as_str().to_owned(),
                    String::from_utf8_lossy(&body).into_owned(),
                ),
            };
            Err(CallError::Api {
                status,
                code,
                message,
            }
            .into())
        }
        Err(err) => Err(anyhow::Error::new(err)
            .context("opening the terminal's WebSocket")
            .into()),
    }
}

/// Copies stdin to the socket and the socket to stdout, forwards window
/// changes, until the daemon says how the command ended.
async fn carry(socket: Socket) -> Result<u8, Failure> {
    let (mut sink, mut stream) = socket.split();
    let (to_send, mut outgoing) = tokio::sync::mpsc::channel::<Message>(16);
    let keys = to_send.clone();
    // A thread of its own: a read of stdin cannot be cancelled, and the
    // process ends it when it exits.
    std::thread::spawn(move || {
        use std::io::Read as _;
        let mut stdin = std::io::stdin();
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0
                || keys
                    .blocking_send(Message::Binary(buf[..n].to_vec().into()))
                    .is_err()
            {
                break;
            }
        }
    });
    let resizing = tokio::spawn(async move {
        let Ok(mut changes) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
        else {
            return;
        };
        while changes.recv().await.is_some() {
            if let Some((rows, cols)) = window() {
                let control = ClientControl::Resize { rows, cols };
                let text = serde_json::to_string(&control).unwrap_or_default();
                if to_send.send(Message::Text(text.into())).await.is_err() {
                    break;
                }
            }
        }
    });
    let sending = tokio::spawn(async move {
        while let Some(message) = outgoing.recv().await {
            if sink.send(message).await.is_err() {
                break;
            }
        }
    });
    let mut stdout = std::io::stdout();
    let mut end: Option<ServerControl> = None;
    while let Some(message) = stream.next().await {
        match message.context("reading the terminal")? {
            Message::Binary(bytes) => {
                let _ = stdout.write_all(&bytes);
                let _ = stdout.flush();
            }
            Message::Text(text) => {
                if let Ok(control) = serde_json::from_str::<ServerControl>(&text) {
                    end = Some(control);
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    resizing.abort();
    sending.abort();
    match end {
        Some(ServerControl::Exit(end)) => Ok(status_of(&end)),
        Some(ServerControl::Error(error)) => {
            Err(anyhow::anyhow!("{}: {}", error.code, error.message).into())
        }
        None => Err(anyhow::anyhow!("the daemon closed the terminal without an exit").into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_quoted_and_queries_encoded() {
        let argv = ["echo".to_owned(), "it's a b".to_owned()];
        assert_eq!(shell_line(&argv), r"'echo' 'it'\''s a b'");
        assert_eq!(encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }

    #[test]
    fn the_exit_status_is_the_command_s() {
        let end = |exit_code, signal, timed_out| ExecEnd {
            exit_code,
            signal,
            timed_out,
            duration_ms: 0,
            stdout_truncated: false,
            stderr_truncated: false,
        };
        assert_eq!(status_of(&end(Some(7), None, false)), 7);
        assert_eq!(status_of(&end(None, Some(9), false)), 137);
        assert_eq!(status_of(&end(None, Some(9), true)), 124);
    }
}
