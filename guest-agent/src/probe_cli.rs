//! `paddock-agent probe MODE`: the floor probes ([`paddock_guest_agent::probe`])
//! as a command the host runs in the guest through the agent.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{ArgGroup, Args, Parser, Subcommand};
use paddock_guest_agent::probe::{self, HostStream};
use paddock_guest_agent::resolve_serial_port;

/// Measures the floors the agent is judged against: a raw channel's echo
/// and throughput, the guest's own spawn time. Prints one JSON line.
#[derive(Debug, Parser)]
#[command(name = "paddock-agent probe")]
struct ProbeCli {
    #[command(subcommand)]
    mode: Mode,
    /// The probe exits with status 3 after this many milliseconds, whatever
    /// it is doing, so that a host that never comes cannot keep it.
    #[arg(long, value_name = "MS", default_value_t = 120_000, global = true)]
    timeout_ms: u64,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Echo every byte back until the host leaves.
    Echo(Channel),
    /// Serve sink (`S`) and read (`R`) commands until the host leaves.
    Stream(Channel),
    /// Spawn PROGRAM COUNT times and print each spawn-to-exit time.
    Spawn {
        /// How many spawns.
        #[arg(long, default_value_t = 100)]
        count: usize,
        /// The program (an absolute path: no PATH search).
        program: PathBuf,
        /// Its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// The channel a probe serves.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("channel").required(true).args(["serial", "vsock_port"])))]
struct Channel {
    /// The virtio-serial port with this name.
    #[arg(long, value_name = "NAME")]
    serial: Option<String>,
    /// This vsock port (one connection is accepted).
    #[arg(long, value_name = "PORT")]
    vsock_port: Option<u32>,
}

impl Channel {
    fn open(&self, deadline: Instant) -> anyhow::Result<HostStream> {
        match (&self.serial, self.vsock_port) {
            (Some(name), _) => {
                let device = resolve_serial_port(name)?;
                HostStream::serial(&device, deadline)
                    .with_context(|| format!("Could not open {}", device.display()))
            }
            (None, Some(port)) => HostStream::vsock(port, deadline)
                .with_context(|| format!("Could not serve vsock port {port}")),
            (None, None) => anyhow::bail!("No channel given"),
        }
    }
}

/// Runs `paddock-agent probe ...` (the arguments after the program name).
pub(crate) fn main() -> anyhow::Result<()> {
    let cli = ProbeCli::parse_from(std::env::args_os().skip(1));
    let timeout = Duration::from_millis(cli.timeout_ms);
    let deadline = Instant::now() + timeout;
    std::thread::spawn(move || {
        std::thread::sleep(timeout);
        eprintln!(
            "paddock-agent probe: timed out after {} ms",
            timeout.as_millis()
        );
        std::process::exit(3);
    });
    let report = match cli.mode {
        Mode::Echo(channel) => {
            let bytes = probe::echo(&mut channel.open(deadline)?).context("Echo failed")?;
            serde_json::json!({ "mode": "echo", "bytes": bytes })
        }
        Mode::Stream(channel) => {
            let totals =
                probe::serve_stream(&mut channel.open(deadline)?).context("Stream failed")?;
            serde_json::json!({ "mode": "stream", "sunk": totals.sunk, "sent": totals.sent })
        }
        Mode::Spawn {
            count,
            program,
            args,
        } => {
            let times = probe::spawn_times(&program, &args, count)
                .with_context(|| format!("Could not spawn {}", program.display()))?;
            let ms: Vec<f64> = times.iter().map(|t| t.as_secs_f64() * 1e3).collect();
            serde_json::json!({ "mode": "spawn", "program": program, "ms": ms })
        }
    };
    println!("{report}");
    Ok(())
}
