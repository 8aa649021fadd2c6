//! One sandbox VM: a libvirt domain booted from a [`GuestImage`] and the
//! agent client connected to it.
//!
//! # Life cycle
//!
//! [`Sandbox::boot`] checks the name ([`crate::names`]), creates the
//! sandbox's directory (console log, agent socket, disks; QEMU's group's
//! and closed to others, see [`super::files`]), defines and starts the
//! domain, and waits for the agent's HELLO_ACK, then asks one STATUS to
//! place the guest's boot marks on the host's clock ([`Sandbox::boot_phases`],
//! [`super::boot_phases`]). A sandbox that is not ready within
//! [`SandboxConfig::ready_timeout`] is torn down and the error carries the
//! tail of its console log. [`Sandbox::snapshot`] and
//! [`Sandbox::revert_to_snapshot`] capture and restore the guest's memory and
//! disk (an internal snapshot, which needs [`SandboxConfig::state_disk_mib`]).
//! [`Sandbox::destroy`] destroys and undefines the domain and removes the
//! directory. With a hybrid-vsock channel the sandbox also runs the
//! `vhost-device-vsock` backend process and stops it at the end.
//! A sandbox dropped without `destroy` does the same on a helper
//! thread that the drop waits for, so nothing is left behind even when a
//! caller panics.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use paddock_agent_client::{AgentClient, ClientConfig, Transport};
use paddock_image::GuestImage;
use paddock_libvirt::{
    Acceleration, AgentChannel, Boot, DacLabel, DomainRole, DomainSpec, ImageFormat, Libvirt,
    NetworkMode, OverlayDisk, PaddockMetadata, Profile, Resources, SerialPort, SharedFolder,
    SnapshotInfo, SnapshotSpec, Tuning, Uuid, Vm, check_shared_folders, create_blank_qcow2,
    create_overlay,
};

use super::VmError;
use super::boot_phases::{BootPhases, GuestMarks, HostTimes};
use super::error::check_socket_path;
use super::files::{
    DEFAULT_QEMU_GROUP, PROBE_SOCKET, QemuGroup, create_qemu_dir, restrict_memory_image,
    restrict_sockets,
};
use super::guest::{Guest, console_tail, discard_on_thread};
use super::share::{self, ShareExports};

/// Where sandboxes keep their files unless configured otherwise: under
/// libvirt's own state directory, which QEMU (user `libvirt-qemu`) can reach.
pub const DEFAULT_STATE_ROOT: &str = "/var/lib/libvirt/qemu/paddock";

/// How many console lines a not-ready error carries.
const CONSOLE_TAIL_LINES: usize = 30;

/// How the host reaches the guest agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelConfig {
    /// A virtio-serial port behind a Unix socket that QEMU serves. Works on
    /// every QEMU host and survives snapshots and save/restore.
    VirtioSerial,
    /// Hybrid vsock: the guest uses real `AF_VSOCK` through a
    /// vhost-user-vsock device served by a `vhost-device-vsock` process the
    /// sandbox starts and stops; the host connects to its Unix socket with
    /// `CONNECT <port>`. QEMU cannot snapshot or save such a guest.
    HybridVsock {
        /// The `vhost-device-vsock` executable.
        backend: PathBuf,
    },
}

/// The guest CID a hybrid-vsock backend announces. Each sandbox has its own
/// backend, so every guest can use the same one.
const HYBRID_GUEST_CID: u32 = 3;

/// How long a hybrid-vsock backend may take to create its socket.
const BACKEND_START_TIMEOUT: Duration = Duration::from_secs(10);

/// How to boot a sandbox.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// The libvirt domain name; also names the sandbox's directory. It
    /// must follow the naming rule ([`crate::names`]).
    pub name: String,
    /// The directory under which the sandbox's own directory is created.
    /// It is made (or kept) QEMU's group's, mode 2750 ([`super::files`]).
    pub state_root: PathBuf,
    /// The group QEMU runs as (libvirt's `qemu.conf`), which gets the
    /// sandbox's directory and files ([`super::files`]).
    pub qemu_group: String,
    /// Guest memory.
    pub memory_mib: u64,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// The limits on the domain's QEMU; `None`: the defaults for `vcpus`
    /// and `memory_mib` ([`Profile::tuning`]).
    pub tuning: Option<Tuning>,
    /// The host user and group QEMU runs as instead of libvirt's (see
    /// [`DacLabel`] for what the host needs); the disk overlay is handed
    /// to them.
    pub run_as: Option<DacLabel>,
    /// The guest's network. A sandbox on a NAT-filtered network is on a
    /// network its caller applied; so is the host firewall of its bridge
    /// ([`super::HostFirewall`]), which pools apply themselves.
    pub network: NetworkMode,
    /// How the host reaches the agent.
    pub channel: ChannelConfig,
    /// How long the agent may take to answer after the domain started.
    pub ready_timeout: Duration,
    /// Kernel command line to use instead of the image's.
    pub cmdline: Option<String>,
    /// Attach a blank qcow2 disk of this size. Internal snapshots (with the
    /// guest's memory) are stored in it, so [`Sandbox::snapshot`] needs one.
    /// Ignored for an image with a root disk, whose overlay serves instead.
    pub state_disk_mib: Option<u64>,
    /// Boot from a fresh overlay on this qcow2 disk instead (a golden's
    /// frozen disk); it wins over the image's root disk and `state_disk_mib`.
    pub base_disk: Option<PathBuf>,
    /// The pool recorded in the domain's Paddock metadata (recovery and
    /// leak checks find domains by it).
    pub pool: String,
    /// What the domain is to that pool, recorded in its metadata.
    pub role: DomainRole,
    /// The agent client's timeouts and limits (its connect timeout is
    /// replaced by `ready_timeout` for the first connection).
    pub client: ClientConfig,
    /// Host directories the guest mounts over virtiofs before the sandbox
    /// is handed out ([`super::share`]: read-only ones are enforced on the
    /// host, read-write ones are written as their owner; a sandbox with any
    /// cannot be snapshotted). Sharing folders needs root (bind mounts).
    pub shared_folders: Vec<SharedFolder>,
    /// Give the guest a second virtio-serial port, [`PROBE_PORT_NAME`],
    /// backed by [`Sandbox::probe_socket`]: a raw byte stream beside the
    /// agent's channel, for `paddock-agent probe` to measure the channel's
    /// own echo time and throughput (the floors the agent is judged
    /// against). Off by default.
    pub probe_port: bool,
    /// Whether the host's KSM may merge the guest's RAM with identical
    /// pages elsewhere ([`paddock_libvirt::DomainSpec::ksm_mergeable`]);
    /// default `true`, QEMU's own default.
    pub ksm_mergeable: bool,
}

/// The name of the probe port ([`SandboxConfig::probe_port`]) in the guest's
/// `/sys/class/virtio-ports/*/name`.
pub const PROBE_PORT_NAME: &str = "org.paddock.probe.0";

impl SandboxConfig {
    /// A 1-vCPU, 256 MiB, network-less sandbox named `name` with a 64 MiB
    /// state disk and a 90 s ready timeout (a TCG boot takes seconds).
    #[must_use]
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            state_root: DEFAULT_STATE_ROOT.into(),
            qemu_group: DEFAULT_QEMU_GROUP.into(),
            memory_mib: 256,
            vcpus: 1,
            tuning: None,
            run_as: None,
            network: NetworkMode::Isolated,
            channel: ChannelConfig::VirtioSerial,
            ready_timeout: Duration::from_secs(90),
            cmdline: None,
            state_disk_mib: Some(64),
            base_disk: None,
            pool: "default".into(),
            role: DomainRole::Sandbox,
            client: ClientConfig::default(),
            shared_folders: Vec::new(),
            probe_port: false,
            ksm_mergeable: true,
        }
    }
}

/// A running sandbox VM with a connected agent client. It dereferences to
/// its [`Guest`]: client, domain, name, directory, console.
#[derive(Debug)]
pub struct Sandbox {
    /// Declared first: a drop destroys the domain before the hybrid-vsock
    /// backend it uses is stopped.
    guest: Guest,
    /// The hybrid-vsock backend process, if the sandbox has one.
    backend: Option<BackendProcess>,
    /// The host side of its shared folders; after `guest`, so that a drop
    /// stops the domain (and its `virtiofsd`s) before detaching them.
    exports: ShareExports,
    boot_to_ready: Duration,
    boot_phases: BootPhases,
}

impl std::ops::Deref for Sandbox {
    type Target = Guest;

    fn deref(&self) -> &Guest {
        &self.guest
    }
}

impl Sandbox {
    /// Boots a sandbox from `image` and waits for its agent.
    ///
    /// # Errors
    /// [`VmError::Name`] for a name that breaks the naming rule,
    /// [`VmError::Share`] for a shared folder that breaks a rule, and
    /// [`VmError::NoQemuGroup`] when QEMU's group does not exist (all
    /// before anything is made); [`VmError::ShareExport`] when a folder
    /// cannot be bind-mounted, [`VmError::ShareMount`] when the
    /// guest cannot mount a folder; [`VmError::NotReady`] (with the console
    /// tail) when the agent does not answer in time; otherwise the failing
    /// step's error. Whatever was created is removed again.
    pub async fn boot(
        libvirt: &Libvirt,
        image: &GuestImage,
        config: SandboxConfig,
    ) -> Result<Self, VmError> {
        crate::names::check_sandbox_name(&config.name)?;
        check_shared_folders(&config.shared_folders)?;
        let group = QemuGroup::resolve(&config.qemu_group)?;
        let dir = config.state_root.join(&config.name);
        // Before anything is made: QEMU could not bind a longer one.
        for socket in ["agent.sock", "vhost-user.sock", PROBE_SOCKET] {
            check_socket_path(&dir.join(socket))?;
        }
        prepare_dirs(&config.state_root, &dir, &group)?;
        let mut files = FilesGuard(Some(dir.clone()));
        let (exports, filesystems) =
            ShareExports::prepare(&config.state_root, &config.name, &config.shared_folders)?;
        let base = config.base_disk.as_ref().or(image.root_disk.as_ref());
        let disk = match (base, config.state_disk_mib) {
            // An overlay on a given disk (the full image's root disk), which
            // also holds internal snapshots.
            (Some(root), _) => {
                let disk = OverlayDisk {
                    overlay: dir.join("overlay.qcow2"),
                    base: root.clone(),
                    base_format: ImageFormat::Qcow2,
                };
                create_overlay(&disk).await?;
                Some(disk)
            }
            (None, Some(mib)) => Some(state_disk(&dir, mib).await?),
            (None, None) => None,
        };
        if let Some(disk) = &disk {
            super::dac::hand_over(disk, config.run_as).await?;
        }
        let resources = Resources {
            vcpus: config.vcpus,
            memory_mib: config.memory_mib,
        };
        let spec = DomainSpec {
            name: config.name.clone(),
            uuid: Uuid::new_v4(),
            metadata: PaddockMetadata {
                pool: config.pool.clone(),
                role: config.role,
                image: image.hash.clone(),
                golden: None,
                created_unix: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            },
            profile: Profile::Custom(resources),
            tuning: config
                .tuning
                .unwrap_or_else(|| Profile::Custom(resources).tuning()),
            acceleration: Acceleration::Auto,
            boot: Boot::Kernel {
                kernel: image.kernel.clone(),
                initrd: Some(image.initramfs.clone()),
                cmdline: config
                    .cmdline
                    .clone()
                    .unwrap_or_else(|| image.cmdline.clone()),
            },
            disk,
            console_log: dir.join("console.log"),
            channel: match &config.channel {
                ChannelConfig::VirtioSerial => AgentChannel::VirtioSerial {
                    socket: dir.join("agent.sock"),
                    name: image.agent_serial_port.clone(),
                },
                ChannelConfig::HybridVsock { .. } => AgentChannel::HybridVsock {
                    socket: dir.join("vhost-user.sock"),
                },
            },
            network: config.network.clone(),
            run_as: config.run_as,
            filesystems,
            serial_ports: if config.probe_port {
                vec![SerialPort {
                    socket: dir.join(PROBE_SOCKET),
                    name: PROBE_PORT_NAME.into(),
                }]
            } else {
                Vec::new()
            },
            ksm_mergeable: config.ksm_mergeable,
        };
        let (backend, transport) = match &config.channel {
            ChannelConfig::VirtioSerial => (
                None,
                Transport::VirtioSerial {
                    path: dir.join("agent.sock"),
                },
            ),
            ChannelConfig::HybridVsock { backend } => (
                Some(BackendProcess::start(backend, &dir).await?),
                Transport::HybridVsock {
                    path: dir.join("agent.sock"),
                    port: image.agent_vsock_port,
                },
            ),
        };
        let vm = libvirt.define(&spec).await?;
        // From here on the domain exists: a failure must remove it too.
        let mut domain = DomainGuard(Some(vm.clone()));
        let started = Instant::now();
        vm.start().await?;
        let start_call = started.elapsed();
        vm.confine(&spec.tuning)
            .await
            .map_err(VmError::confine(&config.name))?;
        restrict_sockets(&dir)?;
        let client_config = ClientConfig {
            connect_timeout: config.ready_timeout,
            ..config.client.clone()
        };
        let client = match AgentClient::connect(transport, client_config).await {
            Ok(client) => client,
            Err(source) => {
                return Err(VmError::NotReady {
                    name: config.name,
                    console_tail: console_tail(&spec.console_log, CONSOLE_TAIL_LINES),
                    source,
                });
            }
        };
        let boot_to_ready = started.elapsed();
        let boot_phases = measure_boot_phases(&client, &spec, start_call, boot_to_ready).await;
        share::mount_in_guest(&client, &config.shared_folders).await?;
        domain.0 = None;
        files.0 = None;
        Ok(Self {
            guest: Guest::new(vm, client, spec, dir),
            backend,
            exports,
            boot_to_ready,
            boot_phases,
        })
    }

    /// The host side of the probe port, when the sandbox has one
    /// ([`SandboxConfig::probe_port`]).
    #[must_use]
    pub fn probe_socket(&self) -> Option<PathBuf> {
        self.spec()
            .serial_ports
            .iter()
            .find(|port| port.name == PROBE_PORT_NAME)
            .map(|port| port.socket.clone())
    }

    /// Time from starting the domain to the agent's HELLO_ACK.
    #[must_use]
    pub fn boot_to_ready(&self) -> Duration {
        self.boot_to_ready
    }

    /// Where [`Sandbox::boot_to_ready`] went: the host's start call, the
    /// firmware, the kernel, the guest's boot scripts and the agent
    /// ([`BootPhases`]).
    #[must_use]
    pub fn boot_phases(&self) -> &BootPhases {
        &self.boot_phases
    }

    /// Takes an internal snapshot of the running guest (memory and disk),
    /// then opens a new agent session, so that after a later revert the
    /// agent's session shows the guest as
    /// [`paddock_agent_client::Continuity::Restored`].
    ///
    /// # Errors
    /// libvirt refuses (no state disk...), or the agent does not answer.
    pub async fn snapshot(&self, spec: &SnapshotSpec) -> Result<SnapshotInfo, VmError> {
        self.refuse_snapshot_with_shares()?;
        let info = self.vm().create_snapshot(spec).await?;
        self.client().reconnect().await?;
        self.guest.mark_restore_point().await;
        Ok(info)
    }

    /// Reverts the guest to the snapshot `name` and reconnects the agent;
    /// fails unless the agent's session shows a restored guest.
    ///
    /// # Errors
    /// libvirt's or the agent's error, or [`VmError::NotRestored`].
    pub async fn revert_to_snapshot(&self, name: &str) -> Result<(), VmError> {
        self.refuse_snapshot_with_shares()?;
        self.vm().revert_to_snapshot(name).await?;
        self.guest
            .reconnect_restored(|| format!("reverting to {name}"))
            .await
    }

    /// Loads the snapshot `name` inside the running QEMU
    /// ([`Vm::load_snapshot_in_place`]: several times faster than
    /// [`Sandbox::revert_to_snapshot`], which starts a new QEMU) and
    /// reconnects the agent; fails unless the agent's session shows a
    /// restored guest. The snapshot must have been taken running.
    ///
    /// # Errors
    /// libvirt's, QEMU's or the agent's error, or
    /// [`VmError::NotRestored`].
    pub async fn load_snapshot_in_place(&self, name: &str) -> Result<(), VmError> {
        self.refuse_snapshot_with_shares()?;
        self.guest.load_snapshot_in_place(name).await
    }

    /// Captures the guest as a golden state: opens a new agent session (so a
    /// guest restored from the capture shows as
    /// [`paddock_agent_client::Continuity::Restored`]),
    /// saves the memory to `memory` (the domain stops), moves the disk
    /// overlay to `disk`, and removes the domain and the rest of the
    /// sandbox. Returns the spec the domain had, which slots derive theirs
    /// from.
    ///
    /// # Errors
    /// The agent, libvirt or a file operation fails; the sandbox is removed
    /// either way.
    pub async fn capture(self, memory: &Path, disk: &Path) -> Result<DomainSpec, VmError> {
        self.refuse_snapshot_with_shares()?;
        self.client().reconnect().await?;
        self.vm().save(memory).await?;
        restrict_memory_image(memory)?;
        if let Some(overlay) = self.spec().disk.as_ref().map(|d| d.overlay.clone()) {
            tokio::fs::rename(&overlay, disk)
                .await
                .map_err(VmError::io("move the disk of", &overlay))?;
        }
        let spec = self.spec().clone();
        self.destroy().await?;
        Ok(spec)
    }

    /// Destroys and undefines the domain and removes the sandbox's files.
    ///
    /// # Errors
    /// libvirt refuses to undefine the domain, or a file cannot be removed.
    pub async fn destroy(mut self) -> Result<(), VmError> {
        let result = self.guest.discard().await;
        drop(self.backend.take());
        let released = self.exports.release();
        result.and(released)
    }

    /// [`VmError::SharesPreventSnapshot`] when the sandbox has shared
    /// folders: QEMU cannot save or snapshot a guest with a virtiofs device
    /// (and a snapshot would not hold the host directory's state anyway).
    fn refuse_snapshot_with_shares(&self) -> Result<(), VmError> {
        if self.spec().filesystems.is_empty() {
            Ok(())
        } else {
            Err(VmError::SharesPreventSnapshot {
                domain: self.name().to_owned(),
            })
        }
    }
}

/// A running `vhost-device-vsock`, killed on drop.
#[derive(Debug)]
struct BackendProcess(std::process::Child);

impl BackendProcess {
    /// Starts the backend for a sandbox in `dir`: QEMU connects to
    /// `dir/vhost-user.sock`, the host to `dir/agent.sock`. QEMU runs as
    /// another user: both sockets are created with umask 117 (mode 0660)
    /// in the set-group-ID directory, so they belong to QEMU's group and to
    /// no one else.
    async fn start(program: &Path, dir: &Path) -> Result<Self, VmError> {
        let failed = |problem: String| VmError::VsockBackend {
            program: program.to_owned(),
            problem,
        };
        let vhost = dir.join("vhost-user.sock");
        let spec = format!(
            "guest-cid={HYBRID_GUEST_CID},socket={},uds-path={}",
            vhost.display(),
            dir.join("agent.sock").display()
        );
        let child = std::process::Command::new("/bin/sh")
            .args(["-c", "umask 117; exec \"$0\" \"$@\""])
            .arg(program)
            .args(["--vm", &spec])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| failed(e.to_string()))?;
        let mut backend = Self(child);
        let deadline = Instant::now() + BACKEND_START_TIMEOUT;
        while !vhost.exists() {
            if let Ok(Some(status)) = backend.0.try_wait() {
                return Err(failed(format!("it exited: {status}")));
            }
            if Instant::now() > deadline {
                return Err(failed(format!(
                    "no socket {} after {BACKEND_START_TIMEOUT:?}",
                    vhost.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(backend)
    }
}

impl Drop for BackendProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Removes a half-created sandbox's domain on early return.
struct DomainGuard(Option<Vm>);

impl Drop for DomainGuard {
    fn drop(&mut self) {
        if self.0.is_some() {
            discard_on_thread(self.0.take(), None);
        }
    }
}

/// Removes a half-created sandbox's directory on early return.
struct FilesGuard(Option<PathBuf>);

impl Drop for FilesGuard {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Creates the state root and the sandbox's directory as QEMU's group's,
/// closed to others ([`super::files`]); an existing state root is given
/// that group and mode too.
fn prepare_dirs(root: &Path, dir: &Path, group: &QemuGroup) -> Result<(), VmError> {
    create_qemu_dir(root, group)?;
    create_qemu_dir(dir, group)
}

/// A blank qcow2 base of `mib` MiB and an overlay on it, in `dir`: the
/// overlay is the guest's disk and holds internal snapshots.
async fn state_disk(dir: &Path, mib: u64) -> Result<OverlayDisk, VmError> {
    let base = dir.join("base.qcow2");
    create_blank_qcow2(&base, mib).await?;
    let disk = OverlayDisk {
        overlay: dir.join("overlay.qcow2"),
        base,
        base_format: ImageFormat::Qcow2,
    };
    create_overlay(&disk).await?;
    Ok(disk)
}

/// The boot's phases: the guest's marks from its console and one STATUS
/// that places the guest's clock on the host's (see [`super::boot_phases`]).
/// A STATUS that fails (a gate that denies it) leaves the guest's phases
/// out instead of failing the boot.
async fn measure_boot_phases(
    client: &AgentClient,
    spec: &DomainSpec,
    start_call: Duration,
    boot_to_ready: Duration,
) -> BootPhases {
    let asked = Instant::now();
    let status = client.status().await.ok();
    // The guest read its uptime about half a round trip before the reply,
    // so half a round trip after the agent was ready.
    let since_ready = asked.elapsed() / 2;
    let uptime = |seconds: f64| {
        Duration::try_from_secs_f64(seconds)
            .ok()
            .map(|uptime| uptime.saturating_sub(since_ready))
    };
    let host = HostTimes {
        start_call,
        ready: boot_to_ready,
        guest_uptime_at_ready: status.as_ref().and_then(|s| uptime(s.system_uptime_s)),
        agent_uptime_at_ready: status
            .as_ref()
            .map(|s| Duration::from_millis(s.uptime_ms).saturating_sub(since_ready)),
    };
    let console = spec.console_log.clone();
    let marks = tokio::task::spawn_blocking(move || GuestMarks::read_console(&console))
        .await
        .ok()
        .flatten();
    BootPhases::new(host, marks)
}
