//! A terminal through the daemon: `GET /v1/leases/{id}/terminal` upgraded
//! to a WebSocket, driven by a client from PyPI (websocket-client) against
//! `paddock serve` on real VMs: a shell typed at, resized, Ctrl-C, its exit
//! as a JSON control message; a pool whose policy lacks `exec.tty` refuses
//! the upgrade with 403 `policy_denied`. Without a WebSocket upgrade the
//! route answers 400. `paddock exec -t` runs a command on a terminal through
//! it, and at a terminal (a pty the Python script makes) puts it in raw mode,
//! forwards its window changes, and restores it.
#![cfg(test)]

use std::process::Output;
use std::time::Duration;

use paddock_server::auth::token_digest;
use paddock_tests::daemon::{DaemonProcess, http_get};
use paddock_tests::unique_marker;
use paddock_tests::vm::{POOL_ROOT, enabled, image_manifest_path};

type TestResult = anyhow::Result<()>;

const ACME: &str = "acme-token-for-tty-tests";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A lease of `pool` for the tenant, from `paddock acquire`.
fn acquire(daemon: &DaemonProcess, pool: &str) -> anyhow::Result<String> {
    let acquired: Output = daemon.tenant(ACME, &["acquire", pool, "--wait", "180"])?;
    anyhow::ensure!(acquired.status.success(), "{}", text(&acquired.stderr));
    let lease = text(&acquired.stdout).trim().to_owned();
    anyhow::ensure!(lease.starts_with("l-"), "{lease}");
    Ok(lease)
}

#[test]
fn a_terminal_over_the_daemon_s_websocket() -> TestResult {
    if !enabled("a_terminal_over_the_daemon_s_websocket") {
        return Ok(());
    }
    let Some(python) = std::env::var_os("PADDOCK_PYTHON") else {
        eprintln!("SKIPPED a_terminal_over_the_daemon_s_websocket: set PADDOCK_PYTHON");
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let pool = format!("w{}", unique_marker());
    let strict = format!("{pool}-s");
    // Shells, but no terminal.
    let no_tty = dir.path().join("no-tty.toml");
    std::fs::write(
        &no_tty,
        "schema = 1\nname = \"no-tty\"\n[exec]\nprograms = [\"sh\", \"/bin/sh\"]\nshell = true\nstdin = true\n",
    )?;
    let config = dir.path().join("paddock.toml");
    std::fs::write(
        &config,
        format!(
            r#"[server]
image = "{image}"
socket = "{socket}"
tcp = "127.0.0.1:0"
state_root = "{POOL_ROOT}"

[[tenant]]
name = "acme"
token_sha256 = "{acme}"

[[pool]]
name = "{pool}"
min_ready = 1
max_size = 1
acquire_timeout_ms = 180000

[[pool]]
name = "{strict}"
min_ready = 1
max_size = 1
acquire_timeout_ms = 180000
policy = "{no_tty}"
"#,
            image = image_manifest_path().display(),
            socket = dir.path().join("paddock.sock").display(),
            acme = token_digest(ACME),
            no_tty = no_tty.display(),
        ),
    )?;
    let daemon = DaemonProcess::start(&config, Duration::from_secs(300))?;
    let lease = acquire(&daemon, &pool)?;
    let denied = acquire(&daemon, &strict)?;

    // The route is a tenant's like the others: no token, no terminal.
    let (status, body) = http_get(daemon.tcp, &format!("/v1/leases/{lease}/terminal"))?;
    assert_eq!(status, 401, "{body}");

    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/terminal.py");
    let run = std::process::Command::new(&python)
        .arg(&script)
        .args(["--url", &format!("http://{}", daemon.tcp)])
        .args([
            "--token",
            ACME,
            "--lease",
            &lease,
            "--denied-lease",
            &denied,
        ])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()?;
    println!(
        "python terminal: {}{}",
        text(&run.stdout),
        text(&run.stderr)
    );
    assert!(
        run.status.success(),
        "{}{}",
        text(&run.stdout),
        text(&run.stderr)
    );
    assert!(text(&run.stdout).contains("terminal: ok"));

    // `paddock exec -t`: the command's output through the terminal (the
    // line discipline's CR LF), its exit status; a refusal exits 125 with
    // the daemon's code.
    let ran = daemon.tenant(
        ACME,
        &[
            "exec",
            "-t",
            "--lease",
            &lease,
            &pool,
            "--",
            "sh",
            "-c",
            "tty; exit 5",
        ],
    )?;
    assert_eq!(ran.status.code(), Some(5), "{}", text(&ran.stderr));
    assert!(
        text(&ran.stdout).contains("/dev/pts/"),
        "{}",
        text(&ran.stdout)
    );
    let refused = daemon.tenant(
        ACME,
        &["exec", "-t", "--lease", &denied, &strict, "--", "true"],
    )?;
    assert_eq!(refused.status.code(), Some(125));
    assert!(
        text(&refused.stderr).contains("policy_denied"),
        "{}",
        text(&refused.stderr)
    );

    // `paddock exec -t` at a terminal (a pty made by the script).
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/cli_tty.py");
    let binary = paddock_tests::daemon::paddock_binary()?;
    let at_a_terminal = std::process::Command::new(&python)
        .arg(&script)
        .arg("--paddock")
        .arg(&binary)
        .args(["--host", &daemon.tcp.to_string(), "--token", ACME])
        .args(["--lease", &lease, "--pool", &pool])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()?;
    println!(
        "python cli_tty: {}{}",
        text(&at_a_terminal.stdout),
        text(&at_a_terminal.stderr)
    );
    assert!(
        at_a_terminal.status.success(),
        "{}{}",
        text(&at_a_terminal.stdout),
        text(&at_a_terminal.stderr)
    );

    for id in [&lease, &denied] {
        let released = daemon.tenant(ACME, &["release", id])?;
        assert!(released.status.success(), "{}", text(&released.stderr));
    }
    let status = daemon.stop(Duration::from_secs(180))?;
    assert!(status.success(), "{status:?}");
    Ok(())
}
