//! Real sandbox VMs for end-to-end tests: [`paddock::Sandbox`]es booted from
//! the image `cargo xtask image` built, on the real libvirtd
//! (`qemu:///system`, TCG here).
//!
//! [`TestSandbox::boot`] gives each test domain a unique name and the tests'
//! pool name, so that leak checks can find them. A sandbox dropped by a
//! failing test still destroys its domain and removes its files.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use paddock::{ChannelConfig, GuestImage, SandboxConfig};
use paddock_libvirt::{Libvirt, NetworkMode};

use crate::unique_marker;

/// Where the test sandboxes keep their files.
pub const SANDBOX_ROOT: &str = "/var/lib/libvirt/qemu/paddock-tests";

/// The pool name in the test domains' metadata.
pub const TEST_POOL: &str = "tests";

/// The libvirt URI of the tests' real daemon.
pub const SYSTEM_URI: &str = "qemu:///system";

/// Whether the real-VM tests run: `cargo xtask test` sets
/// `PADDOCK_LIBVIRT_SYSTEM_TESTS` once libvirtd runs and the image is built.
/// Otherwise a test prints that it was skipped and returns.
#[must_use]
pub fn enabled(test: &str) -> bool {
    let on = std::env::var_os("PADDOCK_LIBVIRT_SYSTEM_TESTS").is_some();
    if !on {
        eprintln!("SKIPPED {test}: set PADDOCK_LIBVIRT_SYSTEM_TESTS=1 (cargo xtask test does)");
    }
    on
}

/// Where the test pools keep their files.
pub const POOL_ROOT: &str = "/var/lib/libvirt/qemu/paddock-tests";

/// A [`paddock::Paddock`] on the system libvirtd with the test image, whose
/// pools live under [`POOL_ROOT`].
///
/// # Errors
/// No image, or libvirtd does not answer.
pub async fn test_paddock() -> anyhow::Result<paddock::Paddock> {
    let mut config = paddock::PaddockConfig::new(test_image()?);
    config.libvirt_uri = SYSTEM_URI.into();
    config.state_root = POOL_ROOT.into();
    Ok(paddock::Paddock::connect(config).await?)
}

/// The image manifest named by `$PADDOCK_IMAGE`, or the workspace's
/// `target/paddock-image/current.json`.
#[must_use]
pub fn image_manifest_path() -> PathBuf {
    std::env::var_os("PADDOCK_IMAGE").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/paddock-image/current.json"),
        PathBuf::from,
    )
}

/// Loads the image the tests boot.
///
/// # Errors
/// When there is none (run `cargo xtask image`) or it is unusable.
pub fn test_image() -> anyhow::Result<GuestImage> {
    let path = image_manifest_path();
    GuestImage::load(&path).with_context(|| "run `cargo xtask image` to build the guest image")
}

/// The `vhost-device-vsock` executable for hybrid-vsock sandboxes:
/// `$PADDOCK_VHOST_DEVICE_VSOCK` (`cargo xtask test` installs it and sets
/// this), else `~/.cargo/bin/vhost-device-vsock`.
///
/// # Errors
/// When neither exists.
pub fn hybrid_vsock_backend() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PADDOCK_VHOST_DEVICE_VSOCK").map_or_else(
        || {
            let home = std::env::var_os("HOME").unwrap_or_default();
            Path::new(&home).join(".cargo/bin/vhost-device-vsock")
        },
        PathBuf::from,
    );
    anyhow::ensure!(
        path.is_file(),
        "no vhost-device-vsock at {} (`cargo xtask test` installs it)",
        path.display()
    );
    Ok(path)
}

/// The full image (`cargo xtask image --full`): `$PADDOCK_FULL_IMAGE`, which
/// `cargo xtask test` sets, else the workspace's
/// `target/paddock-image/current-full.json`.
///
/// # Errors
/// When there is none or it is unusable.
pub fn full_image() -> anyhow::Result<GuestImage> {
    let path = std::env::var_os("PADDOCK_FULL_IMAGE").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/paddock-image/current-full.json"),
        PathBuf::from,
    );
    GuestImage::load(&path)
        .with_context(|| "run `cargo xtask image --full` to build the full image")
}

/// How to boot a test sandbox.
#[derive(Debug, Clone)]
pub struct TestSandboxOptions {
    /// The guest's network.
    pub network: NetworkMode,
    /// How the host reaches the agent.
    pub channel: ChannelConfig,
    /// Guest memory.
    pub memory_mib: u64,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// The limits on the domain's QEMU; `None`: the defaults for the vCPUs
    /// and memory.
    pub tuning: Option<paddock_libvirt::Tuning>,
    /// How long the agent may take to answer after the domain started.
    pub ready_timeout: Duration,
    /// Kernel command line to use instead of the image's.
    pub cmdline: Option<String>,
    /// Attach a blank qcow2 disk of this size (internal snapshots need one).
    pub scratch_disk_mib: Option<u64>,
    /// Boot this image instead of the default one.
    pub image: Option<GuestImage>,
    /// Host directories the guest mounts (virtiofs).
    pub shared_folders: Vec<paddock_libvirt::SharedFolder>,
    /// Give the guest the probe port ([`SandboxConfig::probe_port`]).
    pub probe_port: bool,
}

impl Default for TestSandboxOptions {
    fn default() -> Self {
        Self {
            network: NetworkMode::Isolated,
            channel: ChannelConfig::VirtioSerial,
            memory_mib: 256,
            vcpus: 1,
            tuning: None,
            ready_timeout: Duration::from_secs(90),
            cmdline: None,
            scratch_disk_mib: None,
            image: None,
            shared_folders: Vec::new(),
            probe_port: false,
        }
    }
}

/// A [`paddock::Sandbox`] booted for a test, and the libvirt connection it
/// came from. It dereferences to the sandbox.
#[derive(Debug)]
pub struct TestSandbox {
    libvirt: Libvirt,
    inner: paddock::Sandbox,
}

impl std::ops::Deref for TestSandbox {
    type Target = paddock::Sandbox;

    fn deref(&self) -> &paddock::Sandbox {
        &self.inner
    }
}

impl TestSandbox {
    /// Boots a sandbox with a unique name from the test image.
    ///
    /// # Errors
    /// As [`paddock::Sandbox::boot`], or no image.
    pub async fn boot(options: TestSandboxOptions) -> anyhow::Result<Self> {
        let image = match options.image {
            Some(image) => image,
            None => test_image()?,
        };
        let libvirt = Libvirt::open(SYSTEM_URI).await?;
        let mut config = SandboxConfig::new(format!("paddock-test-{}", unique_marker()));
        config.state_root = SANDBOX_ROOT.into();
        config.pool = TEST_POOL.into();
        config.network = options.network;
        config.channel = options.channel;
        config.memory_mib = options.memory_mib;
        config.vcpus = options.vcpus;
        config.tuning = options.tuning;
        config.ready_timeout = options.ready_timeout;
        config.cmdline = options.cmdline;
        config.state_disk_mib = options.scratch_disk_mib;
        config.client = crate::test_config();
        config.shared_folders = options.shared_folders;
        config.probe_port = options.probe_port;
        let inner = paddock::Sandbox::boot(&libvirt, &image, config).await?;
        Ok(Self { libvirt, inner })
    }

    /// The libvirt connection.
    #[must_use]
    pub fn libvirt(&self) -> &Libvirt {
        &self.libvirt
    }

    /// Destroys the sandbox and removes its files.
    ///
    /// # Errors
    /// As [`paddock::Sandbox::destroy`].
    pub async fn destroy(self) -> anyhow::Result<()> {
        Ok(self.inner.destroy().await?)
    }
}

/// Names of the Paddock test domains libvirt knows (for leak checks).
///
/// # Errors
/// libvirt's error.
pub async fn test_domains(libvirt: &Libvirt) -> anyhow::Result<Vec<String>> {
    Ok(libvirt
        .paddock_domains()
        .await?
        .into_iter()
        .filter(|(_, meta)| meta.pool == TEST_POOL)
        .map(|(vm, _)| vm.name().to_owned())
        .collect())
}

/// A directory for a test domain's files under the tests' sandbox root,
/// reachable by QEMU (which runs as another user) as a sandbox's is.
///
/// # Errors
/// When it cannot be created, or QEMU's group does not exist.
pub fn domain_dir(name: &str) -> anyhow::Result<PathBuf> {
    let dir = Path::new(SANDBOX_ROOT).join(name);
    let group = paddock::vm::QemuGroup::resolve(paddock::vm::DEFAULT_QEMU_GROUP)?;
    paddock::vm::create_qemu_dir(&dir, &group)?;
    Ok(dir)
}

/// Destroys and undefines a test domain and removes its directory on drop,
/// also while a test unwinds (so it is synchronous, through virsh).
#[derive(Debug)]
pub struct DomainGuard {
    /// The domain's name.
    pub name: String,
    /// Its directory.
    pub dir: PathBuf,
}

impl Drop for DomainGuard {
    fn drop(&mut self) {
        let undefine = ["undefine", "--snapshots-metadata", "--managed-save"];
        for action in [&["destroy"][..], &undefine[..]] {
            let _ = std::process::Command::new("virsh")
                .args(["-q", "-c", SYSTEM_URI])
                .args(action)
                .arg(&self.name)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Destroys and undefines the libvirt network of this name on drop, also
/// while a test unwinds (pools leave their network defined).
#[derive(Debug)]
pub struct NetworkGuard(pub String);

impl Drop for NetworkGuard {
    fn drop(&mut self) {
        for action in ["net-destroy", "net-undefine"] {
            let _ = std::process::Command::new("virsh")
                .args(["-q", "-c", SYSTEM_URI, action, &self.0])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// Checks that the guest's agent contains whole process trees: it announces
/// `contain-tree` (a cgroup v2 per execution), its console never said it
/// found no cgroup2 hierarchy, and a process that left the execution's
/// session (`setsid`) or double-forked ends with the execution.
///
/// # Errors
/// When any of that does not hold.
pub async fn assert_escaped_processes_end_with_their_execution(
    sandbox: &paddock::Sandbox,
) -> anyhow::Result<()> {
    use paddock_agent_client::Execute;
    let client = sandbox.client();
    let session = client.session().await.context("a session")?;
    anyhow::ensure!(
        session.capabilities.iter().any(|c| c == "contain-tree"),
        "the agent contains process trees: {:?}",
        session.capabilities
    );
    let console = sandbox.console_tail(500);
    anyhow::ensure!(
        !console.contains("no cgroup2"),
        "the guest mounted cgroup2: {console}"
    );
    let marker = unique_marker();
    let out = client
        .exec_collect(Execute::shell(format!(
            "setsid sleep 1234.{marker} & (sleep 1235.{marker} &) ; echo started"
        )))
        .await?;
    anyhow::ensure!(out.stdout == b"started\n", "{out:?}");
    let left = client
        .exec_collect(Execute::shell(format!(
            "ps -o args | grep -c '^sleep 123[45].{marker}' || true"
        )))
        .await?;
    anyhow::ensure!(
        String::from_utf8_lossy(&left.stdout).trim() == "0",
        "no process of the execution outlived it: {}",
        String::from_utf8_lossy(&left.stdout)
    );
    Ok(())
}
