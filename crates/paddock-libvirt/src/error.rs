//! The error of a libvirt call, and the blocking-call plumbing that produces it.
//!
//! Every libvirt call blocks (it is an RPC to libvirtd, or work inside the test
//! driver), so `blocking` runs it on tokio's blocking pool and turns libvirt's
//! error into a [`LibvirtError`] that names the operation, the object it was
//! about (`domain sbx-3`, `network paddock-nat`, a connection URI) and
//! libvirt's error code.

use std::path::PathBuf;
use std::time::Duration;

use paddock_spec::XmlError;
use virt::error::{ErrorDomain, ErrorNumber};

use crate::domain::DomainState;

/// A libvirt operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum LibvirtError {
    /// libvirt refused or failed a call.
    #[error("Libvirt could not {op} {object} (error code {code})")]
    Call {
        /// The operation, e.g. `start` or `create snapshot of`.
        op: &'static str,
        /// What it was applied to, e.g. `domain sbx-3`.
        object: String,
        /// libvirt's error number (`virErrorNumber`), e.g. 42 for `VIR_ERR_NO_DOMAIN`.
        code: u32,
        /// libvirt's own error.
        #[source]
        source: virt::error::Error,
    },
    /// A domain did not reach a state in time.
    #[error("Domain {domain} did not become {wanted} within {timeout:?} (last seen {last})")]
    Timeout {
        /// The domain's name.
        domain: String,
        /// The state waited for.
        wanted: DomainState,
        /// The last state seen ([`DomainState::Unknown`] if the wait hung in libvirt).
        last: DomainState,
        /// How long the wait lasted.
        timeout: Duration,
    },
    /// XML that libvirt returned, or that was about to be sent to it, was not usable.
    #[error("Libvirt could not {op} {object}: bad XML")]
    Xml {
        /// The operation.
        op: &'static str,
        /// What it was applied to.
        object: String,
        /// What was wrong with the XML.
        #[source]
        source: XmlError,
    },
    /// A path libvirt's API takes as a string is not UTF-8.
    #[error("Libvirt cannot {op} {path:?}: the path is not UTF-8")]
    NonUtf8Path {
        /// The operation.
        op: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// QEMU answered a monitor command with an error (libvirt passed the
    /// command through, so libvirt itself has no error code for it).
    #[error("QEMU refused {command} for {object}: {message}")]
    Monitor {
        /// The monitor command, e.g. `loadvm golden`.
        command: String,
        /// What it was applied to.
        object: String,
        /// QEMU's reply.
        message: String,
    },
    /// A saved image could not be read or derived.
    #[error("Cannot derive a saved image for {object}")]
    SavedImage {
        /// The domain it was for.
        object: String,
        /// Why.
        #[source]
        source: paddock_spec::SavedImageError,
    },
    /// libvirtd could not be reached within the time a call waits for its
    /// connection to come back ([`crate::ReconnectPolicy::call_wait`]): it
    /// is stopped, restarting, or hung. Calls work again once it is back.
    #[error(
        "Libvirtd at {uri} is unreachable (down for {down_for:.1?}, {attempts} reconnect attempts failed; last: {last_error})"
    )]
    Unreachable {
        /// The connection's URI.
        uri: String,
        /// How long the connection has been lost.
        down_for: Duration,
        /// Reconnect attempts that failed.
        attempts: u32,
        /// Why the last attempt failed, or how the connection was lost.
        last_error: String,
    },
    /// The blocking-pool task running the call panicked or was cancelled.
    #[error("The worker running libvirt {op} for {object} failed")]
    Worker {
        /// The operation.
        op: &'static str,
        /// What it was applied to.
        object: String,
        /// Why the task ended.
        #[source]
        source: tokio::task::JoinError,
    },
}

impl LibvirtError {
    /// libvirt's error number, for [`LibvirtError::Call`].
    #[must_use]
    pub fn code(&self) -> Option<u32> {
        match self {
            Self::Call { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether the object does not exist (no such domain, snapshot, network or
    /// filter).
    #[must_use]
    pub fn is_not_found(&self) -> bool {
        self.virt_code().is_some_and(|code| {
            matches!(
                code,
                ErrorNumber::NoDomain
                    | ErrorNumber::NoDomainSnapshot
                    | ErrorNumber::NoNetwork
                    | ErrorNumber::NoNwfilter
            )
        })
    }

    /// Whether the connection to libvirtd is gone (daemon restarted or
    /// crashed): open a new [`crate::Libvirt`] and retry. Other call failures
    /// are answers from libvirt; retrying them unchanged fails again.
    #[must_use]
    pub fn should_reconnect(&self) -> bool {
        let Self::Call { source, .. } = self else {
            return false;
        };
        let code = source.code().known();
        let rpc = matches!(
            source.domain().known(),
            Some(ErrorDomain::Rpc | ErrorDomain::Remote)
        );
        matches!(
            code,
            Some(ErrorNumber::NoConnect | ErrorNumber::InvalidConn)
        ) || (rpc
            && matches!(
                code,
                Some(ErrorNumber::SystemError | ErrorNumber::InternalError | ErrorNumber::Rpc)
            ))
    }

    /// The call never ran, or its result was lost, because the tokio
    /// runtime is shutting down (its blocking pool refuses new work): a
    /// caller that must still act (remove a domain) has to do it without
    /// the runtime.
    #[must_use]
    pub fn is_runtime_ending(&self) -> bool {
        matches!(self, Self::Worker { source, .. } if source.is_cancelled())
    }

    /// Whether libvirtd itself is away (the connection died under the call,
    /// or no connection could be had): an outage of the host's daemon, not
    /// a failure of the object the call was about. The same call can succeed
    /// once [`crate::Libvirt::health`] is connected again.
    #[must_use]
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Unreachable { .. }) || self.should_reconnect()
    }

    fn virt_code(&self) -> Option<ErrorNumber> {
        match self {
            Self::Call { source, .. } => source.code().known(),
            _ => None,
        }
    }

    pub(crate) fn call(op: &'static str, object: String, source: virt::error::Error) -> Self {
        Self::Call {
            op,
            object,
            code: source.code().to_raw(),
            source,
        }
    }
}

/// Runs a blocking libvirt call on tokio's blocking pool.
pub(crate) async fn blocking<T, F>(
    op: &'static str,
    object: String,
    f: F,
) -> Result<T, LibvirtError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, virt::error::Error> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(source)) => Err(LibvirtError::call(op, object, source)),
        Err(source) => Err(LibvirtError::Worker { op, object, source }),
    }
}

#[cfg(test)]
mod runtime_ending_tests {
    use super::*;

    /// A call handed to the blocking pool of a runtime that is already gone
    /// never runs: that is told apart from a call that failed.
    #[test]
    fn a_call_refused_by_an_ended_runtime_is_told_apart() {
        let ended = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .expect("runtime");
        let handle = ended.handle().clone();
        drop(ended);
        let check = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let refused = check.block_on(async {
            let _entered = handle.enter();
            blocking("undefine", "domain x".into(), || {
                Ok::<_, virt::error::Error>(())
            })
            .await
        });
        let err = refused.expect_err("the ended runtime ran the call");
        assert!(err.is_runtime_ending(), "{err:?}");
        assert!(!err.is_unreachable(), "{err:?}");

        // A worker that panicked is a failure, not the runtime ending.
        let live = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let panicked = live.block_on(blocking("undefine", "domain x".into(), || {
            if true {
                panic!("boom");
            }
            Ok::<_, virt::error::Error>(())
        }));
        let err = panicked.expect_err("a panicking worker succeeded");
        assert!(!err.is_runtime_ending(), "{err:?}");
    }
}
