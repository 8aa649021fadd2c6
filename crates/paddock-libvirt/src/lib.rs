//! Paddock's libvirt layer: the only crate that talks to libvirt.
//!
//! It comes in two halves. What Paddock asks libvirt for, and the formats
//! libvirt reads, live in `paddock-spec` ([`spec`]), which links no libvirt
//! and so builds anywhere; this crate applies them through libvirt and
//! re-exports all of them at the paths they had here:
//!
//! - [`DomainSpec`] describes a sandbox domain (profile, cgroup limits,
//!   accelerator, boot, disk overlay, agent channel, network, and Paddock's
//!   metadata); [`render_domain`] turns it into domain XML with quick-xml and
//!   [`parse_metadata`] reads the metadata back from a domain's XML.
//! - [`NetworkSpec`] describes a Paddock network, with a DHCP [`Reservation`]
//!   per slot; Paddock's nwfilters are built in ([`builtin_filters`],
//!   [`FilterDefinition::builtin`]) and [`load_filters`] reads others from a
//!   folder.
//! - [`SnapshotSpec`] and [`SnapshotInfo`] describe snapshots; [`saved_image`]
//!   reads and derives libvirt's QEMU save images.
//!
//! What calls libvirt is here:
//!
//! - [`Libvirt`] is a connection; [`Vm`] is one domain: lifecycle, state,
//!   waits, snapshots, saving. [`Libvirt::restore_as`] restores a saved image
//!   with new host-side paths and metadata (libvirt 9.0 refuses a new name,
//!   UUID or MAC there); [`Libvirt::restore_derived`] restores one saved image
//!   as many domains with their own names and UUIDs ([`saved_image`]).
//!   [`Libvirt::all_domain_stats`] reads every domain's counters in one call.
//! - [`Libvirt::apply_network`] and [`Libvirt::apply_filter`] apply networks
//!   and filters idempotently ([`network`]).
//! - [`overlay`] makes and removes qcow2 overlays (with `qemu-img`).
//! - [`Vm::confine`] writes the limits libvirt does not set (the memory
//!   hard limit, the thread limit) into the cgroups of a domain's QEMU
//!   ([`confine`]).
//!
//! libvirt calls block, so every one runs on tokio's blocking pool: nothing
//! here blocks an async worker thread. Errors name the operation, the object
//! and libvirt's error code ([`LibvirtError`]); libvirt's own printing of
//! errors to stderr is switched off by [`Libvirt::open`].

pub mod confine;
mod connection;
pub mod domain;
pub mod error;
pub mod link;
pub mod network;
pub mod overlay;
pub mod snapshot;
pub mod stats;

/// The pure half: typed specs and formats, without libvirt.
pub use paddock_spec as spec;
pub use paddock_spec::saved_image;

pub use confine::{ConfineError, Confinement};
pub use connection::{Libvirt, RestoreMode};
pub use domain::{DomainState, DomainStatus, ShutdownOutcome, Vm};
pub use error::LibvirtError;
pub use link::{ConnectionHealth, KEEPALIVE_COUNT, KEEPALIVE_INTERVAL_S, ReconnectPolicy};
pub use network::{
    Applied, ApplyError, DROP_ALL_FILTER, EGRESS_FILTER, FilterDefinition, FilterError,
    MAX_SLOTS as MAX_NETWORK_SLOTS, NetworkKind, NetworkSpec, Reservation, builtin_filters,
    load_filters, render_network,
};
pub use overlay::{OverlayError, create_blank_qcow2, create_overlay, remove_overlay};
pub use paddock_spec::{
    Acceleration, AgentChannel, Boot, CpuQuota, DacLabel, DomainRole, DomainSpec, ImageFormat,
    METADATA_NAMESPACE, MacAddress, NatAttachment, NetworkMode, OverlayDisk, PaddockMetadata,
    Profile, QEMU_OVERHEAD_MIB, QEMU_OVERHEAD_PER_VCPU_MIB, QEMU_THREADS, Resources,
    SavedImageError, SavedImageHeader, SerialPort, TCG_TB_CACHE_MIB, Tuning, Uuid, VsockCid,
    XmlError, derive_saved_image, kvm_usable, parse_metadata, read_saved_image_header,
    render_domain,
};
pub use paddock_spec::{
    FilesystemDevice, MAX_SHARE_TAG_LEN, ShareError, SharedFolder, check_shared_folders,
};
pub use snapshot::{SnapshotInfo, SnapshotSpec, render_snapshot};
pub use stats::{BlockStats, DomainStats, InterfaceStats};
