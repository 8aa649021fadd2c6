//! `paddock`: the daemon (`paddock serve`) and the operator's commands.
//!
//! Commands that talk to the daemon use its Unix socket by default
//! (`--socket`), or TCP with a tenant's token (`--host`, `--token` or
//! `PADDOCK_TOKEN`). `audit`, `gc` and `doctor` work on the host directly.
//!
//! Exit status: 0 on success; for `paddock exec`, the guest command's own
//! status (128 + n when killed by signal n, 124 when it timed out); 125
//! for a control-plane error (the daemon, a lease, a transfer); 2 for bad
//! usage; 1 for `audit verify` on a broken chain and `doctor` on a problem.

mod client;
mod fs;
mod local;
mod output;
mod terminal;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hyper::Method;
use paddock_server::wire::{ExecRequest, LeaseInfo, LeaseList, PoolList, SlotList};

use crate::client::{CallError, Target};

/// Pools of warm sandbox VMs: run the daemon, or talk to it.
#[derive(Debug, Parser)]
#[command(name = "paddock", version)]
struct Cli {
    /// The daemon's Unix socket.
    #[arg(long, global = true, default_value = paddock_server::config::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// The daemon's TCP listener (`host:port`), instead of its socket.
    #[arg(long, global = true)]
    host: Option<String>,
    /// A tenant's bearer token, for `--host`.
    #[arg(long, global = true, env = "PADDOCK_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print JSON (a stable schema: the API's) instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the daemon: the pools of a configuration file, served over the API.
    Serve {
        /// The configuration file.
        #[arg(long, default_value = "/etc/paddock/paddock.toml")]
        config: PathBuf,
    },
    /// Lists the pools.
    Pools,
    /// Lists a pool's slots.
    Slots {
        /// The pool.
        pool: String,
    },
    /// Lists the leases (the operator sees every lease, a tenant its own).
    Leases,
    /// Acquires a lease and prints its id.
    Acquire {
        /// The pool.
        pool: String,
        /// How long to wait for a ready slot, in seconds.
        #[arg(long)]
        wait: Option<f64>,
    },
    /// Releases a lease.
    Release {
        /// The lease id.
        lease: String,
    },
    /// Runs a command in a new lease (or `--lease`), streams its output,
    /// releases, and exits with the command's status.
    Exec {
        /// The pool (ignored with `--lease`).
        pool: String,
        /// Run in this lease instead of a new one (kept afterwards).
        #[arg(long)]
        lease: Option<String>,
        /// The command's timeout, in seconds.
        #[arg(long)]
        timeout: Option<f64>,
        /// Environment variables, `KEY=VALUE`.
        #[arg(long = "env", short = 'e')]
        env: Vec<String>,
        /// The working directory in the guest.
        #[arg(long)]
        cwd: Option<String>,
        /// Run on a terminal (raw mode here when stdin is one, window
        /// changes forwarded); without a command, an interactive shell.
        #[arg(short = 't', long = "tty")]
        tty: bool,
        /// The command and its arguments (after `--`; required without
        /// `-t`).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Copies a file into or out of a lease: `cp LOCAL LEASE:/path` or
    /// `cp LEASE:/path LOCAL`; with `-r`, a whole directory (as one tar
    /// stream; what comes back is unpacked refusing any entry that would
    /// land outside LOCAL).
    Cp {
        /// Copy a directory and everything in it.
        #[arg(short = 'r', long)]
        recursive: bool,
        /// The source.
        from: String,
        /// The destination.
        to: String,
    },
    /// Lists a guest directory of a lease: `ls LEASE:/path` (type, mode,
    /// size, name; every page).
    Ls {
        /// The directory, `LEASE:/absolute/path`.
        path: String,
    },
    /// Resets a slot now (a leased one's lease ends: "reset_by_operator").
    Reset {
        /// `POOL/SLOT`.
        slot: String,
    },
    /// Destroys a slot and makes a new one (a leased one's lease ends).
    Recycle {
        /// `POOL/SLOT`.
        slot: String,
    },
    /// Drains a pool: no new leases, its leases end, its slots are removed.
    Drain {
        /// The pool.
        pool: String,
    },
    /// A pool's golden.
    Golden {
        #[command(subcommand)]
        command: GoldenCommand,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Request policy files.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Removes what a crashed Paddock left (domains by their metadata, their
    /// files), with no daemon running.
    Gc {
        /// Only what this pool left (by default: every pool's).
        #[arg(long)]
        pool: Option<String>,
        /// libvirt's URI.
        #[arg(long, default_value = "qemu:///system")]
        libvirt_uri: String,
        /// Where pools keep their files.
        #[arg(long, default_value = paddock::DEFAULT_STATE_ROOT)]
        state_root: PathBuf,
    },
    /// Checks this host and says what to fix.
    Doctor {
        /// The image manifest to check.
        #[arg(long)]
        image: Option<PathBuf>,
        /// libvirt's URI.
        #[arg(long, default_value = "qemu:///system")]
        libvirt_uri: String,
        /// Where pools keep their files.
        #[arg(long, default_value = paddock::DEFAULT_STATE_ROOT)]
        state_root: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum GoldenCommand {
    /// Builds a new golden (from another image or warm-up if given) and
    /// replaces the pool's slots one by one while it serves.
    Rebuild {
        /// The pool.
        pool: String,
        /// Another image manifest, on the daemon's host.
        #[arg(long)]
        image: Option<String>,
        /// Warm-up commands instead of the current ones (repeat it).
        #[arg(long)]
        warmup: Vec<String>,
        /// How long the replacement may take, in seconds.
        #[arg(long, default_value_t = 600)]
        within: u64,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Checks policy files and says what each allows; exit 1 if one is
    /// refused (naming its key, or its line for a syntax error).
    Check {
        /// Policy files (`policies/*.toml`).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Checks the hash chain of audit files; names the first broken line.
    Verify {
        /// Audit files, or one directory of them.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Prints the last records of audit files.
    Tail {
        /// Audit files, or one directory of them.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// How many records.
        #[arg(short = 'n', default_value_t = 20)]
        lines: usize,
    },
}

/// What a command failed with, and its exit status.
#[derive(Debug)]
struct Failure {
    status: u8,
    error: anyhow::Error,
}

impl From<CallError> for Failure {
    fn from(err: CallError) -> Self {
        Self {
            status: 125,
            error: err.into(),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Self { status: 125, error }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { ref config } => serve(config),
        Command::Audit { ref command } => local::audit(command, cli.json),
        Command::Policy {
            command: PolicyCommand::Check { ref files },
        } => Ok(local::check_policies(files, cli.json)),
        Command::Gc {
            ref pool,
            ref libvirt_uri,
            ref state_root,
        } => runtime().and_then(|rt| {
            rt.block_on(local::gc(
                pool.as_deref(),
                libvirt_uri,
                state_root,
                &cli.socket,
            ))
        }),
        Command::Doctor {
            ref image,
            ref libvirt_uri,
            ref state_root,
        } => runtime()
            .and_then(|rt| rt.block_on(local::doctor(image.as_deref(), libvirt_uri, state_root))),
        _ => runtime().and_then(|rt| rt.block_on(remote(&cli))),
    };
    match result {
        Ok(status) => ExitCode::from(status),
        Err(failure) => {
            eprintln!("paddock: {:#}", failure.error);
            ExitCode::from(failure.status)
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Runtime::new().map_err(|e| Failure::from(anyhow::Error::from(e)))
}

fn target(cli: &Cli) -> Target {
    match &cli.host {
        Some(host) => Target::Tcp {
            authority: host
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_owned(),
            token: cli.token.clone(),
        },
        None => Target::Unix(cli.socket.clone()),
    }
}

/// `POOL/SLOT`.
fn pool_slot(text: &str) -> Result<(&str, u32), Failure> {
    text.split_once('/')
        .and_then(|(pool, slot)| Some((pool, slot.parse().ok()?)))
        .ok_or_else(|| Failure {
            status: 2,
            error: anyhow::anyhow!("`{text}` is not POOL/SLOT (e.g. py/0)"),
        })
}

async fn remote(cli: &Cli) -> Result<u8, Failure> {
    let target = target(cli);
    match &cli.command {
        Command::Pools => {
            let list: PoolList = target.json(Method::GET, "/v1/pools", None).await?;
            output::pools(&list, cli.json);
        }
        Command::Slots { pool } => {
            let list: SlotList = target
                .json(Method::GET, &format!("/v1/pools/{pool}/slots"), None)
                .await?;
            output::slots(&list, cli.json);
        }
        Command::Leases => {
            let list: LeaseList = target.json(Method::GET, "/v1/leases", None).await?;
            output::leases(&list, cli.json);
        }
        Command::Acquire { pool, wait } => {
            let lease = acquire(&target, pool, *wait).await?;
            if cli.json {
                output::print_json(&lease);
            } else {
                println!("{}", lease.id);
            }
        }
        Command::Release { lease } => {
            release(&target, lease).await?;
        }
        Command::Reset { slot } | Command::Recycle { slot } => {
            let (pool, index) = pool_slot(slot)?;
            let action = if matches!(cli.command, Command::Reset { .. }) {
                "reset"
            } else {
                "recycle"
            };
            let _: serde_json::Value = target
                .json(
                    Method::POST,
                    &format!("/v1/pools/{pool}/slots/{index}/{action}"),
                    None,
                )
                .await?;
        }
        Command::Drain { pool } => {
            let _: serde_json::Value = target
                .json(Method::POST, &format!("/v1/pools/{pool}/drain"), None)
                .await?;
        }
        Command::Golden {
            command:
                GoldenCommand::Rebuild {
                    pool,
                    image,
                    warmup,
                    within,
                },
        } => {
            let request = paddock_server::wire::GoldenRequest {
                image: image.clone(),
                warmup: (!warmup.is_empty()).then(|| warmup.clone()),
                within_s: Some(*within),
            };
            let done: paddock_server::wire::GoldenResult = target
                .json(
                    Method::POST,
                    &format!("/v1/pools/{pool}/golden"),
                    Some(serde_json::to_value(&request).map_err(anyhow::Error::from)?),
                )
                .await?;
            if cli.json {
                output::print_json(&done);
            } else {
                println!(
                    "golden {}: {} ready slots replaced, {} leased ones go at their release",
                    done.golden_id, done.replaced, done.leased_left
                );
            }
        }
        Command::Exec {
            pool,
            lease,
            timeout,
            env,
            cwd,
            tty,
            command,
        } => {
            if *tty {
                if !env.is_empty() || cwd.is_some() {
                    return Err(Failure {
                        status: 2,
                        error: anyhow::anyhow!("`--env` and `--cwd` do not go with `-t`"),
                    });
                }
                let timeout_ms = timeout.map(seconds_to_ms);
                return terminal::exec(&target, pool, lease.as_deref(), command, timeout_ms).await;
            }
            if command.is_empty() {
                return Err(Failure {
                    status: 2,
                    error: anyhow::anyhow!("no command: `paddock exec POOL -- COMMAND...`"),
                });
            }
            let mut request = ExecRequest {
                argv: Some(command.clone()),
                cwd: cwd.clone(),
                timeout_ms: timeout.map(seconds_to_ms),
                stream: true,
                ..ExecRequest::default()
            };
            for pair in env {
                let (key, value) = pair.split_once('=').ok_or_else(|| Failure {
                    status: 2,
                    error: anyhow::anyhow!("`--env {pair}` is not KEY=VALUE"),
                })?;
                request.env.insert(key.to_owned(), value.to_owned());
            }
            return local::exec(&target, pool, lease.as_deref(), &request).await;
        }
        Command::Cp {
            recursive: false,
            from,
            to,
        } => {
            local::cp(&target, from, to).await?;
        }
        Command::Cp {
            recursive: true,
            from,
            to,
        } => {
            local::cp_tree(&target, from, to).await?;
        }
        Command::Ls { path } => {
            fs::ls(&target, path, cli.json).await?;
        }
        Command::Serve { .. }
        | Command::Audit { .. }
        | Command::Policy { .. }
        | Command::Gc { .. }
        | Command::Doctor { .. } => {}
    }
    Ok(0)
}

fn seconds_to_ms(seconds: f64) -> u64 {
    std::time::Duration::try_from_secs_f64(seconds.max(0.0)).map_or(u64::MAX, |d| {
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
    })
}

/// Acquires a lease on `pool`.
async fn acquire(target: &Target, pool: &str, wait: Option<f64>) -> Result<LeaseInfo, CallError> {
    let body = serde_json::json!({ "wait_ms": wait.map(seconds_to_ms) });
    target
        .json(
            Method::POST,
            &format!("/v1/pools/{pool}/leases"),
            Some(body),
        )
        .await
}

/// Releases lease `id`.
async fn release(target: &Target, id: &str) -> Result<(), CallError> {
    let _: serde_json::Value = target
        .json(Method::DELETE, &format!("/v1/leases/{id}"), None)
        .await?;
    Ok(())
}

fn serve(path: &std::path::Path) -> Result<u8, Failure> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = paddock_server::Config::load(path).map_err(|err| Failure {
        status: 2,
        error: err.into(),
    })?;
    runtime()?
        .block_on(paddock_server::run(config, |ready| {
            println!("paddock: serving on {}", ready.socket.display());
            if let Some(tcp) = ready.tcp {
                println!("paddock: serving tenants on http://{tcp}");
            }
        }))
        .map_err(|err| Failure {
            status: 1,
            error: err.into(),
        })?;
    Ok(0)
}
