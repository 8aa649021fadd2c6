//! Real VMs as pool slots: a golden state captured once, slots restored from
//! it with their own names, UUIDs, sockets and disk overlays, and reset to it
//! after every lease.
//!
//! # The golden
//!
//! [`Golden::build`] boots a template sandbox from the image, runs the
//! warm-up commands, and captures it ([`crate::Sandbox::capture`]): the
//! memory to `golden-<id>/memory.img`, the disk overlay frozen as
//! `golden-<id>/disk.qcow2` (see [`super::golden`]). Its identity is an id,
//! the creation time and the image's hash; every slot's domain metadata
//! names it.
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
    AgentChannel, DomainRole, DomainSpec, ImageFormat, Libvirt, NatAttachment, NetworkMode,
    OverlayDisk, RestoreMode, SnapshotSpec, Uuid, create_overlay,
};

use super::VmError;
use super::golden::Golden;
use super::guest::{Guest, create_qemu_dir};
use super::network::{PoolNetwork, SlotAddresses, configure_guest};
use crate::pool::{Pool, SlotBackend};

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

/// A VM slot: a [`Guest`] restored from the golden, and what the pool
/// keeps of it. It dereferences to its guest: client, domain, name,
/// directory.
#[derive(Debug)]
pub struct VmSlot {
    guest: Guest,
    /// The network reservation it holds, and its interface.
    address: Option<(u16, NatAttachment)>,
    last_reset: ResetPhases,
}

impl std::ops::Deref for VmSlot {
    type Target = Guest;

    fn deref(&self) -> &Guest {
        &self.guest
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
    /// `pool_dir`, with `addresses` for a NAT-filtered pool.
    pub(crate) fn new(
        libvirt: Libvirt,
        golden: Golden,
        spec: VmPoolSpec,
        pool_dir: PathBuf,
        addresses: Option<SlotAddresses>,
    ) -> Self {
        Self {
            libvirt,
            golden,
            spec,
            pool_dir,
            addresses,
        }
    }

    /// The golden the slots come from.
    #[must_use]
    pub fn golden(&self) -> &Golden {
        &self.golden
    }

    /// The pool's specification.
    #[must_use]
    pub fn spec(&self) -> &VmPoolSpec {
        &self.spec
    }

    /// The pool's directory: its golden and its slots.
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
        spec.metadata.role = DomainRole::Slot(index);
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

    fn give_back(&self, address: Option<&(u16, NatAttachment)>) {
        if let (Some(addresses), Some((n, _))) = (&self.addresses, address) {
            addresses.give_back(*n);
        }
    }

    /// Restores a slot from the golden into `dir` and connects its agent,
    /// then [`VmBackend::prepare`]s it. A failure after the restore
    /// discards the guest.
    async fn make_slot(
        &self,
        spec: &DomainSpec,
        dir: &Path,
        address: Option<&NatAttachment>,
    ) -> Result<Guest, VmError> {
        create_qemu_dir(dir)?;
        if let Some(disk) = &spec.disk {
            create_overlay(disk).await?;
        }
        let vm = self
            .libvirt
            .restore_derived(
                &self.golden.memory,
                spec,
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
        let mut guest = Guest::new(vm, client, spec.clone(), dir.to_path_buf());
        match self.prepare(&guest, address).await {
            Ok(()) => Ok(guest),
            Err(err) => {
                let _ = guest.discard().await;
                Err(err)
            }
        }
    }

    /// Gives a new slot's guest its network identity, takes the snapshot
    /// resets return to, and runs the rewarm commands.
    async fn prepare(&self, guest: &Guest, address: Option<&NatAttachment>) -> Result<(), VmError> {
        if let Some(attachment) = address {
            // Before the snapshot, so that resets to it keep the slot's
            // identity.
            configure_guest(guest.client(), attachment, false).await?;
        }
        if self.spec.reset.uses_snapshot() {
            guest
                .vm()
                .create_snapshot(&SnapshotSpec {
                    name: GOLDEN_SNAPSHOT.into(),
                    description: format!("golden {}", self.golden.id.id),
                    tags: vec!["golden".into()],
                })
                .await?;
            // A new session after the snapshot, so that a reset shows as a
            // restored guest.
            guest.client().reconnect().await?;
            // The snapshot holds the memory from now on; the slot's copy of
            // the golden memory image is no longer read.
            let copy = guest.dir().join("memory.img");
            tokio::fs::remove_file(&copy)
                .await
                .map_err(VmError::io("remove", &copy))?;
        }
        run_commands(guest.client(), &self.spec.rewarm, "rewarm").await
    }
}

fn slot_name(pool: &str, index: u32) -> String {
    format!("paddock-{pool}-{index}")
}

impl SlotBackend for VmBackend {
    type Slot = VmSlot;
    type Error = VmError;

    async fn create(&self, index: u32) -> Result<VmSlot, VmError> {
        let address = self
            .addresses
            .as_ref()
            .map(SlotAddresses::take)
            .transpose()?;
        let dir = self.pool_dir.join(format!("slot-{index}"));
        let spec = self.slot_spec(index, &dir, address.as_ref().map(|(_, a)| a));
        match self
            .make_slot(&spec, &dir, address.as_ref().map(|(_, a)| a))
            .await
        {
            Ok(guest) => Ok(VmSlot {
                guest,
                address,
                last_reset: ResetPhases::default(),
            }),
            Err(err) => {
                // A guest discarded itself; this covers a domain restored
                // before its agent answered, and the files of any failure.
                if let Ok(vm) = self.libvirt.lookup(&spec.name).await {
                    let _ = vm.discard().await;
                }
                let _ = tokio::fs::remove_dir_all(&dir).await;
                self.give_back(address.as_ref());
                Err(err)
            }
        }
    }

    async fn reset(&self, slot: &mut VmSlot) -> Result<(), VmError> {
        let mut phases = ResetPhases::default();
        let mut clock = Instant::now();
        let mut lap = || {
            let now = Instant::now();
            std::mem::replace(&mut clock, now).elapsed()
        };
        let strategy = self.spec.reset;
        match strategy {
            ResetStrategy::Restore => {
                slot.client().close().await;
                // Not running (it crashed, or was destroyed) is fine.
                let _ = slot.vm().destroy().await;
                phases.stop_or_revert = lap();
                if let Some(disk) = &slot.spec().disk {
                    create_overlay(disk).await?;
                }
                phases.overlay = lap();
                self.libvirt
                    .restore(&slot.dir().join("memory.img"), None, RestoreMode::Running)
                    .await?;
                let vm = self.libvirt.lookup(slot.name()).await?;
                slot.guest.replace_vm(vm);
                phases.restore = lap();
            }
            ResetStrategy::Revert => {
                slot.vm().revert_to_snapshot(GOLDEN_SNAPSHOT).await?;
                phases.stop_or_revert = lap();
            }
            ResetStrategy::InPlace => {
                // Nothing may be in flight while the guest is rewound.
                slot.client().close().await;
                slot.vm().load_snapshot_in_place(GOLDEN_SNAPSHOT).await?;
                phases.stop_or_revert = lap();
            }
        }
        slot.guest
            .reconnect_restored(|| format!("a {strategy:?} reset"))
            .await?;
        phases.agent = lap();
        if let (ResetStrategy::Restore, Some((_, attachment))) = (strategy, &slot.address) {
            // The restored guest is the golden again, identity included;
            // snapshots were taken with the slot's own.
            configure_guest(slot.client(), attachment, false).await?;
            phases.network = lap();
        }
        run_commands(slot.client(), &self.spec.rewarm, "rewarm").await?;
        phases.rewarm = lap();
        slot.last_reset = phases;
        Ok(())
    }

    async fn check(&self, slot: &VmSlot) -> Result<(), VmError> {
        slot.client().ping().await?;
        Ok(())
    }

    async fn destroy(&self, mut slot: VmSlot) -> Result<(), VmError> {
        let result = slot.guest.discard().await;
        // Only once the domain is gone: its interface held the address.
        self.give_back(slot.address.as_ref());
        result
    }

    fn discard_blocking(&self, mut slot: VmSlot) {
        slot.guest.discard_blocking();
        self.give_back(slot.address.as_ref());
    }
}

impl Pool<VmBackend> {
    /// Shuts the pool down ([`Pool::shutdown`]) and removes its files: the
    /// golden's, and the pool's directory once empty.
    ///
    /// # Errors
    /// A golden file cannot be removed.
    pub async fn close(&self) -> Result<(), VmError> {
        self.shutdown().await;
        self.backend().golden().remove().await?;
        // Only if empty: anything else there is not the pool's.
        let _ = tokio::fs::remove_dir(self.backend().pool_dir()).await;
        Ok(())
    }
}

/// Runs shell `commands` in order through `client`; each must exit 0.
pub(crate) async fn run_commands(
    client: &AgentClient,
    commands: &[String],
    what: &'static str,
) -> Result<(), VmError> {
    for command in commands {
        let out = client.exec_collect(Execute::shell(command.clone())).await?;
        if out.result.exit_code != Some(0) {
            return Err(VmError::CommandFailed {
                purpose: what,
                command: command.clone(),
                exit_code: out.result.exit_code,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
    }
    Ok(())
}
