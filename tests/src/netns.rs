//! A test host inside a network namespace that the test creates itself: the
//! only place, besides loopback, that network tests send traffic to.
//!
//! [`NetnsHost::start`] creates a namespace and a veth pair, gives the host
//! end `198.51.100.1/30` and the namespace end `198.51.100.2/30` (TEST-NET-2,
//! which no real host uses), and runs busybox `httpd` on the given ports in
//! the namespace, each serving a page that names its port. Dropping it stops
//! the servers and deletes the namespace and the veth pair.
//!
//! [`NetnsHost::start_with_addresses`] gives the namespace more addresses
//! (say the metadata address `169.254.169.254` or private-range ones), each
//! with its own servers. The host's routing tables do not lead there: only
//! [`NetnsHost::route_from_bridge`] sends the traffic of one bridge the test
//! made to the test host, so that a guest on that bridge whose filter fails
//! reaches the test host and nothing else. A [`BridgeProbe`] is a second namespace plugged
//! into such a bridge without any filter: what it reaches, a filtered guest
//! would reach too but for its filter.
//!
//! Every test host has the same addresses, so only one exists at a time: it
//! holds an exclusive lock on [`LOCK_FILE`] while it lives, which serializes
//! the tests that use one whether they run as threads or as processes. The
//! same lock covers the one bridge route that can exist.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

/// The host end's address.
pub const HOST_SIDE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

/// The test host's address, inside the namespace.
pub const TEST_HOST: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);

/// The lock a test host holds while it lives.
pub const LOCK_FILE: &str = "/run/lock/paddock-test-host.lock";

/// The routing table of [`NetnsHost::route_from_bridge`] (one at a time,
/// under the test host's lock).
pub const ROUTE_TABLE: u32 = 7127;

/// The priorities of the bridge route's two rules: before `main` (32766).
const ROUTE_RULE_PRIORITIES: [u32; 2] = [7127, 7128];

/// A network namespace with web servers in it.
#[derive(Debug)]
pub struct NetnsHost {
    /// Released last, after the namespace is gone (fields drop in order,
    /// after `Drop::drop`).
    _lock: std::fs::File,
    namespace: String,
    veth: String,
    servers: Vec<Child>,
    _pages: tempfile::TempDir,
    /// Whether [`NetnsHost::route_from_bridge`] added its rules.
    routes_bridge: bool,
}

/// The page a server on [`TEST_HOST`]'s `port` serves at `/index.html`.
#[must_use]
pub fn page(port: u16) -> String {
    format!("paddock test host, port {port}\n")
}

/// The page a server on `address`'s `port` serves at `/index.html`: it
/// names the address, so a fetch shows which one answered.
#[must_use]
pub fn page_at(address: Ipv4Addr, port: u16) -> String {
    if address == TEST_HOST {
        page(port)
    } else {
        format!("paddock test host at {address}, port {port}\n")
    }
}

fn run(args: &[&str]) -> anyhow::Result<()> {
    output(args).map(drop)
}

/// Runs `args`; its stdout, or its stderr in the error.
fn output(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", args.join(" ")))?;
    if !output.status.success() {
        bail!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `args` inside `namespace`.
fn output_in(namespace: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut full = vec!["ip", "netns", "exec", namespace];
    full.extend_from_slice(args);
    output(&full)
}

/// Fails unless no route of this machine, in any table, leads to `address`
/// but a default one: no interface of this machine has an address in a
/// network that holds it, so it can be given to a test host without hiding
/// or reaching anything real.
///
/// # Errors
/// A route other than a default one matches `address`, or `ip` fails.
pub fn ensure_unrouted(address: Ipv4Addr) -> anyhow::Result<()> {
    let routes = output(&[
        "ip",
        "-4",
        "route",
        "show",
        "table",
        "all",
        "match",
        &address.to_string(),
    ])?;
    let specific: Vec<&str> = routes
        .lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with("default"))
        .collect();
    if !specific.is_empty() {
        bail!(
            "{address} is on a network of this machine ({}): choose another test address",
            specific.join("; ")
        );
    }
    Ok(())
}

/// Fetches `/index.html` from `address:port` with busybox `nc` inside
/// `namespace` (3 s to connect, 6 s in all); the body, or why there is none.
/// (The static busybox's `wget` crashes here.)
fn fetch_in(namespace: &str, address: Ipv4Addr, port: u16) -> anyhow::Result<String> {
    let response = output_in(
        namespace,
        &[
            "sh",
            "-c",
            &format!(
                "printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' \
                 | busybox timeout 6 busybox nc -w 3 {address} {port}"
            ),
        ],
    )?;
    http_body(&response)
}

impl NetnsHost {
    /// Creates the namespace `pdk-<tag>` with servers on `ports`.
    ///
    /// # Errors
    /// When `ip` fails (needs root) or a server does not start.
    pub fn start(tag: &str, ports: &[u16]) -> anyhow::Result<Self> {
        Self::start_with_addresses(tag, ports, &[])
    }

    /// As [`NetnsHost::start`], and the namespace also has each of `extra`
    /// (a /32 on its end of the veth pair) with servers on `ports` that
    /// serve [`page_at`]. Nothing of this machine routes to them;
    /// [`NetnsHost::route_from_bridge`] leads one bridge's traffic there.
    ///
    /// # Errors
    /// As [`NetnsHost::start`], or an extra address is on a network of this
    /// machine ([`ensure_unrouted`]).
    pub fn start_with_addresses(
        tag: &str,
        ports: &[u16],
        extra: &[Ipv4Addr],
    ) -> anyhow::Result<Self> {
        for &address in extra {
            ensure_unrouted(address)?;
        }
        let namespace = format!("pdk-{tag}");
        // Interface names have at most 15 bytes.
        let veth: String = format!("pdkv{tag}").chars().take(15).collect();
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK_FILE)
            .with_context(|| format!("opening {LOCK_FILE}"))?;
        // Waits while another test's host lives. (`File::lock` needs Rust
        // 1.89; the workspace supports 1.85.)
        // SAFETY: flock on a descriptor this function owns for the call.
        let locked = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
        if locked != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("locking {LOCK_FILE}"));
        }
        let pages = tempfile::tempdir()?;
        let mut host = Self {
            _lock: lock,
            namespace: namespace.clone(),
            veth: veth.clone(),
            servers: Vec::new(),
            _pages: pages,
            routes_bridge: false,
        };
        let peer: String = format!("pdkp{tag}").chars().take(15).collect();
        run(&["ip", "netns", "add", &namespace])?;
        run(&[
            "ip", "link", "add", &veth, "type", "veth", "peer", "name", &peer,
        ])?;
        run(&["ip", "link", "set", &peer, "netns", &namespace])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{HOST_SIDE}/30"),
            "dev",
            &veth,
        ])?;
        run(&["ip", "link", "set", &veth, "up"])?;
        let in_ns = |args: &[&str]| {
            let mut full = vec!["ip", "netns", "exec", namespace.as_str()];
            full.extend_from_slice(args);
            run(&full)
        };
        in_ns(&["ip", "link", "set", "lo", "up"])?;
        in_ns(&[
            "ip",
            "addr",
            "add",
            &format!("{TEST_HOST}/30"),
            "dev",
            &peer,
        ])?;
        in_ns(&["ip", "link", "set", &peer, "up"])?;
        for address in extra {
            in_ns(&["ip", "addr", "add", &format!("{address}/32"), "dev", &peer])?;
        }
        let addresses: Vec<Ipv4Addr> = std::iter::once(TEST_HOST)
            .chain(extra.iter().copied())
            .collect();
        for &address in &addresses {
            for &port in ports {
                let root: PathBuf = host._pages.path().join(format!("{address}-{port}"));
                std::fs::create_dir(&root)?;
                std::fs::write(root.join("index.html"), page_at(address, port))?;
                let server = Command::new("ip")
                    .args(["netns", "exec", &namespace, "busybox", "httpd", "-f", "-p"])
                    .arg(format!("{address}:{port}"))
                    .arg("-h")
                    .arg(&root)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("starting busybox httpd in the namespace")?;
                host.servers.push(server);
            }
        }
        // The servers are up once the host itself can fetch every page of
        // the test host's address; the extra addresses' pages are fetched
        // inside the namespace (the host has no route to them).
        for &port in ports {
            let ready = crate::wait_until(Duration::from_secs(10), || {
                host.fetch_from_host(port)
                    .is_ok_and(|body| body == page(port))
            });
            if !ready {
                bail!("the test server on {TEST_HOST}:{port} did not answer the host");
            }
            for &address in extra {
                let ready = crate::wait_until(Duration::from_secs(10), || {
                    fetch_in(&host.namespace, address, port)
                        .is_ok_and(|body| body == page_at(address, port))
                });
                if !ready {
                    bail!("the test server on {address}:{port} did not answer in its namespace");
                }
            }
        }
        Ok(host)
    }

    /// Fetches `/index.html` from the test host's `port` from the host's
    /// own namespace (proves a server is up, independent of any guest).
    ///
    /// # Errors
    /// When the fetch fails.
    pub fn fetch_from_host(&self, port: u16) -> anyhow::Result<String> {
        use std::io::{Read as _, Write as _};
        let address = std::net::SocketAddr::from((TEST_HOST, port));
        let mut stream = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        http_body(&String::from_utf8_lossy(&response))
    }

    /// The IPv4 packets the test host's namespace has received so far
    /// (`InReceives` of its `/proc/net/snmp`): every packet that reached
    /// the test host on any of its addresses, whether a server answered it
    /// or not. Only what a test sends there moves it (the namespace's own
    /// checks of its servers go over its loopback and count too, so read it
    /// around what is to be counted).
    ///
    /// # Errors
    /// When it cannot be read.
    pub fn packets_received(&self) -> anyhow::Result<u64> {
        let snmp = output_in(&self.namespace, &["cat", "/proc/net/snmp"])?;
        snmp_counter(&snmp, "Ip", "InReceives")
    }

    /// Sends one bridge's routed traffic to the test host: packets that come
    /// in on `bridge` for an address that is not this machine's own nor in
    /// `subnet` (the bridge's /24, which stays on the bridge) go to
    /// [`TEST_HOST`], whatever the main table says. The rules may name a
    /// bridge that does not exist yet, so they can be in place before any
    /// guest is. The main table is not touched; the rules and their table
    /// go when the test host drops, before its namespace.
    ///
    /// # Errors
    /// When `ip` fails, or the test host already routes a bridge.
    pub fn route_from_bridge(&mut self, bridge: &str, subnet: Ipv4Addr) -> anyhow::Result<()> {
        anyhow::ensure!(!self.routes_bridge, "the test host already routes a bridge");
        // What a test that died before its clean-up left behind. Only one
        // test host exists at a time (its lock), so none of it is live.
        remove_bridge_route();
        self.routes_bridge = true;
        let table = ROUTE_TABLE.to_string();
        let [local, to_host] = ROUTE_RULE_PRIORITIES.map(|p| p.to_string());
        // The bridge's own subnet is looked up in `main`, where it is on
        // the bridge.
        run(&[
            "ip",
            "rule",
            "add",
            "priority",
            &local,
            "iif",
            bridge,
            "to",
            &format!("{subnet}/24"),
            "lookup",
            "main",
        ])?;
        run(&[
            "ip", "rule", "add", "priority", &to_host, "iif", bridge, "lookup", &table,
        ])?;
        run(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &TEST_HOST.to_string(),
            "dev",
            &self.veth,
            "table",
            &table,
        ])?;
        Ok(())
    }
}

/// Removes the rules and the table of [`NetnsHost::route_from_bridge`].
fn remove_bridge_route() {
    for priority in ROUTE_RULE_PRIORITIES {
        let priority = priority.to_string();
        // One rule per call; stops when none is left (bounded all the same).
        for _ in 0..16 {
            if run(&["ip", "rule", "del", "priority", &priority]).is_err() {
                break;
            }
        }
    }
    let _ = run(&["ip", "route", "flush", "table", &ROUTE_TABLE.to_string()]);
}

/// The value of `field` on the `group` lines of a `/proc/net/snmp` text.
fn snmp_counter(snmp: &str, group: &str, field: &str) -> anyhow::Result<u64> {
    let prefix = format!("{group}:");
    let mut lines = snmp.lines().filter(|line| line.starts_with(&prefix));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        bail!("no {group} lines in /proc/net/snmp");
    };
    let index = names
        .split_whitespace()
        .position(|name| name == field)
        .with_context(|| format!("no {group} {field} in /proc/net/snmp"))?;
    let value = values
        .split_whitespace()
        .nth(index)
        .with_context(|| format!("no value for {group} {field}"))?;
    value
        .parse()
        .with_context(|| format!("{group} {field} is not a number: {value}"))
}

/// A namespace plugged into a bridge the test made, with a static address
/// on the bridge's subnet and a default route through `gateway`, and no
/// filter: the control that shows where a filtered guest on the same
/// bridge would get but for its filter. Removed on drop.
#[derive(Debug)]
pub struct BridgeProbe {
    namespace: String,
    veth: String,
    interface: String,
}

impl BridgeProbe {
    /// Creates namespace `pdk-<tag>` with `address`/24 on a veth whose other
    /// end is a port of `bridge`.
    ///
    /// # Errors
    /// When `ip` fails.
    pub fn attach(
        tag: &str,
        bridge: &str,
        address: Ipv4Addr,
        gateway: Ipv4Addr,
    ) -> anyhow::Result<Self> {
        let namespace = format!("pdk-{tag}");
        let veth: String = format!("pdkq{tag}").chars().take(15).collect();
        let peer: String = format!("pdkr{tag}").chars().take(15).collect();
        run(&["ip", "netns", "add", &namespace])?;
        let probe = Self {
            namespace: namespace.clone(),
            veth: veth.clone(),
            interface: peer.clone(),
        };
        run(&[
            "ip", "link", "add", &veth, "type", "veth", "peer", "name", &peer,
        ])?;
        run(&["ip", "link", "set", &peer, "netns", &namespace])?;
        run(&["ip", "link", "set", &veth, "master", bridge, "up"])?;
        output_in(&namespace, &["ip", "link", "set", "lo", "up"])?;
        output_in(
            &namespace,
            &["ip", "addr", "add", &format!("{address}/24"), "dev", &peer],
        )?;
        output_in(&namespace, &["ip", "link", "set", &peer, "up"])?;
        output_in(
            &namespace,
            &[
                "ip",
                "route",
                "add",
                "default",
                "via",
                &gateway.to_string(),
                "dev",
                &peer,
            ],
        )?;
        Ok(probe)
    }

    /// Fetches `http://address:port/index.html` from the probe; the body.
    ///
    /// # Errors
    /// When the fetch fails (3 s at most).
    pub fn fetch(&self, address: Ipv4Addr, port: u16) -> anyhow::Result<String> {
        fetch_in(&self.namespace, address, port)
    }

    /// The probe's interface on the bridge (inside its namespace).
    #[must_use]
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// Runs `args` inside the probe's namespace; its stdout.
    ///
    /// # Errors
    /// When the command fails.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        output_in(&self.namespace, args)
    }
}

impl Drop for BridgeProbe {
    fn drop(&mut self) {
        let _ = run(&["ip", "link", "del", &self.veth]);
        let _ = run(&["ip", "netns", "del", &self.namespace]);
    }
}

/// The body of an HTTP/1.x response with status 200.
///
/// # Errors
/// Another status, or no header end.
pub fn http_body(response: &str) -> anyhow::Result<String> {
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("no end of headers in the response")?;
    anyhow::ensure!(
        head.lines()
            .next()
            .is_some_and(|status| status.contains(" 200 ")),
        "not a 200 response: {head}"
    );
    Ok(body.to_owned())
}

impl Drop for NetnsHost {
    fn drop(&mut self) {
        if self.routes_bridge {
            remove_bridge_route();
        }
        for server in &mut self.servers {
            let _ = server.kill();
            let _ = server.wait();
        }
        let _ = run(&["ip", "link", "del", &self.veth]);
        let _ = run(&["ip", "netns", "del", &self.namespace]);
    }
}
