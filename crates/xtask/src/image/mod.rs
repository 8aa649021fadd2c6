//! `cargo xtask image`: the default guest image, built from Debian packages
//! only (nothing else can be downloaded on the project's machines).
//!
//! # What the image is
//!
//! A Debian cloud kernel, booted directly (no disk, no boot loader) through
//! its PVH entry point as an uncompressed ELF `vmlinux`, and an
//! uncompressed newc initramfs that is the guest's whole root file system
//! (nothing for the emulated CPU to decompress; see *Boot time* below):
//!
//! | in the guest | from |
//! |---|---|
//! | `/bin/busybox` and a symlink per applet | the host's `busybox-static` package |
//! | `/init` | `guest-agent/image/rootfs/init`: starts busybox `init`, or with `paddock.root=` switches to the full image's disk |
//! | `/usr/bin/paddock-agent` | the static agent ([`crate::build_static_agent`]), stripped |
//! | `/lib/modules/<kernel version>/<module>.ko` | the kernel package: those of [`MODULES`] that are not built in |
//! | `/etc/paddock/modules` | the order to load them in, written by the build |
//! | `/etc/inittab`, `/etc/init.d/rcS`, `/etc/paddock/*`, ... | `guest-agent/image/rootfs/`, copied as they are |
//! | `/dev/console` | a device node, so that init has a console before devtmpfs is mounted |
//!
//! The kernel is the package that `linux-image-cloud-amd64` depends on
//! (`linux-image-6.1.0-*-cloud-amd64`), fetched with `apt-get download` and
//! unpacked with `dpkg -x`. Busybox `init` runs as PID 1 (it reaps orphans and
//! respawns the agent): `/etc/inittab` runs `/etc/init.d/rcS` once (mounts,
//! modules, loopback, DHCP in the background when there is a NIC), then keeps
//! `/etc/paddock/agent-run` running, which prints `paddock: agent starting` on
//! the console and starts the agent on the channels the VM has: the
//! virtio-serial port [`SERIAL_PORT_NAME`], vsock port [`VSOCK_PORT`].
//!
//! # Output
//!
//! ```text
//! /var/lib/paddock/images/     the image store ($PADDOCK_IMAGE_STORE overrides)
//!   <hash>/vmlinux             the kernel (`vmlinuz` if it has no PVH entry)
//!   <hash>/initramfs.cpio      the initramfs
//!   <hash>/manifest.json       what a host needs to boot it (see below)
//!   cache/debs/                downloaded kernel packages
//!   cache/kernels/             their kernels: each <hash>/vmlinux is a hard link
//! target/paddock-image/
//!   current.json               a copy of the manifest this checkout built last
//! ```
//!
//! The store is outside the checkout because QEMU runs as `libvirt-qemu` and
//! must reach the kernel through every parent directory: a checkout under a
//! private directory (a `mktemp -d` clone, a home directory) would hide it.
//!
//! `manifest.json` is a [`paddock_image::GuestImage`], the struct Paddock
//! reads it with: `hash`, `kernel` and `initramfs` (absolute paths),
//! `cmdline`, `agent_serial_port`, `agent_vsock_port`, and `build`, what the
//! image was built from (informational).
//!
//! # Boot time
//!
//! Under TCG every instruction of the guest's boot is emulated, so the
//! image gives the guest as little to do as it can, and each step's cost
//! shows in `paddock::vm::BootPhases` (the guest marks its uptime at each
//! step; `cargo bench -p paddock-benches --bench boot` compares a boot
//! with the floor, the same kernel with busybox alone):
//!
//! - The kernel is the package's bzImage decompressed at build time
//!   (`vmlinux`, an ELF): QEMU boots it through its PVH entry point
//!   (`CONFIG_PVH`), so the guest skips the real-mode set-up and the
//!   decompression of 14 MB of LZ4. The guest kernel then runs at a fixed
//!   address (no KASLR inside the guest; the VM, not the guest kernel, is
//!   the boundary). The file is mapped by each QEMU and shared between them
//!   in the page cache.
//! - The initramfs is not compressed (see [`build`]).
//! - The command line skips probes and self-tests a sandbox has no use for
//!   ([`BOOT_OPTIONS`]).
//! - `agent-run` looks for its serial port with shell builtins every 10 ms.
//! - `rcS` loads a device's modules only when the VM has the device (a
//!   sandbox without a NIC skips `failover`, `net_failover`, `virtio_net`).
//!
//! # Caching rule
//!
//! `<hash>` is a SHA-256 (its first 20 hex digits) over every input: the
//! kernel package's name and version, the module list, busybox's package
//! version and binary, the agent binary, every file under
//! `guest-agent/image/rootfs/` (path, executable bit, contents), and the
//! source files of this module (which hold the command line and the
//! layout). When
//! `<hash>/manifest.json` exists, the image is up to date and nothing is
//! built. Otherwise the image is built in a temporary directory that is renamed
//! to `<hash>/` once complete, so a half-built image is never used. Either way
//! `current.json` is then replaced atomically (a temporary file renamed over
//! it). Older `<hash>/` directories (about 3 MB each: the kernel is shared)
//! stay, since a VM may still use them, until removed by hand.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use paddock_image::{GuestImage, ImageBuild};

use crate::host;
use crate::shell::{Cmd, workspace_root};

mod initramfs;
mod inputs;
mod kernel;

use initramfs::{Contents, busybox_applets, write_initramfs};
use inputs::Inputs;
use kernel::{KernelTree, extract_pvh_vmlinux, fetch_kernel_package, link_kernel};

/// The virtio-serial port name the agent serves (set in
/// `guest-agent/image/rootfs/etc/paddock/agent-run`).
pub(crate) const SERIAL_PORT_NAME: &str = "org.paddock.agent.0";

/// The vsock port the agent listens on when the VM has a vsock device (set
/// in `guest-agent/image/rootfs/etc/paddock/agent-run`).
pub(crate) const VSOCK_PORT: u32 = 1024;

/// The kernel command line. `panic=-1` reboots at once on a panic, so a host
/// sees a dead guest instead of a hung one; `quiet` keeps the console (and its
/// slow emulated UART) for Paddock's own lines and errors; `init_on_free=1`
/// zeroes freed pages, which QEMU leaves out of a saved state (a 256 MiB
/// guest's went from 97 to 59 MiB, its save from 408 to 338 ms, a revert
/// from 1046 to 857 ms) and which leaves no freed data of one lease for the
/// next.
///
/// [`cmdline`] appends [`BOOT_OPTIONS`].
const BASE_CMDLINE: &str = "console=ttyS0 panic=-1 quiet init_on_free=1";

/// Options that shorten the boot on an emulated CPU, each with why it is
/// safe: each skips work whose result a sandbox does not use.
const BOOT_OPTIONS: [(&str, &str); 7] = [
    (
        "cryptomgr.notests",
        "skips the self-tests of every crypto algorithm at registration: they \
         check the kernel's own implementations against test vectors, which \
         the package's build already did; no FIPS mode is in use",
    ),
    (
        "i8042.noaux",
        "no PS/2 mouse probe: nothing reads input devices in a sandbox",
    ),
    (
        "i8042.nokbd",
        "no PS/2 keyboard probe: the console is the serial port",
    ),
    ("i8042.nopnp", "no PnP lookup for the PS/2 controller"),
    (
        "8250.nr_uarts=1",
        "registers one legacy UART (ttyS0, the console) instead of probing four",
    ),
    (
        "no_timer_check",
        "skips the check that the IO-APIC timer ticks, which waits for ticks \
         an emulated CPU delivers late; QEMU's PIT and IO-APIC are correct",
    ),
    (
        "tsc=reliable",
        "no clocksource watchdog and no TSC recalibration: QEMU derives the \
         guest's TSC from the host's monotonic clock, so it neither stops nor \
         drifts between vCPUs",
    ),
];

/// The image's kernel command line: [`BASE_CMDLINE`] and [`BOOT_OPTIONS`].
pub(crate) fn cmdline() -> String {
    let mut line = BASE_CMDLINE.to_owned();
    for (option, _why) in BOOT_OPTIONS {
        line.push(' ');
        line.push_str(option);
    }
    line
}

/// The Debian package whose dependency is the guest kernel's package.
const KERNEL_META_PACKAGE: &str = "linux-image-cloud-amd64";

/// The kernel modules the guest loads, in this order (each needs only those
/// before it or built-ins; the build checks that). Those the kernel has built
/// in are left out; names compare with `-` and `_` alike. `rcS` loads a
/// device's drivers (network, block, vsock, virtiofs) only when the VM has
/// that virtio device.
const MODULES: [&str; 17] = [
    // PCI transport for every virtio device.
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    // vsock (kernel vsock or hybrid vsock).
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "vmw_vsock_virtio_transport",
    // virtio-serial: the agent's default channel.
    "virtio_console",
    // Networking.
    "failover",
    "net_failover",
    "virtio_net",
    // Disks (overlays, snapshot state).
    "virtio_blk",
    // Entropy from the host.
    "rng_core",
    "virtio_rng",
    // Shared folders (virtiofs; the cloud kernel has no 9p).
    "fuse",
    "virtiofs",
];

/// The static busybox that becomes the guest's userland.
const BUSYBOX: &str = "/bin/busybox";

/// The Debian package that provides [`BUSYBOX`].
const BUSYBOX_PACKAGE: &str = "busybox-static";

/// The files copied into the initramfs as they are.
const ROOTFS_DIR: &str = "guest-agent/image/rootfs";

/// The script that starts the agent; it must name [`SERIAL_PORT_NAME`] and
/// [`VSOCK_PORT`].
const AGENT_RUN: &str = "etc/paddock/agent-run";

/// How many hex digits of the SHA-256 name an image.
const HASH_HEX_DIGITS: usize = 20;

/// How long an `apt-cache` or `dpkg-query` query may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long downloading the kernel package may take.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(600);

/// How long unpacking the kernel package may take.
const UNPACK_TIMEOUT: Duration = Duration::from_secs(300);

/// How long stripping the agent or decompressing a module may take.
const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

/// Builds the default guest image unless it is up to date, and returns the
/// path of its `manifest.json` (also copied to the checkout's
/// `target/paddock-image/current.json`).
///
/// Installs `busybox-static` when missing and builds the static agent first.
pub(crate) fn ensure_image() -> anyhow::Result<PathBuf> {
    let started = Instant::now();
    host::ensure_image_packages()?;
    let agent = crate::build_static_agent()?;
    crate::check_static(&agent)?;
    let inputs = Inputs::gather(&agent)?;
    let root = image_root();
    let dir = root.join(&inputs.hash);
    let manifest = dir.join("manifest.json");
    // The manifest names the kernel (`vmlinux`, or `vmlinuz` for a kernel
    // without a PVH entry) and the initramfs.
    let complete = GuestImage::load(&manifest)
        .is_ok_and(|image| image.kernel.is_file() && image.initramfs.is_file());
    if complete {
        eprintln!(
            "xtask: guest image {} is up to date, nothing to build ({})",
            inputs.hash,
            dir.display()
        );
    } else {
        if dir.exists() {
            // Only a hand-edited image dir is incomplete: builds rename
            // whole directories into place.
            eprintln!("xtask: {} is incomplete; rebuilding it", dir.display());
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        build(&inputs, &root, &dir)
            .with_context(|| format!("building the guest image {} failed", inputs.hash))?;
        eprintln!(
            "xtask: built guest image {} in {:.1?} ({})",
            inputs.hash,
            started.elapsed(),
            dir.display()
        );
    }
    let checkout = checkout_image_dir();
    std::fs::create_dir_all(&checkout)
        .with_context(|| format!("creating {}", checkout.display()))?;
    publish_current(&checkout, &manifest, "current.json")?;
    Ok(manifest)
}

/// Where images are built and kept: see the module docs.
pub(crate) fn image_root() -> PathBuf {
    std::env::var_os("PADDOCK_IMAGE_STORE")
        .map_or_else(|| PathBuf::from("/var/lib/paddock/images"), PathBuf::from)
}

/// `target/paddock-image` in the workspace, which holds `current.json`.
pub(crate) fn checkout_image_dir() -> PathBuf {
    workspace_root().join("target/paddock-image")
}

/// Builds the image into `dir` (which does not exist yet).
fn build(inputs: &Inputs, root: &Path, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let work = tempfile::Builder::new()
        .prefix(".build-")
        .tempdir_in(root)
        .with_context(|| format!("creating a build directory in {}", root.display()))?;

    let deb = fetch_kernel_package(&inputs.kernel, &root.join("cache/debs"))?;
    let unpacked = work.path().join("kernel-package");
    Cmd::new("dpkg")
        .arg("-x")
        .arg(&deb)
        .arg(&unpacked)
        .timeout(UNPACK_TIMEOUT)
        .run()
        .with_context(|| format!("unpacking {}", deb.display()))?;
    let kernel = KernelTree::open(&unpacked)?;
    let modules = kernel.select_modules()?;

    let agent = work.path().join("paddock-agent");
    Cmd::new("strip")
        .args(["--strip-all", "-o"])
        .arg(&agent)
        .arg(&inputs.agent)
        .timeout(TOOL_TIMEOUT)
        .run()
        .with_context(|| format!("stripping {}", inputs.agent.display()))?;
    let agent = std::fs::read(&agent).with_context(|| format!("reading {}", agent.display()))?;
    let applets = busybox_applets()?;

    let out = work.path().join("out");
    std::fs::create_dir(&out).with_context(|| format!("creating {}", out.display()))?;
    let kernel_file = boot_kernel(&kernel, inputs, root, work.path(), &out)?;
    let archive = out.join("initramfs.cpio");
    let contents = Contents {
        inputs,
        kernel_version: &kernel.version,
        modules: &modules,
        agent: &agent,
        applets: &applets,
    };
    write_initramfs(&archive, &contents)
        .with_context(|| format!("writing {}", archive.display()))?;
    // Not compressed: the guest would decompress it on its emulated CPU
    // at every boot (gzip: about half a second of its boot here), while
    // QEMU copies an uncompressed one into the guest at memory speed. It
    // costs the archive's size in each QEMU (which keeps the initramfs for
    // a reset): 7.9 instead of 3.3 MB.

    let image = GuestImage {
        hash: inputs.hash.clone(),
        kernel: dir.join(kernel_file),
        initramfs: dir.join("initramfs.cpio"),
        cmdline: cmdline(),
        agent_serial_port: SERIAL_PORT_NAME.into(),
        agent_vsock_port: VSOCK_PORT,
        root_disk: None,
        build: Some(ImageBuild {
            kernel_version: kernel.version.clone(),
            kernel_package: format!("{}={}", inputs.kernel.name, inputs.kernel.version),
            busybox_version: inputs.busybox_version.clone(),
            modules: modules.iter().map(|m| m.name.clone()).collect(),
            agent_bytes: u64::try_from(agent.len()).unwrap_or(u64::MAX),
            full: None,
        }),
    };
    image.write(&out.join("manifest.json"))?;

    match std::fs::rename(&out, dir) {
        Ok(()) => Ok(()),
        // Another build of the same inputs finished first: same image.
        Err(_) if dir.join("manifest.json").is_file() => Ok(()),
        Err(err) => Err(err).with_context(|| format!("renaming the image to {}", dir.display())),
    }
}

/// Puts the kernel the guest boots into `out` and returns its file name:
/// `vmlinux`, the uncompressed ELF kernel that QEMU boots through its PVH
/// entry ([`kernel::extract_pvh_vmlinux`]), or the package's `vmlinuz`
/// when the kernel cannot be booted that way. Both are hard links to
/// copies in `cache/kernels`.
fn boot_kernel(
    kernel: &KernelTree,
    inputs: &Inputs,
    root: &Path,
    work: &Path,
    out: &Path,
) -> anyhow::Result<&'static str> {
    let cache = root.join("cache/kernels");
    let bzimage = std::fs::read(&kernel.vmlinuz)
        .with_context(|| format!("reading {}", kernel.vmlinuz.display()))?;
    match extract_pvh_vmlinux(&bzimage, work)? {
        Ok(vmlinux) => {
            let extracted = work.join("vmlinux");
            std::fs::write(&extracted, vmlinux)
                .with_context(|| format!("writing {}", extracted.display()))?;
            link_kernel(&extracted, &inputs.kernel, &cache, out, "vmlinux")?;
            Ok("vmlinux")
        }
        Err(reason) => {
            eprintln!("xtask: booting the compressed kernel: {reason}");
            link_kernel(&kernel.vmlinuz, &inputs.kernel, &cache, out, "vmlinuz")?;
            Ok("vmlinuz")
        }
    }
}

/// Copies `manifest` to `root/<name>` atomically (a temporary file renamed
/// over it), unless it holds that already.
pub(crate) fn publish_current(root: &Path, manifest: &Path, name: &str) -> anyhow::Result<()> {
    let contents =
        std::fs::read(manifest).with_context(|| format!("reading {}", manifest.display()))?;
    let current = root.join(name);
    if std::fs::read(&current).is_ok_and(|old| old == contents) {
        return Ok(());
    }
    let mut temporary = tempfile::Builder::new()
        .prefix(".current-")
        .suffix(".json")
        .tempfile_in(root)
        .with_context(|| format!("creating a temporary file in {}", root.display()))?;
    temporary
        .write_all(&contents)
        .and_then(|()| temporary.as_file().sync_all())
        .context("writing the new current.json")?;
    // tempfile creates 0600 files; readers need not be root.
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(temporary.path(), std::fs::Permissions::from_mode(0o644))
            .context("making current.json readable")?;
    }
    temporary
        .persist(&current)
        .with_context(|| format!("replacing {}", current.display()))?;
    eprintln!("xtask: {} -> {}", current.display(), manifest.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_keeps_its_base_and_adds_each_boot_option_once() {
        let line = cmdline();
        assert!(line.starts_with(BASE_CMDLINE), "{line}");
        let words: Vec<&str> = line.split_whitespace().collect();
        for (option, why) in BOOT_OPTIONS {
            assert_eq!(
                words.iter().filter(|word| **word == option).count(),
                1,
                "{option} in {line}"
            );
            assert!(!why.is_empty());
        }
        assert_eq!(
            words.len(),
            BASE_CMDLINE.split_whitespace().count() + BOOT_OPTIONS.len()
        );
    }
}
