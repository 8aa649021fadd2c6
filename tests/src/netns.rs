//! A test host inside a network namespace that the test creates itself: the
//! only place, besides loopback, that network tests send traffic to.
//!
//! [`NetnsHost::start`] creates a namespace and a veth pair, gives the host
//! end `198.51.100.1/30` and the namespace end `198.51.100.2/30` (TEST-NET-2,
//! which no real host uses), and runs busybox `httpd` on the given ports in
//! the namespace, each serving a page that names its port. Dropping it stops
//! the servers and deletes the namespace and the veth pair.
//!
//! Every test host has the same addresses, so only one exists at a time: it
//! holds an exclusive lock on [`LOCK_FILE`] while it lives, which serializes
//! the tests that use one whether they run as threads or as processes.

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
}

/// The page a server on `port` serves at `/index.html`.
#[must_use]
pub fn page(port: u16) -> String {
    format!("paddock test host, port {port}\n")
}

fn run(args: &[&str]) -> anyhow::Result<()> {
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
    Ok(())
}

impl NetnsHost {
    /// Creates the namespace `pdk-<tag>` with servers on `ports`.
    ///
    /// # Errors
    /// When `ip` fails (needs root) or a server does not start.
    pub fn start(tag: &str, ports: &[u16]) -> anyhow::Result<Self> {
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
        for &port in ports {
            let root: PathBuf = host._pages.path().join(port.to_string());
            std::fs::create_dir(&root)?;
            std::fs::write(root.join("index.html"), page(port))?;
            let server = Command::new("ip")
                .args(["netns", "exec", &namespace, "busybox", "httpd", "-f", "-p"])
                .arg(format!("{TEST_HOST}:{port}"))
                .arg("-h")
                .arg(&root)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting busybox httpd in the namespace")?;
            host.servers.push(server);
        }
        // The servers are up once the host itself can fetch every page.
        for &port in ports {
            let ready = crate::wait_until(Duration::from_secs(10), || {
                host.fetch_from_host(port)
                    .is_ok_and(|body| body == page(port))
            });
            if !ready {
                bail!("the test server on {TEST_HOST}:{port} did not answer the host");
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
        for server in &mut self.servers {
            let _ = server.kill();
            let _ = server.wait();
        }
        let _ = run(&["ip", "link", "del", &self.veth]);
        let _ = run(&["ip", "netns", "del", &self.namespace]);
    }
}
