//! The pre-warmed pool: slots made ready ahead of demand, handed out as
//! [`Lease`]s, and reset to the golden state after every use.
//!
//! The pool knows nothing of VMs. What a slot is and how it is made, reset,
//! checked and destroyed is a [`SlotBackend`]'s business:
//! [`crate::VmBackend`] runs real VMs restored from a golden image; the
//! unit tests run the pool on an in-memory backend that fails on command
//! (`test_backend.rs`), and the crate's tests on libvirt's test driver.
//!
//! # A slot's life
//!
//! ```text
//!   create ──> ready ──acquire──> leased ──release/drop──> resetting ──> ready
//!     │          │                                             │
//!     │          └─health check fails──> destroyed <──reset fails, TTL or max uses
//!     └─fails──> (retried by the refill)        │
//!                                               └──> replaced by the refill
//! ```
//!
//! # Rules
//!
//! - `acquire()` takes a ready slot at once when nobody waits before it;
//!   otherwise it queues (first come, first served) while the pool grows up
//!   to `max_size`, and fails with [`PoolError::AcquireTimeout`] at its
//!   timeout, carrying the last slot failure as its source. A slot handed to
//!   an acquire that was dropped meanwhile goes to the next waiter or back to
//!   ready: dropping an acquire never loses one.
//! - Releasing (or dropping) a lease returns at once; the reset runs in the
//!   background and the slot becomes ready again. A slot whose reset or
//!   health check fails or times out is destroyed, and so is one past its TTL
//!   or its maximum number of uses; the refill replaces it.
//! - The refill keeps `min_ready` slots ready (or on their way) plus one per
//!   waiter, within `max_size`. At most `max_concurrent_prepares` creations
//!   and resets run at once.
//! - [`Pool::shutdown`] destroys every slot, and leases released after it
//!   are destroyed instead of reset. Dropping the last [`Pool`] handle
//!   without a shutdown does the same for the ready slots, synchronously.
//! - What an earlier process left behind is the backend's creator's to
//!   remove before the pool starts (for VM pools,
//!   [`crate::Paddock::create_pool`] does it once).

mod actions;
mod handle;
mod slots;
#[cfg(test)]
mod test_backend;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub use handle::{Lease, Pool};
pub use paddock_events::LeaseId;

use paddock_events::Emitter;

/// Why a pool operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No slot became free within the acquire timeout. The source, if any,
    /// is the most recent failure to make or keep a slot: why the pool
    /// could not grow.
    #[error("No sandbox was free within {after:?}")]
    AcquireTimeout {
        /// The acquire timeout.
        after: Duration,
        /// The most recent slot failure.
        #[source]
        last_failure: Option<SlotFailure>,
    },
    /// No slot became free within the acquire timeout, and the slot
    /// backend is unavailable (for VM pools: libvirtd is unreachable). The
    /// source is the most recent slot failure, which says why. Ready slots
    /// are still handed out while the backend is away; this is the error of
    /// an acquire that had to wait for a new or reset slot.
    #[error("No sandbox was free within {after:?}: the slot backend is unavailable")]
    Unavailable {
        /// The acquire timeout.
        after: Duration,
        /// The most recent slot failure.
        #[source]
        last_failure: Option<SlotFailure>,
    },
    /// The pool has been shut down.
    #[error("The pool is shut down")]
    Closed,
    /// The pool's configuration is unusable.
    #[error("Invalid pool configuration: {0}")]
    Config(&'static str),
    /// A rate limit of the pool ([`PoolConfig::limits`]) refused the
    /// acquire; try again after `retry_after`.
    #[error("Acquire refused by the {limit} rate limit; retry after {retry_after:?}")]
    RateLimited {
        /// `acquires` (the pool's) or `tenant_acquires`.
        limit: &'static str,
        /// When an acquire may pass.
        retry_after: Duration,
    },
}

/// Why the pool could not make or keep a slot.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SlotFailure {
    /// The backend failed; the source is its error, which callers can
    /// downcast to the backend's error type.
    #[error("Slot {operation} failed ({reason})")]
    Backend {
        /// creation, reset or health check.
        operation: &'static str,
        /// The backend's short name for the cause
        /// ([`SlotBackend::failure_reason`]).
        reason: &'static str,
        /// The backend's error.
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// The backend itself was away ([`SlotBackend::is_outage`]): the slot
    /// did not fail. A reset is tried again once the backend is back.
    #[error("The slot backend was unavailable for a slot {operation}")]
    Outage {
        /// creation, reset or health check.
        operation: &'static str,
        /// The backend's error.
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// A backend operation did not finish in time.
    #[error("Slot {operation} did not finish within {after:?}")]
    Timeout {
        /// creation, reset or health check.
        operation: &'static str,
        /// Its time limit.
        after: Duration,
    },
}

impl SlotFailure {
    /// A short, bounded name for the cause, fit for a metrics label: the
    /// backend's reason, `timeout`, or `backend_unavailable`.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Backend { reason, .. } => reason,
            Self::Outage { .. } => "backend_unavailable",
            Self::Timeout { .. } => "timeout",
        }
    }
}

/// How slots are made, reset, checked and destroyed.
pub trait SlotBackend: Send + Sync + 'static {
    /// A slot: what a lease gives access to.
    type Slot: Send + Sync + 'static;
    /// Why an operation on a slot failed.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Makes slot number `index` ready for use.
    fn create(&self, index: u32) -> impl Future<Output = Result<Self::Slot, Self::Error>> + Send;

    /// Brings a used slot back to the golden state.
    fn reset(&self, slot: &mut Self::Slot) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Checks that a ready slot still works.
    fn check(&self, slot: &Self::Slot) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Destroys a slot and everything it had.
    fn destroy(&self, slot: Self::Slot) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Destroys a slot without async machinery, on the calling thread: for
    /// a pool whose last handle is dropped without a shutdown (a panic, an
    /// early return), when the runtime may be going away. Best effort.
    fn discard_blocking(&self, slot: Self::Slot);

    /// A short, bounded name for what `error` says went wrong with a slot
    /// (`agent_lost`, `guest_crashed`...), kept with the failure and fit
    /// for a metrics label. Default: `error`.
    fn failure_reason(&self, error: &Self::Error) -> &'static str {
        let _ = error;
        "error"
    }

    /// Whether `error` says the backend itself is away (its daemon
    /// restarting), rather than the slot failing: the pool then keeps the
    /// slot and tries the reset again once the backend is available.
    /// Default: never.
    fn is_outage(&self, error: &Self::Error) -> bool {
        let _ = error;
        false
    }

    /// Whether the backend can create and reset slots now. Default: always.
    fn available(&self) -> bool {
        true
    }

    /// Resolves once the backend is available again. Default: at once.
    fn until_available(&self) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }

    /// The emitter a slot's own parts (its agent client) send events
    /// with, if the backend made one; the pool sets the lease on it, so
    /// that their events carry it. Default: none (the pool makes one).
    fn slot_emitter(&self, slot: &Self::Slot) -> Option<Emitter> {
        let _ = slot;
        None
    }

    /// Forgets per-lease limiter state that is back to fresh (the pool calls
    /// it on a timer). Default: nothing.
    fn prune_limits(&self) {}

    /// Applies `limits`' per-lease limits from now on
    /// ([`Pool::set_limits`]). Default: nothing (the backend has none).
    fn set_lease_limits(&self, limits: &crate::RateLimits) {
        let _ = limits;
    }

    /// Checks every lease's requests against `policy` from now on
    /// ([`PoolConfig::policy`], [`Pool::set_policy`]). Default: nothing
    /// (the backend sends no requests of its own).
    fn set_policy(&self, policy: Option<Arc<paddock_policy::Policy>>) {
        let _ = policy;
    }

    /// The request policy in force. Default: none.
    fn policy(&self) -> Option<Arc<paddock_policy::Policy>> {
        None
    }

    /// Ends the lease slot `index` is on now: its requests in flight fail
    /// and later ones are refused, until the slot is reset (an anomaly
    /// rule's `end_lease`). Default: nothing (the slot is still recycled
    /// at its release).
    fn end_lease(&self, index: u32) -> impl Future<Output = ()> + Send {
        let _ = index;
        std::future::ready(())
    }

    /// The name of the reset strategy and the phases of the slot's last
    /// reset with their times, for the reset's event. Default: `reset`,
    /// no phases.
    fn reset_report(&self, slot: &Self::Slot) -> (&'static str, Vec<(&'static str, Duration)>) {
        let _ = slot;
        ("reset", Vec::new())
    }
}

/// How a pool behaves.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Slots kept ready (or on their way) when idle.
    pub min_ready: usize,
    /// The most slots the pool has at once, leased ones included.
    pub max_size: usize,
    /// The most creations and resets running at once.
    pub max_concurrent_prepares: usize,
    /// A slot older than this is destroyed at its next release.
    pub ttl: Option<Duration>,
    /// A slot used this many times is destroyed at its next release.
    pub max_uses: Option<u32>,
    /// How often ready slots are checked; `None` for never.
    pub health_check_interval: Option<Duration>,
    /// How long `acquire()` waits for a slot.
    pub acquire_timeout: Duration,
    /// The time limit of one creation.
    pub create_timeout: Duration,
    /// The time limit of one reset, check or destruction.
    pub operation_timeout: Duration,
    /// Where the pool's events go (slots made, leased, reset, destroyed;
    /// see [`paddock_events`]). Disabled by default;
    /// [`crate::Paddock::create_pool`] sets it from
    /// [`crate::PaddockConfig::events`].
    pub events: Emitter,
    /// Rate limits: acquires per pool and per tenant, executions and
    /// uploaded bytes per lease. All off by default.
    pub limits: crate::limits::RateLimits,
    /// The request policy every lease's requests are checked against
    /// before they are sent (`policies/README.md`). `None` (the default):
    /// every well-formed request is sent.
    pub policy: Option<Arc<paddock_policy::Policy>>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            min_ready: 2,
            max_size: 4,
            max_concurrent_prepares: 2,
            ttl: None,
            max_uses: None,
            health_check_interval: Some(Duration::from_secs(30)),
            acquire_timeout: Duration::from_secs(60),
            create_timeout: Duration::from_secs(120),
            operation_timeout: Duration::from_secs(30),
            events: Emitter::disabled(),
            limits: crate::limits::RateLimits::default(),
            policy: None,
        }
    }
}

impl PoolConfig {
    /// Checks the sizes and timeouts make sense.
    ///
    /// # Errors
    /// [`PoolError::Config`] saying what does not.
    pub fn validate(&self) -> Result<(), PoolError> {
        if self.max_size == 0 {
            return Err(PoolError::Config("max_size must be at least 1"));
        }
        if self.min_ready > self.max_size {
            return Err(PoolError::Config("min_ready must not exceed max_size"));
        }
        if self.max_concurrent_prepares == 0 {
            return Err(PoolError::Config(
                "max_concurrent_prepares must be at least 1",
            ));
        }
        Ok(())
    }
}

/// Counts of the pool's slots, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Slots that exist or are being created.
    pub total: usize,
    /// Slots ready to be acquired.
    pub ready: usize,
    /// Slots out on lease.
    pub leased: usize,
    /// Slots being created, reset or checked.
    pub preparing: usize,
    /// Acquires waiting for a slot.
    pub waiting: usize,
    /// Slots created since the pool started.
    pub created: u64,
    /// Slots destroyed since the pool started (failed, expired, shut down).
    pub destroyed: u64,
    /// Resets that failed (the slot was replaced).
    pub failed_resets: u64,
    /// Health checks that failed (the slot was replaced).
    pub failed_checks: u64,
    /// Slots retired at a release because of their TTL.
    pub expired: u64,
    /// Slots retired at a release because of their maximum number of uses.
    pub worn_out: u64,
    /// Resets that met the backend away and were tried again once it was
    /// back (the slot was kept).
    pub outage_retries: u64,
    /// Whether the backend can create and reset slots now; `false` is a
    /// degraded pool, which still hands out its ready slots.
    pub backend_available: bool,
}
