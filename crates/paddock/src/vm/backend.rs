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
//! reached through its agent. The directory and its files are closed to
//! everyone but root and QEMU's group ([`super::files`]).
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
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use paddock_agent_client::{AgentClient, ClientConfig, Execute, RequestGate, Transport};
use paddock_events::{Emitter, EventKind};
use paddock_image::GuestImage;
use paddock_libvirt::{
    AgentChannel, DacLabel, DomainRole, DomainSpec, ImageFormat, Libvirt, NatAttachment,
    NetworkMode, OverlayDisk, RestoreMode, SharedFolder, SnapshotSpec, Tuning, Uuid,
    create_overlay,
};

use super::VmError;
use super::error::check_socket_path;
use super::files::{QemuGroup, create_qemu_dir};
use super::firewall::HostFirewall;
use super::golden::Golden;
use super::guest::Guest;
use super::network::{PoolNetwork, SlotAddresses, configure_guest};
use super::recover::Leftovers;
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
    /// The pool's name: part of every domain name, directory and socket
    /// path, and in their metadata. It must follow the naming rule
    /// ([`crate::names`]: 1 to 20 of `a-z`, `0-9`, `-`, `_`, starting with
    /// a letter or digit); [`crate::Paddock::create_pool`] refuses it
    /// otherwise.
    pub name: String,
    /// Guest memory.
    pub memory_mib: u64,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// The limits on each slot's QEMU (CPU, memory, threads); `None`: the
    /// defaults for `vcpus` and `memory_mib`
    /// ([`paddock_libvirt::Profile::tuning`]). libvirt applies the CPU
    /// limits; the memory and thread limits are written into the slot's
    /// cgroups after each new QEMU (creation, `Restore` and `Revert`
    /// resets), before the slot is ready.
    pub tuning: Option<Tuning>,
    /// The host user and group the pool's QEMUs run as instead of
    /// libvirt's (`libvirt-qemu`), so that a QEMU broken into reaches
    /// neither other pools' disks nor their QEMUs; `None` (the default)
    /// keeps libvirt's. See [`DacLabel`] for what the host needs.
    pub run_as: Option<DacLabel>,
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
    /// first (an interpreter, a shell) to warm those paths too. After an
    /// in-place or revert reset they are also the round trip that checks
    /// the agent's new session stands, and run again on a new session if
    /// the agent refused them as `not_negotiated`: they must be safe to
    /// repeat.
    pub rewarm: Vec<String>,
    /// How slots are reset.
    pub reset: ResetStrategy,
    /// The slots' network.
    pub network: PoolNetwork,
    /// How long a booting template may take to answer.
    pub boot_timeout: Duration,
    /// The agent client's timeouts and limits.
    pub client: ClientConfig,
    /// Always empty: slots are snapshots of a golden, and QEMU cannot save
    /// or snapshot a guest with a shared folder, so
    /// [`crate::Paddock::create_pool`] refuses a spec with any
    /// ([`VmError::SharesInPool`]) before it makes anything. Shared folders
    /// are for single sandboxes ([`super::SandboxConfig::shared_folders`]).
    pub shared_folders: Vec<SharedFolder>,
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
            tuning: None,
            run_as: None,
            warmup: Vec::new(),
            rewarm: vec!["true".into()],
            reset: ResetStrategy::default(),
            network: PoolNetwork::Isolated,
            boot_timeout: Duration::from_secs(90),
            client: ClientConfig::default(),
            shared_folders: Vec::new(),
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
    /// Its number in the pool.
    index: u32,
    address: Option<(u16, NatAttachment)>,
    last_reset: ResetPhases,
    /// The slot's events (its agent client's too).
    events: Emitter,
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
    /// Finer splits of the phases above (each part of one of them).
    pub detail: ResetDetail,
}

/// Where the time inside [`ResetPhases::agent`] and
/// [`ResetPhases::rewarm`] went: the host's wait for the restored agent
/// against the guest's own work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResetDetail {
    /// The new session: connecting to the agent's socket (with its retries)
    /// and the HELLO round trip.
    pub agent_hello: Duration,
    /// The STATUS round trip that checks the new session still stands.
    pub agent_settle: Duration,
    /// The rewarm commands' processes in the guest, spawn to exit, as the
    /// agent measured them; the rest of [`ResetPhases::rewarm`] is the
    /// round trips and the agent's work around them.
    pub rewarm_guest: Duration,
}

impl ResetPhases {
    /// The phases that took time, by name, in the order they ran.
    #[must_use]
    pub fn phases(&self) -> Vec<(&'static str, Duration)> {
        [
            ("stop_or_revert", self.stop_or_revert),
            ("overlay", self.overlay),
            ("restore", self.restore),
            ("agent", self.agent),
            ("network", self.network),
            ("rewarm", self.rewarm),
        ]
        .into_iter()
        .filter(|(_, took)| !took.is_zero())
        .collect()
    }
}

impl ResetStrategy {
    /// A stable name (`in_place`, `restore`, `revert`), for metrics labels.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::InPlace => "in_place",
            Self::Restore => "restore",
            Self::Revert => "revert",
        }
    }
}

/// One slot's resource figures ([`Pool::slot_resources`]).
#[derive(Debug, Clone)]
pub struct SlotSample {
    /// The slot's number.
    pub index: u32,
    /// Its event source: pool, slot, domain, and the lease it is on.
    pub source: paddock_events::Source,
    /// Its virtual CPUs.
    pub vcpus: u32,
    /// CPU seconds, memory, block and network bytes, from libvirt.
    pub resources: paddock_metrics::SlotResources,
}

/// Emits that `golden` was built (in `took`) and that the pool uses it.
pub(crate) fn golden_events(
    events: &Emitter,
    golden: &Golden,
    strategy: ResetStrategy,
    took: Duration,
) {
    events.emit(|| EventKind::GoldenBuilt {
        golden_id: golden.id.id.clone(),
        duration: took,
    });
    events.emit(|| EventKind::PoolCreated {
        golden_id: golden.id.id.clone(),
        image_hash: golden.id.image_hash.clone(),
        strategy: strategy.name(),
    });
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
    /// The image goldens are built from (a rebuild may change it).
    image: RwLock<GuestImage>,
    /// The warm-up commands goldens are built with (a rebuild may change
    /// them).
    warmup: RwLock<Vec<String>>,
    /// The golden slots are made from; replaced when its files vanish or
    /// on [`Pool::rebuild_golden`].
    golden: RwLock<Arc<Golden>>,
    /// Goldens replaced by a rebuild whose slots are not all gone yet:
    /// their files go with their last slot.
    retired: std::sync::Mutex<Vec<Arc<Golden>>>,
    /// The golden each live slot was made from, by index.
    slot_goldens: std::sync::Mutex<std::collections::HashMap<u32, String>>,
    /// Held while the golden is rebuilt, so that it is rebuilt once.
    rebuilding: tokio::sync::Mutex<()>,
    spec: VmPoolSpec,
    pool_dir: PathBuf,
    /// QEMU's group, which gets the slots' directories and files.
    group: QemuGroup,
    addresses: Option<SlotAddresses>,
    /// Domains and directories whose removal failed, tried again later.
    leftovers: Leftovers,
    /// The pool's events; each slot's emitter derives from it.
    events: Emitter,
    /// The per-lease rate limits, the gate of every slot's agent client.
    gate: Arc<crate::LeaseGate>,
    /// The agent client of every live slot, by index: how a lease is
    /// ended from outside it ([`SlotBackend::end_lease`]).
    clients: std::sync::Mutex<std::collections::HashMap<u32, AgentClient>>,
}

impl VmBackend {
    /// A backend for `spec`'s pool that makes slots from `golden` (built
    /// from `image`) under `pool_dir`, their files QEMU's `group`'s, with
    /// `addresses` for a NAT-filtered pool, emitting its events through the
    /// first of the last pair and gating its slots' requests through the
    /// second.
    pub(crate) fn new(
        libvirt: Libvirt,
        image: GuestImage,
        golden: Golden,
        spec: VmPoolSpec,
        (pool_dir, group): (PathBuf, QemuGroup),
        addresses: Option<SlotAddresses>,
        (events, gate): (Emitter, Arc<crate::LeaseGate>),
    ) -> Self {
        Self {
            libvirt,
            image: RwLock::new(image),
            warmup: RwLock::new(spec.warmup.clone()),
            golden: RwLock::new(Arc::new(golden)),
            retired: std::sync::Mutex::new(Vec::new()),
            slot_goldens: std::sync::Mutex::new(std::collections::HashMap::new()),
            rebuilding: tokio::sync::Mutex::new(()),
            spec,
            pool_dir,
            group,
            addresses,
            leftovers: Leftovers::default(),
            events,
            gate,
            clients: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    fn live_clients(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<u32, AgentClient>> {
        self.clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The golden slots are made from now.
    #[must_use]
    pub fn golden(&self) -> Arc<Golden> {
        Arc::clone(
            &self
                .golden
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
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

    /// The libvirt connection.
    #[must_use]
    pub fn libvirt(&self) -> &Libvirt {
        &self.libvirt
    }

    /// The golden to make a slot from: the current one if its files are
    /// all there, else a new one built from the image (never a slot from
    /// missing files).
    ///
    /// # Errors
    /// [`VmError::Image`] when the image's files are gone too, or why the
    /// new golden could not be built.
    async fn usable_golden(&self) -> Result<Arc<Golden>, VmError> {
        let golden = self.golden();
        if golden.missing_file().is_none() {
            return Ok(golden);
        }
        let _rebuilding = self.rebuilding.lock().await;
        let golden = self.golden();
        let Some(missing) = golden.missing_file() else {
            return Ok(golden);
        };
        tracing::warn!(
            pool = self.spec.name,
            missing = %missing.display(),
            "a file of the pool's golden is gone; building a new golden"
        );
        let rebuilt = self.build_golden().await?;
        // What is left of the old one goes; slots made from it keep their
        // open files until they are replaced.
        let _ = golden.remove().await;
        *self
            .golden
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::clone(&rebuilt);
        Ok(rebuilt)
    }

    /// Builds a new golden from the current image and warm-up, and emits
    /// it. The caller holds `rebuilding`.
    async fn build_golden(&self) -> Result<Arc<Golden>, VmError> {
        let image = self
            .image
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        image.check_files()?;
        let mut spec = self.spec.clone();
        spec.warmup = self
            .warmup
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let identity = self.addresses.as_ref().map(SlotAddresses::golden);
        let started = Instant::now();
        let built = Golden::build(
            &self.libvirt,
            &image,
            &spec,
            &self.pool_dir,
            identity.as_ref(),
            &self.group,
        )
        .await?;
        golden_events(&self.events, &built, self.spec.reset, started.elapsed());
        Ok(Arc::new(built))
    }

    /// Builds a new golden (from `image` and `warmup` where given, which
    /// stay for later goldens), and makes it the one new slots come from.
    /// The old one is retired: its files go with its last slot.
    async fn replace_golden(
        &self,
        image: Option<GuestImage>,
        warmup: Option<Vec<String>>,
    ) -> Result<Arc<Golden>, VmError> {
        let _rebuilding = self.rebuilding.lock().await;
        let old = (
            self.image
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
            self.warmup
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        );
        if let Some(image) = image {
            *self
                .image
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = image;
        }
        if let Some(warmup) = warmup {
            *self
                .warmup
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = warmup;
        }
        let built = match self.build_golden().await {
            Ok(built) => built,
            Err(err) => {
                // A recipe that does not build is not kept.
                *self
                    .image
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = old.0;
                *self
                    .warmup
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = old.1;
                return Err(err);
            }
        };
        let retired = std::mem::replace(
            &mut *self
                .golden
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            Arc::clone(&built),
        );
        self.retired
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(retired);
        self.remove_unused_retired().await;
        Ok(built)
    }

    /// The slots made from another golden than `golden_id`.
    fn slots_not_from(&self, golden_id: &str) -> Vec<u32> {
        self.slot_goldens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|(_, id)| id.as_str() != golden_id)
            .map(|(index, _)| *index)
            .collect()
    }

    /// Removes the files of retired goldens no live slot comes from.
    async fn remove_unused_retired(&self) {
        let unused: Vec<Arc<Golden>> = {
            let in_use: std::collections::HashSet<String> = self
                .slot_goldens
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .values()
                .cloned()
                .collect();
            let mut retired = self
                .retired
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let (unused, kept): (Vec<_>, Vec<_>) = retired
                .drain(..)
                .partition(|golden| !in_use.contains(&golden.id.id));
            *retired = kept;
            unused
        };
        for golden in unused {
            if let Err(err) = golden.remove().await {
                tracing::warn!(error = %err, golden = golden.id.id, "a retired golden's files could not be removed");
            }
        }
    }

    fn slot_spec(
        &self,
        golden: &Golden,
        index: u32,
        dir: &Path,
        network: Option<&NatAttachment>,
    ) -> DomainSpec {
        let mut spec = golden.spec.clone();
        if let Some(attachment) = network {
            spec.network = NetworkMode::NatFiltered(attachment.clone());
        }
        spec.name = slot_name(&self.spec.name, index);
        spec.uuid = Uuid::new_v4();
        spec.metadata.role = DomainRole::Slot(index);
        spec.metadata.golden = Some(golden.id.id.clone());
        spec.metadata.created_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        spec.console_log = dir.join("console.log");
        if let AgentChannel::VirtioSerial { socket, .. } = &mut spec.channel {
            *socket = dir.join("agent.sock");
        }
        spec.disk = Some(OverlayDisk {
            overlay: dir.join("overlay.qcow2"),
            base: golden.disk.clone(),
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
        golden: &Golden,
        spec: &DomainSpec,
        dir: &Path,
        address: Option<&NatAttachment>,
        events: &Emitter,
    ) -> Result<Guest, VmError> {
        create_qemu_dir(dir, &self.group)?;
        if let Some(disk) = &spec.disk {
            create_overlay(disk).await?;
            super::dac::hand_over(disk, spec.run_as).await?;
        }
        let vm = self
            .libvirt
            .restore_derived(
                &golden.memory,
                spec,
                &dir.join("memory.img"),
                RestoreMode::Running,
            )
            .await?;
        // Before the agent is reached: nothing of a lease runs unconfined.
        if let Err(err) = vm.confine(&spec.tuning).await {
            let _ = vm.discard().await;
            return Err(VmError::confine(&spec.name)(err));
        }
        super::files::restrict_sockets(dir)?;
        let client = AgentClient::connect(
            Transport::VirtioSerial {
                path: dir.join("agent.sock"),
            },
            ClientConfig {
                events: events.clone(),
                gate: Some(Arc::clone(&self.gate) as Arc<dyn RequestGate>),
                ..self.spec.client.clone()
            },
        )
        .await?;
        let mut guest = Guest::new(vm, client, spec.clone(), dir.to_path_buf());
        // Restored from the golden's memory: see `Guest::settle_session`.
        if let Err(err) = guest.settle_session().await {
            let _ = guest.discard().await;
            return Err(err);
        }
        // The agent is the golden's, which is what a restore reset brings
        // back.
        guest.mark_restore_point().await;
        match self.prepare(golden, &guest, address).await {
            Ok(()) => Ok(guest),
            Err(err) => {
                let _ = guest.discard().await;
                Err(err)
            }
        }
    }

    /// Gives a new slot's guest its network identity, takes the snapshot
    /// resets return to, and runs the rewarm commands.
    async fn prepare(
        &self,
        golden: &Golden,
        guest: &Guest,
        address: Option<&NatAttachment>,
    ) -> Result<(), VmError> {
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
                    description: format!("golden {}", golden.id.id),
                    tags: vec!["golden".into()],
                })
                .await?;
            // A new session after the snapshot, so that a reset shows as a
            // restored guest.
            guest.client().reconnect().await?;
            guest.mark_restore_point().await;
            // The snapshot holds the memory from now on; the slot's copy of
            // the golden memory image is no longer read.
            let copy = guest.dir().join("memory.img");
            tokio::fs::remove_file(&copy)
                .await
                .map_err(VmError::io("remove", &copy))?;
        }
        run_commands(guest.client(), &self.spec.rewarm, "rewarm").await
    }
    /// The reset's steps, each timed into the slot's [`ResetPhases`].
    async fn reset_phases(&self, slot: &mut VmSlot) -> Result<(), VmError> {
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
                    super::dac::hand_over(disk, slot.spec().run_as).await?;
                }
                phases.overlay = lap();
                self.libvirt
                    .restore(&slot.dir().join("memory.img"), None, RestoreMode::Running)
                    .await?;
                let vm = self.libvirt.lookup(slot.name()).await?;
                slot.guest.replace_vm(vm);
                slot.vm()
                    .confine(&slot.spec().tuning)
                    .await
                    .map_err(VmError::confine(slot.name()))?;
                phases.restore = lap();
            }
            ResetStrategy::Revert => {
                slot.vm().revert_to_snapshot(GOLDEN_SNAPSHOT).await?;
                // libvirt 9.0 reverts into a new QEMU.
                slot.vm()
                    .confine(&slot.spec().tuning)
                    .await
                    .map_err(VmError::confine(slot.name()))?;
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
            .open_restored_session(|| format!("a {strategy:?} reset"))
            .await?;
        phases.detail.agent_hello = lap();
        let rewarm = &self.spec.rewarm;
        // The first round trip of the new session tells whether it stands
        // (see `Guest::settle_session`). When the rewarm comes right after
        // the HELLO, it is that round trip, and the separate STATUS is
        // saved: `true` is safe to run again on a new session.
        let rewarm_settles = !rewarm.is_empty() && !matches!(strategy, ResetStrategy::Restore);
        if !rewarm_settles {
            slot.guest.settle_session().await?;
            phases.detail.agent_settle = lap();
        }
        phases.agent = phases.detail.agent_hello + phases.detail.agent_settle;
        if let (ResetStrategy::Restore, Some((_, attachment))) = (strategy, &slot.address) {
            // The restored guest is the golden again, identity included;
            // snapshots were taken with the slot's own.
            configure_guest(slot.client(), attachment, false).await?;
            phases.network = lap();
        }
        phases.detail.rewarm_guest = if rewarm_settles {
            slot.guest
                .settle_session_with(|| run_commands_timed(slot.client(), rewarm, "rewarm"))
                .await?
        } else {
            run_commands_timed(slot.client(), rewarm, "rewarm").await?
        };
        phases.rewarm = lap();
        slot.last_reset = phases;
        Ok(())
    }
}

/// Refuses a pool whose sockets would not fit a Unix socket address: the
/// golden template's, and a slot's up to index 999 999.
pub(crate) fn check_pool_socket_paths(pool_dir: &Path, pool: &str) -> Result<(), VmError> {
    check_socket_path(
        &pool_dir
            .join(format!("paddock-{pool}-golden-00000000"))
            .join("agent.sock"),
    )?;
    check_socket_path(&pool_dir.join("slot-999999").join("agent.sock"))
}

/// The domain name of slot `index` of pool `pool`.
#[must_use]
pub fn slot_name(pool: &str, index: u32) -> String {
    format!("paddock-{pool}-{index}")
}

impl SlotBackend for VmBackend {
    type Slot = VmSlot;
    type Error = VmError;

    async fn create(&self, index: u32) -> Result<VmSlot, VmError> {
        // A creation means libvirt answers: a good time to finish removals
        // that failed before.
        self.leftovers.sweep(&self.libvirt).await;
        let golden = self.usable_golden().await?;
        let address = self
            .addresses
            .as_ref()
            .map(SlotAddresses::take)
            .transpose()?;
        let dir = self.pool_dir.join(format!("slot-{index}"));
        if let Err(err) = check_socket_path(&dir.join("agent.sock")) {
            self.give_back(address.as_ref());
            return Err(err);
        }
        let network = address.as_ref().map(|(_, a)| a);
        let spec = self.slot_spec(&golden, index, &dir, network);
        let events = self.events.for_slot(index, Some(&spec.name));
        match self.make_slot(&golden, &spec, &dir, network, &events).await {
            Ok(guest) => {
                self.live_clients().insert(index, guest.client().clone());
                self.slot_goldens
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(index, golden.id.id.clone());
                Ok(VmSlot {
                    guest,
                    index,
                    address,
                    last_reset: ResetPhases::default(),
                    events,
                })
            }
            Err(err) => {
                // A guest discarded itself; this covers a domain restored
                // before its agent answered, and the files of any failure.
                // What cannot be removed now is remembered.
                let removed = match self.libvirt.lookup(&spec.name).await {
                    Ok(vm) => vm.discard().await,
                    Err(lookup) if lookup.is_not_found() => Ok(()),
                    Err(lookup) => Err(lookup),
                };
                let files = tokio::fs::remove_dir_all(&dir).await;
                if removed.is_err()
                    || files.is_err_and(|e| e.kind() != std::io::ErrorKind::NotFound)
                {
                    self.leftovers.remember(&spec.name, &dir);
                }
                self.give_back(address.as_ref());
                Err(err)
            }
        }
    }

    async fn reset(&self, slot: &mut VmSlot) -> Result<(), VmError> {
        match self.reset_phases(slot).await {
            Err(err) if !err.is_libvirt_outage() => {
                // A reset fails on a guest that died under its lease; say so.
                Err(stopped_guest(slot).await.unwrap_or(err))
            }
            other => other,
        }
    }

    async fn check(&self, slot: &VmSlot) -> Result<(), VmError> {
        // STATUS, not PING: an agent that restarted (killed in the guest,
        // respawned by init) answers PING but knows no session, and a new
        // agent has a new boot id.
        let session = slot.client().session().await;
        match slot.client().status().await {
            Ok(report) => match session {
                Some(session) if session.boot_id != report.boot_id => {
                    Err(VmError::AgentRestarted {
                        domain: slot.name().to_owned(),
                    })
                }
                _ => Ok(()),
            },
            Err(err) => Err(guest_fault(slot, err).await),
        }
    }

    async fn end_lease(&self, index: u32) {
        let client = self.live_clients().get(&index).cloned();
        if let Some(client) = client {
            client.revoke().await;
        }
    }

    async fn destroy(&self, mut slot: VmSlot) -> Result<(), VmError> {
        self.live_clients().remove(&slot.index);
        self.slot_goldens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&slot.index);
        let result = slot.guest.discard().await;
        match &result {
            // The runtime is going away (its blocking pool refused the
            // calls): nothing would sweep the leftovers, so the guest's own
            // drop, below, removes the domain on a thread of its own.
            Err(err) if err.is_runtime_ending() => {}
            Err(_) => {
                // Remembered and removed once libvirt answers; the guest's
                // own drop must not block on it.
                self.leftovers.remember(slot.name(), slot.dir());
                slot.guest.forget();
            }
            Ok(()) => {}
        }
        // Only once the domain is gone: its interface held the address.
        self.give_back(slot.address.as_ref());
        self.remove_unused_retired().await;
        result
    }

    fn discard_blocking(&self, mut slot: VmSlot) {
        self.live_clients().remove(&slot.index);
        self.slot_goldens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&slot.index);
        slot.guest.discard_blocking();
        self.give_back(slot.address.as_ref());
    }

    fn prune_limits(&self) {
        self.gate.prune();
    }

    fn set_lease_limits(&self, limits: &crate::RateLimits) {
        self.gate.set_limits(limits);
    }

    fn set_policy(&self, policy: Option<Arc<paddock_policy::Policy>>) {
        self.gate.set_policy(policy);
    }

    fn policy(&self) -> Option<Arc<paddock_policy::Policy>> {
        self.gate.policy()
    }

    fn slot_emitter(&self, slot: &VmSlot) -> Option<Emitter> {
        Some(slot.events.clone())
    }

    fn reset_report(&self, slot: &VmSlot) -> (&'static str, Vec<(&'static str, Duration)>) {
        (self.spec.reset.name(), slot.last_reset.phases())
    }

    fn failure_reason(&self, error: &VmError) -> &'static str {
        error.reason()
    }

    fn is_outage(&self, error: &VmError) -> bool {
        error.is_libvirt_outage()
    }

    fn available(&self) -> bool {
        self.libvirt.health().is_connected()
    }

    async fn until_available(&self) {
        while self
            .libvirt
            .wait_connected(Duration::from_secs(3600))
            .await
            .is_err()
        {}
    }
}

/// Why a slot's agent did not answer: a guest that stopped (crashed,
/// rebooted and was destroyed, QEMU killed) or an agent that failed.
async fn guest_fault(slot: &VmSlot, err: paddock_agent_client::ClientError) -> VmError {
    stopped_guest(slot).await.unwrap_or(VmError::Agent(err))
}

/// [`VmError::GuestStopped`] if the slot's domain is not running (or gone).
async fn stopped_guest(slot: &VmSlot) -> Option<VmError> {
    let stopped = |state, reason| VmError::GuestStopped {
        domain: slot.name().to_owned(),
        state,
        reason,
    };
    match slot.vm().status().await {
        Ok(status) if status.state != paddock_libvirt::DomainState::Running => {
            Some(stopped(status.state, status.reason))
        }
        Err(libvirt) if libvirt.is_not_found() => Some(stopped(
            paddock_libvirt::DomainState::Shutoff,
            "gone".into(),
        )),
        _ => None,
    }
}

impl Pool<VmBackend> {
    /// Reads every domain's figures with one bulk libvirt call and records
    /// those of this pool's live slots into `metrics` (CPU seconds, memory,
    /// block and network bytes, labelled by pool and slot): call it before
    /// a scrape renders. Returns how many slots were recorded. A slot
    /// destroyed meanwhile is skipped, so its series stay gone.
    ///
    /// # Errors
    /// libvirt's, when the bulk call fails.
    pub async fn record_slot_resources(
        &self,
        metrics: &paddock_metrics::Metrics,
    ) -> Result<usize, VmError> {
        let samples = self.slot_resources().await?;
        for sample in &samples {
            metrics.set_slot_resources(&self.backend().spec.name, sample.index, sample.resources);
        }
        Ok(samples.len())
    }

    /// Every live slot's figures from one bulk libvirt call, with the
    /// slot's event source (its lease and tenant while it is out).
    ///
    /// # Errors
    /// libvirt's, when the bulk call fails.
    pub async fn slot_resources(&self) -> Result<Vec<SlotSample>, VmError> {
        let backend = self.backend();
        let stats = backend.libvirt.all_domain_stats().await?;
        let live: std::collections::HashMap<String, (u32, paddock_events::Source)> = backend
            .live_clients()
            .iter()
            .map(|(&index, client)| {
                (
                    slot_name(&backend.spec.name, index),
                    (index, client.config().events.source()),
                )
            })
            .collect();
        let mut samples = Vec::new();
        for domain in stats {
            let Some((index, source)) = live.get(&domain.name) else {
                continue;
            };
            let nanos = u32::try_from(domain.cpu_time_ns % 1_000_000_000).unwrap_or(0);
            samples.push(SlotSample {
                index: *index,
                source: source.clone(),
                vcpus: backend.spec.vcpus,
                resources: paddock_metrics::SlotResources {
                    cpu_seconds: Duration::new(domain.cpu_time_ns / 1_000_000_000, nanos)
                        .as_secs_f64(),
                    memory_bytes: domain.memory_rss_kib.saturating_mul(1024),
                    block_read_bytes: domain.block.iter().map(|b| b.read_bytes).sum(),
                    block_write_bytes: domain.block.iter().map(|b| b.write_bytes).sum(),
                    net_rx_bytes: domain.interfaces.iter().map(|i| i.rx_bytes).sum(),
                    net_tx_bytes: domain.interfaces.iter().map(|i| i.tx_bytes).sum(),
                },
            });
        }
        Ok(samples)
    }

    /// Builds a new golden (from `image` and `warmup` where given: they
    /// stay for later goldens) and replaces the pool's slots with slots made
    /// from it, one by one while the pool serves: each ready slot from an
    /// older golden is recycled and its replacement made before the next
    /// goes; a leased one is destroyed at its release instead of reset.
    /// Returns once no ready or preparing slot comes from an older golden
    /// (leased ones may still), or after `within`. The old golden's files
    /// go with its last slot.
    ///
    /// # Errors
    /// The new golden could not be built (the pool keeps the old one, and
    /// its image and warm-up), or the replacement took longer than
    /// `within` ([`VmError::RebuildUnfinished`]).
    pub async fn rebuild_golden(
        &self,
        image: Option<GuestImage>,
        warmup: Option<Vec<String>>,
        within: Duration,
    ) -> Result<GoldenRebuild, VmError> {
        let deadline = tokio::time::Instant::now() + within;
        let backend = self.backend();
        let golden = backend.replace_golden(image, warmup).await?;
        let mut replaced = 0;
        loop {
            let stale = backend.slots_not_from(&golden.id.id);
            let ready = self.ready_slots();
            let stale_ready: Vec<u32> = stale
                .iter()
                .copied()
                .filter(|i| ready.contains(i))
                .collect();
            let stale_leased = stale.len() - stale_ready.len();
            if stale_ready.is_empty() && (stale_leased == 0 || self.stats().preparing == 0) {
                // Leased slots of the old golden go at their release.
                for index in &stale {
                    self.recycle_slot(*index);
                }
                return Ok(GoldenRebuild {
                    golden_id: golden.id.id.clone(),
                    replaced,
                    leased_left: stale.len(),
                });
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(VmError::RebuildUnfinished {
                    left: stale.len(),
                    after: within,
                });
            }
            if let Some(&index) = stale_ready.first() {
                let before = ready.len();
                self.recycle_slot(index);
                replaced += 1;
                // Its replacement first, so the pool keeps serving.
                while tokio::time::Instant::now() < deadline
                    && (self.ready_slots().len() < before && self.stats().preparing > 0)
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            } else {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Shuts the pool down ([`Pool::shutdown`]) and removes all it made:
    /// its slots, removals that failed earlier (waiting up to
    /// [`CLOSE_WAIT`] for libvirtd if it is away), the golden's files, and
    /// the pool's directory, then (once no domain of the pool is left) the
    /// host firewall of a NAT-filtered pool's bridge ([`HostFirewall`]; the
    /// network itself stays defined). Returns `Ok` only when no domain, no
    /// file and no firewall rule of the pool is left.
    ///
    /// # Errors
    /// [`VmError::NotClosed`] listing what is left, a golden file that
    /// cannot be removed, or [`VmError::Firewall`].
    pub async fn close(&self) -> Result<(), VmError> {
        self.close_within(CLOSE_WAIT).await
    }

    /// [`Pool::close`], waiting up to `wait` for an unreachable libvirtd.
    ///
    /// # Errors
    /// As [`Pool::close`].
    pub async fn close_within(&self, wait: Duration) -> Result<(), VmError> {
        self.shutdown().await;
        let backend = self.backend();
        let reachable = backend.libvirt.wait_connected(wait).await;
        let mut left = backend.leftovers.sweep(&backend.libvirt).await;
        backend.golden().remove().await?;
        let retired: Vec<Arc<Golden>> = std::mem::take(
            &mut *backend
                .retired
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for golden in retired {
            golden.remove().await?;
        }
        // Only if empty: anything else there is not the pool's.
        let _ = tokio::fs::remove_dir(&backend.pool_dir).await;

        let listed = match reachable {
            Ok(()) => backend.libvirt.paddock_domains().await,
            Err(unreachable) => Err(unreachable),
        };
        let cause = match listed {
            Ok(domains) => {
                left.extend(
                    domains
                        .into_iter()
                        .filter(|(_, metadata)| metadata.pool == backend.spec.name)
                        .map(|(vm, _)| vm.name().to_owned()),
                );
                None
            }
            Err(err) => Some(Box::new(err)),
        };
        left.sort();
        left.dedup();
        // The network stays defined; its bridge's host firewall goes with
        // the pool's last domain (the next pool on the network applies it
        // again). While a guest of the pool may be left, it stays.
        let firewall = match &backend.spec.network {
            PoolNetwork::NatFiltered { network, .. } if left.is_empty() && cause.is_none() => {
                match HostFirewall::new(network) {
                    Ok(firewall) => firewall.remove().await,
                    Err(err) => Err(err),
                }
            }
            _ => Ok(()),
        };
        let paths: Vec<PathBuf> = std::fs::read_dir(&backend.pool_dir)
            .map(|entries| entries.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        if left.is_empty() && paths.is_empty() && cause.is_none() {
            firewall.map_err(VmError::Firewall)
        } else {
            Err(VmError::NotClosed {
                domains: left,
                paths,
                cause,
            })
        }
    }
}

/// What [`Pool::rebuild_golden`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoldenRebuild {
    /// The new golden's id.
    pub golden_id: String,
    /// Ready slots of older goldens recycled and replaced.
    pub replaced: usize,
    /// Leased slots of older goldens, destroyed at their release.
    pub leased_left: usize,
}

/// How long [`Pool::close`] waits for an unreachable libvirtd before it
/// reports what it could not remove.
pub const CLOSE_WAIT: Duration = Duration::from_secs(30);

/// Runs shell `commands` in order through `client`; each must exit 0.
pub(crate) async fn run_commands(
    client: &AgentClient,
    commands: &[String],
    what: &'static str,
) -> Result<(), VmError> {
    run_commands_timed(client, commands, what).await.map(drop)
}

/// [`run_commands`], returning how long the commands' processes ran in the
/// guest (spawn to exit, as the agent measured them), summed.
pub(crate) async fn run_commands_timed(
    client: &AgentClient,
    commands: &[String],
    what: &'static str,
) -> Result<Duration, VmError> {
    let mut in_guest = Duration::ZERO;
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
        in_guest += Duration::from_micros(out.result.duration_us);
    }
    Ok(in_guest)
}
