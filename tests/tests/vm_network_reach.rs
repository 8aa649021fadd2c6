//! Where a `NatFiltered` guest must not get, end to end, for the two slots
//! of one pool behind `paddock-egress`: not to the host's address on the
//! pool's bridge, not to the other slot, not into the private ranges or
//! link-local (the cloud metadata address), not anywhere through the DHCP
//! ports, not out with another IP, MAC or ARP claim than its own, not to
//! any other of the host's addresses (Paddock's host firewall of the
//! bridge, `paddock::vm::firewall`, whose rules go when the pool closes);
//! and an isolated guest has no NIC at all.
//!
//! Every target is made by the test: the test host ([`NetnsHost`]) lives in
//! a network namespace and also carries the metadata address and one
//! address in each private range, with a web server on port 80, which the
//! filter allows, so that only its address rules can stop a guest. The
//! host's own routing tables know none of those addresses;
//! [`NetnsHost::route_from_bridge`] sends what comes in on this test's
//! bridge to the test host, so a filter that failed would reach the test's
//! own namespace and nothing beyond this machine. The other host address
//! the test uses is its end of the test host's veth pair, never a real
//! interface's.
//!
//! Each blocked case has a control that shows it could fail: the same
//! target answers a [`BridgeProbe`] (a namespace plugged into the same
//! bridge without the filter), or the host itself, or the listening guest
//! itself; and a blocked attempt is also checked where it would land (the
//! test host's packet counter, the listener's log of connections, the
//! host's neighbour table), not only by the guest's failing fetch.
#![cfg(test)]

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use paddock::vm::HostFirewall;
use paddock::{PoolConfig, PoolNetwork, ResetStrategy, VmPool, VmPoolSpec};
use paddock_agent_client::{AgentClient, Execute};
use paddock_libvirt::{NatAttachment, NetworkKind, NetworkSpec, builtin_filters};
use paddock_tests::guest_net::{guest_fetch, guest_fetch_all, guest_number, guest_sh};
use paddock_tests::netns::{
    BridgeProbe, HOST_SIDE, NetnsHost, TEST_HOST, http_body, page, page_at,
};
use paddock_tests::subnet::{SubnetLease, net_tag};
use paddock_tests::vm::{
    NetworkGuard, POOL_ROOT, TestSandbox, TestSandboxOptions, enabled, test_paddock,
};
use paddock_tests::{test_config, unique_marker};

type TestResult = anyhow::Result<()>;

/// Allowed by `paddock-egress` (new outbound TCP to 80): only address rules
/// can stop a guest there.
const WEB: u16 = 80;

/// The cloud metadata address (link-local).
const METADATA: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// One address in each private range, far from the test's NAT subnets
/// (10.214-10.217) and checked against this machine's routes before use.
const PRIVATE: [Ipv4Addr; 3] = [
    Ipv4Addr::new(10, 254, 77, 1),
    Ipv4Addr::new(172, 31, 254, 1),
    Ipv4Addr::new(192, 168, 254, 1),
];

/// The probe's address on the pool's subnet: no slot's reservation.
const PROBE_HOST: u8 = 250;

/// The address a guest forges (in its subnet, reserved for no slot).
const SPOOFED_HOST: u8 = 200;

/// The MAC a guest forges.
const SPOOFED_MAC: &str = "52:54:00:de:ad:01";

/// Ports the test listens on at the host's addresses: two the filter
/// allows and one it does not.
const HOST_PORTS: [u16; 3] = [80, 443, 8080];

/// A TCP listener on one of the host's addresses that answers every
/// connection with a one-line HTTP page and records who connected.
struct HostListener {
    address: SocketAddr,
    peers: Arc<Mutex<Vec<IpAddr>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HostListener {
    fn open(ip: Ipv4Addr, port: u16) -> anyhow::Result<Self> {
        let address = SocketAddr::from((ip, port));
        let listener =
            TcpListener::bind(address).with_context(|| format!("listening on {address}"))?;
        listener.set_nonblocking(true)?;
        let peers = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let body = Self::body_of(address);
        let thread = std::thread::spawn({
            let (peers, stop) = (peers.clone(), stop.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut stream, peer)) => {
                            peers
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .push(peer.ip());
                            // Read the request before answering, so that
                            // closing does not reset the connection.
                            let _ = stream.set_nonblocking(false);
                            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                            let _ = stream.read(&mut [0; 1024]);
                            let _ = stream
                                .write_all(format!("HTTP/1.0 200 OK\r\n\r\n{body}").as_bytes());
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            }
        });
        Ok(Self {
            address,
            peers,
            stop,
            thread: Some(thread),
        })
    }

    fn body_of(address: SocketAddr) -> String {
        format!("host listener {address}\n")
    }

    fn body(&self) -> String {
        Self::body_of(self.address)
    }

    fn peers(&self) -> Vec<IpAddr> {
        self.peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Fetches the page from this host's own stack.
    fn fetch_from_host(&self) -> anyhow::Result<String> {
        let mut stream = TcpStream::connect_timeout(&self.address, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        http_body(&String::from_utf8_lossy(&response))
    }
}

impl Drop for HostListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The address `.host` of `network`'s /24.
fn on_subnet(network: &NetworkSpec, host: u8) -> Ipv4Addr {
    let [a, b, c, _] = network.subnet.octets();
    Ipv4Addr::new(a, b, c, host)
}

/// Lets the last packets of an exchange that just ended arrive before a
/// counter is read.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// The guest's count of frames sent on `eth0`.
async fn frames_sent(client: &AgentClient) -> anyhow::Result<u64> {
    guest_number(client, "cat /sys/class/net/eth0/statistics/tx_packets").await
}

/// Every fetch failed; the message lists those that did not.
fn all_failed(results: &[Result<String, String>], targets: &[(Ipv4Addr, u16)]) -> Vec<String> {
    results
        .iter()
        .zip(targets)
        .filter_map(|(result, (address, port))| {
            result
                .as_ref()
                .ok()
                .map(|body| format!("{address}:{port} answered {body:?}"))
        })
        .collect()
}

/// Removes a pool's directory on drop: a pool dropped unclosed (a failing
/// test) destroys its slots but leaves its golden's files.
struct PoolDirGuard(std::path::PathBuf);

impl Drop for PoolDirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A NAT-filtered pool of two on its own network, the test host (with the
/// metadata and private addresses) behind the network's bridge, and a probe
/// on the bridge.
struct Reach {
    // Dropped in this order: the probe leaves the bridge, the pool goes
    // (a pool dropped unclosed destroys its slots), then the test host and
    // its route, the host firewall of the bridge, then the network.
    probe: BridgeProbe,
    pool: VmPool,
    _pool_dir: PoolDirGuard,
    pool_name: String,
    network: NetworkSpec,
    test_host: NetnsHost,
    _firewall: FirewallGuard,
    _network: NetworkGuard,
    /// Released once the network is gone.
    _subnet: SubnetLease,
}

/// Removes the host firewall of the pool's bridge on drop: a pool dropped
/// unclosed (a failing test) leaves it.
struct FirewallGuard(HostFirewall);

impl Drop for FirewallGuard {
    fn drop(&mut self) {
        let _ = self.0.remove_blocking();
    }
}

impl Reach {
    async fn start() -> anyhow::Result<Self> {
        let marker = unique_marker();
        let tag = net_tag();
        let subnet = SubnetLease::take(216)?;
        let network = NetworkSpec {
            name: format!("pdk-reach-{marker}"),
            bridge: format!("pdkrc{tag}"),
            kind: NetworkKind::Nat,
            subnet: subnet.subnet(),
            slots: 3,
        };
        let guard = NetworkGuard(network.name.clone());
        let firewall = FirewallGuard(HostFirewall::new(&network)?);
        let mut test_host =
            NetnsHost::start_with_addresses(&format!("rh{tag}"), &[WEB], &extra_addresses())?;
        // Before any guest exists: whatever a guest on this bridge sends past
        // the host goes to the test host.
        test_host.route_from_bridge(&network.bridge, network.subnet)?;

        let paddock = test_paddock().await?;
        let pool_name = format!("pr{marker}");
        let pool_dir = PoolDirGuard(std::path::Path::new(POOL_ROOT).join(&pool_name));
        let mut spec = VmPoolSpec::new(pool_name.clone());
        spec.reset = ResetStrategy::InPlace;
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
        // The bridge exists now.
        let probe = BridgeProbe::attach(
            &format!("rp{tag}"),
            &network.bridge,
            on_subnet(&network, PROBE_HOST),
            network.gateway(),
        )?;
        Ok(Self {
            probe,
            pool,
            _pool_dir: pool_dir,
            pool_name,
            network,
            test_host,
            _firewall: firewall,
            _network: guard,
            _subnet: subnet,
        })
    }

    /// Closes the pool and checks it left nothing on disk and no host
    /// firewall rule of its bridge.
    async fn close(self) -> TestResult {
        let Self {
            probe,
            pool,
            pool_name,
            network,
            ..
        } = self;
        drop(probe);
        assert!(
            !firewall_rules(&network.bridge)?.is_empty(),
            "control: the pool's bridge has its host firewall while the pool is open"
        );
        pool.close().await?;
        let dir = std::path::Path::new(POOL_ROOT).join(&pool_name);
        assert!(!dir.exists(), "{} is still there", dir.display());
        let left = firewall_rules(&network.bridge)?;
        assert!(left.is_empty(), "the closed pool left {left:?}");
        Ok(())
    }
}

/// The lines of `iptables -t mangle -S` (the table of Paddock's host
/// firewall) that name `bridge`: its chain and the jump to it.
fn firewall_rules(bridge: &str) -> anyhow::Result<Vec<String>> {
    let out = std::process::Command::new("iptables")
        .args(["-w", "-t", paddock::vm::firewall::TABLE, "-S"])
        .output()
        .context("running iptables -S")?;
    anyhow::ensure!(
        out.status.success(),
        "iptables -S: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let chain = format!("{}{bridge}", paddock::vm::firewall::CHAIN_PREFIX);
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| line.contains(&chain) || line.contains(&format!("-i {bridge} ")))
        .map(str::to_owned)
        .collect())
}

/// The test host's addresses besides its own: the metadata address and the
/// private ones.
fn extra_addresses() -> Vec<Ipv4Addr> {
    std::iter::once(METADATA).chain(PRIVATE).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nat_filtered_slots_reach_nothing_they_should_not() -> TestResult {
    if !enabled("nat_filtered_slots_reach_nothing_they_should_not") {
        return Ok(());
    }
    let reach = Reach::start().await?;
    let first = reach.pool.acquire().await?;
    let second = reach.pool.acquire().await?;
    let a = first.network().context("a NAT-filtered slot")?.clone();
    let b = second.network().context("a NAT-filtered slot")?.clone();
    // What the isolated test below checks is absent is here in a NAT slot.
    let xml = first.vm().xml().await?;
    assert!(
        xml.contains("<interface") && xml.contains("filter='paddock-egress'"),
        "a NAT-filtered slot's domain has its filtered interface: {xml}"
    );
    assert_eq!(interfaces(first.client()).await?, ["eth0", "lo"]);

    // The way out works: the test host's own address on an allowed port,
    // and the test host's counter sees the guest's packets.
    let before = reach.test_host.packets_received()?;
    assert_eq!(
        guest_fetch(first.client(), TEST_HOST, WEB).await?,
        Ok(page(WEB)),
        "the guest reaches the test host on port {WEB}"
    );
    assert!(
        reach.test_host.packets_received()? > before,
        "the test host counts the guest's packets"
    );

    private_and_link_local(&reach.test_host, &reach.probe, first.client()).await?;
    dhcp_ports_lead_nowhere(&reach.test_host, &reach.probe, first.client()).await?;
    gateway(&reach.network, first.client(), &a).await?;
    slot_to_slot(first.client(), second.client(), &a, &b).await?;
    forged_ip_and_mac(&reach.test_host, &reach.network, first.client(), &a).await?;
    forged_arp(&reach.network, &reach.probe, first.client(), &a, &b).await?;

    first.release();
    second.release();
    reach.close().await
}

/// The host's other addresses (here its end of the test host's veth pair)
/// on ports the filter allows. The filter cannot tell them from the outside
/// (nwfilter has no "destination is this host" match, and the filter only
/// names the gateway), so what stops the guest is the host firewall of the
/// pool's bridge (`paddock::vm::firewall`). Without its rules this test
/// fails: the listeners on ports 80 and 443 answer the guest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nat_filtered_slots_reach_none_of_the_hosts_other_addresses() -> TestResult {
    if !enabled("nat_filtered_slots_reach_none_of_the_hosts_other_addresses") {
        return Ok(());
    }
    let reach = Reach::start().await?;
    let lease = reach.pool.acquire().await?;
    let own = lease.network().context("a NAT-filtered slot")?.clone();
    host_listeners_refuse(lease.client(), &own, HOST_SIDE).await?;
    lease.release();
    reach.close().await
}

/// The metadata address and the private ranges, on port 80 of the test
/// host: each answers the probe (so the route leads there and a server
/// listens), none answers the guest, and nothing of the guest's arrives.
async fn private_and_link_local(
    test_host: &NetnsHost,
    probe: &BridgeProbe,
    guest: &AgentClient,
) -> TestResult {
    let mut targets = vec![(METADATA, WEB)];
    targets.extend(PRIVATE.map(|address| (address, WEB)));
    for &(address, port) in &targets {
        assert_eq!(
            probe.fetch(address, port)?,
            page_at(address, port),
            "control: {address}:{port} answers on this bridge without the filter"
        );
    }
    settle().await;
    let before = test_host.packets_received()?;
    let results = guest_fetch_all(guest, &targets).await?;
    let reached = all_failed(&results, &targets);
    assert!(reached.is_empty(), "the guest reached {reached:?}");
    assert_eq!(
        test_host.packets_received()?,
        before,
        "nothing the guest sent to {targets:?} arrived: {results:?}"
    );
    Ok(())
}

/// The filter lets DHCP out (UDP from port 68 to 67): only to the DHCP
/// server and broadcast, not to any address that listens on port 67. The
/// guest sends from port 68 (busybox `tftp` with the ephemeral range set to
/// 68 alone) to the test host's addresses; none of it arrives. Control: the
/// guest's UDP counter shows each datagram left, and the probe (which the
/// filter does not cover) reaches the same addresses.
async fn dhcp_ports_lead_nowhere(
    test_host: &NetnsHost,
    probe: &BridgeProbe,
    guest: &AgentClient,
) -> TestResult {
    let targets: Vec<Ipv4Addr> = std::iter::once(TEST_HOST)
        .chain(extra_addresses())
        .collect();
    for &address in &targets {
        assert_eq!(probe.fetch(address, WEB)?, page_at(address, WEB));
    }
    let sends: String = targets
        .iter()
        .map(|address| format!("timeout 1 tftp -g -r x -l /tmp/tftp.x {address} 67; "))
        .collect();
    // The guest's own settings go back as they were, also when a send
    // fails; the UDP datagrams sent are the fourth Udp counter.
    let script = format!(
        "sent() {{ awk '/^Udp:/ {{ n++; if (n == 2) print $5 }}' /proc/net/snmp; }}; \
         start=$(cat /proc/sys/net/ipv4/ip_unprivileged_port_start); \
         range=$(cat /proc/sys/net/ipv4/ip_local_port_range); \
         echo 0 > /proc/sys/net/ipv4/ip_unprivileged_port_start; \
         echo '68 68' > /proc/sys/net/ipv4/ip_local_port_range; \
         before=$(sent); {sends} after=$(sent); \
         echo \"$range\" > /proc/sys/net/ipv4/ip_local_port_range; \
         echo $start > /proc/sys/net/ipv4/ip_unprivileged_port_start; \
         rm -f /tmp/tftp.x; echo $((after - before))"
    );
    settle().await;
    let before = test_host.packets_received()?;
    let sent = guest_number(guest, &script).await?;
    let arrived = test_host.packets_received()? - before;
    assert!(
        sent >= u64::try_from(targets.len())?,
        "control: the guest sent a datagram from port 68 to each of {targets:?} ({sent} sent)"
    );
    assert_eq!(
        arrived, 0,
        "{arrived} packets from the guest's DHCP port reached the test host"
    );
    Ok(())
}

/// The host's address on the pool's bridge (the gateway): listeners there
/// answer the host itself, not the guest. DNS to the gateway stays open by
/// design (the filter allows it; dnsmasq answers there): a connection to
/// its TCP port 53 opens, which also shows that the guest does reach the
/// gateway, so that the drops are the filter's.
async fn gateway(network: &NetworkSpec, guest: &AgentClient, own: &NatAttachment) -> TestResult {
    let gateway = network.gateway();
    host_listeners_refuse(guest, own, gateway).await?;
    let dns = guest_sh(
        guest,
        // The connection stays open while `sleep` keeps nc's input open;
        // up to 5 s for it to show, however loaded the machine.
        &format!(
            "sleep 8 | nc -w 3 {gateway} 53 & \
             for i in $(seq 20); do \
               netstat -tn | grep -q '{gateway}:53 .*ESTABLISHED' && break; sleep 0.25; \
             done; netstat -tn"
        ),
    )
    .await?;
    assert!(
        dns.lines()
            .any(|line| line.contains(&format!("{gateway}:53")) && line.contains("ESTABLISHED")),
        "DNS over TCP to the gateway stays open: {dns}"
    );
    Ok(())
}

/// Listeners on `address` (one of the host's), on [`HOST_PORTS`], answer
/// the host itself (control) but not the guest, and log no connection
/// from it.
async fn host_listeners_refuse(
    guest: &AgentClient,
    own: &NatAttachment,
    address: Ipv4Addr,
) -> TestResult {
    let listeners = HOST_PORTS
        .iter()
        .map(|&port| HostListener::open(address, port))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for listener in &listeners {
        assert_eq!(
            listener.fetch_from_host()?,
            listener.body(),
            "control: the host itself reaches {}",
            listener.address
        );
    }
    let targets: Vec<(Ipv4Addr, u16)> = HOST_PORTS.iter().map(|&port| (address, port)).collect();
    let results = guest_fetch_all(guest, &targets).await?;
    let reached = all_failed(&results, &targets);
    assert!(
        reached.is_empty(),
        "the guest reached the host: {reached:?}"
    );
    for listener in &listeners {
        let from_guest: Vec<IpAddr> = listener
            .peers()
            .into_iter()
            .filter(|peer| *peer == IpAddr::V4(own.ip))
            .collect();
        assert!(
            from_guest.is_empty(),
            "{} accepted the guest: {from_guest:?}",
            listener.address
        );
    }
    Ok(())
}

/// One slot listens on port 80; the other cannot connect to it, neither
/// across the bridge (with the listener's MAC already known, so no ARP
/// reply is needed; the network's isolated ports stop this even without
/// the filter) nor routed through the host (the filter stops this: the
/// subnet is in 10/8, and the listener's filter drops new connections
/// in). No TCP segment of it reaches the listening guest: its answer
/// could not come back across the isolated ports, so a failed fetch alone
/// would prove nothing. Control: the listener answers its own guest, and
/// logs that connection only.
async fn slot_to_slot(
    from: &AgentClient,
    to: &AgentClient,
    from_identity: &NatAttachment,
    to_identity: &NatAttachment,
) -> TestResult {
    let listener_ip = to_identity.ip;
    let listen = to
        .exec(Execute::shell(
            r#"rm -f /tmp/accepted; printf '%s\n' '#!/bin/sh' 'echo accepted >> /tmp/accepted' 'printf "HTTP/1.0 200 OK\r\n\r\nslot listener\n"' > /tmp/serve; chmod +x /tmp/serve; exec nc -ll -p 80 -e /tmp/serve"#,
        ))
        .await?;
    let listening = async {
        for _ in 0..50 {
            let sockets = guest_sh(to, "netstat -tln").await?;
            if sockets.lines().any(|line| line.contains(":80 ")) {
                return anyhow::Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(false)
    };
    assert!(listening.await?, "the slot's listener started");

    guest_sh(
        from,
        &format!("arp -i eth0 -s {listener_ip} {}", to_identity.mac),
    )
    .await?;
    // The listener's TCP segments in: without a handshake (its answer may
    // not find its way back) a segment that got through still counts.
    let segments_in = "awk '/^Tcp:/ { n++; if (n == 2) print $11 }' /proc/net/snmp";
    let segments_before = guest_number(to, segments_in).await?;
    let direct = guest_fetch(from, listener_ip, WEB).await?;
    guest_sh(
        from,
        &format!(
            "arp -i eth0 -d {listener_ip}; \
             ip route add {listener_ip}/32 via {} dev eth0",
            from_identity.gateway
        ),
    )
    .await?;
    let routed = guest_fetch(from, listener_ip, WEB).await?;
    guest_sh(from, &format!("ip route del {listener_ip}/32")).await?;
    let segments_after = guest_number(to, segments_in).await?;
    assert!(
        direct.is_err(),
        "a slot reached the other across the bridge: {direct:?}"
    );
    assert!(
        routed.is_err(),
        "a slot reached the other through the host: {routed:?}"
    );
    assert_eq!(
        segments_after, segments_before,
        "TCP segments of the other slot reached the listening slot"
    );

    assert_eq!(
        guest_fetch(to, listener_ip, WEB).await?,
        Ok("slot listener\n".to_owned()),
        "control: the listener answers its own guest"
    );
    assert_eq!(
        guest_sh(to, "cat /tmp/accepted").await?,
        "accepted\n",
        "the listener accepted its own guest's connection only"
    );
    listen.stop()?;
    let _ = tokio::time::timeout(Duration::from_secs(10), listen.wait()).await;
    Ok(())
}

/// A guest that takes another address of its subnet, or another MAC, gets
/// nothing out, although its frames leave it (its `tx_packets` moves and
/// the gateway's MAC is pinned, so no ARP is needed); the test host receives
/// nothing. The counter is what tells: with a forged MAC the answer could
/// not come back, so a failed fetch alone would prove nothing. With its own
/// identity back, the same fetch works again.
async fn forged_ip_and_mac(
    test_host: &NetnsHost,
    network: &NetworkSpec,
    guest: &AgentClient,
    own: &NatAttachment,
) -> TestResult {
    let gateway = network.gateway();
    let gateway_mac =
        std::fs::read_to_string(format!("/sys/class/net/{}/address", network.bridge))?;
    // Last in each forgery: a new MAC flushes the guest's neighbours.
    let pin_gateway = format!("arp -i eth0 -s {gateway} {}", gateway_mac.trim());
    let spoofed_ip = on_subnet(network, SPOOFED_HOST);
    let forgeries = [
        (
            "another IP",
            format!(
                "ip -4 addr flush dev eth0; ip -4 addr add {spoofed_ip}/24 dev eth0; \
                 ip route replace default via {gateway} dev eth0; {pin_gateway}"
            ),
        ),
        (
            "another MAC",
            format!("ip link set dev eth0 address {SPOOFED_MAC}; {pin_gateway}"),
        ),
    ];
    let restore = paddock::vm::identity_script(own, false);
    for (what, forge) in forgeries {
        guest_sh(guest, &forge).await?;
        settle().await;
        let (received, sent) = (test_host.packets_received()?, frames_sent(guest).await?);
        let fetched = guest_fetch(guest, TEST_HOST, WEB).await?;
        let (received_after, sent_after) =
            (test_host.packets_received()?, frames_sent(guest).await?);
        guest_sh(guest, &restore).await?;
        assert!(
            fetched.is_err(),
            "a guest with {what} got through: {fetched:?}"
        );
        assert!(
            sent_after > sent,
            "control: the guest with {what} sent frames ({sent} -> {sent_after})"
        );
        assert_eq!(
            received_after, received,
            "nothing of the guest with {what} reached the test host"
        );
        assert_eq!(
            guest_fetch(guest, TEST_HOST, WEB).await?,
            Ok(page(WEB)),
            "control: with its own identity back, the guest gets through again"
        );
    }
    Ok(())
}

/// A guest that claims the other slot's address in ARP does not change the
/// host's neighbour table. Control: the same claim from the probe (the
/// filter does not cover it) for an unused address does.
async fn forged_arp(
    network: &NetworkSpec,
    probe: &BridgeProbe,
    guest: &AgentClient,
    own: &NatAttachment,
    other: &NatAttachment,
) -> TestResult {
    let gateway = network.gateway();
    let neighbour = |address: Ipv4Addr| -> anyhow::Result<String> {
        let out = std::process::Command::new("ip")
            .args([
                "neigh",
                "show",
                &address.to_string(),
                "dev",
                &network.bridge,
            ])
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let unused = on_subnet(network, PROBE_HOST - 1);
    let iface = probe.interface().to_owned();
    probe.run(&["ip", "addr", "add", &format!("{unused}/32"), "dev", &iface])?;
    probe.run(&[
        "busybox",
        "arping",
        "-c",
        "1",
        "-w",
        "2",
        "-s",
        &unused.to_string(),
        "-I",
        &iface,
        &gateway.to_string(),
    ])?;
    let probe_mac = probe.run(&["cat", &format!("/sys/class/net/{iface}/address")])?;
    assert!(
        neighbour(unused)?.contains(probe_mac.trim()),
        "control: the host learns a claim from an unfiltered port: {}",
        neighbour(unused)?
    );

    guest_sh(
        guest,
        &format!(
            "ip addr add {}/32 dev eth0; arping -c 2 -w 2 -s {} -I eth0 {gateway}; \
             ip addr del {}/32 dev eth0; true",
            other.ip, other.ip, other.ip
        ),
    )
    .await?;
    let table = neighbour(other.ip)?;
    assert!(
        !table.contains(&own.mac.to_string()),
        "the host took the guest's MAC for {}: {table}",
        other.ip
    );
    Ok(())
}

/// The network interfaces the guest's kernel has.
async fn interfaces(client: &AgentClient) -> anyhow::Result<Vec<String>> {
    let out = guest_sh(client, "ls /sys/class/net").await?;
    Ok(out.split_whitespace().map(str::to_owned).collect())
}

/// An isolated guest has no NIC: a pool slot's and a sandbox's domains have
/// no `<interface>`, and their guests see only `lo`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_slots_and_sandboxes_have_no_interface() -> TestResult {
    if !enabled("isolated_slots_and_sandboxes_have_no_interface") {
        return Ok(());
    }
    let sandbox = TestSandbox::boot(TestSandboxOptions::default()).await?;
    let xml = sandbox.vm().xml().await?;
    assert!(xml.contains("<devices>"), "a domain's XML: {xml}");
    assert!(!xml.contains("<interface"), "a sandbox's domain: {xml}");
    assert_eq!(interfaces(sandbox.client()).await?, ["lo"]);
    sandbox.destroy().await?;

    let paddock = test_paddock().await?;
    let pool_name = format!("pi{}", unique_marker());
    let pool_dir = std::path::Path::new(POOL_ROOT).join(&pool_name);
    let _pool_dir = PoolDirGuard(pool_dir.clone());
    let mut spec = VmPoolSpec::new(pool_name.clone());
    spec.client = test_config();
    let pool = paddock
        .create_pool(
            spec,
            PoolConfig {
                min_ready: 1,
                max_size: 1,
                acquire_timeout: Duration::from_secs(120),
                ..PoolConfig::default()
            },
        )
        .await?;
    let lease = pool.acquire().await?;
    let xml = lease.vm().xml().await?;
    assert!(xml.contains("<devices>"), "a domain's XML: {xml}");
    assert!(!xml.contains("<interface"), "a slot's domain: {xml}");
    assert!(lease.network().is_none());
    assert_eq!(interfaces(lease.client()).await?, ["lo"]);
    lease.release();
    pool.close().await?;
    assert!(!pool_dir.exists(), "{} is still there", pool_dir.display());
    Ok(())
}
