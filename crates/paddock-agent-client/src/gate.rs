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

use paddock_events::{Emitter, EventKind, Source};

use crate::error::ClientError;

/// A request, as the gate sees it: the request policy's view
/// ([`paddock_policy::Request`]), which the rate limits share.
pub use paddock_policy::Request as GateRequest;
pub use paddock_policy::{Denial, Size};

/// Which way a paced flow of bytes goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// From the agent: exec output, a download.
    Received,
    /// To the agent: an upload from a reader.
    Sent,
}

/// Why the gate refused a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A rate limit: the same request may pass later.
    RateLimited {
        /// The limit (`lease_execs`, `lease_file_bytes`...): a bounded
        /// name.
        limit: &'static str,
        /// When the same request may pass; `None` if it never will (it is
        /// larger than the limit's burst).
        retry_after: Option<Duration>,
    },
    /// The request policy denies it, now and later.
    Denied(Denial),
}

/// Decides whether a request may be sent. It runs on the caller's task
/// before anything is sent, so it must be quick and never block.
pub trait RequestGate: Send + Sync + std::fmt::Debug {
    /// `Ok` to send `request`, from the lease (and tenant) in `source`. An
    /// execution may come back with limits filled in by a policy (see
    /// [`GateRequest::Exec`]).
    ///
    /// # Errors
    /// The [`Refusal`].
    fn admit(&self, source: &Source, request: &mut GateRequest<'_>) -> Result<(), Refusal>;

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

/// A gate and the emitter of the client that asks it: a refusal is emitted
/// (a [`EventKind::Denied`] or [`EventKind::RateLimited`] event) and
/// returned as a [`ClientError`].
#[derive(Debug, Clone)]
pub(crate) struct Gatekeeper {
    pub(crate) gate: std::sync::Arc<dyn RequestGate>,
    pub(crate) events: Emitter,
}

impl Gatekeeper {
    /// Asks the gate whether `request` may be sent.
    pub(crate) fn admit(&self, request: &mut GateRequest<'_>) -> Result<(), ClientError> {
        let kind = request.kind();
        self.gate
            .admit(&self.events.source(), request)
            .map_err(|refusal| refused(&self.events, kind, refusal))
    }
}

/// Emits `refusal` of a request of `kind` and turns it into the caller's
/// error.
pub(crate) fn refused(events: &Emitter, kind: &'static str, refusal: Refusal) -> ClientError {
    match refusal {
        Refusal::RateLimited { limit, retry_after } => {
            events.emit(|| EventKind::RateLimited {
                limit,
                retry_after: retry_after.unwrap_or_default(),
            });
            ClientError::Refused { limit, retry_after }
        }
        Refusal::Denied(denial) => {
            events.emit(|| EventKind::Denied {
                request: kind,
                rule: denial.rule.as_str(),
                policy: denial.policy.to_string(),
                detail: denial.detail.clone(),
            });
            ClientError::Denied(denial)
        }
    }
}

/// A gate that checks every request against a request policy, for a client
/// outside a pool (a [`crate::ClientConfig::gate`] of its own; a pool's
/// gate checks only its leases' requests).
#[derive(Debug, Clone)]
pub struct PolicyGate {
    policy: std::sync::Arc<paddock_policy::Policy>,
}

impl PolicyGate {
    /// The gate of `policy`.
    #[must_use]
    pub fn new(policy: std::sync::Arc<paddock_policy::Policy>) -> Self {
        Self { policy }
    }
}

impl RequestGate for PolicyGate {
    fn admit(&self, _source: &Source, request: &mut GateRequest<'_>) -> Result<(), Refusal> {
        self.policy.check(request).map_err(Refusal::Denied)
    }
}
