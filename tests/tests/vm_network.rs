//! A `NatFiltered` guest behind the egress filter: an allowed port on a test
//! host is reachable, a blocked one is not. The test host lives in a network
//! namespace this test creates; no traffic goes anywhere else.
#![cfg(test)]

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use paddock_agent_client::{AgentClient, Execute};
use paddock_libvirt::{Libvirt, NetworkKind, NetworkMode, NetworkSpec, load_filters};
use paddock_tests::netns::{NetnsHost, TEST_HOST, http_body, page};
use paddock_tests::vm::{SYSTEM_URI, Sandbox, SandboxOptions, enabled};

type TestResult = anyhow::Result<()>;

/// Allowed by `paddock-egress` (new outbound TCP to 80).
const ALLOWED_PORT: u16 = 80;
/// Not in the filter's list, so dropped.
const BLOCKED_PORT: u16 = 8080;

/// Removes the test's network, also when the test fails.
struct NetworkGuard(String);

impl Drop for NetworkGuard {
    fn drop(&mut self) {
        for action in ["net-destroy", "net-undefine"] {
            let _ = std::process::Command::new("virsh")
                .args(["-q", "-c", SYSTEM_URI, action, &self.0])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// Fetches the test host's page on `port` from the guest with busybox `nc`;
/// the page, or why there is none.
async fn guest_fetch(client: &AgentClient, port: u16) -> anyhow::Result<Result<String, String>> {
    let out = client
        .exec_collect(Execute::shell(format!(
            "printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 4 {TEST_HOST} {port} 2>&1"
        )))
        .await?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    Ok(http_body(&text).map_err(|e| format!("exit {:?}: {e}: {text}", out.result.exit_code)))
}

/// Waits until the guest's `eth0` has `ip` (udhcpc runs in the background).
async fn wait_for_address(client: &AgentClient, ip: Ipv4Addr) -> anyhow::Result<()> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nat_filtered_guest_reaches_allowed_ports_only() -> TestResult {
    if !enabled("nat_filtered_guest_reaches_allowed_ports_only") {
        return Ok(());
    }
    let libvirt = Libvirt::open(SYSTEM_URI).await?;
    let filters = Path::new(env!("CARGO_MANIFEST_DIR")).join("../nwfilters");
    for filter in load_filters(&filters)? {
        libvirt.apply_filter(&filter).await?;
    }
    let pid = std::process::id();
    let net = NetworkSpec {
        name: format!("pdk-nettest-{pid}"),
        bridge: format!("pdknt{}", pid % 100_000),
        kind: NetworkKind::Nat,
        subnet: Ipv4Addr::new(10, 214, u8::try_from(pid % 200)? + 20, 0),
        slots: 1,
    };
    let _network = NetworkGuard(net.name.clone());
    libvirt.apply_network(&net).await?;

    let test_host = NetnsHost::start(
        &format!("nt{}", pid % 100_000),
        &[ALLOWED_PORT, BLOCKED_PORT],
    )?;
    let attachment = net
        .attachment(0, "paddock-egress")
        .context("slot 0 has a lease")?;
    let guest_ip = attachment.ip;
    let sandbox = Sandbox::boot(SandboxOptions {
        network: NetworkMode::NatFiltered(attachment),
        ..SandboxOptions::default()
    })
    .await?;
    let client = sandbox.client();
    wait_for_address(client, guest_ip).await?;

    // Allowed: the page comes back through the NAT.
    let allowed = guest_fetch(client, ALLOWED_PORT).await?;
    assert_eq!(
        allowed,
        Ok(page(ALLOWED_PORT)),
        "port {ALLOWED_PORT} should be reachable"
    );

    // Blocked: the same host on another port gets nothing in the guest,
    // while the host itself still gets the page, so the filter is what stops
    // it.
    let blocked = guest_fetch(client, BLOCKED_PORT).await?;
    assert!(
        blocked.is_err(),
        "port {BLOCKED_PORT} must be blocked: {blocked:?}"
    );
    assert_eq!(test_host.fetch_from_host(BLOCKED_PORT)?, page(BLOCKED_PORT));

    sandbox.destroy().await?;
    Ok(())
}
