//! Typed specs of what Paddock asks libvirt for, and the formats libvirt
//! reads them in. This crate links no libvirt: it builds on any machine, so
//! the XML golden tests, the render benchmark and the fuzz targets need no
//! libvirt-dev. `paddock-libvirt` applies what is described here and
//! re-exports all of it.
//!
//! - [`DomainSpec`] describes a sandbox domain (profile, cgroup limits,
//!   accelerator, boot, disk overlay, agent channel, network, the user
//!   QEMU runs as, and Paddock's metadata); [`render_domain`] turns it into domain XML with quick-xml and
//!   [`parse_metadata`] reads the metadata back from a domain's XML.
//! - [`NetworkSpec`] describes a Paddock network with a DHCP
//!   [`Reservation`] per slot; [`render_network`] writes its XML.
//! - [`FilterDefinition`] is an nwfilter. Paddock's own filters are built in
//!   ([`builtin_filters`], [`FilterDefinition::builtin`]); [`load_filters`]
//!   reads others from a folder.
//! - [`definition_update`] compares a desired network or filter with
//!   libvirt's copy and says whether to define, redefine or leave it.
//! - [`SharedFolder`] is a host directory shared into a single sandbox
//!   over virtiofs, checked by [`check_shared_folders`]; the domain gets a
//!   [`FilesystemDevice`] for it ([`share`] says what works on this QEMU
//!   and libvirt, and why pools refuse them).
//! - [`SnapshotSpec`] and [`render_snapshot`] describe an internal snapshot;
//!   [`parse_snapshot`] reads what libvirt lists ([`SnapshotInfo`]).
//! - [`saved_image`] reads libvirt's QEMU save-image header and derives a copy
//!   of a saved image that carries another domain's XML (plain file I/O).
//!
//! Nothing is spliced into XML by hand: every value goes through quick-xml's
//! escaping, and every parser returns an [`XmlError`] instead of panicking.

pub mod definition;
pub mod domain;
mod domain_xml;
pub mod network;
pub mod nwfilter;
pub mod saved_image;
pub mod share;
pub mod snapshot;
mod xml;

pub use definition::{DefinitionUpdate, definition_update};
pub use domain::{
    Acceleration, AgentChannel, Boot, CpuQuota, DacLabel, DomainRole, DomainSpec, ImageFormat,
    METADATA_NAMESPACE, MacAddress, NatAttachment, NetworkMode, OverlayDisk, PaddockMetadata,
    Profile, QEMU_OVERHEAD_MIB, QEMU_OVERHEAD_PER_VCPU_MIB, QEMU_THREADS, Resources, SerialPort,
    TCG_TB_CACHE_MIB, Tuning, VsockCid, kvm_usable,
};
pub use domain_xml::{parse_metadata, render_domain};
pub use network::{
    MAX_SLOTS as MAX_NETWORK_SLOTS, NetworkKind, NetworkSpec, Reservation, render_network,
};
pub use nwfilter::{
    DROP_ALL_FILTER, EGRESS_FILTER, FilterDefinition, FilterError, builtin_filters, load_filters,
};
pub use saved_image::{
    SavedImageError, SavedImageHeader, derive_saved_image, read_saved_image_header,
};
pub use share::{
    FilesystemDevice, MAX_SHARE_TAG_LEN, ShareError, SharedFolder, check_shared_folders,
};
pub use snapshot::{SnapshotInfo, SnapshotSpec, parse_snapshot, render_snapshot};
pub use uuid::Uuid;
pub use xml::XmlError;
