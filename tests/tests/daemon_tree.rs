//! Directory trees through the daemon's HTTP API on real VMs: a tenant
//! PUTs a tar into its lease's guest and GETs it back
//! (`/v1/leases/{id}/tree`), an unsafe archive is refused, and Python's
//! httpx reads the same answer; `paddock cp -r` moves it both ways.
#![cfg(test)]

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use paddock_server::auth::token_digest;
use paddock_server::http::TreeResult;
use paddock_server::wire::SlotList;
use paddock_tests::daemon::DaemonProcess;
use paddock_tests::tree::{assert_same_tree, sample_tree, unsafe_streams};
use paddock_tests::unique_marker;
use paddock_tests::vm::{POOL_ROOT, enabled, image_manifest_path};

type TestResult = anyhow::Result<()>;

const TOKEN: &str = "tree-token-for-tests";

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// One HTTP/1.0 call on loopback with the tenant's token: the status, the
/// head and the body.
fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> anyhow::Result<(u16, String, Vec<u8>)> {
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no HTTP head")?;
    let head = String::from_utf8_lossy(&answer[..split]).into_owned();
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status code")?;
    Ok((code, head, answer[split + 4..].to_vec()))
}

/// What a tar stream holds: each entry's path, kind and content.
fn entries(stream: &[u8]) -> anyhow::Result<Vec<(String, char, Vec<u8>)>> {
    let mut out = Vec::new();
    for entry in tar::Archive::new(stream).entries()? {
        let mut entry = entry?;
        let path = entry
            .path()?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_owned();
        let kind = match entry.header().entry_type() {
            tar::EntryType::Directory => 'd',
            tar::EntryType::Symlink => 'l',
            _ => 'f',
        };
        let mut body = Vec::new();
        if kind == 'l' {
            let target = entry.link_name()?.context("a link target")?;
            body.extend_from_slice(target.to_string_lossy().as_bytes());
        } else {
            entry.read_to_end(&mut body)?;
        }
        if !path.is_empty() && path != "." {
            out.push((path.trim_end_matches('/').to_owned(), kind, body));
        }
    }
    out.sort();
    Ok(out)
}

#[test]
fn a_tenant_puts_and_gets_a_tree_over_http() -> TestResult {
    if !enabled("a_tenant_puts_and_gets_a_tree_over_http") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let pool = format!("dt{}", unique_marker());
    let config = dir.path().join("paddock.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nimage = \"{image}\"\nsocket = \"{socket}\"\ntcp = \"127.0.0.1:0\"\n\
             state_root = \"{POOL_ROOT}\"\n\n[[tenant]]\nname = \"acme\"\n\
             token_sha256 = \"{digest}\"\n\n[[pool]]\nname = \"{pool}\"\nmin_ready = 1\n\
             max_size = 1\nacquire_timeout_ms = 120000\npolicy = \"{policy}\"\n",
            image = image_manifest_path().display(),
            socket = dir.path().join("paddock.sock").display(),
            digest = token_digest(TOKEN),
            policy = paddock_tests::repo_root()
                .join("policies/ci-runner.toml")
                .display(),
        ),
    )?;
    let daemon = DaemonProcess::start(&config, Duration::from_secs(300))?;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let slots = daemon.operator(&["--json", "slots", &pool])?;
        if slots.status.success() {
            let slots: SlotList = serde_json::from_slice(&slots.stdout)?;
            if slots.slots.iter().any(|s| s.state == "ready") {
                break;
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "no ready slot");
        std::thread::sleep(Duration::from_millis(500));
    }
    let acquired = daemon.tenant(TOKEN, &["acquire", &pool, "--wait", "120"])?;
    anyhow::ensure!(acquired.status.success(), "{}", stderr(&acquired));
    let lease = String::from_utf8_lossy(&acquired.stdout).trim().to_owned();

    let local = tempfile::tempdir()?;
    let (files, dirs, symlinks) = sample_tree(local.path())?;
    let mut archive = Vec::new();
    {
        let mut builder = tar::Builder::new(&mut archive);
        builder.follow_symlinks(false);
        builder.append_dir_all(".", local.path())?;
        builder.finish()?;
    }
    let route = format!("/v1/leases/{lease}/tree?path=/tmp/tree");
    let (code, _, body) = call(daemon.tcp, "PUT", &route, &archive)?;
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let put: TreeResult = serde_json::from_slice(&body)?;
    assert_eq!(
        (put.files, put.dirs, put.symlinks, put.stream_bytes),
        (files, dirs, symlinks, archive.len() as u64)
    );

    let (code, head, tree) = call(daemon.tcp, "GET", &route, b"")?;
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&tree));
    let head = head.to_ascii_lowercase();
    assert!(head.contains("content-type: application/x-tar"), "{head}");
    assert!(
        head.contains(&format!("x-paddock-crc32: {}", crc32fast::hash(&tree))),
        "{head}"
    );
    assert_eq!(entries(&tree)?, entries(&archive)?);

    // An archive with an entry that would land outside: refused, whole.
    let outside = std::path::Path::new("/tmp/outside");
    // (Elsewhere: a refused put leaves what it unpacked before.)
    let elsewhere = format!("/v1/leases/{lease}/tree?path=/tmp/refused");
    for (what, stream) in unsafe_streams(outside) {
        let (code, _, body) = call(daemon.tcp, "PUT", &elsewhere, &stream)?;
        let body = String::from_utf8_lossy(&body);
        assert_eq!(code, 400, "{what}: {body}");
        assert!(body.contains("unsafe_path"), "{what}: {body}");
    }
    // Over the caller's own bound: 413.
    let small = format!("{elsewhere}&max_bytes=10000");
    let (code, _, body) = call(daemon.tcp, "PUT", &small, &archive)?;
    assert_eq!(code, 413, "{}", String::from_utf8_lossy(&body));
    // Outside the policy's paths: 403 naming the rule.
    let denied = format!("/v1/leases/{lease}/tree?path=/etc");
    let (code, _, body) = call(daemon.tcp, "GET", &denied, b"")?;
    assert_eq!(code, 403, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("get.path"));

    // Python's httpx reads the same tree.
    if let Some(python) = std::env::var_os("PADDOCK_PYTHON") {
        let script = format!(
            "import httpx, sys\n\
             r = httpx.get('http://{addr}{route}', headers={{'Authorization': 'Bearer {TOKEN}'}}, timeout=120)\n\
             assert r.status_code == 200, r.text\n\
             assert r.headers['content-type'] == 'application/x-tar'\n\
             sys.stdout.write(str(len(r.content)))\n",
            addr = daemon.tcp,
        );
        let output = std::process::Command::new(python)
            .args(["-c", &script])
            .output()?;
        assert!(output.status.success(), "{}", stderr(&output));
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            tree.len().to_string()
        );
    } else {
        eprintln!("SKIPPED the httpx call: set PADDOCK_PYTHON to a python with httpx");
    }

    // `paddock cp -r` both ways: the same tree, modes, times and links.
    let remote = format!("{lease}:/tmp/cli-tree");
    let up = daemon.tenant(
        TOKEN,
        &["cp", "-r", &local.path().to_string_lossy(), &remote],
    )?;
    assert!(up.status.success(), "{}", stderr(&up));
    let back = dir.path().join("cli-back");
    let down = daemon.tenant(TOKEN, &["cp", "-r", &remote, &back.to_string_lossy()])?;
    assert!(down.status.success(), "{}", stderr(&down));
    assert_same_tree(&back, local.path())?;

    let released = daemon.tenant(TOKEN, &["release", &lease])?;
    assert!(released.status.success(), "{}", stderr(&released));
    daemon.stop(Duration::from_secs(60))?;
    Ok(())
}
