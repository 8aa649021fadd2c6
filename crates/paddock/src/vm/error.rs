//! The VM layer's error: what can go wrong with a guest, its agent, its
//! files, and the pool of them.

use std::path::{Path, PathBuf};

use paddock_agent_client::{ClientError, Continuity};
use paddock_image::ImageError;
use paddock_libvirt::{
    ApplyError, ConfineError, DomainState, LibvirtError, OverlayError, ShareError,
};

use super::firewall::FirewallError;
use crate::pool::PoolError;

/// Why an operation on a sandbox, a golden or a VM pool failed.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A libvirt call failed.
    #[error("Libvirt failed")]
    Libvirt(#[from] LibvirtError),
    /// The agent could not be reached or a request to it failed.
    #[error("The agent failed")]
    Agent(#[from] ClientError),
    /// The agent did not answer within the ready timeout. The console tail
    /// is part of the message: it is what an operator needs to see.
    #[error("Sandbox {name} was not ready\n--- console tail ---\n{console_tail}")]
    NotReady {
        /// The domain's name.
        name: String,
        /// The last lines of the guest's serial console.
        console_tail: String,
        /// Why the agent could not be reached.
        #[source]
        source: ClientError,
    },
    /// A file or directory could not be created, moved or removed.
    #[error("Cannot {action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The domain's QEMU could not be given its memory or thread limit; the
    /// domain is not used (it is destroyed).
    #[error("Cannot confine the QEMU of {domain}")]
    Confine {
        /// The domain.
        domain: String,
        /// Why.
        #[source]
        source: ConfineError,
    },
    /// A disk image could not be created or removed.
    #[error("Disk image operation failed")]
    Disk(#[from] OverlayError),
    /// The hybrid-vsock backend could not be started.
    #[error("Cannot start the vsock backend {program}: {problem}")]
    VsockBackend {
        /// The backend program.
        program: PathBuf,
        /// What went wrong.
        problem: String,
    },
    /// After a revert or restore the agent did not report a restored guest.
    #[error("After {reset} the agent reports {found:?}, not a restored guest")]
    NotRestored {
        /// What should have restored the guest.
        reset: String,
        /// What the agent's session showed instead.
        found: Option<Continuity>,
    },
    /// A command the pool runs in a guest (warm-up, rewarm, network
    /// identity) did not exit 0.
    #[error("The {purpose} command {command:?} failed ({exit_code:?}): {stderr}")]
    CommandFailed {
        /// Why it ran.
        purpose: &'static str,
        /// The shell command.
        command: String,
        /// Its exit code (`None`: killed by a signal).
        exit_code: Option<i32>,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// Every address reservation of a NAT-filtered pool's network is held
    /// (slots being destroyed still hold theirs); the pool retries later.
    #[error("Every address of network {network} is held by a slot")]
    NoFreeAddress {
        /// The network.
        network: String,
    },
    /// The pool's network or filters could not be defined.
    #[error("Cannot set up the pool's network")]
    Network(#[from] ApplyError),
    /// The host firewall of the pool's bridge could not be applied or
    /// removed.
    #[error("Cannot set up the host firewall of the pool's network")]
    Firewall(#[from] FirewallError),
    /// The slot's agent answers but is not the one its session began with:
    /// it was restarted in the guest (killed and respawned), so whatever ran
    /// in the lease is gone with it.
    #[error("The agent of {domain} was restarted")]
    AgentRestarted {
        /// The domain.
        domain: String,
    },
    /// The guest is not running: it crashed or rebooted (and was destroyed:
    /// sandbox domains do not restart), or its QEMU was killed.
    #[error("The guest {domain} is {state} ({reason})")]
    GuestStopped {
        /// The domain.
        domain: String,
        /// Its state.
        state: DomainState,
        /// libvirt's reason for it.
        reason: String,
    },
    /// The guest image cannot be used (its files are gone).
    #[error("The guest image cannot be used")]
    Image(#[from] ImageError),
    /// A closed pool left domains or files behind: removing them failed,
    /// or libvirtd could not be asked.
    #[error("The pool left {} domains and {} paths behind: {domains:?} {paths:?}", domains.len(), paths.len())]
    NotClosed {
        /// Domains of the pool that still exist (or could not be removed).
        domains: Vec<String>,
        /// Files and directories left in the pool's directory.
        paths: Vec<PathBuf>,
        /// Why the domains could not be listed, if they could not.
        #[source]
        cause: Option<Box<LibvirtError>>,
    },
    /// A Unix socket's path is longer than a socket address holds (107
    /// bytes): QEMU could not bind it. A shorter state root or pool name
    /// fixes it.
    #[error("The socket path {path} is {len} bytes long; at most {SOCKET_PATH_MAX} fit")]
    SocketPathTooLong {
        /// The path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
    },
    /// A pool or sandbox name breaks the naming rule
    /// ([`crate::names`]); nothing was made from it.
    #[error("Invalid name")]
    Name(#[from] crate::names::NameError),
    /// The group QEMU runs as (libvirt's `group` in `qemu.conf`; Debian's
    /// `libvirt-qemu`) does not exist on this host, so the files a guest's
    /// QEMU uses cannot be given to it alone.
    #[error("The group {group} does not exist (QEMU's group: is libvirt-daemon-system installed?)")]
    NoQemuGroup {
        /// The group's name.
        group: String,
    },
    /// The VM pool's specification is unusable.
    #[error("Invalid VM pool specification: {0}")]
    Config(&'static str),
    /// A golden rebuild built the new golden, but slots of the old one were
    /// still ready or being prepared when its time ran out; they are
    /// replaced later, at their release or next recycle.
    #[error("The new golden is in use, but {left} slots of the old one were left after {after:?}")]
    RebuildUnfinished {
        /// Slots of older goldens still in the pool.
        left: usize,
        /// The time the rebuild had.
        after: std::time::Duration,
    },
    /// The pool refused (an invalid [`crate::PoolConfig`]).
    #[error("The pool refused")]
    Pool(#[from] PoolError),
    /// A shared folder breaks a rule ([`paddock_libvirt::check_shared_folders`]);
    /// nothing was made.
    #[error("Invalid shared folder")]
    Share(#[from] ShareError),
    /// A shared folder could not be bind-mounted for export on the host
    /// (Paddock must run as root to share folders).
    #[error("Cannot export the shared folder {path}")]
    ShareExport {
        /// The host directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The guest could not mount a shared folder (`mkdir` or `mount`
    /// failed in it); the sandbox was removed.
    #[error(
        "The guest could not mount shared folder {tag} at {guest_path} ({exit_code:?}): {stderr}"
    )]
    ShareMount {
        /// The folder's tag.
        tag: String,
        /// Where it was to be mounted.
        guest_path: PathBuf,
        /// The failing command's exit code (`None`: killed by a signal).
        exit_code: Option<i32>,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// A VM pool's spec has shared folders: slots are snapshots of a golden,
    /// and QEMU cannot save or snapshot a guest with a virtiofs device.
    /// Nothing was made.
    #[error(
        "Pool {pool} has shared folders; only single sandboxes can have them (QEMU cannot snapshot a guest with one)"
    )]
    SharesInPool {
        /// The pool.
        pool: String,
    },
    /// A snapshot, revert or capture of a sandbox with shared folders was
    /// asked for; QEMU cannot save or snapshot such a guest.
    #[error("Sandbox {domain} has shared folders and cannot be snapshotted or captured")]
    SharesPreventSnapshot {
        /// The domain.
        domain: String,
    },
}

/// The longest path a Unix socket address holds (`sun_path` less its NUL).
pub const SOCKET_PATH_MAX: usize = 107;

/// Refuses a socket path that does not fit a Unix socket address.
pub(crate) fn check_socket_path(path: &Path) -> Result<(), VmError> {
    let len = path.as_os_str().len();
    if len > SOCKET_PATH_MAX {
        return Err(VmError::SocketPathTooLong {
            path: path.to_path_buf(),
            len,
        });
    }
    Ok(())
}

impl VmError {
    /// Whether the error is libvirtd being away (restarting, stopped, hung)
    /// rather than a fault of the guest: the same operation can succeed once
    /// it is back.
    #[must_use]
    pub fn is_libvirt_outage(&self) -> bool {
        match self {
            Self::Libvirt(err) => err.is_unreachable(),
            Self::Network(ApplyError::Libvirt(err)) => err.is_unreachable(),
            _ => false,
        }
    }

    /// A libvirt call was refused because the tokio runtime is shutting
    /// down ([`LibvirtError::is_runtime_ending`]), not because of libvirt
    /// or the guest.
    #[must_use]
    pub fn is_runtime_ending(&self) -> bool {
        matches!(self, Self::Libvirt(err) if err.is_runtime_ending())
    }

    /// A short, bounded name for the cause, fit for a metrics label.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            _ if self.is_libvirt_outage() => "libvirt_unreachable",
            Self::Libvirt(_) => "libvirt",
            Self::Agent(ClientError::ConnectionLost { .. }) => "agent_lost",
            Self::Agent(ClientError::Timeout { .. }) => "agent_timeout",
            Self::Agent(_) => "agent_error",
            Self::NotReady { .. } => "not_ready",
            Self::Io { .. } => "io",
            Self::Disk(_) => "disk",
            Self::Confine { .. } => "confine",
            Self::VsockBackend { .. } => "vsock_backend",
            Self::NotRestored { .. } => "not_restored",
            Self::CommandFailed { .. } => "command_failed",
            Self::NoFreeAddress { .. } => "no_free_address",
            Self::Network(_) => "network",
            Self::Firewall(_) => "firewall",
            Self::AgentRestarted { .. } => "agent_restarted",
            Self::GuestStopped { .. } => "guest_stopped",
            Self::Image(_) => "image_missing",
            Self::NotClosed { .. } => "not_closed",
            Self::Config(_) | Self::SocketPathTooLong { .. } | Self::Name(_) => "config",
            Self::NoQemuGroup { .. } => "no_qemu_group",
            Self::RebuildUnfinished { .. } => "rebuild_unfinished",
            Self::Pool(_) => "pool",
            Self::Share(_) | Self::SharesInPool { .. } | Self::SharesPreventSnapshot { .. } => {
                "config"
            }
            Self::ShareExport { .. } => "share_export",
            Self::ShareMount { .. } => "share_mount",
        }
    }

    /// A closure that wraps a confinement error of `domain`.
    pub(crate) fn confine(domain: &str) -> impl FnOnce(ConfineError) -> Self {
        let domain = domain.to_owned();
        move |source| Self::Confine { domain, source }
    }

    /// A closure that wraps an I/O error on `path`.
    pub(crate) fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_owned();
        move |source| Self::Io {
            action,
            path,
            source,
        }
    }
}
