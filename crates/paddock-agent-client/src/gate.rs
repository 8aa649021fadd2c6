//! The gate every request passes on the host before it is sent: rate
//! limits now, request policies later. A refusal is a typed error
//! ([`crate::ClientError::Refused`]) and an event.
//!
//! The gate also paces byte flows ([`RequestGate::pace`]). What the agent
//! sends back (exec output, downloads): the host returns the agent's credit
//! for received bytes only when the gate lets it, so a flow over its rate
//! slows down in the guest (its pipes fill, its writer waits) instead of
//! failing. What the host sends from a reader of unknown length
//! ([`crate::AgentClient::put_reader`]): each chunk waits until the gate
//! lets it. Every hold is an [`EventKind::Throttled`] event.
//!
//! [`EventKind::Throttled`]: paddock_events::EventKind::Throttled

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

/// Which way a paced flow of bytes goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// From the agent: exec output, a download.
    Received,
    /// To the agent: an upload from a reader.
    Sent,
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

    /// Whether `bytes` of a `flow` for a request from the lease in `source`
    /// may go now (the credit for received bytes go back, a chunk of an
    /// upload be sent): `None` lets them (and counts them against the
    /// limit; the default lets everything), `Some((limit, wait))` holds
    /// them, and the client asks again after `wait`.
    fn pace(&self, source: &Source, flow: Flow, bytes: u64) -> Option<(&'static str, Duration)> {
        let _ = (source, flow, bytes);
        None
    }

    /// Forgets the state of keys (leases, tenants) that are back to a fresh
    /// state, so that keyed limits never grow with every key ever seen. The
    /// pool calls it on a timer; the default keeps nothing to forget.
    fn prune(&self) {}
}
