//! Real VMs: single [`Sandbox`]es, and pools of them ([`VmBackend`]) made
//! from a [`Golden`] state.
//!
//! - [`files`]: who may touch the host files a guest's QEMU uses (their
//!   group and modes).
//! - [`guest`]: the core both share, a running domain with its connected
//!   agent ([`Guest`]), and how it is discarded.
//! - [`sandbox`]: one VM booted from the image.
//! - [`golden`]: a pool's golden state and its files.
//! - [`backend`]: the pool's [`crate::pool::SlotBackend`] of VMs: slots
//!   restored from the golden and the three reset strategies.
//! - [`network`]: each slot's address on a NAT-filtered network.
//! - [`firewall`]: the host firewall of a NAT-filtered pool's bridge (what
//!   a guest may send to the host itself).
//! - [`recover`]: removing what a crashed process left of a pool.
//! - [`share`]: a single sandbox's shared folders (virtiofs), their host
//!   side, their mounts in the guest, and why pools refuse them.
//!
//! Every new QEMU, a sandbox's, a slot's restored from the golden, or one a
//! `Restore` or `Revert` reset starts, is confined before its guest is
//! handed out: libvirt applies the CPU limits of its
//! [`paddock_libvirt::Tuning`] and the rest of the domain XML (QEMU's
//! seccomp sandbox is libvirt's default), and
//! [`paddock_libvirt::Vm::confine`] writes the memory hard limit and the
//! thread limit into its cgroups. A pool may run its QEMUs as a host user
//! of its own ([`VmPoolSpec::run_as`]); each disk overlay is then handed to
//! that user.

pub mod backend;
mod dac;
mod error;
pub mod files;
pub mod firewall;
pub mod golden;
pub mod guest;
pub mod network;
pub mod recover;
pub mod sandbox;
pub mod share;

pub use backend::{
    GoldenRebuild, ResetPhases, ResetStrategy, SlotSample, VmBackend, VmPoolSpec, VmSlot,
};
pub use error::{SOCKET_PATH_MAX, VmError};
pub use files::{DEFAULT_QEMU_GROUP, QemuGroup, create_qemu_dir};
pub use firewall::{FirewallError, HostFirewall};
pub use golden::{Golden, GoldenId};
pub use guest::Guest;
pub use network::{PoolNetwork, identity_script};
pub use recover::recover_pool;
pub use sandbox::{ChannelConfig, DEFAULT_STATE_ROOT, PROBE_PORT_NAME, Sandbox, SandboxConfig};
