//! Host set-up for the tests that need a real libvirtd: Debian packages,
//! then virtlogd and libvirtd (there is no systemd to start them). Also the
//! packages that building the guest image needs ([`ensure_image_packages`]),
//! the Python client's venv ([`ensure_python_client`]) and the Prometheus
//! server the HTTP API tests scrape with ([`ensure_prometheus`]).
//!
//! Idempotent and cheap on a prepared machine: `dpkg -s` finds every package
//! installed (no apt work at all) and `virsh version` answers (nothing to
//! start).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::shell::{Cmd, workspace_root};

/// What the libvirt layer builds against and its tests run: the `virt`
/// crate's build (libvirt-dev, pkg-config), the daemon and its QEMU driver,
/// virsh and `virt-xml-validate` (which runs `xmllint`), QEMU for TCG
/// guests, `qemu-img` for overlays, and what NAT networks and nwfilter need.
const PACKAGES: [&str; 12] = [
    "libvirt-dev",
    "pkg-config",
    "libvirt-daemon-system",
    "libvirt-clients",
    "libxml2-utils",
    "qemu-system-x86",
    "qemu-utils",
    "dnsmasq-base",
    "iptables",
    "ebtables",
    // `ip` for the network-namespace test host.
    "iproute2",
    // Reaps QEMU processes for libvirtd (see `start_libvirtd`).
    "tini",
];

/// What building the guest image takes from the host (see `image/`): the
/// static busybox that becomes the guest's userland, and `strip` for the
/// agent binary.
const IMAGE_PACKAGES: [&str; 2] = ["busybox-static", "binutils"];

/// How long `apt-get update` may take.
const APT_UPDATE_TIMEOUT: Duration = Duration::from_secs(300);

/// How long `apt-get install` may take.
const APT_INSTALL_TIMEOUT: Duration = Duration::from_secs(900);

const URI: &str = "qemu:///system";

/// How long libvirtd may take to answer after it is started.
const DAEMON_START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one `virsh version` probe may take.
const PROBE_TIMEOUT: &str = "10";

/// Installs the missing packages and starts virtlogd and libvirtd unless
/// libvirtd already answers on `qemu:///system`.
pub fn ensure_libvirt() -> anyhow::Result<()> {
    ensure_packages(&PACKAGES)?;
    ensure_kvm_device_mode()?;
    if libvirtd_answers() {
        return Ok(());
    }
    if !is_root() {
        bail!("libvirtd does not answer on {URI}, and starting it needs root");
    }
    for dir in ["/var/log/libvirt", "/var/run/libvirt", "/var/lib/libvirt"] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {dir}"))?;
    }
    // A libvirtd that runs but does not answer is hung (seen after QEMU
    // failed to start several domains at once); its pidfile would keep a new
    // one from starting.
    if quiet(Command::new("pgrep").args(["-x", "libvirtd"])) {
        eprintln!("xtask: libvirtd runs but does not answer; restarting it");
        let _ = quiet(Command::new("pkill").args(["-TERM", "-x", "libvirtd"]));
        let deadline = Instant::now() + Duration::from_secs(5);
        while quiet(Command::new("pgrep").args(["-x", "libvirtd"])) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = quiet(Command::new("pkill").args(["-KILL", "-x", "libvirtd"]));
        std::thread::sleep(Duration::from_millis(200));
        let _ = std::fs::remove_file("/var/run/libvirtd.pid");
        let _ = std::fs::remove_file("/run/libvirtd.pid");
    }
    // A virtlogd that already runs makes a second one exit at once: harmless.
    let _ = quiet(Command::new("/usr/sbin/virtlogd").arg("-d"));
    start_libvirtd()?;
    let deadline = Instant::now() + DAEMON_START_TIMEOUT;
    while !libvirtd_answers() {
        if Instant::now() >= deadline {
            bail!("libvirtd did not answer on {URI} within {DAEMON_START_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!("xtask: libvirtd answers on {URI}");
    Ok(())
}

/// Starts libvirtd in the foreground under `tini -s` (a child subreaper), in
/// a session of its own so that it outlives this process.
///
/// libvirt daemonizes QEMU, so a QEMU process's parent is the nearest
/// subreaper, normally PID 1. On these machines PID 1 reaps late, and
/// libvirt's destroy waits until the process is gone: about 1.5 s per destroy
/// (and per reset) instead of 0.2 s. Under tini, QEMU is reaped at once.
fn start_libvirtd() -> anyhow::Result<()> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open("/var/log/libvirt/libvirtd-console.log")
        .context("opening /var/log/libvirt/libvirtd-console.log")?;
    Command::new("setsid")
        .args(["tini", "-s", "--", "/usr/sbin/libvirtd"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting libvirtd under tini")?;
    Ok(())
}

/// Gives `/dev/kvm` Debian's usual owner and mode (`root:kvm`, 0660), which
/// udev sets on a normal host but nothing sets on a machine without udev.
///
/// Left at `root:root` 0600, it makes every libvirt call that needs QEMU's
/// capabilities re-probe QEMU (about 8 s each, several per domain start):
/// the probe, run as root, finds KVM, and the cache check, done for the
/// `libvirt-qemu` user, finds it unusable and throws the result away
/// ("KVM was enabled when probing ..., but it is not available now"). Domains
/// still run under TCG where KVM is not usable (see the acceleration choice).
fn ensure_kvm_device_mode() -> anyhow::Result<()> {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let kvm = Path::new("/dev/kvm");
    let Ok(meta) = std::fs::metadata(kvm) else {
        return Ok(());
    };
    let group = std::fs::read_to_string("/etc/group")
        .ok()
        .and_then(|groups| {
            groups.lines().find_map(|line| {
                let mut fields = line.split(':');
                (fields.next() == Some("kvm"))
                    .then(|| fields.nth(1).and_then(|gid| gid.parse::<u32>().ok()))
                    .flatten()
            })
        });
    let Some(gid) = group else {
        return Ok(());
    };
    if meta.gid() == gid && meta.mode() & 0o060 == 0o060 {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "/dev/kvm should be root:kvm 0660 (libvirt re-probes QEMU on every call otherwise); as root, run: chgrp kvm /dev/kvm && chmod 0660 /dev/kvm"
        );
    }
    std::os::unix::fs::chown(kvm, None, Some(gid)).context("chgrp kvm /dev/kvm")?;
    std::fs::set_permissions(kvm, std::fs::Permissions::from_mode(0o660))
        .context("chmod 0660 /dev/kvm")?;
    eprintln!("xtask: /dev/kvm is now root:kvm 0660, as udev would set it");
    Ok(())
}

/// What `cargo xtask image --full` takes from the host besides
/// [`IMAGE_PACKAGES`]: debootstrap, `mkfs.ext4 -d`, `qemu-img convert`.
const FULL_IMAGE_PACKAGES: [&str; 3] = ["debootstrap", "e2fsprogs", "qemu-utils"];

/// Installs the missing packages the full image is built with.
pub fn ensure_full_image_packages() -> anyhow::Result<()> {
    ensure_packages(&FULL_IMAGE_PACKAGES)
}

/// Installs the missing packages the guest image is built from.
pub fn ensure_image_packages() -> anyhow::Result<()> {
    ensure_packages(&IMAGE_PACKAGES)
}

/// Installs those of `packages` that are not installed (needs root).
///
/// An install can remove a package of the list that was there before: the
/// machines come with a backported `qemu-utils` that conflicts with
/// bookworm's `qemu-system-x86`, and apt resolves that by removing
/// `qemu-utils`. So the check runs again afterwards, and whatever is missing
/// then is installed in a second round (now at the matching version).
fn ensure_packages(packages: &[&'static str]) -> anyhow::Result<()> {
    for round in 1..=2 {
        let missing = missing_packages(packages)?;
        if missing.is_empty() {
            return Ok(());
        }
        let install = format!(
            "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {}",
            missing.join(" ")
        );
        if !is_root() {
            bail!(
                "missing Debian packages {}; as root, run: {install}",
                missing.join(", ")
            );
        }
        if round == 1 {
            apt_update()?;
        }
        Cmd::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .timeout(APT_INSTALL_TIMEOUT)
            .run()
            .with_context(|| format!("installing {}", missing.join(", ")))?;
    }
    let missing = missing_packages(packages)?;
    if missing.is_empty() {
        Ok(())
    } else {
        bail!(
            "apt-get install left {} uninstalled (removed by a conflict?)",
            missing.join(", ")
        )
    }
}

/// Refreshes apt's package lists (needs root).
pub fn apt_update() -> anyhow::Result<()> {
    Cmd::new("apt-get")
        .arg("update")
        .timeout(APT_UPDATE_TIMEOUT)
        .run()
        .context("apt-get update failed")
}

/// Those of `packages` that `dpkg -s` does not report installed.
fn missing_packages(packages: &[&'static str]) -> anyhow::Result<Vec<&'static str>> {
    // `dpkg -s` prints a stanza per known package and fails if any is unknown.
    let output = Command::new("dpkg")
        .arg("-s")
        .args(packages)
        .stderr(Stdio::null())
        .output()
        .context("could not run dpkg (is this Debian?)")?;
    let stanzas = String::from_utf8_lossy(&output.stdout);
    let installed: Vec<&str> = stanzas
        .split("\n\n")
        .filter(|stanza| stanza.lines().any(|l| l == "Status: install ok installed"))
        .filter_map(|stanza| stanza.lines().find_map(|l| l.strip_prefix("Package: ")))
        .collect();
    Ok(packages
        .iter()
        .copied()
        .filter(|p| !installed.contains(p))
        .collect())
}

fn libvirtd_answers() -> bool {
    quiet(Command::new("timeout").args([PROBE_TIMEOUT, "virsh", "-c", URI, "version"]))
}

/// Runs a probe with its output discarded; whether it succeeded.
fn quiet(command: &mut Command) -> bool {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Whether this process runs as root (apt and libvirtd need it).
pub fn is_root() -> bool {
    // The effective uid is the second field of `Uid:` in /proc/self/status.
    std::fs::read_to_string(Path::new("/proc/self/status")).is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            .is_some_and(|euid| euid == "0")
    })
}

/// The `vhost-device-vsock` release the hybrid-vsock tests use.
const VHOST_DEVICE_VSOCK_VERSION: &str = "0.3.0";

/// How long building `vhost-device-vsock` may take.
const CARGO_INSTALL_TIMEOUT: Duration = Duration::from_secs(900);

/// Returns the `vhost-device-vsock` executable (the hybrid-vsock backend),
/// installing it from crates.io with `cargo install` when it is missing.
pub fn ensure_vhost_device_vsock() -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("CARGO_HOME").map_or_else(
        || Path::new(&std::env::var_os("HOME").unwrap_or_default()).join(".cargo"),
        PathBuf::from,
    );
    let binary = home.join("bin/vhost-device-vsock");
    if binary.is_file() {
        return Ok(binary);
    }
    Cmd::cargo([
        "install",
        "--locked",
        "vhost-device-vsock",
        "--version",
        VHOST_DEVICE_VSOCK_VERSION,
    ])
    .timeout(CARGO_INSTALL_TIMEOUT)
    .run()
    .context("installing vhost-device-vsock (the hybrid-vsock backend)")?;
    anyhow::ensure!(
        binary.is_file(),
        "cargo install did not put vhost-device-vsock at {}",
        binary.display()
    );
    Ok(binary)
}

/// Where the Python client's venv lives (`/var/lib/paddock` is the
/// project's host state, purged by CI's host check).
const PYTHON_VENV: &str = "/var/lib/paddock/python";

/// The client's pinned dependencies, relative to the workspace root.
const PYTHON_REQUIREMENTS: &str = "tests/python/requirements.txt";

/// Debian's Python, whose `venv` module `python3-venv` provides; not the
/// first `python3` on `PATH`, which may be a pyenv shim on a developer's
/// machine.
const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// What the venv is made with (`python3-venv` brings `python3`).
const PYTHON_PACKAGES: [&str; 1] = ["python3-venv"];

/// How long `python3 -m venv` may take.
const VENV_TIMEOUT: Duration = Duration::from_secs(120);

/// How long `pip install` may take.
const PIP_INSTALL_TIMEOUT: Duration = Duration::from_secs(600);

/// Whether every `name==version` of the requirements file (`sys.argv[1]`) is
/// installed at that version and httpx imports: exits 0 if so, else 1.
const PINS_SATISFIED: &str = r"
import importlib.metadata, sys
import httpx
for line in open(sys.argv[1]):
    pin = line.split('#')[0].strip()
    if pin:
        name, version = pin.split('==')
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            sys.exit(1)
";

/// Makes the venv [`PYTHON_VENV`] with the Python client's pinned
/// dependencies (`tests/python/requirements.txt`, httpx) and returns the
/// path of its `python`.
///
/// Idempotent: nothing is done when the venv's python already has every
/// pin. `python3-venv` is installed if missing; a venv whose python does not
/// run is made anew.
pub fn ensure_python_client() -> anyhow::Result<PathBuf> {
    let requirements = workspace_root().join(PYTHON_REQUIREMENTS);
    anyhow::ensure!(
        requirements.is_file(),
        "{} is missing",
        requirements.display()
    );
    let venv = Path::new(PYTHON_VENV);
    let python = venv.join("bin/python");
    if pins_satisfied(&python, &requirements) {
        return Ok(python);
    }
    ensure_packages(&PYTHON_PACKAGES)?;
    if !quiet(Command::new(&python).args(["-c", "pass"])) {
        std::fs::create_dir_all(venv).with_context(|| {
            format!(
                "creating {} (the Python client's venv; root may be needed)",
                venv.display()
            )
        })?;
        // --clear: whatever a broken venv left there goes.
        Cmd::new(SYSTEM_PYTHON)
            .args(["-m", "venv", "--clear"])
            .arg(venv)
            .timeout(VENV_TIMEOUT)
            .run()
            .with_context(|| format!("creating the venv {}", venv.display()))?;
    }
    Cmd::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "-r",
        ])
        .arg(&requirements)
        .timeout(PIP_INSTALL_TIMEOUT)
        .run()
        .with_context(|| {
            format!(
                "installing {} into {}",
                requirements.display(),
                venv.display()
            )
        })?;
    anyhow::ensure!(
        pins_satisfied(&python, &requirements),
        "after pip install, {} still lacks a pin of {}",
        python.display(),
        requirements.display()
    );
    eprintln!(
        "xtask: the Python client's venv is ready: {}",
        python.display()
    );
    Ok(python)
}

/// Whether `python` runs, imports httpx and has every pin of
/// `requirements`.
fn pins_satisfied(python: &Path, requirements: &Path) -> bool {
    python.is_file()
        && quiet(
            Command::new(python)
                .args(["-c", PINS_SATISFIED])
                .arg(requirements),
        )
}

/// Debian's Prometheus server.
const PROMETHEUS: &str = "/usr/bin/prometheus";

/// The Prometheus server, and `ss` to check that its install started none.
const PROMETHEUS_PACKAGES: [&str; 2] = ["prometheus", "iproute2"];

/// Where Debian's maintainer scripts ask whether they may start a service
/// (`invoke-rc.d`): exit status 101 means "no".
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

/// Debian's Prometheus listens here by default.
const PROMETHEUS_DEFAULT_PORT: u16 = 9090;

/// How long a server started by the install may take to show up, and to
/// end once told to.
const PROMETHEUS_SETTLE: Duration = Duration::from_secs(5);

/// Returns Debian's Prometheus server binary, installing the `prometheus`
/// package when it is missing, with no server left running.
///
/// There is no systemd here: the package's maintainer script would start
/// the server through `invoke-rc.d` and its init script (on :9090, for
/// good). A `policy-rc.d` that refuses (exit 101) keeps it from starting
/// during the install, and a server on :9090 found afterwards anyway is
/// stopped.
pub fn ensure_prometheus() -> anyhow::Result<PathBuf> {
    let binary = PathBuf::from(PROMETHEUS);
    if binary.is_file() {
        return Ok(binary);
    }
    // A server that listened before the install is not the install's.
    let before = prometheus_listeners(PROMETHEUS_DEFAULT_PORT).unwrap_or_default();
    {
        let _refusal = if is_root() {
            ServiceStartsRefused::install()?
        } else {
            // ensure_packages says what to run as root.
            None
        };
        ensure_packages(&PROMETHEUS_PACKAGES)?;
    }
    stop_started_prometheus(&before)?;
    anyhow::ensure!(
        binary.is_file(),
        "the prometheus package is installed but {} is missing",
        binary.display()
    );
    Ok(binary)
}

/// A `policy-rc.d` that refuses every service start, written for an
/// install and removed on drop. Never replaces one that is there already
/// (container images ship one that refuses too).
#[derive(Debug)]
struct ServiceStartsRefused;

impl ServiceStartsRefused {
    /// Writes [`POLICY_RC_D`] unless one exists; `None` if one did.
    fn install() -> anyhow::Result<Option<Self>> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(POLICY_RC_D);
        let mut file = match file {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => return Ok(None),
            Err(err) => return Err(err).with_context(|| format!("creating {POLICY_RC_D}")),
        };
        let guard = Self;
        file.write_all(
            b"#!/bin/sh\n# Written by cargo xtask for a package install: no service starts.\nexit 101\n",
        )
        .with_context(|| format!("writing {POLICY_RC_D}"))?;
        Ok(Some(guard))
    }
}

impl Drop for ServiceStartsRefused {
    fn drop(&mut self) {
        if let Err(err) = std::fs::remove_file(POLICY_RC_D) {
            eprintln!("xtask: could not remove {POLICY_RC_D}: {err}");
        }
    }
}

/// Stops a Prometheus server that listens on [`PROMETHEUS_DEFAULT_PORT`]
/// and is not one of `before` (one the package's install started),
/// watching for one for [`PROMETHEUS_SETTLE`] since an init script starts it
/// in the background.
fn stop_started_prometheus(before: &[u32]) -> anyhow::Result<()> {
    let started = || -> anyhow::Result<Vec<u32>> {
        let mut pids = prometheus_listeners(PROMETHEUS_DEFAULT_PORT)?;
        pids.retain(|pid| !before.contains(pid));
        Ok(pids)
    };
    let deadline = Instant::now() + PROMETHEUS_SETTLE;
    let pids = loop {
        let pids = started()?;
        if !pids.is_empty() || Instant::now() >= deadline {
            break pids;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    if pids.is_empty() {
        return Ok(());
    }
    eprintln!(
        "xtask: the prometheus install started a server on :{PROMETHEUS_DEFAULT_PORT} (pid {pids:?}); stopping it"
    );
    for signal in ["-TERM", "-KILL"] {
        for pid in &pids {
            let _ = quiet(Command::new("kill").args([signal, &pid.to_string()]));
        }
        let deadline = Instant::now() + PROMETHEUS_SETTLE;
        while Instant::now() < deadline {
            if started()?.is_empty() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    bail!(
        "a prometheus server (pid {pids:?}) still listens on :{PROMETHEUS_DEFAULT_PORT} after SIGKILL"
    )
}

/// The pids of `prometheus` processes listening on TCP `port`, from
/// `ss -ltnpH`.
fn prometheus_listeners(port: u16) -> anyhow::Result<Vec<u32>> {
    let listing = Cmd::new("ss")
        .args(["-ltnpH", &format!("sport = :{port}")])
        .timeout(Duration::from_secs(10))
        .read()
        .context("listing TCP listeners with ss")?;
    Ok(prometheus_pids(&listing))
}

/// The pids that `ss -p` lines give for processes named `prometheus`, as in
/// `users:(("prometheus",pid=812,fd=7))`.
fn prometheus_pids(listing: &str) -> Vec<u32> {
    let mut pids: Vec<u32> = listing
        .split("(\"prometheus\",pid=")
        .skip(1)
        .filter_map(|rest| {
            let digits = rest.split(|c: char| !c.is_ascii_digit()).next()?;
            digits.parse().ok()
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_pids_are_read_from_ss_lines() {
        let listing = "LISTEN 0 4096 *:9090 *:* users:((\"prometheus\",pid=812,fd=7),(\"prometheus\",pid=812,fd=9))\n\
                       LISTEN 0 128 0.0.0.0:9090 0.0.0.0:* users:((\"other\",pid=5,fd=3))\n";
        assert_eq!(prometheus_pids(listing), vec![812]);
        assert!(prometheus_pids("").is_empty());
    }
}
