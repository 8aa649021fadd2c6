//! `paddock-agent`: the guest agent binary.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{ArgGroup, Parser};
use paddock_guest_agent::{Agent, Config, Endpoint, Listener, resolve_serial_port, run};
use tracing::info;
use tracing_subscriber::EnvFilter;

/// Serves Paddock host requests: executions, file transfers, status.
#[derive(Debug, Parser)]
#[command(version, group(
    ArgGroup::new("listener")
        .required(true)
        .multiple(true)
        .args(["unix", "vsock_port", "serial", "serial_path"]),
))]
struct Cli {
    /// Listen on a Unix socket at PATH (repeatable).
    #[arg(long, value_name = "PATH")]
    unix: Vec<PathBuf>,
    /// Listen on this AF_VSOCK port.
    #[arg(long, value_name = "PORT")]
    vsock_port: Option<u32>,
    /// Serve the virtio-serial port with this name.
    #[arg(long, value_name = "NAME")]
    serial: Option<String>,
    /// Serve this serial device (a tty is put in raw mode).
    #[arg(long, value_name = "PATH")]
    serial_path: Option<PathBuf>,
    /// Largest frame payload accepted from the host, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = paddock_proto::DEFAULT_MAX_PAYLOAD,
          value_parser = clap::value_parser!(u32).range(4096..))]
    max_payload: u32,
    /// Flow-control window granted to the host per request, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = paddock_proto::DEFAULT_WINDOW,
          value_parser = clap::value_parser!(u32).range(1..))]
    window: u32,
    /// Most requests open at once per session.
    #[arg(long, value_name = "N", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_requests: u32,
    /// Milliseconds between SIGTERM and SIGKILL when ending an execution.
    #[arg(long, value_name = "MS", default_value_t = paddock_proto::DEFAULT_KILL_GRACE_MS)]
    kill_grace_ms: u64,
    /// Step the guest's wall clock to the host's time sent in HELLO when it
    /// is off (a restored guest wakes with its saved clock). Needs root; for
    /// guests only.
    #[arg(long)]
    set_clock: bool,
    /// Log filter: a level (error, warn, info, debug, trace) or directives.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    log: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = EnvFilter::try_new(&cli.log).context("Invalid --log filter")?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let mut endpoints: Vec<Endpoint> = cli.unix.into_iter().map(Endpoint::Unix).collect();
    endpoints.extend(cli.vsock_port.map(Endpoint::Vsock));
    if let Some(name) = &cli.serial {
        endpoints.push(Endpoint::Serial(resolve_serial_port(name)?));
    }
    endpoints.extend(cli.serial_path.map(Endpoint::Serial));

    let config = Config {
        max_payload: cli.max_payload,
        window: cli.window,
        max_requests: usize::try_from(cli.max_requests).context("--max-requests is too large")?,
        kill_grace: Duration::from_millis(cli.kill_grace_ms),
        set_clock: cli.set_clock,
    };
    let agent = Agent::new(config).context("Could not read a boot id from /dev/urandom")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("Could not start the tokio runtime")?;
    let listeners = {
        let _runtime = runtime.enter();
        endpoints
            .iter()
            .map(Listener::bind)
            .collect::<Result<Vec<_>, _>>()?
    };
    info!(boot_id = agent.boot_id(), ?endpoints, "Agent started");
    runtime.block_on(run(agent, listeners));
    Ok(())
}
