//! `NatFiltered` guests behind the egress filter: an allowed port on a test
//! host is reachable, a blocked one is not, for a single sandbox and for the
//! slots of a pool (each with its own address, before and after resets). The
//! test host lives in a network namespace the test creates; no traffic goes
//! anywhere else.
#![cfg(test)]

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use paddock::{PoolConfig, PoolNetwork, ResetStrategy, VmPoolSpec};
use paddock_agent_client::{AgentClient, Execute};
use paddock_libvirt::{
    Libvirt, NatAttachment, NetworkKind, NetworkMode, NetworkSpec, builtin_filters,
};
use paddock_tests::guest_net::wait_for_address;
use paddock_tests::netns::{NetnsHost, TEST_HOST, page};
use paddock_tests::subnet::{SubnetLease, net_tag};
use paddock_tests::vm::{
    NetworkGuard, POOL_ROOT, SYSTEM_URI, TestSandbox, TestSandboxOptions, enabled, test_paddock,
};
use paddock_tests::{test_config, unique_marker};

type TestResult = anyhow::Result<()>;

/// Allowed by `paddock-egress` (new outbound TCP to 80).
const ALLOWED_PORT: u16 = 80;
/// Not in the filter's list, so dropped.
const BLOCKED_PORT: u16 = 8080;

/// Fetches the test host's page on `port` from the guest; the page, or why
/// there is none.
async fn guest_fetch(client: &AgentClient, port: u16) -> anyhow::Result<Result<String, String>> {
    paddock_tests::guest_net::guest_fetch(client, TEST_HOST, port).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nat_filtered_guest_reaches_allowed_ports_only() -> TestResult {
    if !enabled("nat_filtered_guest_reaches_allowed_ports_only") {
        return Ok(());
    }
    let libvirt = Libvirt::open(SYSTEM_URI).await?;
    for filter in builtin_filters() {
        libvirt.apply_filter(&filter).await?;
    }
    let tag = net_tag();
    // Released after the network is gone (locals drop in reverse order).
    let subnet = SubnetLease::take(214)?;
    let net = NetworkSpec {
        name: format!("pdk-nettest-{tag}"),
        bridge: format!("pdknt{tag}"),
        kind: NetworkKind::Nat,
        subnet: subnet.subnet(),
        slots: 1,
    };
    let _network = NetworkGuard(net.name.clone());
    libvirt.apply_network(&net).await?;

    let test_host = NetnsHost::start(&format!("nt{tag}"), &[ALLOWED_PORT, BLOCKED_PORT])?;
    let attachment = net
        .attachment(0, "paddock-egress")
        .context("slot 0 has a lease")?;
    let guest_ip = attachment.ip;
    let sandbox = TestSandbox::boot(TestSandboxOptions {
        network: NetworkMode::NatFiltered(attachment),
        ..TestSandboxOptions::default()
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

/// The guest's MAC and IPv4 address on `eth0`, as it reports them.
async fn guest_identity(client: &AgentClient) -> anyhow::Result<String> {
    let out = client
        .exec_collect(Execute::shell(
            "cat /sys/class/net/eth0/address; ip -4 -o addr show dev eth0 | awk '{print $4}'",
        ))
        .await?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn identity_of(attachment: &NatAttachment) -> String {
    format!("{}\n{}/24\n", attachment.mac, attachment.ip)
}

/// A pool of two on its own NAT network: each slot has its own MAC and
/// address (the host side binds them: the filter drops anything else), and
/// keeps them across resets; the filter holds for every slot.
async fn nat_filtered_pool(strategy: ResetStrategy) -> TestResult {
    let marker = unique_marker();
    let tag = net_tag();
    // Released after the network is gone (locals drop in reverse order).
    let subnet = SubnetLease::take(215)?;
    let network = NetworkSpec {
        name: format!("pdk-pooltest-{marker}"),
        bridge: format!("pdkpt{tag}"),
        kind: NetworkKind::Nat,
        subnet: subnet.subnet(),
        slots: 3,
    };
    let _network = NetworkGuard(network.name.clone());
    let test_host = NetnsHost::start(&format!("pt{tag}"), &[ALLOWED_PORT, BLOCKED_PORT])?;

    let paddock = test_paddock().await?;
    let mut spec = VmPoolSpec::new(format!("pn{marker}"));
    spec.reset = strategy;
    spec.client = test_config();
    spec.network = PoolNetwork::NatFiltered {
        network: network.clone(),
        filters: builtin_filters(),
        filter: "paddock-egress".into(),
    };
    let pool = paddock
        .create_pool(
            spec,
            PoolConfig {
                min_ready: 2,
                max_size: 2,
                acquire_timeout: Duration::from_secs(120),
                ..PoolConfig::default()
            },
        )
        .await?;
    pool.wait_ready(Duration::from_secs(180)).await?;

    for round in 0..2 {
        let first = pool.acquire().await?;
        let second = pool.acquire().await?;
        let mut seen = Vec::new();
        for lease in [&first, &second] {
            assert_eq!(lease.uses(), round, "round {round}");
            let attachment = lease.network().context("a NAT-filtered slot")?.clone();
            assert_eq!(
                guest_identity(lease.client()).await?,
                identity_of(&attachment),
                "round {round}, slot {}",
                lease.index()
            );
            assert_eq!(
                guest_fetch(lease.client(), ALLOWED_PORT).await?,
                Ok(page(ALLOWED_PORT)),
                "round {round}, slot {}: port {ALLOWED_PORT} should be reachable",
                lease.index()
            );
            seen.push(attachment.ip);
        }
        assert_ne!(seen[0], seen[1], "two slots, one address");
        if round == 0 {
            let blocked = guest_fetch(first.client(), BLOCKED_PORT).await?;
            assert!(
                blocked.is_err(),
                "port {BLOCKED_PORT} must be blocked: {blocked:?}"
            );
            // The host gets it: the filter is what stops the guest.
            assert_eq!(test_host.fetch_from_host(BLOCKED_PORT)?, page(BLOCKED_PORT));
        }
        first.release();
        second.release();
    }
    pool.close().await?;
    let dir = Path::new(POOL_ROOT).join(format!("pn{marker}"));
    assert!(!dir.exists(), "{} is still there", dir.display());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nat_filtered_pool_slots_keep_their_own_addresses_across_in_place_resets() -> TestResult {
    if !enabled("nat_filtered_pool_slots_keep_their_own_addresses_across_in_place_resets") {
        return Ok(());
    }
    nat_filtered_pool(ResetStrategy::InPlace).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nat_filtered_pool_slots_get_their_own_addresses_back_after_restores() -> TestResult {
    if !enabled("nat_filtered_pool_slots_get_their_own_addresses_back_after_restores") {
        return Ok(());
    }
    nat_filtered_pool(ResetStrategy::Restore).await
}
