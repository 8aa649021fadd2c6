//! `cargo xtask image`: the default guest image, built from Debian packages
//! only (nothing else can be downloaded on the project's machines).
//!
//! # What the image is
//!
//! A Debian cloud kernel, booted directly (no disk, no boot loader), and a
//! gzip-compressed newc initramfs that is the guest's whole root file system:
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
//!   <hash>/vmlinuz             the kernel
//!   <hash>/initramfs.cpio.gz   the initramfs
//!   <hash>/manifest.json       what a host needs to boot it (see below)
//!   cache/debs/                downloaded kernel packages
//!   cache/kernels/             their kernels: each <hash>/vmlinuz is a hard link
//! target/paddock-image/
//!   current.json               a copy of the manifest this checkout built last
//! ```
//!
//! The store is outside the checkout because QEMU runs as `libvirt-qemu` and
//! must reach the kernel through every parent directory: a checkout under a
//! private directory (a `mktemp -d` clone, a home directory) would hide it.
//!
//! `manifest.json` holds `hash`, `kernel` and `initramfs` (absolute paths),
//! `cmdline`, `kernel_version`, `agent_serial_port` and `agent_vsock_port`;
//! tests depend on these keys. Further keys are informational.
//!
//! # Caching rule
//!
//! `<hash>` is a SHA-256 (its first 20 hex digits) over every input: the
//! kernel package's name and version, the module list, busybox's package
//! version and binary, the agent binary, every file under
//! `guest-agent/image/rootfs/` (path, executable bit, contents), and this
//! source file (which holds the command line and the layout). When
//! `<hash>/manifest.json` exists, the image is up to date and nothing is
//! built. Otherwise the image is built in a temporary directory that is renamed
//! to `<hash>/` once complete, so a half-built image is never used. Either way
//! `current.json` is then replaced atomically (a temporary file renamed over
//! it). Older `<hash>/` directories (about 3 MB each: the kernel is shared)
//! stay, since a VM may still use them, until removed by hand.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use paddock_image::{GuestImage, ImageBuild};
use sha2::{Digest as _, Sha256};

use crate::host;
use crate::shell::{Cmd, workspace_root};

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
const CMDLINE: &str = "console=ttyS0 panic=-1 quiet init_on_free=1";

/// The Debian package whose dependency is the guest kernel's package.
const KERNEL_META_PACKAGE: &str = "linux-image-cloud-amd64";

/// The kernel modules the guest loads, in this order (each needs only those
/// before it or built-ins; the build checks that). Those the kernel has built
/// in are left out; names compare with `-` and `_` alike.
const MODULES: [&str; 15] = [
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
    let complete = ["manifest.json", "vmlinuz", "initramfs.cpio.gz"]
        .iter()
        .all(|file| dir.join(file).is_file());
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

/// Everything the image is made of, and the hash over it.
#[derive(Debug)]
struct Inputs {
    /// The kernel's Debian package.
    kernel: KernelPackage,
    /// The installed `busybox-static` package's version.
    busybox_version: String,
    /// The static busybox executable.
    busybox: Vec<u8>,
    /// The static agent, as built (not stripped).
    agent: PathBuf,
    /// The files of [`ROOTFS_DIR`].
    rootfs: Vec<RootfsFile>,
    /// The image's name: see the module docs' caching rule.
    hash: String,
}

/// The Debian package the guest kernel comes from.
#[derive(Debug)]
struct KernelPackage {
    /// E.g. `linux-image-6.1.0-56-cloud-amd64`.
    name: String,
    /// The Debian version, e.g. `6.1.192-2`.
    version: String,
    /// The Debian architecture, e.g. `amd64`.
    architecture: String,
}

/// A file of [`ROOTFS_DIR`].
#[derive(Debug)]
struct RootfsFile {
    /// Its path relative to the directory, with `/` separators.
    path: String,
    /// Whether any executable bit is set (the guest gets 0755, else 0644).
    executable: bool,
    /// The file's bytes.
    contents: Vec<u8>,
}

impl Inputs {
    /// Reads every input and hashes them.
    fn gather(agent: &Path) -> anyhow::Result<Self> {
        let kernel = resolve_kernel_package()?;
        let busybox_version = Cmd::new("dpkg-query")
            .args(["--show", "--showformat=${Version}", BUSYBOX_PACKAGE])
            .timeout(QUERY_TIMEOUT)
            .read()
            .with_context(|| format!("could not find the version of {BUSYBOX_PACKAGE}"))?;
        let busybox = std::fs::read(BUSYBOX)
            .with_context(|| format!("reading {BUSYBOX} (from {BUSYBOX_PACKAGE})"))?;
        ensure!(
            !crate::has_interp(&busybox),
            "{BUSYBOX} is not a static executable: install {BUSYBOX_PACKAGE}, not busybox"
        );
        let rootfs = read_rootfs(&workspace_root().join(ROOTFS_DIR))?;
        check_agent_run(&rootfs)?;

        let mut hasher = Sha256::new();
        let mut field = |label: &str, value: &[u8]| {
            hasher.update(label.as_bytes());
            hasher.update(u64::try_from(value.len()).unwrap_or(u64::MAX).to_le_bytes());
            hasher.update(value);
        };
        field("builder", include_str!("image.rs").as_bytes());
        field("cmdline", CMDLINE.as_bytes());
        field("kernel-package", kernel.name.as_bytes());
        field("kernel-version", kernel.version.as_bytes());
        field("kernel-arch", kernel.architecture.as_bytes());
        field("modules", MODULES.join(" ").as_bytes());
        field("busybox-version", busybox_version.as_bytes());
        field("busybox", file_digest(Path::new(BUSYBOX))?.as_bytes());
        field("agent", file_digest(agent)?.as_bytes());
        for file in &rootfs {
            field("rootfs-path", file.path.as_bytes());
            field("rootfs-exec", &[u8::from(file.executable)]);
            field("rootfs-data", &file.contents);
        }
        let digest = hasher.finalize();
        let mut hash: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
        hash.truncate(HASH_HEX_DIGITS);
        Ok(Self {
            kernel,
            busybox_version,
            busybox,
            agent: agent.to_path_buf(),
            rootfs,
            hash,
        })
    }
}

/// The SHA-256 of a file, from coreutils' `sha256sum`: xtask runs as a debug
/// build, in which the `sha2` crate hashes the 20 MB agent ten times slower.
fn file_digest(path: &Path) -> anyhow::Result<String> {
    let output = Cmd::new("sha256sum")
        .arg(path)
        .timeout(TOOL_TIMEOUT)
        .read()
        .with_context(|| format!("hashing {}", path.display()))?;
    output
        .split_whitespace()
        .next()
        .filter(|digest| digest.len() == 64)
        .map(str::to_owned)
        .with_context(|| format!("sha256sum printed no digest for {}", path.display()))
}

/// Finds the kernel package `linux-image-cloud-amd64` depends on, with its
/// candidate version. Refreshes apt's lists once when apt does not know the
/// package (a fresh machine) and this runs as root.
fn resolve_kernel_package() -> anyhow::Result<KernelPackage> {
    // apt-cache can take a second per call (hosts without a package cache
    // file): the meta package's stanza names the exact version it wants.
    let stanza = match package_stanza(KERNEL_META_PACKAGE) {
        Ok(stanza) => stanza,
        Err(err) if host::is_root() => {
            eprintln!("xtask: {err:#}; refreshing apt's package lists");
            host::apt_update()?;
            package_stanza(KERNEL_META_PACKAGE)?
        }
        Err(err) => return Err(err.context("as root, run `apt-get update` and try again")),
    };
    let architecture = stanza_field(&stanza, "Architecture")
        .with_context(|| format!("apt-cache show {KERNEL_META_PACKAGE} names no architecture"))?;
    let depends = stanza_field(&stanza, "Depends").unwrap_or_default();
    let (name, version) = depends
        .split([',', '|'])
        .map(str::trim)
        .find(|dependency| dependency.starts_with("linux-image-"))
        .map(parse_dependency)
        .with_context(|| {
            format!("apt knows no linux-image-* dependency of {KERNEL_META_PACKAGE}")
        })?;
    let version = match version {
        Some(version) => version,
        None => {
            let stanza = package_stanza(&name)?;
            stanza_field(&stanza, "Version")
                .with_context(|| format!("apt-cache show {name} names no version"))?
        }
    };
    Ok(KernelPackage {
        name,
        version,
        architecture,
    })
}

/// `apt-cache show` of the candidate version of `package`.
fn package_stanza(package: &str) -> anyhow::Result<String> {
    Cmd::new("apt-cache")
        .args(["show", "--no-all-versions", package])
        .timeout(QUERY_TIMEOUT)
        .read()
        .with_context(|| format!("apt-cache show {package} failed"))
}

/// The value of `key` in a Debian control stanza.
fn stanza_field(stanza: &str, key: &str) -> Option<String> {
    stanza
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .map(|value| value.trim().to_owned())
}

/// `name (= version)` or `name` (any other relation counts as none).
fn parse_dependency(dependency: &str) -> (String, Option<String>) {
    let (name, relation) = dependency
        .split_once('(')
        .map_or((dependency, ""), |(name, rest)| (name, rest));
    let version = relation
        .trim_end_matches(')')
        .trim()
        .strip_prefix('=')
        .filter(|version| !version.starts_with('='))
        .map(|version| version.trim().to_owned());
    (name.trim().to_owned(), version)
}

/// Every regular file under `dir`, sorted by path.
fn read_rootfs(dir: &Path) -> anyhow::Result<Vec<RootfsFile>> {
    use std::os::unix::fs::PermissionsExt as _;

    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries = std::fs::read_dir(&current)
            .with_context(|| format!("reading {}", current.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("reading {}", current.display()))?;
            let path = entry.path();
            let kind = entry
                .file_type()
                .with_context(|| format!("reading {}", path.display()))?;
            if kind.is_dir() {
                pending.push(path);
                continue;
            }
            ensure!(
                kind.is_file(),
                "{} is neither a file nor a directory: the image takes only those",
                path.display()
            );
            let relative = path
                .strip_prefix(dir)
                .ok()
                .and_then(Path::to_str)
                .with_context(|| format!("{} has a name that is not UTF-8", path.display()))?
                .to_owned();
            let mode = entry
                .metadata()
                .with_context(|| format!("reading {}", path.display()))?
                .permissions()
                .mode();
            files.push(RootfsFile {
                path: relative,
                executable: mode & 0o111 != 0,
                contents: std::fs::read(&path)
                    .with_context(|| format!("reading {}", path.display()))?,
            });
        }
    }
    ensure!(!files.is_empty(), "{} has no files", dir.display());
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// Fails unless [`AGENT_RUN`] starts the agent where the manifest says.
fn check_agent_run(rootfs: &[RootfsFile]) -> anyhow::Result<()> {
    let script = rootfs
        .iter()
        .find(|file| file.path == AGENT_RUN)
        .with_context(|| format!("{ROOTFS_DIR}/{AGENT_RUN} is missing"))?;
    let text = String::from_utf8_lossy(&script.contents);
    for line in [
        format!("SERIAL_PORT_NAME={SERIAL_PORT_NAME}"),
        format!("VSOCK_PORT={VSOCK_PORT}"),
    ] {
        ensure!(
            text.lines().any(|l| l == line),
            "{ROOTFS_DIR}/{AGENT_RUN} must contain the line `{line}` (image.rs's manifest says so)"
        );
    }
    ensure!(
        script.executable,
        "{ROOTFS_DIR}/{AGENT_RUN} is not executable"
    );
    Ok(())
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
    link_kernel(
        &kernel.vmlinuz,
        &inputs.kernel,
        &root.join("cache/kernels"),
        &out,
    )?;
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
    // gzip replaces it with `initramfs.cpio.gz`; `-n` leaves out the name
    // and time, so equal archives compress to equal files.
    Cmd::new("gzip")
        .args(["-9", "-n"])
        .arg(&archive)
        .timeout(TOOL_TIMEOUT)
        .run()
        .with_context(|| format!("compressing {}", archive.display()))?;

    let image = GuestImage {
        hash: inputs.hash.clone(),
        kernel: dir.join("vmlinuz"),
        initramfs: dir.join("initramfs.cpio.gz"),
        cmdline: CMDLINE.into(),
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

/// Puts the kernel at `out/vmlinuz` as a hard link to a copy in `cache`:
/// images that differ only in their initramfs share one kernel file.
fn link_kernel(
    vmlinuz: &Path,
    package: &KernelPackage,
    cache: &Path,
    out: &Path,
) -> anyhow::Result<()> {
    let cached = cache.join(format!(
        "{}_{}_{}.vmlinuz",
        package.name,
        package.version.replace(':', "%3a"),
        package.architecture
    ));
    if !cached.is_file() {
        std::fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
        let partial = cached.with_extension(format!("partial-{}", std::process::id()));
        std::fs::copy(vmlinuz, &partial)
            .and_then(|_| std::fs::rename(&partial, &cached))
            .with_context(|| format!("copying {} to {}", vmlinuz.display(), cached.display()))?;
    }
    let target = out.join("vmlinuz");
    std::fs::hard_link(&cached, &target)
        .or_else(|_| std::fs::copy(&cached, &target).map(|_| ()))
        .with_context(|| format!("linking {} to {}", cached.display(), target.display()))
}

/// Downloads the kernel package into `cache` unless it is there, and returns
/// its path.
fn fetch_kernel_package(package: &KernelPackage, cache: &Path) -> anyhow::Result<PathBuf> {
    // apt-get download's file name: an epoch's colon is escaped.
    let file = format!(
        "{}_{}_{}.deb",
        package.name,
        package.version.replace(':', "%3a"),
        package.architecture
    );
    let path = cache.join(&file);
    if path.is_file() {
        eprintln!("xtask: using the cached {}", path.display());
        return Ok(path);
    }
    std::fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    // Download into a directory of its own, so that an interrupted download
    // never looks like a cached package.
    let partial = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(cache)
        .with_context(|| format!("creating a download directory in {}", cache.display()))?;
    Cmd::new("apt-get")
        // Root's private directory is out of reach of apt's `_apt` sandbox
        // user; say so instead of letting apt warn.
        .args(["-o", "APT::Sandbox::User=root", "download"])
        .arg(format!("{}={}", package.name, package.version))
        .dir(partial.path())
        .timeout(DOWNLOAD_TIMEOUT)
        .run()
        .with_context(|| {
            format!(
                "downloading {} {} failed (stale package lists? run `apt-get update`)",
                package.name, package.version
            )
        })?;
    let downloaded = partial.path().join(&file);
    ensure!(
        downloaded.is_file(),
        "apt-get download did not write {file}"
    );
    std::fs::rename(&downloaded, &path)
        .with_context(|| format!("moving {file} into {}", cache.display()))?;
    Ok(path)
}

/// An unpacked kernel package.
#[derive(Debug)]
struct KernelTree {
    /// `/boot/vmlinuz-<version>`.
    vmlinuz: PathBuf,
    /// The kernel release (`uname -r`), e.g. `6.1.0-56-cloud-amd64`.
    version: String,
    /// `/lib/modules/<version>`.
    modules_dir: PathBuf,
}

/// A kernel module that goes into the image.
#[derive(Debug)]
struct Module {
    /// Its name, with `_` for `-` (what `/etc/paddock/modules` lists).
    name: String,
    /// The uncompressed `.ko`.
    contents: Vec<u8>,
}

impl KernelTree {
    /// Finds the kernel and its modules in the unpacked package at `dir`.
    fn open(dir: &Path) -> anyhow::Result<Self> {
        let modules_root = dir.join("lib/modules");
        let mut versions = std::fs::read_dir(&modules_root)
            .with_context(|| {
                format!(
                    "the kernel package has no {}",
                    Path::new("/lib/modules").display()
                )
            })?
            .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("reading {}", modules_root.display()))?;
        let version = match versions.len() {
            1 => versions.remove(0),
            _ => {
                bail!("the kernel package should hold one /lib/modules/<version>, not {versions:?}")
            }
        };
        let vmlinuz = dir.join(format!("boot/vmlinuz-{version}"));
        ensure!(
            vmlinuz.is_file(),
            "the kernel package has no /boot/vmlinuz-{version}"
        );
        Ok(Self {
            vmlinuz,
            modules_dir: modules_root.join(&version),
            version,
        })
    }

    /// The modules of [`MODULES`] the package has as files, in order. Those
    /// the kernel has built in are skipped and so are, with a warning, those
    /// it has neither way; a module whose dependency would not be loaded
    /// before it is an error.
    fn select_modules(&self) -> anyhow::Result<Vec<Module>> {
        let files = module_files(&self.modules_dir.join("kernel"))?;
        let builtin_list = self.modules_dir.join("modules.builtin");
        let builtin: BTreeSet<String> = std::fs::read_to_string(&builtin_list)
            .with_context(|| format!("reading {}", builtin_list.display()))?
            .lines()
            .filter_map(module_name)
            .collect();
        let mut selected: Vec<Module> = Vec::new();
        for wanted in MODULES {
            let name = wanted.replace('-', "_");
            let Some(path) = files.get(&name) else {
                if builtin.contains(&name) {
                    eprintln!("xtask: module {name} is built into the kernel");
                } else {
                    eprintln!(
                        "xtask: warning: module {name} is neither in the kernel package nor built in; left out"
                    );
                }
                continue;
            };
            let contents = read_module(path)?;
            for dependency in module_dependencies(&contents) {
                ensure!(
                    builtin.contains(&dependency) || selected.iter().any(|m| m.name == dependency),
                    "module {name} needs {dependency}, which MODULES does not load before it"
                );
            }
            selected.push(Module { name, contents });
        }
        Ok(selected)
    }
}

/// Every module file under `dir` by module name.
fn module_files(dir: &Path) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries = std::fs::read_dir(&current)
            .with_context(|| format!("reading {}", current.display()))?;
        for entry in entries {
            let path = entry
                .with_context(|| format!("reading {}", current.display()))?
                .path();
            if path.is_dir() {
                pending.push(path);
            } else if let Some(name) = path.to_str().and_then(module_name) {
                files.insert(name, path);
            }
        }
    }
    Ok(files)
}

/// The module name of a path like `kernel/drivers/char/hw_random/virtio-rng.ko`
/// (also `.ko.xz`, `.ko.zst`, `.ko.gz`): `virtio_rng`.
fn module_name(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    let stem = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|suffix| file.strip_suffix(suffix))?;
    Some(stem.replace('-', "_"))
}

/// Reads a module file, decompressed (the guest loads it with busybox's
/// `insmod`, and needs no decompressor that way).
fn read_module(path: &Path) -> anyhow::Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".ko.xz") {
        "xz"
    } else if name.ends_with(".ko.zst") {
        "zstd"
    } else if name.ends_with(".ko.gz") {
        "gzip"
    } else {
        return std::fs::read(path).with_context(|| format!("reading {name}"));
    };
    Cmd::new(tool)
        .args(["--decompress", "--stdout"])
        .arg(path)
        .timeout(TOOL_TIMEOUT)
        .read_bytes()
        .with_context(|| format!("decompressing {name} with {tool} (is it installed?)"))
}

/// The `depends=` entry of a module's `.modinfo` section, as module names.
fn module_dependencies(module: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(start) = module
        .windows(KEY.len())
        .position(|window| window == KEY)
        .map(|at| at + KEY.len())
    else {
        return Vec::new();
    };
    let rest = &module[start..];
    let value = &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())];
    String::from_utf8_lossy(value)
        .split(',')
        .filter(|name| !name.is_empty())
        .map(|name| name.replace('-', "_"))
        .collect()
}

/// Busybox's applets as paths relative to `/` (`bin/sh`, `sbin/init`, ...).
fn busybox_applets() -> anyhow::Result<Vec<String>> {
    let list = Cmd::new(BUSYBOX)
        .arg("--list-full")
        .timeout(QUERY_TIMEOUT)
        .read()
        .with_context(|| format!("{BUSYBOX} --list-full failed"))?;
    let applets: Vec<String> = list
        .lines()
        .map(|line| line.trim().trim_start_matches('/').to_owned())
        .filter(|line| !line.is_empty())
        .collect();
    ensure!(
        applets.iter().any(|a| a == "bin/sh") && applets.iter().any(|a| a == "sbin/init"),
        "{BUSYBOX} has no sh or init applet"
    );
    Ok(applets)
}

/// What goes into the initramfs besides [`Inputs`].
#[derive(Debug)]
struct Contents<'a> {
    /// Busybox and the files of [`ROOTFS_DIR`].
    inputs: &'a Inputs,
    /// The kernel release: the modules' directory name.
    kernel_version: &'a str,
    /// The modules, in load order.
    modules: &'a [Module],
    /// The stripped agent.
    agent: &'a [u8],
    /// Busybox's applet paths (see [`busybox_applets`]).
    applets: &'a [String],
}

/// Writes the (uncompressed) newc initramfs archive (layout: see the module
/// docs).
fn write_initramfs(path: &Path, contents: &Contents<'_>) -> anyhow::Result<()> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut cpio = Cpio::new(BufWriter::new(file));

    for dir in [
        "proc", "sys", "dev", "run", "usr/bin", "usr/sbin", "var", "mnt",
    ] {
        cpio.dir(dir, 0o755)?;
    }
    cpio.dir("tmp", 0o1777)?;
    cpio.dir("root", 0o700)?;
    // The kernel opens /dev/console for init before anything is mounted.
    cpio.char_device("dev/console", 0o600, (5, 1))?;

    for file in &contents.inputs.rootfs {
        let mode = if file.executable { 0o755 } else { 0o644 };
        cpio.file(&file.path, mode, &file.contents)?;
    }
    cpio.file("usr/bin/paddock-agent", 0o755, contents.agent)?;

    let modules_dir = format!("lib/modules/{}", contents.kernel_version);
    let mut order = String::from("# Loaded in this order by /etc/init.d/rcS; written by xtask.\n");
    for module in contents.modules {
        cpio.file(
            &format!("{modules_dir}/{}.ko", module.name),
            0o644,
            &module.contents,
        )?;
        order.push_str(&module.name);
        order.push('\n');
    }
    cpio.file("etc/paddock/modules", 0o644, order.as_bytes())?;

    cpio.file("bin/busybox", 0o755, &contents.inputs.busybox)?;
    // The kernel runs /init: the script from the rootfs directory (see it).
    for applet in contents.applets {
        // Files of the image win over applets of the same path.
        if !cpio.has(applet) {
            cpio.symlink(applet, "/bin/busybox")?;
        }
    }

    cpio.finish()?.flush().context("writing")
}

/// A writer of `newc` cpio archives (the initramfs format; see the kernel's
/// `Documentation/driver-api/early-userspace/buffer-format.rst`). Every
/// entry belongs to root and has mtime 0, so equal inputs give equal
/// archives; parent directories are added as needed.
#[derive(Debug)]
struct Cpio<W: Write> {
    /// Where the archive goes.
    out: W,
    /// Bytes written so far (entries are 4-byte aligned).
    offset: u64,
    /// The inode number of the next entry (each entry has its own).
    next_inode: u32,
    /// Paths written so far.
    paths: BTreeSet<String>,
}

/// File type bits of a cpio `mode`: a directory.
const S_IFDIR: u32 = 0o040_000;
/// A regular file.
const S_IFREG: u32 = 0o100_000;
/// A symbolic link (its data is the target).
const S_IFLNK: u32 = 0o120_000;
/// A character device (its `rdev` fields name it).
const S_IFCHR: u32 = 0o020_000;

impl<W: Write> Cpio<W> {
    /// An empty archive written to `out`.
    fn new(out: W) -> Self {
        Self {
            out,
            offset: 0,
            next_inode: 1,
            paths: BTreeSet::new(),
        }
    }

    /// Whether `path` has been written.
    fn has(&self, path: &str) -> bool {
        self.paths.contains(path)
    }

    /// A directory (and its missing parents, with mode 0755).
    fn dir(&mut self, path: &str, permissions: u32) -> anyhow::Result<()> {
        self.parents(path)?;
        if !self.has(path) {
            self.entry(path, S_IFDIR | permissions, 2, (0, 0), &[])?;
        }
        Ok(())
    }

    /// A regular file.
    fn file(&mut self, path: &str, permissions: u32, contents: &[u8]) -> anyhow::Result<()> {
        self.parents(path)?;
        self.entry(path, S_IFREG | permissions, 1, (0, 0), contents)
    }

    /// A symbolic link to `target`.
    fn symlink(&mut self, path: &str, target: &str) -> anyhow::Result<()> {
        self.parents(path)?;
        self.entry(path, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())
    }

    /// A character device node.
    fn char_device(
        &mut self,
        path: &str,
        permissions: u32,
        device: (u32, u32),
    ) -> anyhow::Result<()> {
        self.parents(path)?;
        self.entry(path, S_IFCHR | permissions, 1, device, &[])
    }

    /// Adds the directories above `path` that are not there yet (0755).
    fn parents(&mut self, path: &str) -> anyhow::Result<()> {
        let mut end = 0;
        while let Some(slash) = path[end..].find('/') {
            end += slash;
            let parent = &path[..end];
            if !self.has(parent) {
                self.entry(parent, S_IFDIR | 0o755, 2, (0, 0), &[])?;
            }
            end += 1;
        }
        Ok(())
    }

    /// Adds one entry (a new inode) and remembers its path; a path may
    /// appear once only.
    fn entry(
        &mut self,
        path: &str,
        mode: u32,
        links: u32,
        device: (u32, u32),
        data: &[u8],
    ) -> anyhow::Result<()> {
        ensure!(
            path != "TRAILER!!!" && self.paths.insert(path.to_owned()),
            "the initramfs would hold {path} twice"
        );
        let inode = self.next_inode;
        self.next_inode += 1;
        self.record(path, [inode, mode, 0, 0, links, 0], device, data)
    }

    /// Writes one header (`fields`: inode, mode, uid, gid, links, mtime),
    /// the name and the data, each padded to 4 bytes.
    fn record(
        &mut self,
        name: &str,
        fields: [u32; 6],
        device: (u32, u32),
        data: &[u8],
    ) -> anyhow::Result<()> {
        let size = u32::try_from(data.len())
            .with_context(|| format!("{name} is too large for a cpio archive"))?;
        let name_size = u32::try_from(name.len() + 1).context("name too long")?;
        let [inode, mode, uid, gid, links, mtime] = fields;
        // magic, then inode, mode, uid, gid, nlink, mtime, filesize,
        // devmajor, devminor, rdevmajor, rdevminor, namesize, check.
        let header = format!(
            "070701{inode:08X}{mode:08X}{uid:08X}{gid:08X}{links:08X}{mtime:08X}{size:08X}\
             {:08X}{:08X}{:08X}{:08X}{name_size:08X}{:08X}",
            0, 0, device.0, device.1, 0
        );
        self.write(header.as_bytes())?;
        self.write(name.as_bytes())?;
        self.write(&[0])?;
        self.pad()?;
        self.write(data)?;
        self.pad()
    }

    /// Writes raw bytes, counting them.
    fn write(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.out
            .write_all(bytes)
            .context("writing the cpio archive")?;
        self.offset += u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        Ok(())
    }

    /// Writes zeros up to the next multiple of 4 bytes.
    fn pad(&mut self) -> anyhow::Result<()> {
        const ZEROS: [u8; 3] = [0; 3];
        let padding = (4 - self.offset % 4) % 4;
        self.write(&ZEROS[..usize::try_from(padding).unwrap_or(0)])
    }

    /// Writes the trailer and returns the writer.
    fn finish(mut self) -> anyhow::Result<W> {
        self.record("TRAILER!!!", [0, 0, 0, 0, 1, 0], (0, 0), &[])?;
        Ok(self.out)
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
    fn kernel_dependency_names_the_exact_version() {
        let stanza = "Package: linux-image-cloud-amd64\nVersion: 6.1.192-2\n\
                      Depends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)\n";
        let depends = stanza_field(stanza, "Depends").unwrap_or_default();
        assert_eq!(
            parse_dependency(&depends),
            (
                "linux-image-6.1.0-56-cloud-amd64".to_owned(),
                Some("6.1.192-2".to_owned())
            )
        );
        assert_eq!(
            parse_dependency("linux-image-x (>= 1)"),
            ("linux-image-x".to_owned(), None)
        );
        assert_eq!(
            parse_dependency("linux-image-x"),
            ("linux-image-x".to_owned(), None)
        );
        assert_eq!(stanza_field(stanza, "Vers"), None);
    }

    #[test]
    fn module_names_ignore_directories_suffixes_and_dashes() {
        assert_eq!(
            module_name("kernel/drivers/char/hw_random/virtio-rng.ko").as_deref(),
            Some("virtio_rng")
        );
        assert_eq!(
            module_name("a/virtio_net.ko.xz").as_deref(),
            Some("virtio_net")
        );
        assert_eq!(module_name("modules.builtin"), None);
    }

    #[test]
    fn dependencies_come_from_modinfo() {
        let module =
            b"\x7fELF...\0license=GPL\0depends=virtio,virtio_ring,net-failover\0intree=Y\0";
        assert_eq!(
            module_dependencies(module),
            ["virtio", "virtio_ring", "net_failover"]
        );
        assert!(module_dependencies(b"\0depends=\0").is_empty());
        assert!(module_dependencies(b"no modinfo").is_empty());
    }

    #[test]
    fn cpio_entries_are_aligned_and_parents_come_first() -> anyhow::Result<()> {
        let mut cpio = Cpio::new(Vec::new());
        cpio.file("etc/paddock/x", 0o644, b"hello")?;
        cpio.symlink("bin/sh", "/bin/busybox")?;
        let archive = cpio.finish()?;
        assert_eq!(archive.len() % 4, 0);
        let text = String::from_utf8_lossy(&archive);
        let at = |name: &str| text.find(&format!("{name}\0")).unwrap_or(usize::MAX);
        assert!(at("etc") < at("etc/paddock"));
        assert!(at("etc/paddock") < at("etc/paddock/x"));
        assert!(at("etc/paddock/x") < at("bin/sh"));
        assert!(archive.ends_with(b"TRAILER!!!\0\0\0\0"));
        // Every header starts on a 4-byte boundary.
        for (offset, _) in text.match_indices("070701") {
            assert_eq!(offset % 4, 0, "header at {offset}");
        }
        Ok(())
    }
}
