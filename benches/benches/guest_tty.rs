//! Keystroke echo round trip of a terminal in a real guest (TCG here,
//! 256 MiB): one byte typed at a guest terminal over the agent channel
//! (virtio-serial), until the guest's line discipline echoes it back, as a
//! person at an interactive shell sees it. Reported as median and p99 in
//! one JSON object on stdout.
//!
//! The terminal runs `cat > /dev/null`, so what comes back is the echo
//! alone; a line is ended (unmeasured) every `LINE` keystrokes, so the
//! line buffer never fills.
//!
//! With `PADDOCK_BIN` set to the `paddock` binary, the same through the
//! daemon: `paddock serve` with one pool, the terminal's WebSocket on its
//! TCP listener with a tenant's token (`daemon_websocket`).
//!
//! Run with `cargo bench -p paddock-benches --bench guest_tty` as root,
//! with libvirtd running and the image built (`cargo xtask image`;
//! `PADDOCK_IMAGE` names another); it takes a minute, two with the daemon.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::{SinkExt as _, StreamExt as _};
use paddock::agent::{Execute, Terminal, Tty};
use paddock::libvirt::Libvirt;
use paddock::{Sandbox, SandboxConfig};
use paddock_benches::Samples;
use paddock_server::auth::token_digest;
use paddock_tests::daemon::DaemonProcess;
use paddock_tests::vm::{POOL_ROOT, SYSTEM_URI, image_manifest_path, test_image};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

/// The tenant's bearer token on the daemon's TCP listener.
const TOKEN: &str = "bench-guest-tty-token";

const WARMUP: usize = 50;
const KEYSTROKES: usize = 2000;
const LINE: usize = 64;

fn main() -> anyhow::Result<()> {
    paddock_benches::run_harness(run())
}

/// Reads until `want` arrives; what else comes is dropped.
async fn read_until(terminal: &mut Terminal, want: &[u8]) -> anyhow::Result<()> {
    let mut seen = Vec::new();
    let reading = async {
        while !seen.windows(want.len()).any(|w| w == want) {
            let chunk = terminal.read().await?.context("the terminal closed")?;
            seen.extend(chunk);
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(10), reading)
        .await
        .context("no echo within 10 s")?
}

/// Something a keystroke can be typed at: it sends the byte and waits
/// for its echo.
trait Keyboard {
    async fn type_key(&mut self, key: u8) -> anyhow::Result<()>;
}

impl Keyboard for Terminal {
    async fn type_key(&mut self, key: u8) -> anyhow::Result<()> {
        self.write(&[key]).await?;
        let want: &[u8] = if key == b'\n' { b"\r\n" } else { &[key] };
        read_until(self, want).await
    }
}

/// The daemon's terminal WebSocket, split.
struct WebSocketKeyboard<S, R> {
    sink: S,
    source: R,
}

impl<S, R> Keyboard for WebSocketKeyboard<S, R>
where
    S: futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
    R: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    async fn type_key(&mut self, key: u8) -> anyhow::Result<()> {
        self.sink.send(Message::Binary(vec![key].into())).await?;
        let waiting = async {
            loop {
                match self.source.next().await.context("the socket closed")?? {
                    Message::Binary(bytes) if bytes.contains(&key) => return anyhow::Ok(()),
                    Message::Binary(_) => {}
                    other => anyhow::bail!("unexpected {other:?}"),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .context("no echo within 10 s")?
    }
}

/// Types the keystrokes at `keyboard` and times each one.
async fn keystrokes(keyboard: &mut impl Keyboard) -> anyhow::Result<Samples> {
    let mut echo = Samples::default();
    for i in 0..WARMUP + KEYSTROKES {
        if i % LINE == LINE - 1 {
            keyboard.type_key(b'\n').await?;
        }
        // A letter that differs from the one before, so its echo is not
        // mistaken for the last one's.
        let key = b'a' + u8::try_from(i % 26)?;
        let t = Instant::now();
        keyboard.type_key(key).await?;
        if i >= WARMUP {
            echo.push(t.elapsed());
        }
    }
    Ok(echo)
}

/// The same through the daemon's WebSocket: `paddock serve` (the binary
/// `binary`) with one pool, a lease, its terminal over TCP.
async fn through_the_daemon(binary: PathBuf) -> anyhow::Result<serde_json::Value> {
    let dir = tempfile::tempdir()?;
    let pool = format!("bt{}", std::process::id());
    let config = dir.path().join("paddock.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nimage = \"{}\"\nsocket = \"{}\"\ntcp = \"127.0.0.1:0\"\nstate_root = \"{POOL_ROOT}\"\n\n[[tenant]]\nname = \"bench\"\ntoken_sha256 = \"{}\"\n\n[[pool]]\nname = \"{pool}\"\nmin_ready = 1\nmax_size = 1\nacquire_timeout_ms = 180000\n",
            image_manifest_path().display(),
            dir.path().join("paddock.sock").display(),
            token_digest(TOKEN),
        ),
    )?;
    let daemon = DaemonProcess::start_binary(&binary, &config, Duration::from_secs(300))?;
    let measured = async {
        let acquired = daemon.tenant(TOKEN, &["acquire", &pool, "--wait", "180"])?;
        anyhow::ensure!(acquired.status.success(), "{acquired:?}");
        let lease = String::from_utf8_lossy(&acquired.stdout).trim().to_owned();
        let mut request = format!(
            "ws://{}/v1/leases/{lease}/terminal?cmd=cat%20%3E%20/dev/null&term=vt100&timeout_ms=600000",
            daemon.tcp
        )
        .into_client_request()?;
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {TOKEN}").parse()?);
        let stream = tokio::net::TcpStream::connect(daemon.tcp).await?;
        stream.set_nodelay(true)?;
        let (socket, _) = tokio_tungstenite::client_async(request, stream).await?;
        let (sink, source) = socket.split();
        let mut echo = keystrokes(&mut WebSocketKeyboard { sink, source }).await?;
        let released = daemon.tenant(TOKEN, &["release", &lease])?;
        anyhow::ensure!(released.status.success(), "{released:?}");
        Ok(echo.json())
    }
    .await;
    let stopped = daemon.stop(Duration::from_secs(180));
    let measured = measured?;
    stopped?;
    Ok(measured)
}

async fn run() -> anyhow::Result<()> {
    let image = test_image()?;
    let libvirt = Libvirt::open(SYSTEM_URI).await?;
    let mut config = SandboxConfig::new(format!("paddock-bench-tty-{}", std::process::id()));
    config.pool = "bench".into();
    let sandbox = Sandbox::boot(&libvirt, &image, config).await?;
    let outcome = async {
        let mut request = Execute::shell("cat > /dev/null");
        request.timeout_ms = Some(600_000);
        let mut terminal = sandbox
            .client()
            .terminal(request, Tty::new("vt100", 24, 80))
            .await?;
        let mut echo = keystrokes(&mut terminal).await?;
        terminal.write(&[0x04]).await?;
        terminal.write(&[0x04]).await?;
        let result = terminal.wait().await?;
        eprintln!("cat ended: {result:?}");
        anyhow::Ok(echo.json())
    }
    .await;
    sandbox.destroy().await?;
    let library = outcome?;
    let daemon = match std::env::var_os("PADDOCK_BIN") {
        Some(binary) => through_the_daemon(PathBuf::from(binary)).await?,
        None => serde_json::Value::Null,
    };
    let report = serde_json::json!({
        "guest_memory_mib": 256,
        "accelerator": "tcg",
        "channel": "virtio-serial",
        "keystrokes": KEYSTROKES,
        "keystroke_echo_round_trip": library,
        "keystroke_echo_round_trip_daemon_websocket": daemon,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
