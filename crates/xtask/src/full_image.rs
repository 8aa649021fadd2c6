//! `cargo xtask image --full`: the full guest image for real agent work, a
//! Debian root file system with python3, git and curl on a qcow2 disk.
//!
//! # What it is
//!
//! The default image's kernel and initramfs (see [`crate::image`]) plus a
//! disk. The kernel command line carries `paddock.root=/dev/vda`: the
//! initramfs's `/init` loads the modules, mounts the disk and switches to it.
//! On the disk:
//!
//! | path | from |
//! |---|---|
//! | everything Debian | `debootstrap --variant=minbase --include=<PACKAGES> bookworm` |
//! | `/bin/busybox`, a symlink per applet Debian lacks (`init`, `udhcpc`, ...) | the host's `busybox-static` |
//! | `/usr/bin/paddock-agent` | the static agent, as in the default image |
//! | `/etc/inittab`, `/etc/init.d/rcS`, `/etc/paddock/*`, `/etc/hostname` | `guest-agent/image/rootfs/`, as in the default image |
//!
//! So the guest boots exactly as the default one does (busybox init, rcS,
//! agent-run), with a complete Debian userland for the commands it runs.
//!
//! # Output and caching
//!
//! ```text
//! /var/lib/paddock/images/
//!   full-<hash>/rootfs.qcow2       the disk (a base: sandboxes write to overlays)
//!   full-<hash>/manifest.json      as the default manifest, plus `root_disk`
//!   cache/debootstrap-<key>/       the bare Debian tree, reused while <key> holds
//! target/paddock-image/current-full.json
//! ```
//!
//! `<key>` hashes the suite, mirror and package list; `<hash>` hashes `<key>`,
//! the default image's hash (kernel, initramfs, agent, rootfs files) and this
//! file. A changed agent rebuilds the disk from the cached tree in about a
//! minute; only a changed package list runs debootstrap again.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use paddock_image::{FullImageBuild, GuestImage};
use sha2::{Digest as _, Sha256};

use crate::shell::{Cmd, workspace_root};
use crate::{host, image};

/// The Debian release of the root file system (the host's own).
const SUITE: &str = "bookworm";

/// Where debootstrap fetches packages: Debian's registry, the only one the
/// project's machines reach.
const MIRROR: &str = "http://deb.debian.org/debian";

/// Packages beyond debootstrap's `minbase` variant.
const PACKAGES: [&str; 6] = [
    "python3",
    "git",
    "curl",
    "ca-certificates",
    "iproute2",
    "procps",
];

/// Files of `guest-agent/image/rootfs/` that the disk takes. Not `passwd` and
/// `group`, which Debian has, nor `init`, which belongs to the initramfs.
const ROOTFS_FILES: [&str; 6] = [
    "etc/inittab",
    "etc/init.d/rcS",
    "etc/paddock/agent-run",
    "etc/paddock/udhcpc.script",
    "etc/hostname",
    "etc/hosts",
];

/// Free space the disk gets beyond its contents.
const FREE_SPACE_MIB: u64 = 1024;

/// How long debootstrap may take.
const DEBOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(1800);

/// How long copying the tree, making the file system or converting it may take.
const DISK_TIMEOUT: Duration = Duration::from_secs(900);

/// Builds the full image unless it is up to date; returns its manifest.
pub(crate) fn ensure_full_image() -> anyhow::Result<PathBuf> {
    let started = Instant::now();
    host::ensure_full_image_packages()?;
    let base_manifest = image::ensure_image()?;
    let base = GuestImage::load(&base_manifest)
        .with_context(|| format!("reading {}", base_manifest.display()))?;
    let base_hash = base.hash.clone();
    let key = debootstrap_key();
    let hash = {
        let mut hasher = Sha256::new();
        for part in [
            key.as_bytes(),
            base_hash.as_bytes(),
            include_str!("full_image.rs").as_bytes(),
        ] {
            hasher.update(u64::try_from(part.len()).unwrap_or(u64::MAX).to_le_bytes());
            hasher.update(part);
        }
        let digest: String = hasher
            .finalize()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        digest[..20].to_owned()
    };
    let store = image::image_root();
    let dir = store.join(format!("full-{hash}"));
    let manifest = dir.join("manifest.json");
    if manifest.is_file() && dir.join("rootfs.qcow2").is_file() {
        eprintln!("xtask: full image {hash} is up to date ({})", dir.display());
    } else {
        let tree = debootstrap(&store.join(format!("cache/debootstrap-{key}")))?;
        let work = tempfile::Builder::new()
            .prefix(".build-full-")
            .tempdir_in(&store)
            .context("creating a build directory")?;
        let out = work.path().join("out");
        std::fs::create_dir(&out)?;
        let rootfs = work.path().join("rootfs");
        Cmd::new("cp")
            .args(["-a"])
            .arg(&tree)
            .arg(&rootfs)
            .timeout(DISK_TIMEOUT)
            .run()?;
        populate(&rootfs)?;
        let bytes = make_disk(&rootfs, work.path(), &out.join("rootfs.qcow2"))?;
        let mut full = base.clone();
        full.hash.clone_from(&hash);
        full.cmdline = format!("{} paddock.root=/dev/vda", base.cmdline);
        full.root_disk = Some(dir.join("rootfs.qcow2"));
        if let Some(build) = &mut full.build {
            build.full = Some(FullImageBuild {
                base_image: base_hash.clone(),
                root_disk_bytes: bytes,
                debian_suite: SUITE.into(),
                debian_packages: PACKAGES.iter().map(|&p| p.to_owned()).collect(),
            });
        }
        full.write(&out.join("manifest.json"))?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::rename(&out, &dir)
            .with_context(|| format!("renaming the image to {}", dir.display()))?;
        eprintln!(
            "xtask: built full image {hash} in {:.1?}: disk {} MiB ({})",
            started.elapsed(),
            bytes >> 20,
            dir.display()
        );
    }
    image::publish_current(&image::checkout_image_dir(), &manifest, "current-full.json")?;
    Ok(manifest)
}

/// The name of the cached Debian tree for this suite, mirror and package list.
fn debootstrap_key() -> String {
    let mut hasher = Sha256::new();
    hasher.update(format!(
        "{SUITE}\n{MIRROR}\nminbase\n{}",
        PACKAGES.join(",")
    ));
    let digest: String = hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    digest[..16].to_owned()
}

/// Runs debootstrap into `tree` unless a complete tree is there; returns it.
fn debootstrap(tree: &Path) -> anyhow::Result<PathBuf> {
    let done = tree.with_extension("complete");
    if done.is_file() && tree.is_dir() {
        return Ok(tree.to_path_buf());
    }
    if tree.exists() {
        std::fs::remove_dir_all(tree)
            .with_context(|| format!("removing the incomplete {}", tree.display()))?;
    }
    let started = Instant::now();
    Cmd::new("debootstrap")
        .args([
            "--variant=minbase",
            &format!("--include={}", PACKAGES.join(",")),
        ])
        .arg(SUITE)
        .arg(tree)
        .arg(MIRROR)
        .timeout(DEBOOTSTRAP_TIMEOUT)
        .run()
        .context("debootstrap failed")?;
    // The guest cleans up after itself no more than a container would: drop
    // what only takes space.
    for dir in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        let path = tree.join(dir);
        for entry in std::fs::read_dir(&path).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    std::fs::write(&done, b"")?;
    eprintln!("xtask: debootstrap took {:.1?}", started.elapsed());
    Ok(tree.to_path_buf())
}

/// Adds Paddock's files to a copy of the Debian tree.
fn populate(rootfs: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let source = workspace_root().join("guest-agent/image/rootfs");
    for file in ROOTFS_FILES {
        let to = rootfs.join(file);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let _ = std::fs::remove_file(&to);
        std::fs::copy(source.join(file), &to)
            .with_context(|| format!("copying {file} into the root file system"))?;
    }
    let agent = crate::build_static_agent()?;
    let agent_to = rootfs.join("usr/bin/paddock-agent");
    Cmd::new("strip")
        .args(["--strip-all", "-o"])
        .arg(&agent_to)
        .arg(&agent)
        .timeout(DISK_TIMEOUT)
        .run()?;
    std::fs::set_permissions(&agent_to, std::fs::Permissions::from_mode(0o755))?;
    // The module list rcS reads (the modules themselves are loaded by the
    // initramfs before the switch, so rcS finds them loaded).
    std::fs::create_dir_all(rootfs.join("etc/paddock"))?;
    std::fs::write(
        rootfs.join("etc/paddock/modules"),
        b"# Loaded by the initramfs.\n",
    )?;

    // Busybox, and its applets where Debian has no command of that name:
    // init, udhcpc, ifconfig, ... Debian's own commands win.
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
        .context("copying the static busybox")?;
    let applets = Cmd::new("/bin/busybox")
        .arg("--list-full")
        .timeout(DISK_TIMEOUT)
        .read()?;
    let command_dirs = ["bin", "sbin", "usr/bin", "usr/sbin"];
    for applet in applets.lines().map(str::trim).filter(|a| !a.is_empty()) {
        let name = applet.rsplit('/').next().unwrap_or(applet);
        let exists = command_dirs
            .iter()
            .any(|dir| rootfs.join(dir).join(name).symlink_metadata().is_ok());
        let link = rootfs.join(applet);
        if !exists && link.parent().is_some_and(Path::is_dir) {
            std::os::unix::fs::symlink("/bin/busybox", &link)
                .with_context(|| format!("linking {applet}"))?;
        }
    }
    ensure!(
        rootfs.join("sbin/init").symlink_metadata().is_ok(),
        "the root file system has no /sbin/init"
    );
    Ok(())
}

/// Makes an ext4 file system holding `rootfs` and converts it to a qcow2
/// disk at `disk`; returns the disk's size in bytes.
fn make_disk(rootfs: &Path, work: &Path, disk: &Path) -> anyhow::Result<u64> {
    let used_kib: u64 = Cmd::new("du")
        .args(["-s", "-k", "-x"])
        .arg(rootfs)
        .timeout(DISK_TIMEOUT)
        .read()?
        .split_whitespace()
        .next()
        .and_then(|kib| kib.parse().ok())
        .context("reading du's output")?;
    let size_mib = used_kib / 1024 * 13 / 10 + FREE_SPACE_MIB;
    let raw = work.join("rootfs.ext4");
    Cmd::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "paddock-root", "-d"])
        .arg(rootfs)
        .arg(&raw)
        .arg(format!("{size_mib}M"))
        .timeout(DISK_TIMEOUT)
        .run()
        .context("making the root file system")?;
    Cmd::new("qemu-img")
        .args(["convert", "-q", "-O", "qcow2"])
        .arg(&raw)
        .arg(disk)
        .timeout(DISK_TIMEOUT)
        .run()
        .context("converting the disk to qcow2")?;
    Ok(std::fs::metadata(disk)?.len())
}
