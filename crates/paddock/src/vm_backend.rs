//! Real VMs as pool slots: a golden state captured once, slots restored from
//! it with their own names, UUIDs, sockets and disk overlays, and reset to it
//! after every lease.
//!
//! # The golden
//!
//! [`Golden::build`] boots a template sandbox from the image, runs the
//! warm-up commands, and captures it ([`Sandbox::capture`]): the memory to
//! `golden-<id>/memory.img`, the disk overlay frozen as
//! `golden-<id>/disk.qcow2`. Its identity is an id, the creation time and the
//! image's hash; every slot's domain metadata names it.
//!
//! # Slots
//!
//! Slot `n` is the domain `paddock-<pool>-<n>` with its files in
//! `<state root>/<pool>/slot-<n>/`: a copy of the golden memory image whose
//! header carries the slot's own domain XML
//! ([`Libvirt::restore_derived`]), a fresh overlay on the golden disk, the
//! agent socket and the console log. It is restored from that copy, then
//! reached through its agent.
//!
//! # Reset strategies
//!
//! - [`ResetStrategy::InPlace`] (the default): the running QEMU loads the
//!   internal snapshot taken when the slot was created (QEMU's `loadvm`,
//!   sent through libvirt's monitor pass-through). No process is stopped or
//!   started, so it is the fastest here.
//! - [`ResetStrategy::Restore`]: destroy the domain, put a fresh overlay in
//!   place, restore the slot's memory image into a new QEMU.
//! - [`ResetStrategy::Revert`]: libvirt's revert of that internal snapshot.
//!   libvirt 9.0 stops QEMU and starts a new one for it.
//!
//! `cargo xtask bench-slo` measures all three; the closing figures are in
//! the README.
//!
//! Either way the agent must then report a restored guest
//! ([`paddock_agent_client::Continuity::Restored`]), or the reset fails and the pool replaces the
//! slot.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use paddock_agent_client::{AgentClient, ClientConfig, Execute, Transport};
use paddock_libvirt::{
    AgentChannel, DomainSpec, ImageFormat, Libvirt, NatAttachment, NetworkMode, OverlayDisk,
    RestoreMode, SnapshotSpec, Uuid, Vm, create_blank_qcow2, create_overlay,
};

use crate::image::GuestImage;
use crate::pool::{PoolError, SlotBackend};
use crate::sandbox::{Sandbox, SandboxConfig, create_qemu_dir, reconnect_restored};
use crate::slot_network::{PoolNetwork, SlotAddresses, configure_guest};

/// How a used slot returns to the golden state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResetStrategy {
    /// Load the internal snapshot taken when the slot was made inside the
    /// running QEMU (the fastest here).
    #[default]
    InPlace,
    /// Restore the slot's copy of the golden memory image onto a fresh
    /// overlay, in a new QEMU.
    Restore,
    /// Revert the internal snapshot taken when the slot was made, through
    /// libvirt (which starts a new QEMU).
    Revert,
}

impl ResetStrategy {
    /// Whether slots keep an internal snapshot of the golden to reset to.
    fn uses_snapshot(self) -> bool {
        matches!(self, Self::InPlace | Self::Revert)
    }
}

/// The name of the internal snapshot [`ResetStrategy::InPlace`] and
/// [`ResetStrategy::Revert`] return to.
const GOLDEN_SNAPSHOT: &str = "golden";

/// What a pool of VMs is made of.
#[derive(Debug, Clone)]
pub struct VmPoolSpec {
    /// The pool's name: part of every domain name and in their metadata.
    pub name: String,
    /// Guest memory.
    pub memory_mib: u64,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Shell commands run in the template before the golden is captured;
    /// each must exit 0.
    pub warmup: Vec<String>,
    /// Shell commands run in every slot after it is made and after every
    /// reset, before it is ready; each must exit 0. Without them, the
    /// first command of a lease took 170-224 ms for `true` against 6-9 ms
    /// for the ones after it (`cargo xtask bench-slo`, TCG), most likely
    /// QEMU translating guest code again after the reset (a new QEMU has
    /// none translated; not confirmed for `loadvm`). Running one here moves
    /// that cost off the lease. Default: `true`; add what the jobs run
    /// first (an interpreter, a shell) to warm those paths too.
    pub rewarm: Vec<String>,
    /// How slots are reset.
    pub reset: ResetStrategy,
    /// The slots' network.
    pub network: PoolNetwork,
    /// How long a booting template may take to answer.
    pub boot_timeout: Duration,
    /// The agent client's timeouts and limits.
    pub client: ClientConfig,
}

impl VmPoolSpec {
    /// A pool named `name` of 1-vCPU, 256 MiB guests without network or
    /// warm-up, reset in place.
    #[must_use]
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            memory_mib: 256,
            vcpus: 1,
            warmup: Vec::new(),
            rewarm: vec!["true".into()],
            reset: ResetStrategy::default(),
            network: PoolNetwork::Isolated,
            boot_timeout: Duration::from_secs(90),
            client: ClientConfig::default(),
        }
    }
}

/// Who the golden state is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoldenId {
    /// A random id.
    pub id: String,
    /// When it was captured (Unix seconds).
    pub created_unix: u64,
    /// The hash of the image it was booted from.
    pub image_hash: String,
}

/// A captured golden state.
#[derive(Debug, Clone)]
pub struct Golden {
    /// Its identity.
    pub id: GoldenId,
    /// The saved memory image.
    pub memory: PathBuf,
    /// The frozen disk (a qcow2 that slot overlays sit on).
    pub disk: PathBuf,
    /// The template's domain spec; slots change only names and paths.
    pub spec: DomainSpec,
    /// How long the template took from start to agent ready.
    pub boot_to_ready: Duration,
}

impl Golden {
    /// Boots a template from `image` under `pool_dir`, runs the warm-up
    /// commands and captures it.
    ///
    /// # Errors
    /// The template does not boot, a warm-up command fails, or the capture
    /// fails.
    pub async fn build(
        libvirt: &Libvirt,
        image: &GuestImage,
        spec: &VmPoolSpec,
        pool_dir: &Path,
    ) -> Result<Self, PoolError> {
        let id = Uuid::new_v4().simple().to_string();
        let short = &id[..8];
        let dir = pool_dir.join(format!("golden-{short}"));
        create_qemu_dir(&dir)?;
        let blank = pool_dir.join("blank.qcow2");
        if image.root_disk.is_none() && !blank.exists() {
            create_blank_qcow2(&blank, 64).await?;
        }
        let mut config = SandboxConfig::new(format!("paddock-{}-golden-{short}", spec.name));
        config.state_root = pool_dir.to_path_buf();
        config.pool = spec.name.clone();
        config.slot = u32::MAX;
        config.memory_mib = spec.memory_mib;
        config.vcpus = spec.vcpus;
        config.ready_timeout = spec.boot_timeout;
        config.client = spec.client.clone();
        config.base_disk = image.root_disk.clone().or(Some(blank));
        let identity = spec.network.addresses()?.map(|a| a.golden());
        if let Some(attachment) = &identity {
            config.network = NetworkMode::NatFiltered(attachment.clone());
        }
        let template = Sandbox::boot(libvirt, image, config).await?;
        let boot_to_ready = template.boot_to_ready();
        if let Some(attachment) = &identity {
            // Static from here on: every slot replaces it with its own.
            configure_guest(template.client(), attachment, true).await?;
        }
        run_commands(template.client(), &spec.warmup, "warm-up").await?;
        let memory = dir.join("memory.img");
        let disk = dir.join("disk.qcow2");
        let template_spec = template.capture(&memory, &disk).await?;
        Ok(Self {
            id: GoldenId {
                id,
                created_unix: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                image_hash: image.hash.clone(),
            },
            memory,
            disk,
            spec: template_spec,
            boot_to_ready,
        })
    }
}

/// A VM slot: the domain and its connected agent.
#[derive(Debug)]
pub struct VmSlot {
    vm: Vm,
    client: AgentClient,
    spec: DomainSpec,
    dir: PathBuf,
    /// The network reservation it holds, and its interface.
    address: Option<(u16, NatAttachment)>,
    last_reset: ResetPhases,
    /// Set once the domain and files are gone; until then a drop removes
    /// them (a slot dropped by a runtime shutting down mid-reset).
    discarded: bool,
}

impl Drop for VmSlot {
    fn drop(&mut self) {
        if !self.discarded {
            crate::sandbox::discard_blocking(Some(self.vm.clone()), Some(self.dir.clone()));
        }
    }
}

/// Where the time of a slot's last reset went (zero for phases its
/// strategy does not have).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResetPhases {
    /// Destroying the used domain (restore), reverting the snapshot
    /// (revert) or loading it (in place).
    pub stop_or_revert: Duration,
    /// Replacing the disk overlay with a fresh one.
    pub overlay: Duration,
    /// libvirt's restore of the slot's memory image.
    pub restore: Duration,
    /// Reconnecting the agent and checking it reports a restored guest.
    pub agent: Duration,
    /// Giving the guest the slot's MAC and address again (NAT-filtered
    /// pools reset by restore).
    pub network: Duration,
    /// The [`VmPoolSpec::rewarm`] commands.
    pub rewarm: Duration,
}

impl VmSlot {
    /// The agent client: exec, files, status.
    #[must_use]
    pub fn client(&self) -> &AgentClient {
        &self.client
    }

    /// The libvirt domain.
    #[must_use]
    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    /// The domain's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The slot's directory on the host.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the time of the slot's last reset went.
    #[must_use]
    pub fn last_reset(&self) -> ResetPhases {
        self.last_reset
    }

    /// The slot's network interface (MAC, address, gateway), for a
    /// NAT-filtered pool.
    #[must_use]
    pub fn network(&self) -> Option<&NatAttachment> {
        self.address.as_ref().map(|(_, attachment)| attachment)
    }
}

/// The [`SlotBackend`] of real VMs.
#[derive(Debug)]
pub struct VmBackend {
    libvirt: Libvirt,
    golden: Golden,
    spec: VmPoolSpec,
    pool_dir: PathBuf,
    addresses: Option<SlotAddresses>,
}

impl VmBackend {
    /// A backend for `spec`'s pool that makes slots from `golden` under
    /// `pool_dir`.
    ///
    /// # Errors
    /// [`PoolError::Config`] for a NAT-filtered pool whose network has no
    /// reservation left for a slot.
    pub fn new(
        libvirt: Libvirt,
        golden: Golden,
        spec: VmPoolSpec,
        pool_dir: PathBuf,
    ) -> Result<Self, PoolError> {
        let addresses = spec.network.addresses()?;
        Ok(Self {
            libvirt,
            golden,
            spec,
            pool_dir,
            addresses,
        })
    }

    /// The golden the slots come from.
    #[must_use]
    pub fn golden(&self) -> &Golden {
        &self.golden
    }

    /// The pool's directory: its golden, its slots, the blank base disk.
    #[must_use]
    pub fn pool_dir(&self) -> &Path {
        &self.pool_dir
    }

    fn slot_spec(&self, index: u32, dir: &Path, network: Option<&NatAttachment>) -> DomainSpec {
        let mut spec = self.golden.spec.clone();
        if let Some(attachment) = network {
            spec.network = NetworkMode::NatFiltered(attachment.clone());
        }
        spec.name = slot_name(&self.spec.name, index);
        spec.uuid = Uuid::new_v4();
        spec.metadata.slot = index;
        spec.metadata.golden = Some(self.golden.id.id.clone());
        spec.metadata.created_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        spec.console_log = dir.join("console.log");
        if let AgentChannel::VirtioSerial { socket, .. } = &mut spec.channel {
            *socket = dir.join("agent.sock");
        }
        spec.disk = Some(OverlayDisk {
            overlay: dir.join("overlay.qcow2"),
            base: self.golden.disk.clone(),
            base_format: ImageFormat::Qcow2,
        });
        spec
    }
}

impl VmBackend {
    fn give_back(&self, address: Option<&(u16, NatAttachment)>) {
        if let (Some(addresses), Some((n, _))) = (&self.addresses, address) {
            addresses.give_back(*n);
        }
    }
}

fn slot_name(pool: &str, index: u32) -> String {
    format!("paddock-{pool}-{index}")
}

impl SlotBackend for VmBackend {
    type Slot = VmSlot;

    async fn create(&self, index: u32) -> Result<VmSlot, PoolError> {
        let address = self
            .addresses
            .as_ref()
            .map(SlotAddresses::take)
            .transpose()?;
        let dir = self.pool_dir.join(format!("slot-{index}"));
        let spec = self.slot_spec(index, &dir, address.as_ref().map(|(_, a)| a));
        let result = async {
            create_qemu_dir(&dir)?;
            if let Some(disk) = &spec.disk {
                create_overlay(disk).await?;
            }
            let vm = self
                .libvirt
                .restore_derived(
                    &self.golden.memory,
                    &spec,
                    &dir.join("memory.img"),
                    RestoreMode::Running,
                )
                .await?;
            let client = AgentClient::connect(
                Transport::VirtioSerial {
                    path: dir.join("agent.sock"),
                },
                self.spec.client.clone(),
            )
            .await?;
            if let Some((_, attachment)) = &address {
                // Before the snapshot, so that resets to it keep the
                // slot's identity.
                configure_guest(&client, attachment, false).await?;
            }
            if self.spec.reset.uses_snapshot() {
                vm.create_snapshot(&SnapshotSpec {
                    name: GOLDEN_SNAPSHOT.into(),
                    description: format!("golden {}", self.golden.id.id),
                    tags: vec!["golden".into()],
                })
                .await?;
                // A new session after the snapshot, so that a reset shows
                // as a restored guest.
                client.reconnect().await?;
                // The snapshot holds the memory from now on; the slot's
                // copy of the golden memory image is no longer read.
                let copy = dir.join("memory.img");
                tokio::fs::remove_file(&copy)
                    .await
                    .map_err(|source| PoolError::Io {
                        action: "remove",
                        path: copy,
                        source,
                    })?;
            }
            run_commands(&client, &self.spec.rewarm, "rewarm").await?;
            Ok::<_, PoolError>((vm, client))
        }
        .await;
        match result {
            Ok((vm, client)) => Ok(VmSlot {
                vm,
                client,
                spec,
                dir,
                address,
                last_reset: ResetPhases::default(),
                discarded: false,
            }),
            Err(err) => {
                discard(&self.libvirt, &spec.name, &dir).await;
                self.give_back(address.as_ref());
                Err(err)
            }
        }
    }

    async fn reset(&self, slot: &mut VmSlot) -> Result<(), PoolError> {
        let mut phases = ResetPhases::default();
        let mut clock = Instant::now();
        let mut lap = || {
            let now = Instant::now();
            std::mem::replace(&mut clock, now).elapsed()
        };
        match self.spec.reset {
            ResetStrategy::Restore => {
                slot.client.close().await;
                // Not running (it crashed, or was destroyed) is fine.
                let _ = slot.vm.destroy().await;
                phases.stop_or_revert = lap();
                if let Some(disk) = &slot.spec.disk {
                    create_overlay(disk).await?;
                }
                phases.overlay = lap();
                self.libvirt
                    .restore(&slot.dir.join("memory.img"), None, RestoreMode::Running)
                    .await?;
                slot.vm = self.libvirt.lookup(&slot.spec.name).await?;
                phases.restore = lap();
            }
            ResetStrategy::Revert => {
                slot.vm.revert_to_snapshot(GOLDEN_SNAPSHOT).await?;
                phases.stop_or_revert = lap();
            }
            ResetStrategy::InPlace => {
                // Nothing may be in flight while the guest is rewound.
                slot.client.close().await;
                slot.vm.load_snapshot_in_place(GOLDEN_SNAPSHOT).await?;
                phases.stop_or_revert = lap();
            }
        }
        let strategy = self.spec.reset;
        reconnect_restored(&slot.client, || format!("a {strategy:?} reset")).await?;
        phases.agent = lap();
        if let (ResetStrategy::Restore, Some((_, attachment))) = (strategy, &slot.address) {
            // The restored guest is the golden again, identity included;
            // snapshots were taken with the slot's own.
            configure_guest(&slot.client, attachment, false).await?;
            phases.network = lap();
        }
        run_commands(&slot.client, &self.spec.rewarm, "rewarm").await?;
        phases.rewarm = lap();
        slot.last_reset = phases;
        Ok(())
    }

    async fn check(&self, slot: &VmSlot) -> Result<(), PoolError> {
        slot.client.ping().await?;
        Ok(())
    }

    async fn destroy(&self, mut slot: VmSlot) -> Result<(), PoolError> {
        slot.client.close().await;
        let result = slot.vm.discard().await;
        let _ = tokio::fs::remove_dir_all(&slot.dir).await;
        // A domain libvirt could not remove is tried again at the drop.
        slot.discarded = result.is_ok();
        // Only once the domain is gone: its interface held the address.
        self.give_back(slot.address.as_ref());
        Ok(result?)
    }

    fn discard_blocking(&self, mut slot: VmSlot) {
        let _ = slot.vm.discard_blocking();
        let _ = std::fs::remove_dir_all(&slot.dir);
        slot.discarded = true;
        self.give_back(slot.address.as_ref());
    }

    async fn recover(&self) -> Result<usize, PoolError> {
        recover_pool(
            &self.libvirt,
            &self.spec.name,
            &self.pool_dir,
            self.golden.memory.parent(),
        )
        .await
    }
}

/// Runs shell `commands` in order through `client`; each must exit 0.
async fn run_commands(
    client: &AgentClient,
    commands: &[String],
    what: &str,
) -> Result<(), PoolError> {
    for command in commands {
        let out = client.exec_collect(Execute::shell(command.clone())).await?;
        if out.result.exit_code != Some(0) {
            return Err(PoolError::Slot(format!(
                "{what} command {command:?} failed ({:?}): {}",
                out.result.exit_code,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    Ok(())
}

/// Destroys every domain of pool `pool` (slots and golden templates, found
/// by their Paddock metadata) and removes the slot and golden directories
/// under `pool_dir`, except `keep`. Returns how many domains it destroyed.
///
/// # Errors
/// libvirt cannot list the domains.
pub async fn recover_pool(
    libvirt: &Libvirt,
    pool: &str,
    pool_dir: &Path,
    keep: Option<&Path>,
) -> Result<usize, PoolError> {
    let mut removed = 0;
    for (vm, metadata) in libvirt.paddock_domains().await? {
        if metadata.pool == pool {
            match vm.discard().await {
                Ok(()) => removed += 1,
                Err(err) => {
                    tracing::warn!(domain = vm.name(), error = %err, "could not remove a leftover domain")
                }
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(pool_dir) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let ours = name.starts_with("slot-")
                || name.starts_with("golden-")
                || name.starts_with("paddock-");
            if ours && keep != Some(entry.path().as_path()) {
                let _ = tokio::fs::remove_dir_all(entry.path()).await;
            }
        }
    }
    Ok(removed)
}

/// Destroys a slot's domain, if it exists, and removes its files. Best
/// effort: it runs on failure paths.
async fn discard(libvirt: &Libvirt, name: &str, dir: &Path) {
    if let Ok(vm) = libvirt.lookup(name).await {
        let _ = vm.discard().await;
    }
    let _ = tokio::fs::remove_dir_all(dir).await;
}

/// Removes a golden's files (its `golden-<id>/` directory).
///
/// # Errors
/// A file cannot be removed.
pub async fn remove_golden(golden: &Golden) -> Result<(), PoolError> {
    if let Some(dir) = golden.memory.parent() {
        tokio::fs::remove_dir_all(dir)
            .await
            .map_err(|source| PoolError::Io {
                action: "remove",
                path: dir.to_path_buf(),
                source,
            })?;
    }
    Ok(())
}
