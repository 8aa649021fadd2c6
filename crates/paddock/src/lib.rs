//! Paddock: real virtual machines as sandboxes for untrusted code, kept
//! warm in pools and reset to a golden state after every use.
//!
//! This is the crate an orchestrator depends on:
//!
//! - [`Paddock`] connects to libvirt with a guest image; [`Paddock::create_pool`]
//!   builds a golden state (boot, warm-up, capture) and starts a [`VmPool`].
//! - [`Pool::acquire`] hands out a [`Lease`] (at once when a slot is ready);
//!   the lease gives the slot's agent client ([`Guest::client`]): exec,
//!   files, status. [`Lease::release`], or dropping the lease, resets the
//!   slot in the background. See [`pool`] for the rules.
//! - [`Sandbox`] is a single VM without a pool. Only a sandbox can have
//!   shared folders (host directories over virtiofs, [`vm::share`]): QEMU
//!   cannot snapshot a guest with one, so pools refuse them.
//!
//! The crate has two halves: [`pool`], the pool's logic, which knows nothing
//! of VMs and works on any [`SlotBackend`]; and [`vm`], the VMs themselves
//! (a [`Guest`] core, [`Sandbox`], [`Golden`], and [`VmBackend`], the pool's
//! backend of real VMs). This module joins them.
//!
//! Pool and sandbox names follow one rule, checked before they become
//! paths, domain names or XML ([`names`]). The files a guest's QEMU uses
//! are QEMU's group's and closed to every other user ([`vm::files`]).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use paddock::agent::Execute;
//! use paddock::{GuestImage, Paddock, PaddockConfig, PoolConfig, VmPoolSpec};
//!
//! let image = GuestImage::load("target/paddock-image/current.json".as_ref())?;
//! let paddock = Paddock::connect(PaddockConfig::new(image)).await?;
//! let pool = paddock.create_pool(VmPoolSpec::new("ci"), PoolConfig::default()).await?;
//! let lease = pool.acquire().await?;
//! let out = lease.client().exec_collect(Execute::shell("uname -r")).await?;
//! println!("{}", String::from_utf8_lossy(&out.stdout));
//! lease.release(); // reset to the golden in the background
//! pool.close().await?;
//! # Ok(())
//! # }
//! ```

pub mod limits;
pub mod names;
pub mod observe;
pub mod pool;
pub mod vm;

use std::path::PathBuf;
use std::sync::Arc;

pub use limits::{LeaseGate, RateLimit, RateLimits};
pub use paddock_events::{Emitter, EventHub, Source};
pub use paddock_image::{GuestImage, ImageError};
pub use pool::{Lease, LeaseId, Pool, PoolConfig, PoolError, PoolStats, SlotBackend, SlotFailure};
pub use vm::{
    BootPhases, ChannelConfig, DEFAULT_STATE_ROOT, Golden, GoldenId, GoldenRebuild, Guest,
    PoolNetwork, ResetDetail, ResetPhases, ResetStrategy, Sandbox, SandboxConfig, VmBackend,
    VmError, VmPoolSpec, VmSlot,
};

/// A pool of real VMs.
pub type VmPool = Pool<VmBackend>;

/// A lease on a slot of a [`VmPool`].
pub type VmLease = Lease<VmBackend>;

/// What [`Paddock::connect`] needs.
#[derive(Debug, Clone)]
pub struct PaddockConfig {
    /// The libvirt URI, e.g. `qemu:///system`.
    pub libvirt_uri: String,
    /// The guest image every pool boots.
    pub image: GuestImage,
    /// Where pools keep their files (a directory per pool). It is made (or
    /// kept) QEMU's group's, mode 2750 ([`vm::files`]).
    pub state_root: PathBuf,
    /// The group QEMU runs as (libvirt's `qemu.conf`), which gets the
    /// pools' directories and files ([`vm::files`]).
    pub qemu_group: String,
    /// Where the events of every pool go (metrics, the audit log, anomaly
    /// detection and the embedder's own subscribers; see
    /// [`paddock_events`]). `None` (the default) emits nothing.
    pub events: Option<EventHub>,
    /// The metrics that watch every pool's slot counts.
    pub metrics: Option<Arc<paddock_metrics::Metrics>>,
}

impl PaddockConfig {
    /// Sends every pool's events to `observability`'s hub and has its
    /// metrics watch every pool.
    #[must_use]
    pub fn observe(mut self, observability: &observe::Observability) -> Self {
        self.events = Some(observability.hub().clone());
        self.metrics = Some(Arc::clone(observability.metrics()));
        self
    }
}

impl PaddockConfig {
    /// `qemu:///system` and [`DEFAULT_STATE_ROOT`] for `image`.
    #[must_use]
    pub fn new(image: GuestImage) -> Self {
        Self {
            libvirt_uri: "qemu:///system".into(),
            image,
            state_root: DEFAULT_STATE_ROOT.into(),
            qemu_group: vm::DEFAULT_QEMU_GROUP.into(),
            events: None,
            metrics: None,
        }
    }
}

/// The entry point: a libvirt connection and an image, from which pools of
/// sandboxes are made.
#[derive(Debug, Clone)]
pub struct Paddock {
    libvirt: libvirt::Libvirt,
    config: PaddockConfig,
}

impl Paddock {
    /// Connects to libvirt.
    ///
    /// # Errors
    /// libvirt cannot be reached.
    pub async fn connect(config: PaddockConfig) -> Result<Self, libvirt::LibvirtError> {
        let libvirt = libvirt::Libvirt::open(&config.libvirt_uri).await?;
        if let Some(hub) = &config.events {
            // The connection's losses and returns, as events (a metric, an
            // audit record); the task ends with the connection.
            let mut changes = libvirt.health_changes();
            let events = hub.emitter(Source::default());
            tokio::spawn(async move {
                let mut was_connected = changes.borrow_and_update().is_connected();
                while changes.changed().await.is_ok() {
                    let connected = changes.borrow_and_update().is_connected();
                    if connected != was_connected {
                        was_connected = connected;
                        events.emit(|| paddock_events::EventKind::BackendConnection { connected });
                    }
                }
            });
        }
        Ok(Self { libvirt, config })
    }

    /// What it was connected with.
    #[must_use]
    pub fn config(&self) -> &PaddockConfig {
        &self.config
    }

    /// The libvirt connection.
    #[must_use]
    pub fn libvirt(&self) -> &libvirt::Libvirt {
        &self.libvirt
    }

    /// Creates the pool `spec` describes: checks the configuration, defines
    /// its network and filters and applies the host firewall of its bridge
    /// ([`vm::HostFirewall`]), removes what an earlier process left of a
    /// pool of that name (once, before anything of the new pool exists),
    /// builds its golden (boot, warm-up, capture), and starts filling it.
    /// Returns before `min_ready` slots are ready ([`Pool::wait_ready`]
    /// waits for them).
    ///
    /// # Errors
    /// [`VmError::Name`] for a pool name that breaks the naming rule
    /// ([`names`]), [`VmError::SharesInPool`] for a spec with shared
    /// folders, [`VmError::Pool`] or [`VmError::Config`] for an invalid
    /// configuration, [`VmError::NoQemuGroup`] when QEMU's group does not
    /// exist (all before anything is made); otherwise why the network or
    /// the golden could not be made, or [`VmError::Firewall`] when its host
    /// firewall could not be applied.
    pub async fn create_pool(
        &self,
        spec: VmPoolSpec,
        mut config: PoolConfig,
    ) -> Result<VmPool, VmError> {
        names::check_pool_name(&spec.name)?;
        if !spec.shared_folders.is_empty() {
            return Err(VmError::SharesInPool { pool: spec.name });
        }
        config.validate()?;
        let group = vm::QemuGroup::resolve(&self.config.qemu_group)?;
        let events = self
            .config
            .events
            .as_ref()
            .map_or_else(Emitter::disabled, |hub| {
                hub.emitter(Source {
                    pool: Some(spec.name.as_str().into()),
                    ..Source::default()
                })
            });
        config.events = events.clone();
        // The one derivation of the pool's reservations: the golden takes
        // the last, the backend hands out the others.
        let addresses = spec.network.addresses()?;
        if addresses
            .as_ref()
            .is_some_and(|addresses| config.max_size > addresses.capacity())
        {
            return Err(VmError::Config(
                "a NAT-filtered pool's network needs more reservations than max_size \
                 (one is the golden's)",
            ));
        }
        let pool_dir = self.config.state_root.join(&spec.name);
        vm::backend::check_pool_socket_paths(&pool_dir, &spec.name)?;
        // Files may have gone since the manifest was loaded.
        self.config.image.check_files()?;
        if let PoolNetwork::NatFiltered {
            network, filters, ..
        } = &spec.network
        {
            let firewall = vm::HostFirewall::new(network)?;
            for filter in filters {
                self.libvirt.apply_filter(filter).await?;
            }
            self.libvirt.apply_network(network).await?;
            // On every creation, not only when the network is new: the
            // rules do not survive a reboot, the network does.
            firewall.apply().await?;
        }
        let recovered = vm::recover_pool(&self.libvirt, &spec.name, &pool_dir).await?;
        vm::create_qemu_dir(&self.config.state_root, &group)?;
        vm::create_qemu_dir(&pool_dir, &group)?;
        if recovered > 0 {
            tracing::info!(
                pool = spec.name,
                recovered,
                "removed domains an earlier process left behind"
            );
        }
        let golden_identity = addresses.as_ref().map(vm::network::SlotAddresses::golden);
        let started = std::time::Instant::now();
        let golden = Golden::build(
            &self.libvirt,
            &self.config.image,
            &spec,
            &pool_dir,
            golden_identity.as_ref(),
            &group,
        )
        .await?;
        vm::backend::golden_events(&events, &golden, spec.reset, started.elapsed());
        let backend = VmBackend::new(
            self.libvirt.clone(),
            self.config.image.clone(),
            golden,
            spec,
            (pool_dir, group),
            addresses,
            // Always a gate, so that limits can be set while the pool
            // serves; with none set it admits everything.
            (events, Arc::new(LeaseGate::with_limits(&config.limits))),
        );
        let pool = Pool::start(backend, config).await?;
        if let Some(metrics) = &self.config.metrics {
            metrics.watch_pool(pool.gauge());
        }
        Ok(pool)
    }
}

/// The host agent client, re-exported.
pub use paddock_agent_client as agent;
/// The event stream, re-exported.
pub use paddock_events as events;
/// The libvirt layer, re-exported.
pub use paddock_libvirt as libvirt;
/// Request policies, re-exported.
pub use paddock_policy as policy;
