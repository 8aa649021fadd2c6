//! The daemon as an operator meets it: `paddock serve` started on a small
//! configuration, jobs run through the `paddock` command and a Python
//! client, a few of its metrics, then SIGTERM, and nothing left behind.
//! `cargo xtask demo` runs it after the library's demo.
//!
//! ```sh
//! cargo build -p paddock-cli --bins --examples
//! cargo run -p paddock-cli --example daemon -- <image manifest> [<python with httpx>]
//! ```

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

const TENANT_TOKEN: &str = "demo-tenant-token";
const OTHER_TOKEN: &str = "demo-other-token";

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let manifest = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "target/paddock-image/current.json".into()),
    );
    let python = args.next().map(PathBuf::from);
    let paddock = std::env::current_exe()?
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("paddock"))
        .context("no target directory")?;
    anyhow::ensure!(
        paddock.exists(),
        "{} not found: cargo build -p paddock-cli",
        paddock.display()
    );
    let dir = tempfile::tempdir()?;
    let pool = format!("demod{}", std::process::id());
    let socket = dir.path().join("paddock.sock");
    let audit = dir.path().join("audit");
    let config = dir.path().join("paddock.toml");
    std::fs::write(
        &config,
        format!(
            r#"[server]
image = "{manifest}"
socket = "{socket}"
tcp = "127.0.0.1:0"
audit_dir = "{audit}"

[[tenant]]
name = "demo-tenant"
token_sha256 = "{tenant}"

[[tenant]]
name = "other-tenant"
token_sha256 = "{other}"

[[pool]]
name = "{pool}"
min_ready = 2
max_size = 2
warmup = ["echo warm > /tmp/warm"]
"#,
            manifest = manifest.display(),
            socket = socket.display(),
            audit = audit.display(),
            tenant = paddock_server::auth::token_digest(TENANT_TOKEN),
            other = paddock_server::auth::token_digest(OTHER_TOKEN),
        ),
    )?;
    println!("== the daemon: paddock serve --config {}", config.display());
    println!("{}", std::fs::read_to_string(&config)?.trim_end());
    let started = Instant::now();
    let mut daemon = Command::new(&paddock)
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .context("starting paddock serve")?;
    let mut lines = BufReader::new(daemon.stdout.take().context("stdout")?).lines();
    let mut tcp = None;
    while tcp.is_none() {
        let line = lines
            .next()
            .context("the daemon exited before it served")??;
        println!("{line}");
        tcp = line
            .strip_prefix("paddock: serving tenants on http://")
            .map(str::to_owned);
    }
    let tcp = tcp.context("no TCP address")?;
    println!(
        "(serving after {:.1} s: the golden was built)",
        started.elapsed().as_secs_f64()
    );
    let run = |args: &[&str]| -> anyhow::Result<i32> {
        let shown: Vec<String> = args
            .iter()
            .map(|a| {
                if a.contains(' ') {
                    format!("'{a}'")
                } else {
                    (*a).to_owned()
                }
            })
            .collect();
        println!("\n$ paddock {}", shown.join(" "));
        let status = Command::new(&paddock)
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .status()?;
        Ok(status.code().unwrap_or(-1))
    };
    wait_ready(&paddock, &socket, &pool)?;
    run(&["pools"])?;
    run(&["slots", &pool])?;
    run(&["exec", &pool, "--", "sh", "-c", "uname -sr; cat /tmp/warm"])?;
    run(&[
        "exec",
        &pool,
        "--",
        "sh",
        "-c",
        "for i in 1 2 3; do echo tick $i; sleep 0.3; done",
    ])?;
    let code = run(&["exec", "--timeout", "1", &pool, "--", "sleep", "30"])?;
    println!("(exit status {code}: 124 is a timeout)");
    let code = run(&["exec", &pool, "--", "sh", "-c", "exit 7"])?;
    println!("(exit status {code}: the command's own)");

    match &python {
        Some(python) => {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/python/e2e.py");
            println!("\n== a Python client (httpx) over TCP, as tenant demo-tenant");
            println!("$ python tests/python/e2e.py --url http://{tcp} --token … --pool {pool}");
            let status = Command::new(python)
                .arg(&script)
                .args(["--url", &format!("http://{tcp}")])
                .args(["--token", TENANT_TOKEN, "--other-token", OTHER_TOKEN])
                .args(["--pool", &pool])
                .env("PYTHONDONTWRITEBYTECODE", "1")
                .status()?;
            anyhow::ensure!(status.success(), "the Python client failed");
        }
        None => println!("\n(no Python with httpx given: the Python client is skipped)"),
    }

    println!("\n== a few of its metrics (GET http://{tcp}/metrics)");
    let metrics = http_get(&tcp, "/metrics")?;
    for line in metrics.lines().filter(|l| {
        (l.starts_with("paddock_slots{") && l.contains(&pool))
            || l.starts_with("paddock_acquire_wait_seconds_count")
            || l.starts_with("paddock_execs_total")
            || (l.starts_with("paddock_http_requests_total") && l.contains("exec"))
    }) {
        println!("{line}");
    }

    println!("\n== SIGTERM: the daemon drains");
    let pid = i32::try_from(daemon.id())?;
    // SAFETY: kill(2) on the pid of the child this process started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = daemon.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = daemon.kill();
            bail!("the daemon did not exit within 120 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for line in lines.map_while(Result::ok) {
        println!("{line}");
    }
    println!("exit status {}", status.code().unwrap_or(-1));
    anyhow::ensure!(status.success(), "the daemon did not exit cleanly");
    run(&["audit", "verify", &audit.to_string_lossy()])?;

    println!("\n== nothing left behind");
    let left = tokio::runtime::Runtime::new()?.block_on(async {
        let libvirt = paddock::libvirt::Libvirt::open("qemu:///system").await?;
        let domains: Vec<String> = libvirt
            .paddock_domains()
            .await?
            .into_iter()
            .filter(|(_, meta)| meta.pool == pool)
            .map(|(vm, _)| vm.name().to_owned())
            .collect();
        anyhow::Ok(domains)
    })?;
    let pool_dir = Path::new(paddock::DEFAULT_STATE_ROOT).join(&pool);
    println!(
        "domains of pool {pool}: {}; {}: {}; {}: {}",
        if left.is_empty() {
            "none".to_owned()
        } else {
            left.join(", ")
        },
        pool_dir.display(),
        if pool_dir.exists() {
            "still there"
        } else {
            "removed"
        },
        socket.display(),
        if socket.exists() {
            "still there"
        } else {
            "removed"
        },
    );
    anyhow::ensure!(left.is_empty() && !pool_dir.exists(), "something was left");
    Ok(())
}

/// Waits until `pool` has all of its slots ready (at most 3 minutes).
fn wait_ready(paddock: &Path, socket: &Path, pool: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let output = Command::new(paddock)
            .arg("--socket")
            .arg(socket)
            .args(["--json", "pools"])
            .output()?;
        let list: paddock_server::wire::PoolList = serde_json::from_slice(&output.stdout)
            .with_context(|| String::from_utf8_lossy(&output.stderr).into_owned())?;
        if list
            .pools
            .iter()
            .any(|p| p.name == pool && p.ready == p.max_size)
        {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "the pool never filled");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A plain HTTP/1.0 GET on loopback.
fn http_get(authority: &str, path: &str) -> anyhow::Result<String> {
    let mut stream = std::net::TcpStream::connect(authority)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default())
}
