//! The gate every request passes on the host before it is sent: rate
//! limits now, request policies later. A refusal is a typed error
//! ([`crate::ClientError::Refused`]) and an event.

use std::time::Duration;

use paddock_events::{FileDirection, Source};
use paddock_proto::Execute;

/// A request, as the gate sees it.
#[derive(Debug, Clone, Copy)]
pub enum GateRequest<'a> {
    /// An execution about to be sent.
    Exec(&'a Execute),
    /// A file transfer of `bytes` about to start.
    FileBytes {
        /// Which way.
        direction: FileDirection,
        /// Its size.
        bytes: u64,
    },
}

/// Why the gate refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The limit or policy that refused it (`lease_execs`,
    /// `lease_file_bytes`...): a bounded name.
    pub limit: &'static str,
    /// When the same request may pass; `None` if it never will.
    pub retry_after: Option<Duration>,
}

/// Decides whether a request may be sent. It runs on the caller's task
/// before anything is sent, so it must be quick and never block.
pub trait RequestGate: Send + Sync + std::fmt::Debug {
    /// `Ok` to send `request`, from the lease (and tenant) in `source`.
    ///
    /// # Errors
    /// The [`Refusal`].
    fn admit(&self, source: &Source, request: &GateRequest<'_>) -> Result<(), Refusal>;
}
