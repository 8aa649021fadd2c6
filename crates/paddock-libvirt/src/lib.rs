//! Paddock's libvirt layer: the only crate that talks to libvirt.
//!
//! - [`DomainSpec`] describes a sandbox domain (profile, cgroup limits,
//!   accelerator, boot, disk overlay, agent channel, network, and Paddock's
//!   metadata); [`render_domain`] turns it into domain XML with quick-xml and
//!   [`parse_metadata`] reads the metadata back from a domain's XML.
//! - [`NetworkSpec`] and the XML files of `nwfilters/` ([`load_filters`])
//!   describe Paddock's networks and filters; [`Libvirt::apply_network`] and
//!   [`Libvirt::apply_filter`] apply them idempotently.
//! - [`Libvirt`] is a connection; [`Vm`] is one domain: lifecycle, state,
//!   waits, snapshots, saving. [`Libvirt::restore_as`] restores a saved image
//!   with new host-side paths and metadata (libvirt 9.0 refuses a new name,
//!   UUID or MAC there); [`Libvirt::restore_derived`] restores one saved image
//!   as many domains with their own names and UUIDs ([`saved_image`]).
//!   [`Libvirt::all_domain_stats`] reads every domain's counters in one call.
//! - [`overlay`] makes and removes qcow2 overlays.
//!
//! libvirt calls block, so every one runs on tokio's blocking pool: nothing
//! here blocks an async worker thread. Errors name the operation, the object
//! and libvirt's error code ([`LibvirtError`]); libvirt's own printing of
//! errors to stderr is switched off by [`Libvirt::open`].

mod connection;
pub mod domain;
mod domain_xml;
pub mod error;
pub mod network;
pub mod overlay;
pub mod saved_image;
pub mod snapshot;
mod spec;
pub mod stats;
mod xml;

pub use connection::{KEEPALIVE_COUNT, KEEPALIVE_INTERVAL_S, Libvirt, RestoreMode};
pub use domain::{DomainState, DomainStatus, ShutdownOutcome, Vm};
pub use domain_xml::{parse_metadata, render_domain};
pub use error::LibvirtError;
pub use network::{
    Applied, ApplyError, FilterDefinition, Lease, MAX_SLOTS as MAX_NETWORK_SLOTS, NetworkKind,
    NetworkSpec, load_filters, render_network,
};
pub use overlay::{OverlayError, create_blank_qcow2, create_overlay, remove_overlay};
pub use saved_image::{
    SavedImageError, SavedImageHeader, derive_saved_image, read_saved_image_header,
};
pub use snapshot::{SnapshotInfo, SnapshotSpec, render_snapshot};
pub use spec::{
    Acceleration, AgentChannel, Boot, CpuQuota, DomainSpec, ImageFormat, METADATA_NAMESPACE,
    MacAddress, NatAttachment, NetworkMode, OverlayDisk, PaddockMetadata, Profile,
    QEMU_OVERHEAD_MIB, Resources, Tuning, VsockCid, kvm_usable,
};
pub use stats::{BlockStats, DomainStats, InterfaceStats};
pub use uuid::Uuid;
pub use xml::XmlError;
