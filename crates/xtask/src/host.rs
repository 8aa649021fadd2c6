//! Host set-up for the tests that need a real libvirtd: Debian packages,
//! then virtlogd and libvirtd (there is no systemd to start them). Also the
//! packages that building the guest image needs ([`ensure_image_packages`]).
//!
//! Idempotent and cheap on a prepared machine: `dpkg -s` finds every package
//! installed (no apt work at all) and `virsh version` answers (nothing to
//! start).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::shell::Cmd;

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
pub fn ensure_vhost_device_vsock() -> anyhow::Result<std::path::PathBuf> {
    let home = std::env::var_os("CARGO_HOME").map_or_else(
        || Path::new(&std::env::var_os("HOME").unwrap_or_default()).join(".cargo"),
        std::path::PathBuf::from,
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
