//! The VM layer's error: what can go wrong with a guest, its agent, its
//! files, and the pool of them.

use std::path::{Path, PathBuf};

use paddock_agent_client::{ClientError, Continuity};
use paddock_libvirt::{ApplyError, LibvirtError, OverlayError};

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
    /// The VM pool's specification is unusable.
    #[error("Invalid VM pool specification: {0}")]
    Config(&'static str),
    /// The pool refused (an invalid [`crate::PoolConfig`]).
    #[error("The pool refused")]
    Pool(#[from] PoolError),
}

impl VmError {
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
