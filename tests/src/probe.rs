//! The host side of `paddock-agent probe` (`guest-agent/src/probe.rs`): the
//! floors a benchmark puts next to the agent's figures, measured in the same
//! guest and over the same kind of channel.
//!
//! A probe runs in the guest as an ordinary execution of the agent, on a
//! channel the agent does not use: the sandbox's probe port (a second
//! virtio-serial port on the agent's controller, [`SandboxConfig::probe_port`])
//! or another vsock port behind the sandbox's hybrid-vsock multiplexer.
//!
//! [`SandboxConfig::probe_port`]: paddock::SandboxConfig::probe_port

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use paddock::agent::{AgentClient, Execute, Execution, connect_hybrid_vsock};
use paddock::vm::PROBE_PORT_NAME;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UnixStream;

/// The agent binary in the image, which also serves `probe`.
pub const AGENT_IN_GUEST: &str = "/usr/bin/paddock-agent";

/// The vsock port a probe serves on a hybrid-vsock sandbox (the agent's is
/// 1024).
pub const PROBE_VSOCK_PORT: u32 = 1025;

/// The size of the host's writes and reads of bulk data.
const CHUNK: usize = 256 * 1024;

/// Where the host reaches the probe.
#[derive(Debug, Clone)]
pub enum ProbeChannel {
    /// The sandbox's probe port: the host side of its virtio-serial socket
    /// ([`paddock::Sandbox::probe_socket`]).
    Serial(PathBuf),
    /// A vsock port behind the sandbox's hybrid-vsock multiplexer (its
    /// `agent.sock`).
    HybridVsock {
        /// The multiplexer's Unix socket.
        socket: PathBuf,
        /// The guest port the probe listens on.
        port: u32,
    },
}

/// What the probe does on its channel.
#[derive(Debug, Clone, Copy)]
pub enum ProbeMode {
    /// Echo every byte.
    Echo,
    /// Sink and source bulk data.
    Stream,
}

/// A probe running in the guest, with the host's end of its channel.
#[derive(Debug)]
pub struct RunningProbe {
    execution: Execution,
    stream: UnixStream,
}

impl RunningProbe {
    /// Starts `paddock-agent probe MODE` in the guest through `client` and
    /// connects to it.
    ///
    /// # Errors
    /// The execution cannot start, or the channel does not connect within
    /// 10 s.
    pub async fn start(
        client: &AgentClient,
        mode: ProbeMode,
        channel: &ProbeChannel,
    ) -> anyhow::Result<Self> {
        let mode = match mode {
            ProbeMode::Echo => "echo",
            ProbeMode::Stream => "stream",
        };
        let mut argv = vec![AGENT_IN_GUEST.to_owned(), "probe".into(), mode.into()];
        match channel {
            ProbeChannel::Serial(_) => argv.extend(["--serial".into(), PROBE_PORT_NAME.into()]),
            ProbeChannel::HybridVsock { port, .. } => {
                argv.extend(["--vsock-port".into(), port.to_string()]);
            }
        }
        let execution = client.exec(Execute::argv(argv)).await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            let attempt = match channel {
                ProbeChannel::Serial(socket) => UnixStream::connect(socket).await,
                ProbeChannel::HybridVsock { socket, port } => {
                    connect_hybrid_vsock(socket, *port).await
                }
            };
            match attempt {
                Ok(stream) => break stream,
                // The probe's vsock listener is not bound yet.
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(err) => return Err(err).context("the probe's channel did not connect"),
            }
        };
        Ok(Self { execution, stream })
    }

    /// Round trips of `size` bytes through an echo probe, after `warmup`
    /// unmeasured ones.
    ///
    /// # Errors
    /// The channel fails or the echo differs.
    pub async fn echo_rtt(
        &mut self,
        size: usize,
        warmup: usize,
        count: usize,
    ) -> anyhow::Result<Vec<Duration>> {
        let message: Vec<u8> = (0..=250u8).cycle().take(size).collect();
        let mut back = vec![0; size];
        let mut samples = Vec::with_capacity(count);
        for round in 0..warmup + count {
            let started = Instant::now();
            self.stream.write_all(&message).await?;
            self.stream.read_exact(&mut back).await?;
            if round >= warmup {
                samples.push(started.elapsed());
            }
            anyhow::ensure!(back == message, "the echo differs from what was sent");
        }
        Ok(samples)
    }

    /// Sends `bytes` to a stream probe and waits for its acknowledgement;
    /// returns the time from the command to the acknowledgement.
    ///
    /// # Errors
    /// The channel fails or the acknowledgement is wrong.
    pub async fn to_guest(&mut self, bytes: u64) -> anyhow::Result<Duration> {
        let chunk = vec![0x5a; CHUNK];
        let started = Instant::now();
        self.stream.write_all(&command(b'S', bytes)).await?;
        let mut left = bytes;
        while left > 0 {
            let now = usize::try_from(left.min(CHUNK as u64))?;
            self.stream.write_all(&chunk[..now]).await?;
            left -= now as u64;
        }
        let mut ack = [0; 8];
        self.stream.read_exact(&mut ack).await?;
        let elapsed = started.elapsed();
        anyhow::ensure!(u64::from_le_bytes(ack) == bytes, "wrong acknowledgement");
        Ok(elapsed)
    }

    /// Asks a stream probe for `bytes` and reads them; returns the time
    /// from the command to the last byte.
    ///
    /// # Errors
    /// The channel fails or ends early.
    pub async fn from_guest(&mut self, bytes: u64) -> anyhow::Result<Duration> {
        let mut chunk = vec![0; CHUNK];
        let started = Instant::now();
        self.stream.write_all(&command(b'R', bytes)).await?;
        let mut left = bytes;
        while left > 0 {
            let want = usize::try_from(left.min(CHUNK as u64))?;
            let read = self.stream.read(&mut chunk[..want]).await?;
            anyhow::ensure!(read > 0, "the probe's stream ended early");
            left -= read as u64;
        }
        Ok(started.elapsed())
    }

    /// Closes the channel and returns the probe's report (its JSON line).
    ///
    /// # Errors
    /// The probe failed or printed no report.
    pub async fn finish(self) -> anyhow::Result<serde_json::Value> {
        drop(self.stream);
        let output = self.execution.collect().await?;
        anyhow::ensure!(
            output.result.exit_code == Some(0),
            "the probe failed: {:?}: {}",
            output.result,
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(serde_json::from_slice(&output.stdout)?)
    }
}

fn command(op: u8, len: u64) -> [u8; 9] {
    let mut command = [op; 9];
    command[1..].copy_from_slice(&len.to_le_bytes());
    command
}

/// The guest's own spawn-to-exit time of `program`, `count` times, timed
/// inside the guest by the probe.
///
/// # Errors
/// The probe fails or reports nonsense.
pub async fn guest_spawn(
    client: &AgentClient,
    program: &str,
    count: usize,
) -> anyhow::Result<Vec<Duration>> {
    let output = client
        .exec_collect(Execute::argv([
            AGENT_IN_GUEST,
            "probe",
            "spawn",
            "--count",
            &count.to_string(),
            program,
        ]))
        .await?;
    anyhow::ensure!(
        output.result.exit_code == Some(0),
        "the spawn probe failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let ms = report["ms"]
        .as_array()
        .context("the spawn probe's report has no times")?;
    let mut samples = Vec::with_capacity(count);
    for value in ms {
        let ms = value.as_f64().context("not a time")?;
        samples.push(Duration::from_secs_f64(ms / 1e3));
    }
    anyhow::ensure!(samples.len() == count, "the spawn probe lost samples");
    Ok(samples)
}

/// Megabytes (10^6 bytes) per second.
#[must_use]
pub fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        (bytes as f64 / 1e6 / secs * 10.0).round() / 10.0
    } else {
        0.0
    }
}
