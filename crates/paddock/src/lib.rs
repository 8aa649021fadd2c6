//! Paddock: real virtual machines as sandboxes for untrusted code, kept
//! warm in pools and reset to a golden state after every use.
//!
//! This is the crate an orchestrator depends on:
//!
//! - [`Paddock`] connects to libvirt with a guest image; [`Paddock::create_pool`]
//!   builds a golden state (boot, warm-up, capture) and starts a [`VmPool`].
//! - [`Pool::acquire`] hands out a [`Lease`] (at once when a slot is ready);
//!   the lease gives the slot's agent client ([`VmSlot::client`]): exec,
//!   files, status. [`Lease::release`], or dropping the lease, resets the
//!   slot in the background. See [`pool`] for the rules.
//! - [`Sandbox`] is a single VM without a pool.
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

pub mod image;
pub mod pool;
pub mod sandbox;
pub mod slot_network;
pub mod vm_backend;

pub use image::{GuestImage, ImageError};
pub use pool::{Lease, Pool, PoolConfig, PoolError, PoolStats, SlotBackend};
pub use sandbox::{ChannelConfig, DEFAULT_STATE_ROOT, Sandbox, SandboxConfig, SandboxError};
pub use slot_network::PoolNetwork;
pub use vm_backend::{Golden, GoldenId, ResetPhases, ResetStrategy, VmBackend, VmPoolSpec, VmSlot};

use std::path::PathBuf;

/// A pool of real VMs.
pub type VmPool = Pool<VmBackend>;

/// What [`Paddock::connect`] needs.
#[derive(Debug, Clone)]
pub struct PaddockConfig {
    /// The libvirt URI, e.g. `qemu:///system`.
    pub libvirt_uri: String,
    /// The guest image every pool boots.
    pub image: GuestImage,
    /// Where pools keep their files (a directory per pool).
    pub state_root: PathBuf,
}

impl PaddockConfig {
    /// `qemu:///system` and [`DEFAULT_STATE_ROOT`] for `image`.
    #[must_use]
    pub fn new(image: GuestImage) -> Self {
        Self {
            libvirt_uri: "qemu:///system".into(),
            image,
            state_root: DEFAULT_STATE_ROOT.into(),
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
    pub async fn connect(config: PaddockConfig) -> Result<Self, PoolError> {
        let libvirt = libvirt::Libvirt::open(&config.libvirt_uri).await?;
        Ok(Self { libvirt, config })
    }

    /// The libvirt connection.
    #[must_use]
    pub fn libvirt(&self) -> &libvirt::Libvirt {
        &self.libvirt
    }

    /// Creates the pool `spec` describes: removes what an earlier process
    /// left of a pool of that name, builds its golden (boot, warm-up,
    /// capture), and starts filling it. Returns before `min_ready` slots
    /// are ready ([`Pool::wait_ready`] waits for them).
    ///
    /// # Errors
    /// The golden cannot be built, or the configuration is invalid.
    pub async fn create_pool(
        &self,
        spec: VmPoolSpec,
        config: PoolConfig,
    ) -> Result<VmPool, PoolError> {
        config.validate()?;
        let capacity = spec.network.addresses()?.map(|a| a.capacity());
        if capacity.is_some_and(|capacity| config.max_size > capacity) {
            return Err(PoolError::Config(
                "a NAT-filtered pool's network needs more reservations than max_size \
                 (one is the golden's)",
            ));
        }
        if let PoolNetwork::NatFiltered {
            network, filters, ..
        } = &spec.network
        {
            for filter in filters {
                self.libvirt.apply_filter(filter).await?;
            }
            self.libvirt.apply_network(network).await?;
        }
        let pool_dir = self.config.state_root.join(&spec.name);
        vm_backend::recover_pool(&self.libvirt, &spec.name, &pool_dir, None).await?;
        let golden = Golden::build(&self.libvirt, &self.config.image, &spec, &pool_dir).await?;
        let backend = VmBackend::new(self.libvirt.clone(), golden, spec, pool_dir)?;
        Pool::start(backend, config).await
    }
}

impl Pool<VmBackend> {
    /// Shuts the pool down ([`Pool::shutdown`]) and removes its files: the
    /// golden's, the blank base disk, and the pool's directory once empty.
    ///
    /// # Errors
    /// A golden file or the blank disk cannot be removed.
    pub async fn close(&self) -> Result<(), PoolError> {
        self.shutdown().await;
        vm_backend::remove_golden(self.backend().golden()).await?;
        let dir = self.backend().pool_dir();
        let blank = dir.join("blank.qcow2");
        match tokio::fs::remove_file(&blank).await {
            Err(source) if source.kind() != std::io::ErrorKind::NotFound => {
                return Err(PoolError::Io {
                    action: "remove",
                    path: blank,
                    source,
                });
            }
            _ => {}
        }
        // Only if empty: anything else there is not the pool's.
        let _ = tokio::fs::remove_dir(dir).await;
        Ok(())
    }
}

/// The host agent client, re-exported.
pub use paddock_agent_client as agent;
/// The libvirt layer, re-exported.
pub use paddock_libvirt as libvirt;
