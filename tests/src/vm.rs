//! Real sandbox VMs for end-to-end tests: the project's guest image booted by
//! libvirt (`qemu:///system`, TCG here) and reached through the guest agent.
//!
//! [`Sandbox::boot`] defines and starts a domain from the image manifest that
//! `cargo xtask image` writes, then connects an [`AgentClient`] over the
//! domain's virtio-serial channel. A sandbox that does not become ready in
//! time fails with the tail of its console log. Dropping a sandbox destroys
//! and undefines its domain and removes its files, also when a test panics.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use paddock_agent_client::{AgentClient, ClientConfig, Transport};
use paddock_libvirt::{
    Acceleration, AgentChannel, Boot, DomainSpec, ImageFormat, Libvirt, NetworkMode, OverlayDisk,
    PaddockMetadata, Profile, Resources, Uuid, Vm, create_overlay,
};

use crate::unique_marker;

/// Where libvirt's QEMU (user `libvirt-qemu`) may create channel sockets.
const SANDBOX_ROOT: &str = "/var/lib/libvirt/qemu/paddock-tests";

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

/// What `cargo xtask image` built: `target/paddock-image/current.json`.
#[derive(Debug, Clone)]
pub struct ImageManifest {
    /// Content hash of every input of the image.
    pub hash: String,
    /// The kernel.
    pub kernel: PathBuf,
    /// The initramfs with busybox, the modules and the agent.
    pub initramfs: PathBuf,
    /// The kernel command line.
    pub cmdline: String,
    /// The virtio-serial port name the agent listens on.
    pub agent_serial_port: String,
}

impl ImageManifest {
    /// Reads the manifest named by `$PADDOCK_IMAGE`, or the workspace's
    /// `target/paddock-image/current.json`.
    ///
    /// # Errors
    /// When there is none (run `cargo xtask image`) or it is malformed.
    pub fn load() -> anyhow::Result<Self> {
        let path = std::env::var_os("PADDOCK_IMAGE").map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/paddock-image/current.json"),
            PathBuf::from,
        );
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "no image manifest at {}: run `cargo xtask image`",
                path.display()
            )
        })?;
        let json: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let field = |key: &str| {
            json.get(key)
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
                .with_context(|| format!("{} has no string `{key}`", path.display()))
        };
        Ok(Self {
            hash: field("hash")?,
            kernel: field("kernel")?.into(),
            initramfs: field("initramfs")?.into(),
            cmdline: field("cmdline")?,
            agent_serial_port: field("agent_serial_port")?,
        })
    }
}

/// How to boot a sandbox.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// The guest's network.
    pub network: NetworkMode,
    /// Guest memory.
    pub memory_mib: u64,
    /// How long the agent may take to answer after the domain started.
    pub ready_timeout: Duration,
    /// Kernel command line to use instead of the image's.
    pub cmdline: Option<String>,
    /// Attach a blank qcow2 overlay disk of this size: internal snapshots
    /// keep their memory state in it.
    pub scratch_disk_mib: Option<u64>,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        Self {
            network: NetworkMode::Isolated,
            memory_mib: 256,
            ready_timeout: Duration::from_secs(90),
            cmdline: None,
            scratch_disk_mib: None,
        }
    }
}

/// A running sandbox VM with a connected agent client.
#[derive(Debug)]
pub struct Sandbox {
    libvirt: Libvirt,
    vm: Vm,
    client: AgentClient,
    spec: DomainSpec,
    guard: DomainGuard,
    /// Time from `start` to the agent's HELLO_ACK.
    pub boot_to_ready: Duration,
}

/// Destroys and undefines a test domain and removes its files on drop, also
/// while a test unwinds (so it is synchronous, through virsh).
#[derive(Debug)]
struct DomainGuard {
    name: String,
    dir: PathBuf,
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

fn console_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Sandbox {
    /// Boots a sandbox from the image and waits for its agent.
    ///
    /// # Errors
    /// When the domain cannot be defined or started, or the agent does not
    /// answer within the ready timeout (the error carries the console tail).
    pub async fn boot(options: SandboxOptions) -> anyhow::Result<Self> {
        let image = ImageManifest::load()?;
        let libvirt = Libvirt::open(SYSTEM_URI).await?;
        let name = format!("paddock-test-{}", unique_marker());
        let dir = Path::new(SANDBOX_ROOT).join(&name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // QEMU runs as libvirt-qemu and creates the channel socket here.
        set_mode(Path::new(SANDBOX_ROOT), 0o755)?;
        set_mode(&dir, 0o777)?;
        let spec = DomainSpec {
            name: name.clone(),
            uuid: Uuid::new_v4(),
            metadata: PaddockMetadata {
                pool: "tests".into(),
                slot: 0,
                image: image.hash.clone(),
                golden: None,
                created_unix: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            },
            profile: Profile::Custom(Resources {
                vcpus: 1,
                memory_mib: options.memory_mib,
            }),
            tuning: Profile::Custom(Resources {
                vcpus: 1,
                memory_mib: options.memory_mib,
            })
            .tuning(),
            acceleration: Acceleration::Auto,
            boot: Boot::Kernel {
                kernel: image.kernel.clone(),
                initrd: Some(image.initramfs.clone()),
                cmdline: options
                    .cmdline
                    .clone()
                    .unwrap_or_else(|| image.cmdline.clone()),
            },
            disk: match options.scratch_disk_mib {
                Some(mib) => Some(scratch_disk(&dir, mib).await?),
                None => None,
            },
            console_log: dir.join("console.log"),
            channel: AgentChannel::VirtioSerial {
                socket: dir.join("agent.sock"),
                name: image.agent_serial_port.clone(),
            },
            network: options.network.clone(),
        };
        let guard = DomainGuard {
            name: name.clone(),
            dir: dir.clone(),
        };
        let vm = libvirt.define(&spec).await?;
        let started = Instant::now();
        vm.start().await?;
        let config = ClientConfig {
            connect_timeout: options.ready_timeout,
            ..crate::test_config()
        };
        let transport = Transport::VirtioSerial {
            path: dir.join("agent.sock"),
        };
        let client = match AgentClient::connect(transport, config).await {
            Ok(client) => client,
            Err(err) => {
                let tail = console_tail(&spec.console_log, 30);
                bail!("sandbox {name} not ready: {err}\n--- console tail ---\n{tail}");
            }
        };
        Ok(Self {
            libvirt,
            vm,
            client,
            spec,
            guard,
            boot_to_ready: started.elapsed(),
        })
    }

    /// The agent client.
    #[must_use]
    pub fn client(&self) -> &AgentClient {
        &self.client
    }

    /// The libvirt domain.
    #[must_use]
    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    /// The libvirt connection.
    #[must_use]
    pub fn libvirt(&self) -> &Libvirt {
        &self.libvirt
    }

    /// The domain's spec.
    #[must_use]
    pub fn spec(&self) -> &DomainSpec {
        &self.spec
    }

    /// The host side of the agent's virtio-serial channel.
    #[must_use]
    pub fn agent_socket(&self) -> PathBuf {
        self.guard.dir.join("agent.sock")
    }

    /// A scratch directory on the host that lives as long as the sandbox.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.guard.dir
    }

    /// The last `lines` lines of the guest's serial console.
    #[must_use]
    pub fn console_tail(&self, lines: usize) -> String {
        console_tail(&self.spec.console_log, lines)
    }
}

/// A blank qcow2 base of `mib` MiB and an overlay on it, in `dir`.
async fn scratch_disk(dir: &Path, mib: u64) -> anyhow::Result<OverlayDisk> {
    let base = dir.join("base.qcow2");
    let status = tokio::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&base)
        .arg(format!("{mib}M"))
        .status()
        .await
        .context("running qemu-img")?;
    anyhow::ensure!(status.success(), "qemu-img create failed: {status}");
    let disk = OverlayDisk {
        overlay: dir.join("overlay.qcow2"),
        base,
        base_format: ImageFormat::Qcow2,
    };
    create_overlay(&disk).await?;
    Ok(disk)
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
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
        .filter(|(_, meta)| meta.pool == "tests")
        .map(|(vm, _)| vm.name().to_owned())
        .collect())
}
