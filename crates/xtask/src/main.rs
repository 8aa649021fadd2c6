//! `cargo xtask <task>`: the project's entry points.
//!
//! xtask sets the host up (Debian packages, libvirtd), builds what is
//! needed (the static agent, the guest image) and runs the product's own
//! code: it links nothing of libvirt, QEMU or the product, so that it builds
//! on a new machine where libvirt-dev is not installed yet. A test below
//! keeps it that way.
//!
//! - `demo`: Paddock's main job end to end (the `paddock` crate's `demo`
//!   example, run once the host is set up and the image built).
//! - `test`: every check CI runs: formatting, clippy, the whole test suite,
//!   docs, the static guest-agent build and the guest image.
//! - `image`: the default guest image (see [`image`]).
//! - `bench`: the criterion benchmarks under `benches/`.
//! - `bench-vm`: end-to-end figures of one real sandbox VM.
//! - `bench-slo`: the pool's SLO figures on real VMs.
//! - `bench-fs`: listing a directory of 10,000 files in a real guest.
//! - `bench-daemon`: what `paddock serve` costs on real VMs, against the
//!   library.
//! - `fuzz`: the cargo-fuzz targets under `fuzz/` for a while each.
//! - `api-test-tools`: what the HTTP API tests run besides the product (the
//!   Python client's venv, Prometheus), installed; prints their variables.

mod full_image;
mod host;
mod image;
mod shell;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::shell::{Cmd, have_command, workspace_root};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Paddock project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Run Paddock's main job end to end and print what happens.
    Demo,
    /// Run every check CI runs.
    Test {
        /// Skip formatting, clippy and docs (tests only).
        #[arg(long)]
        quick: bool,
    },
    /// Measure one real sandbox VM: boot, exec, snapshot, revert, save and
    /// restore (medians and p99 as JSON).
    BenchVm,
    /// Measure the pool on real VMs: acquire, reset, exec, boot, cycles per
    /// minute, memory per slot (one JSON object).
    BenchSlo,
    /// The observability layer's price on real VMs: acquire and exec with
    /// it off and with everything on (JSON, medians and p99).
    BenchObserve,
    /// The daemon's cost on real VMs: the lease round trip through the
    /// library and through `paddock serve`'s API (Unix socket, TCP),
    /// streamed exec throughput, the daemon's memory (JSON, medians and p99).
    BenchDaemon,
    /// Listing a directory of 10,000 files in a real guest through the
    /// agent's file system requests, every page (JSON, medians and p99).
    BenchFs,
    /// The agent's per-request cost and 8 MiB transfers next to their
    /// floors (raw channel echo and stream, the guest's own spawn), per
    /// channel, in one run (JSON, medians and p99).
    BenchFloors,
    /// Run the criterion benchmarks (pass criterion filters after `--`).
    Bench {
        /// Arguments for the benchmark binaries.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The observability example on real VMs: a few leases, then the
    /// pool's Prometheus metrics and its audit log, verified.
    Observe,
    /// The fault soak on real VMs: acquire/exec/release cycles on a pool of
    /// two while QEMU, the guest's agent and libvirtd are killed at random
    /// (at a fixed seed); prints its figures as one JSON line.
    Soak {
        /// How many cycles.
        #[arg(long, default_value_t = 1000)]
        cycles: u32,
        /// The seed of the faults' order.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// One cycle in this many injects a fault.
        #[arg(long, default_value_t = 10)]
        fault_every: u32,
    },
    /// Run each fuzz target for a while (needs cargo-fuzz; installed if missing).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u32,
    },
    /// Install what the HTTP API tests run besides the product (the Python
    /// client's venv, Prometheus) and print the environment variables that
    /// point the tests at them.
    ApiTestTools,
    /// Build the statically linked guest agent (release) and print its path.
    AgentStatic,
    /// Build the guest image (kernel and initramfs with the static agent)
    /// unless it is up to date, and print the path of its manifest.
    Image {
        /// Build the full image instead: a Debian root disk with python3,
        /// git and curl.
        #[arg(long)]
        full: bool,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Demo => {
            run_example("demo")?;
            daemon_demo()
        }
        Task::Observe => run_example("observability"),
        Task::Test { quick } => test(quick),
        Task::Bench { args } => {
            // The agent benchmarks run the release agent binary.
            build_release_agent()?;
            let mut cmd = Cmd::cargo(["bench", "--locked", "-p", "paddock-benches"])
                .args(["--bench", "codec", "--bench", "agent", "--bench", "render"])
                .args(["--bench", "policy"]);
            if !args.is_empty() {
                cmd = cmd.arg("--").args(args);
            }
            cmd.run()
        }
        Task::BenchVm => bench_on_vms("vm", &[]),
        Task::BenchSlo => bench_on_vms("slo", &[]),
        Task::BenchObserve => bench_on_vms("observe", &[]),
        Task::BenchDaemon => bench_daemon(),
        Task::BenchFs => bench_on_vms("guest_fs", &[]),
        Task::BenchFloors => bench_on_vms("floors", &[]),
        Task::Soak {
            cycles,
            seed,
            fault_every,
        } => soak(cycles, seed, fault_every),
        Task::Fuzz { seconds } => fuzz(seconds),
        Task::ApiTestTools => {
            let python = host::ensure_python_client()?;
            let prometheus = host::ensure_prometheus()?;
            println!("PADDOCK_PYTHON={}", python.display());
            println!("PADDOCK_PROMETHEUS={}", prometheus.display());
            Ok(())
        }
        Task::AgentStatic => {
            let path = build_static_agent()?;
            println!("{}", path.display());
            Ok(())
        }
        Task::Image { full: true } => {
            let manifest = full_image::ensure_full_image()?;
            println!("{}", manifest.display());
            Ok(())
        }
        Task::Image { full: false } => {
            let manifest = image::ensure_image()?;
            println!("{}", manifest.display());
            Ok(())
        }
    }
}

/// Sets the host up, then runs the `paddock` crate's example `name` on the
/// image (`demo` is `cargo xtask demo`).
fn run_example(name: &str) -> anyhow::Result<()> {
    // Before the product builds: the `virt` crate links against libvirt-dev,
    // and the example drives a running libvirtd.
    host::ensure_libvirt()?;
    let manifest = image::ensure_image()?;
    Cmd::cargo([
        "run",
        "--quiet",
        "--locked",
        "-p",
        "paddock",
        "--example",
        name,
        "--",
    ])
    .arg(&manifest)
    .run()
    .with_context(|| format!("the {name} example failed"))
}

/// The second half of `cargo xtask demo`: the daemon and the `paddock`
/// command (`crates/paddock-cli/examples/daemon.rs`), with the Python client
/// of the API.
fn daemon_demo() -> anyhow::Result<()> {
    let manifest = image::ensure_image()?;
    let python = host::ensure_python_client()?;
    Cmd::cargo([
        "build",
        "--quiet",
        "--locked",
        "-p",
        "paddock-cli",
        "--bins",
        "--examples",
    ])
    .run()
    .context("building the paddock command")?;
    Cmd::cargo([
        "run",
        "--quiet",
        "--locked",
        "-p",
        "paddock-cli",
        "--example",
        "daemon",
        "--",
    ])
    .arg(&manifest)
    .arg(&python)
    .run()
    .context("the daemon example failed")
}

fn test(quick: bool) -> anyhow::Result<()> {
    // Before the product builds: the `virt` crate links against libvirt-dev,
    // and the libvirt tests need a running libvirtd. xtask itself links no
    // libvirt, so it got this far on a machine without it.
    host::ensure_libvirt()?;
    if !quick {
        Cmd::cargo(["fmt", "--all", "--check"])
            .run()
            .context("cargo fmt --check failed")?;
        Cmd::cargo([
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ])
        .run()?;
    }
    // Builds every binary too, so the tests find the real `paddock-agent`.
    Cmd::cargo(["build", "--workspace", "--all-targets", "--locked"]).run()?;
    if !quick {
        Cmd::cargo(["doc", "--workspace", "--no-deps", "--locked"])
            .env("RUSTDOCFLAGS", "-D warnings")
            .run()?;
    }
    // The guest image that the VM tests boot, in every mode: this builds the
    // static agent (and checks that it is static) and then the image around it.
    let image = image::ensure_image()?;
    // The hybrid-vsock VM tests' backend.
    let vhost_vsock = host::ensure_vhost_device_vsock()?;
    // The full image (debootstrap: about a minute the first time).
    let full = full_image::ensure_full_image()?;
    // The HTTP API tests' Python client (a venv with httpx) and the
    // Prometheus server they scrape the daemon with.
    let python = host::ensure_python_client()?;
    let prometheus = host::ensure_prometheus()?;
    Cmd::cargo(["test", "--workspace", "--doc", "--locked"]).run()?;
    // libvirtd runs now, so the tests against qemu:///system run too.
    let env = [
        ("PADDOCK_LIBVIRT_SYSTEM_TESTS", "1".as_ref()),
        ("PADDOCK_IMAGE", image.as_os_str()),
        ("PADDOCK_VHOST_DEVICE_VSOCK", vhost_vsock.as_os_str()),
        ("PADDOCK_FULL_IMAGE", full.as_os_str()),
        ("PADDOCK_PYTHON", python.as_os_str()),
        ("PADDOCK_PROMETHEUS", prometheus.as_os_str()),
    ];
    let everything = run_tests(&["--workspace"], &env, false);
    // Then, alone, the tests that restart libvirtd (every other test talks
    // to it): they skip themselves in the run above. The test runner goes
    // last: its summary is the run's closing line.
    let mut alone = env.to_vec();
    alone.push(("PADDOCK_HOST_FAULT_TESTS", "1".as_ref()));
    let host_faults = run_tests(
        &["-p", "paddock-tests", "--test", "host_faults"],
        &alone,
        true,
    );
    everything.context("the test run failed")?;
    host_faults.context("the host-fault tests failed")?;
    Ok(())
}

/// Runs the fault soak of `tests/tests/host_faults.rs` with its figures
/// printed.
fn soak(cycles: u32, seed: u64, fault_every: u32) -> anyhow::Result<()> {
    host::ensure_libvirt()?;
    let image = image::ensure_image()?;
    let (cycles, seed, fault_every) = (
        cycles.to_string(),
        seed.to_string(),
        fault_every.to_string(),
    );
    let env = [
        ("PADDOCK_LIBVIRT_SYSTEM_TESTS", "1".as_ref()),
        ("PADDOCK_HOST_FAULT_TESTS", "1".as_ref()),
        ("PADDOCK_IMAGE", image.as_os_str()),
        ("PADDOCK_SOAK_CYCLES", cycles.as_ref()),
        ("PADDOCK_SOAK_SEED", seed.as_ref()),
        ("PADDOCK_SOAK_FAULT_EVERY", fault_every.as_ref()),
    ];
    let mut cmd = Cmd::cargo([
        "test",
        "--locked",
        "-p",
        "paddock-tests",
        "--test",
        "host_faults",
        "--",
        "--exact",
        "fault_soak",
        "--nocapture",
    ]);
    for (key, value) in env {
        cmd = cmd.env(key, value);
    }
    cmd.run().context("the fault soak failed")
}

/// Runs the tests `selection` picks (cargo-nextest, or cargo test where
/// nextest is missing) with `env`, one at a time if `serially`.
fn run_tests(
    selection: &[&str],
    env: &[(&str, &std::ffi::OsStr)],
    serially: bool,
) -> anyhow::Result<()> {
    let mut cmd = if have_command("cargo-nextest") {
        let cmd = Cmd::cargo(["nextest", "run", "--locked", "--no-fail-fast"]).args(selection);
        if serially {
            cmd.args(["--test-threads", "1"])
        } else {
            cmd
        }
    } else {
        eprintln!("xtask: cargo-nextest not found, running cargo test");
        let cmd = Cmd::cargo(["test", "--locked", "--no-fail-fast"]).args(selection);
        let cmd = if selection.contains(&"--workspace") {
            cmd.args(["--lib", "--bins", "--tests"])
        } else {
            cmd
        };
        if serially {
            cmd.args(["--", "--test-threads", "1"])
        } else {
            cmd
        }
    };
    for (key, value) in env {
        cmd = cmd.env(key, value);
    }
    cmd.run()
}

/// Runs the real-VM benchmark `bench` after setting the host up, with
/// `env` besides `PADDOCK_IMAGE`.
fn bench_on_vms(bench: &str, env: &[(&str, &std::path::Path)]) -> anyhow::Result<()> {
    host::ensure_libvirt()?;
    let image = image::ensure_image()?;
    let mut cmd = Cmd::cargo([
        "bench",
        "--locked",
        "-p",
        "paddock-benches",
        "--bench",
        bench,
    ])
    .env("PADDOCK_IMAGE", &image);
    for (key, value) in env {
        cmd = cmd.env(key, value);
    }
    cmd.run()
}

/// Runs the `daemon` benchmark after setting the host up, with the release
/// `paddock` binary (built like the bench, so that the daemon and the
/// library are compared at the same optimization) in `PADDOCK_BIN`.
fn bench_daemon() -> anyhow::Result<()> {
    Cmd::cargo(["build", "--release", "--locked", "-p", "paddock-cli"]).run()?;
    let binary = cargo_target_dir().join("release/paddock");
    bench_on_vms("daemon", &[("PADDOCK_BIN", &binary)])
}

/// Where cargo puts what it builds: `$CARGO_TARGET_DIR` (relative to the
/// workspace root, where [`Cmd::cargo`] runs cargo), else `target/`.
fn cargo_target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || workspace_root().join("target"),
        |dir| workspace_root().join(dir),
    )
}

/// `cargo` arguments that build the release guest agent.
const AGENT_BUILD: [&str; 5] = [
    "build",
    "--release",
    "--locked",
    "-p",
    "paddock-guest-agent",
];

/// Builds the release `paddock-agent` for this host and returns its path.
pub fn build_release_agent() -> anyhow::Result<PathBuf> {
    Cmd::cargo(AGENT_BUILD).run()?;
    Ok(workspace_root().join("target/release/paddock-agent"))
}

/// Builds `paddock-agent` as a static executable, as it runs inside guests.
pub(crate) fn build_static_agent() -> anyhow::Result<PathBuf> {
    let target = "x86_64-unknown-linux-gnu";
    Cmd::cargo(AGENT_BUILD)
        .args(["--target", target])
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        // A separate target dir: other RUSTFLAGS would rebuild the host build.
        .env("CARGO_TARGET_DIR", workspace_root().join("target/static"))
        .run()?;
    Ok(workspace_root().join(format!("target/static/{target}/release/paddock-agent")))
}

/// Fails unless `binary` needs no dynamic loader (what a busybox initramfs has).
pub(crate) fn check_static(binary: &std::path::Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    // An ELF with a PT_INTERP program header names a dynamic loader.
    anyhow::ensure!(
        !has_interp(&bytes),
        "{} is dynamically linked",
        binary.display()
    );
    // On stderr: `cargo xtask image` prints only the manifest's path.
    eprintln!(
        "xtask: {} is static ({} bytes)",
        binary.display(),
        bytes.len()
    );
    Ok(())
}

/// Whether a 64-bit little-endian ELF has a `PT_INTERP` program header (it
/// names a dynamic loader). Anything that does not parse counts as dynamic.
pub(crate) fn has_interp(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let field = |at: usize, len: usize| elf.get(at..at + len);
    let u16_at = |at| field(at, 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |at| field(at, 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let u64_at = |at| {
        field(at, 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if field(0, 5) != Some(b"\x7fELF\x02".as_slice()) {
        return true;
    }
    let (Some(phoff), Some(entry_size), Some(count)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return true;
    };
    let Ok(phoff) = usize::try_from(phoff) else {
        return true;
    };
    (0..usize::from(count))
        .map(|i| u32_at(phoff + i * usize::from(entry_size)))
        .any(|p_type| p_type.is_none_or(|t| t == PT_INTERP))
}

fn fuzz(seconds: u32) -> anyhow::Result<()> {
    if !have_command("cargo-fuzz") {
        Cmd::cargo(["install", "cargo-fuzz", "--locked"]).run()?;
    }
    let fuzz_dir = workspace_root().join("fuzz");
    // Each target with its dictionary, if any, and its seeds where the
    // fuzzer would not find its way past a magic number alone (or, for the
    // client's session, to a session that succeeds).
    let targets = [
        ("frame_decoder", Some("dict/frame.dict"), None),
        ("message_decode", Some("dict/message.dict"), None),
        (
            "saved_image_header",
            Some("dict/saved_image.dict"),
            Some("seeds/saved_image_header"),
        ),
        ("client_session", None, Some("seeds/client_session")),
    ];
    for (target, dict, seeds) in targets {
        let mut cmd = Cmd::cargo(["fuzz", "run", target]);
        if let Some(seeds) = seeds {
            let corpus = format!("corpus/{target}");
            std::fs::create_dir_all(fuzz_dir.join(&corpus))
                .with_context(|| format!("creating fuzz/{corpus}"))?;
            cmd = cmd.arg(corpus).arg(seeds);
        }
        cmd = cmd.args(["--".to_owned(), format!("-max_total_time={seconds}")]);
        if let Some(dict) = dict {
            cmd = cmd.arg(format!("-dict={dict}"));
        }
        cmd.dir(&fuzz_dir)
            // cargo-fuzz passes nightly-only flags; the stable compiler accepts
            // them with RUSTC_BOOTSTRAP (no nightly toolchain is available here).
            .env("RUSTC_BOOTSTRAP", "1")
            .run()?;
    }
    Ok(())
}
