//! `paddock-agent`: the guest agent binary.

use std::path::PathBuf;
use std::time::Duration;

use std::sync::Arc;

use anyhow::Context as _;
use clap::{ArgGroup, Parser, ValueEnum};
use paddock_guest_agent::{
    Agent, Config, Containment, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_REQUESTS, Endpoint, Listener,
    resolve_serial_port, run,
};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing::info;
use tracing_subscriber::EnvFilter;

mod probe_cli;

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
          value_parser = clap::value_parser!(u32).range(i64::from(paddock_proto::MIN_MAX_PAYLOAD)..))]
    max_payload: u32,
    /// Flow-control window granted to the host per request, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = paddock_proto::DEFAULT_WINDOW,
          value_parser = clap::value_parser!(u32).range(1..))]
    window: u32,
    /// Most requests open at once per session.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_REQUESTS as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_requests: u32,
    /// Most connections served at once on the Unix and vsock listeners;
    /// more are answered with ERROR too_many_connections and closed.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Milliseconds between SIGTERM and SIGKILL when ending an execution
    /// that names no grace of its own, and the longest grace any execution
    /// gets when the agent stops (at most 60000).
    #[arg(long, value_name = "MS", default_value_t = paddock_proto::DEFAULT_KILL_GRACE_MS,
          value_parser = clap::value_parser!(u64).range(..=paddock_proto::MAX_KILL_GRACE_MS))]
    kill_grace_ms: u64,
    /// How to keep an execution's processes together: `auto` uses a cgroup
    /// per execution when the system allows, `process-group` never does.
    #[arg(long, value_enum, default_value_t = ContainmentArg::Auto)]
    containment: ContainmentArg,
    /// Step the guest's wall clock to the host's time sent in HELLO when it
    /// is off (a restored guest wakes with its saved clock). Needs root; for
    /// guests only.
    #[arg(long)]
    set_clock: bool,
    /// Log filter: a level (error, warn, info, debug, trace) or directives.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    log: String,
}

/// `--containment`.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum ContainmentArg {
    /// A cgroup v2 per execution when available, else the process group.
    Auto,
    /// The process group only.
    ProcessGroup,
}

/// Stops the agent, as `STOP {scope: agent}` does, on the first SIGTERM or
/// SIGINT: executions end within the agent's kill grace, the listeners
/// stop, the socket files go, and `main` returns (exit status 0).
async fn stop_on_signals(agent: Arc<Agent>, mut term: Signal, mut interrupt: Signal) {
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: stopping"),
        _ = interrupt.recv() => info!("SIGINT: stopping"),
        () = agent.stopping() => return,
    }
    agent.shutdown();
}

fn main() -> anyhow::Result<()> {
    if std::env::args_os().nth(1).is_some_and(|arg| arg == "probe") {
        return probe_cli::main();
    }
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
        max_connections: usize::try_from(cli.max_connections)
            .context("--max-connections is too large")?,
        kill_grace: Duration::from_millis(cli.kill_grace_ms),
        set_clock: cli.set_clock,
        containment: match cli.containment {
            ContainmentArg::Auto => Containment::Auto,
            ContainmentArg::ProcessGroup => Containment::ProcessGroup,
        },
        // One runtime thread, and the blocking pool starts no processes.
        spawn_inside_cgroup: true,
    };
    let agent = Agent::new(config).context("Could not read a boot id from /dev/urandom")?;
    // One thread: in a guest with one vCPU under TCG, every hand-off
    // between threads is a futex wake-up and a context switch, which cost
    // more than the work of a request. Blocking work (file I/O) still runs
    // on tokio's blocking pool.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("Could not start the tokio runtime")?;
    let (listeners, term, interrupt) = {
        let _runtime = runtime.enter();
        // Installed before the sockets exist: from the moment a host can
        // connect, SIGTERM and SIGINT stop the agent instead of killing it.
        let term = signal(SignalKind::terminate()).context("Could not handle SIGTERM")?;
        let interrupt = signal(SignalKind::interrupt()).context("Could not handle SIGINT")?;
        let listeners = endpoints
            .iter()
            .map(Listener::bind)
            .collect::<Result<Vec<_>, _>>()?;
        (listeners, term, interrupt)
    };
    info!(boot_id = agent.boot_id(), ?endpoints, "Agent started");
    runtime.block_on(async {
        let signals = tokio::spawn(stop_on_signals(Arc::clone(&agent), term, interrupt));
        run(Arc::clone(&agent), listeners).await;
        signals.abort();
    });
    Ok(())
}
