//! The daemon as an operator runs it: `paddock serve` as its own process,
//! driven through the `paddock` command (and any HTTP client).

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// The `paddock` binary cargo built next to the test binary.
///
/// # Errors
/// When it is not built (`cargo build -p paddock-cli`).
pub fn paddock_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("no current executable")?;
    let candidate = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("paddock"))
        .context("test binary has no target directory")?;
    if candidate.exists() {
        Ok(candidate)
    } else {
        bail!(
            "{} not found: run `cargo build -p paddock-cli`",
            candidate.display()
        )
    }
}

/// A running `paddock serve`; killed on drop if not stopped.
#[derive(Debug)]
pub struct DaemonProcess {
    child: Child,
    /// The operator's socket.
    pub socket: PathBuf,
    /// The tenants' TCP address.
    pub tcp: SocketAddr,
    binary: PathBuf,
}

impl DaemonProcess {
    /// Starts `paddock serve --config config` and waits (at most `within`)
    /// until it serves on its socket and TCP (the config must have `tcp`).
    ///
    /// # Errors
    /// It exited or did not serve in time; the error has its output.
    pub fn start(config: &Path, within: Duration) -> anyhow::Result<Self> {
        Self::spawn(paddock_binary()?, config, within, |line| {
            println!("daemon: {line}");
        })
    }

    /// As [`DaemonProcess::start`], with the `paddock` binary `binary` (a
    /// benchmark's, which is not next to it), and the daemon's stdout lines
    /// echoed to stderr: the caller's stdout stays its own (a benchmark's
    /// JSON).
    ///
    /// # Errors
    /// It exited or did not serve in time; the error has its output.
    pub fn start_binary(binary: &Path, config: &Path, within: Duration) -> anyhow::Result<Self> {
        Self::spawn(binary.to_owned(), config, within, |line| {
            eprintln!("daemon: {line}");
        })
    }

    /// The daemon's process id (for `/proc/<pid>`).
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn spawn(
        binary: PathBuf,
        config: &Path,
        within: Duration,
        echo: fn(&str),
    ) -> anyhow::Result<Self> {
        let mut child = Command::new(&binary)
            .arg("serve")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting paddock serve")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                echo(&line);
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + within;
        let (mut socket, mut tcp) = (None, None);
        // What it said so far, for the error when it never serves.
        let mut said: std::collections::VecDeque<String> = std::collections::VecDeque::new();
        while socket.is_none() || tcp.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if said.len() == 20 {
                        said.pop_front();
                    }
                    said.push_back(line.clone());
                    if let Some(path) = line.strip_prefix("paddock: serving on ") {
                        socket = Some(PathBuf::from(path));
                    }
                    if let Some(addr) = line.strip_prefix("paddock: serving tenants on http://") {
                        tcp = Some(addr.parse().context("the daemon's TCP address")?);
                    }
                }
                Err(err) => {
                    let _ = child.kill();
                    let status = child.wait().ok();
                    let said = Vec::from(said).join("\n");
                    match err {
                        std::sync::mpsc::RecvTimeoutError::Disconnected => bail!(
                            "the daemon exited before it served (exit: {status:?}); it said:\n{said}"
                        ),
                        std::sync::mpsc::RecvTimeoutError::Timeout => bail!(
                            "the daemon did not serve within {within:?} (exit: {status:?}); it said:\n{said}"
                        ),
                    }
                }
            }
        }
        Ok(Self {
            child,
            socket: socket.context("no socket")?,
            tcp: tcp.context("no TCP address")?,
            binary,
        })
    }

    /// Runs `paddock --socket <its socket> args…` as the operator.
    ///
    /// # Errors
    /// The command could not be started.
    pub fn operator(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.run(&["--socket", &self.socket.to_string_lossy()], args)
    }

    /// Runs `paddock --host <its TCP address> --token token args…`.
    ///
    /// # Errors
    /// The command could not be started.
    pub fn tenant(&self, token: &str, args: &[&str]) -> anyhow::Result<Output> {
        self.run(&["--host", &self.tcp.to_string(), "--token", token], args)
    }

    fn run(&self, global: &[&str], args: &[&str]) -> anyhow::Result<Output> {
        let output = Command::new(&self.binary)
            .args(global)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running paddock {args:?}"))?;
        println!(
            "$ paddock {} -> {:?}\n{}{}",
            args.join(" "),
            output.status.code(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(output)
    }

    /// Sends SIGHUP: the daemon reloads its configuration file.
    ///
    /// # Errors
    /// Its pid does not fit a `pid_t`.
    pub fn hang_up(&self) -> anyhow::Result<()> {
        let pid = i32::try_from(self.child.id()).context("pid")?;
        // SAFETY: kill(2) with a pid this process started and still owns.
        unsafe { libc::kill(pid, libc::SIGHUP) };
        Ok(())
    }

    /// Kills it with SIGKILL, as a crash would, and reaps it.
    ///
    /// # Errors
    /// The kill or the wait failed.
    pub fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Sends SIGTERM and waits (at most `within`) for the exit status.
    ///
    /// # Errors
    /// It did not exit in time (it is killed then).
    pub fn stop(mut self, within: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let pid = i32::try_from(self.child.id()).context("pid")?;
        // SAFETY: kill(2) with a pid this process started and still owns.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                bail!("the daemon did not exit within {within:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for DaemonProcess {
    /// A test that failed midway still leaves nothing: the daemon is asked
    /// to drain (SIGTERM) and killed only if it has not exited within 2
    /// minutes.
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) with a pid this process started and still owns.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.0 GET on `addr` (loopback), returning the status line's
/// code and the body.
///
/// # Errors
/// The connection failed or the answer is not HTTP.
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP head")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status code")?;
    Ok((code, body.to_owned()))
}
