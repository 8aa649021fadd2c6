//! What a guest does on its network, through its agent, for the network
//! tests: fetch pages with busybox `nc` (one, or many at once), wait for its
//! DHCP address, run a script whose failure fails the test.
//!
//! Every attempt is bounded: `nc -w` bounds the connect and `timeout` the
//! whole exchange, so a dropped packet costs seconds, not a hung test.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::bail;
use paddock_agent_client::{AgentClient, Execute};

use crate::netns::http_body;

/// Seconds `nc` waits for a connection to open.
pub const CONNECT_TIMEOUT_SECS: u32 = 3;

/// The shell line that fetches `/index.html` from `address:port` with `nc`.
fn fetch_line(address: Ipv4Addr, port: u16) -> String {
    format!(
        "printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | timeout {} nc -w {CONNECT_TIMEOUT_SECS} {address} {port} 2>&1",
        CONNECT_TIMEOUT_SECS + 3
    )
}

/// Fetches `/index.html` from `address:port` in the guest; the page, or
/// why there is none.
///
/// # Errors
/// When the agent fails.
pub async fn guest_fetch(
    client: &AgentClient,
    address: Ipv4Addr,
    port: u16,
) -> anyhow::Result<Result<String, String>> {
    let out = client
        .exec_collect(Execute::shell(fetch_line(address, port)))
        .await?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    Ok(http_body(&text).map_err(|e| format!("exit {:?}: {e}: {text}", out.result.exit_code)))
}

/// Fetches `/index.html` from every target at once in the guest (so that
/// blocked ones cost one connect timeout in all, not one each); for each
/// target in order, the page or why there is none.
///
/// # Errors
/// When the agent fails or the output cannot be split.
pub async fn guest_fetch_all(
    client: &AgentClient,
    targets: &[(Ipv4Addr, u16)],
) -> anyhow::Result<Vec<Result<String, String>>> {
    let mut script = String::from("d=$(mktemp -d); ");
    for (i, &(address, port)) in targets.iter().enumerate() {
        let _ = write!(script, "({} > $d/{i}) & ", fetch_line(address, port));
    }
    script.push_str("wait; ");
    for i in 0..targets.len() {
        let _ = write!(script, "echo '@@fetch {i}@@'; cat $d/{i}; ");
    }
    script.push_str("rm -rf $d");
    let out = client.exec_collect(Execute::shell(script)).await?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut results = Vec::with_capacity(targets.len());
    for (i, &(address, port)) in targets.iter().enumerate() {
        let start_marker = format!("@@fetch {i}@@\n");
        let Some(start) = text.find(&start_marker) else {
            bail!("no output for {address}:{port} in: {text}");
        };
        let rest = &text[start + start_marker.len()..];
        let end = rest
            .find(&format!("@@fetch {}@@\n", i + 1))
            .unwrap_or(rest.len());
        let response = &rest[..end];
        results.push(http_body(response).map_err(|e| format!("{address}:{port}: {e}: {response}")));
    }
    Ok(results)
}

/// Waits until the guest's `eth0` has `ip` (udhcpc runs in the background).
///
/// # Errors
/// When the agent fails, or the address does not come within 60 s.
pub async fn wait_for_address(client: &AgentClient, ip: Ipv4Addr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = client
            .exec_collect(Execute::shell("ip -4 addr show dev eth0"))
            .await?;
        let text = String::from_utf8_lossy(&out.stdout);
        if text.contains(&format!("inet {ip}/")) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the guest did not get {ip} by DHCP: {text}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Runs `script` with `sh -c` in the guest; its stdout.
///
/// # Errors
/// When the agent fails or the script exits other than 0 (with its output).
pub async fn guest_sh(client: &AgentClient, script: &str) -> anyhow::Result<String> {
    let out = client.exec_collect(Execute::shell(script)).await?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.result.exit_code != Some(0) {
        bail!(
            "`{script}` in the guest ended {:?}: {stdout}{}",
            out.result,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

/// A number `script` prints in the guest (e.g. a counter).
///
/// # Errors
/// As [`guest_sh`], or the output is not a number.
pub async fn guest_number(client: &AgentClient, script: &str) -> anyhow::Result<u64> {
    let text = guest_sh(client, script).await?;
    text.trim()
        .parse()
        .map_err(|e| anyhow::anyhow!("`{script}` printed {text:?}, not a number: {e}"))
}
