//! Everything an image is made of, read and hashed: the image's name.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, ensure};
use sha2::{Digest as _, Sha256};

use super::kernel::{KernelPackage, resolve_kernel_package};
use super::{
    AGENT_RUN, BUSYBOX, BUSYBOX_PACKAGE, HASH_HEX_DIGITS, MODULES, QUERY_TIMEOUT, ROOTFS_DIR,
    SERIAL_PORT_NAME, TOOL_TIMEOUT, VSOCK_PORT,
};
use crate::shell::{Cmd, workspace_root};

/// Everything the image is made of, and the hash over it.
#[derive(Debug)]
pub(super) struct Inputs {
    /// The kernel's Debian package.
    pub(super) kernel: KernelPackage,
    /// The installed `busybox-static` package's version.
    pub(super) busybox_version: String,
    /// The static busybox executable.
    pub(super) busybox: Vec<u8>,
    /// The static agent, as built (not stripped).
    pub(super) agent: PathBuf,
    /// The files of [`super::ROOTFS_DIR`].
    pub(super) rootfs: Vec<RootfsFile>,
    /// The image's name: see the module docs' caching rule.
    pub(super) hash: String,
}

/// A file of [`super::ROOTFS_DIR`].
#[derive(Debug)]
pub(super) struct RootfsFile {
    /// Its path relative to the directory, with `/` separators.
    pub(super) path: String,
    /// Whether any executable bit is set (the guest gets 0755, else 0644).
    pub(super) executable: bool,
    /// The file's bytes.
    pub(super) contents: Vec<u8>,
}

impl Inputs {
    /// Reads every input and hashes them.
    pub(super) fn gather(agent: &Path) -> anyhow::Result<Self> {
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
        // The builder's source: it holds the command line and the layout.
        for source in [
            include_str!("mod.rs"),
            include_str!("inputs.rs"),
            include_str!("kernel.rs"),
            include_str!("initramfs.rs"),
        ] {
            field("builder", source.as_bytes());
        }
        field("cmdline", super::cmdline().as_bytes());
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
pub(super) fn file_digest(path: &Path) -> anyhow::Result<String> {
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

/// Every regular file under `dir`, sorted by path.
pub(super) fn read_rootfs(dir: &Path) -> anyhow::Result<Vec<RootfsFile>> {
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
pub(super) fn check_agent_run(rootfs: &[RootfsFile]) -> anyhow::Result<()> {
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
            "{ROOTFS_DIR}/{AGENT_RUN} must contain the line `{line}` (the manifest the image module writes says so)"
        );
    }
    ensure!(
        script.executable,
        "{ROOTFS_DIR}/{AGENT_RUN} is not executable"
    );
    Ok(())
}
