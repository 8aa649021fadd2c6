//! Rate limits (GCRA, the `governor` crate): acquires per pool and per
//! tenant, executions and uploaded bytes per lease. A refusal is a typed
//! error that says when to retry ([`crate::PoolError::RateLimited`],
//! [`paddock_agent_client::ClientError::Refused`]), an event
//! ([`paddock_events::EventKind::RateLimited`]), and so a metric and an
//! audit record.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};
use paddock_agent_client::{GateRequest, Refusal, RequestGate};
use paddock_events::{LeaseId, Source};

/// A rate: `per_second` on average, with bursts of up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// The sustained rate.
    pub per_second: NonZeroU32,
    /// How many may pass at once after a quiet time.
    pub burst: NonZeroU32,
}

impl RateLimit {
    /// `per_second` with a burst of as many.
    #[must_use]
    pub fn per_second(per_second: NonZeroU32) -> Self {
        Self {
            per_second,
            burst: per_second,
        }
    }

    fn quota(self) -> Quota {
        Quota::per_second(self.per_second).allow_burst(self.burst)
    }
}

/// A pool's rate limits; all off by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimits {
    /// Acquires per second, for the whole pool.
    pub acquires: Option<RateLimit>,
    /// Acquires per second, per tenant ([`crate::Pool::acquire_for`]).
    pub tenant_acquires: Option<RateLimit>,
    /// Executions per second, per lease.
    pub lease_execs: Option<RateLimit>,
    /// Uploaded file bytes per second, per lease (a file larger than the
    /// burst is refused for good: its `retry_after` is `None`).
    pub lease_file_bytes: Option<RateLimit>,
}

/// Keyed limiters drop the state of keys that are back to a fresh state
/// once they hold more keys than this (checked as they are used), so they
/// never grow with every lease or tenant ever seen.
const PRUNE_ABOVE: usize = 256;

fn retry_after(
    until: governor::NotUntil<<DefaultClock as governor::clock::Clock>::Instant>,
) -> Duration {
    until.wait_time_from(DefaultClock::default().now())
}

fn prune<K: std::hash::Hash + Eq + Clone>(limiter: &DefaultKeyedRateLimiter<K>) {
    if limiter.len() > PRUNE_ABOVE {
        limiter.retain_recent();
        limiter.shrink_to_fit();
    }
}

/// The pool's acquire limits.
#[derive(Debug)]
pub(crate) struct AcquireLimiter {
    pool: Option<DefaultDirectRateLimiter>,
    tenants: Option<DefaultKeyedRateLimiter<Arc<str>>>,
}

impl AcquireLimiter {
    pub(crate) fn new(limits: &RateLimits) -> Self {
        Self {
            pool: limits
                .acquires
                .map(|limit| DefaultDirectRateLimiter::direct(limit.quota())),
            tenants: limits
                .tenant_acquires
                .map(|limit| DefaultKeyedRateLimiter::keyed(limit.quota())),
        }
    }

    /// `Err((limit, retry after))` when an acquire for `tenant` must wait.
    pub(crate) fn check(&self, tenant: Option<&Arc<str>>) -> Result<(), (&'static str, Duration)> {
        if let (Some(limiter), Some(tenant)) = (&self.tenants, tenant) {
            prune(limiter);
            limiter
                .check_key(tenant)
                .map_err(|until| ("tenant_acquires", retry_after(until)))?;
        }
        if let Some(limiter) = &self.pool {
            limiter
                .check()
                .map_err(|until| ("acquires", retry_after(until)))?;
        }
        Ok(())
    }
}

/// A pool's per-lease limits, as the request gate of its slots' agent
/// clients: keyed by the lease in the event source the pool sets on each
/// slot.
#[derive(Debug)]
pub struct LeaseGate {
    execs: Option<DefaultKeyedRateLimiter<LeaseId>>,
    file_bytes: Option<DefaultKeyedRateLimiter<LeaseId>>,
}

impl LeaseGate {
    /// The gate for `limits`, or `None` when it has no per-lease limit.
    #[must_use]
    pub fn new(limits: &RateLimits) -> Option<Self> {
        if limits.lease_execs.is_none() && limits.lease_file_bytes.is_none() {
            return None;
        }
        Some(Self {
            execs: limits
                .lease_execs
                .map(|limit| DefaultKeyedRateLimiter::keyed(limit.quota())),
            file_bytes: limits
                .lease_file_bytes
                .map(|limit| DefaultKeyedRateLimiter::keyed(limit.quota())),
        })
    }
}

impl RequestGate for LeaseGate {
    fn admit(&self, source: &Source, request: &GateRequest<'_>) -> Result<(), Refusal> {
        // A slot's client outside a lease (the pool's own checks and
        // rewarm commands) is not limited.
        let Some(lease) = source.lease else {
            return Ok(());
        };
        match request {
            GateRequest::Exec(_) => {
                if let Some(limiter) = &self.execs {
                    prune(limiter);
                    limiter.check_key(&lease).map_err(|until| Refusal {
                        limit: "lease_execs",
                        retry_after: Some(retry_after(until)),
                    })?;
                }
            }
            GateRequest::FileBytes { bytes, .. } => {
                if let Some(limiter) = &self.file_bytes {
                    prune(limiter);
                    let refused = |retry_after| Refusal {
                        limit: "lease_file_bytes",
                        retry_after,
                    };
                    // Counted in KiB, rounded up: a u32 of cells covers
                    // files of up to 4 TiB.
                    let kib = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX);
                    let Some(cells) = NonZeroU32::new(kib) else {
                        return Ok(());
                    };
                    match limiter.check_key_n(&lease, cells) {
                        Ok(Ok(())) => {}
                        Ok(Err(until)) => return Err(refused(Some(retry_after(until)))),
                        Err(_insufficient) => return Err(refused(None)),
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(per_second: u32, burst: u32) -> RateLimit {
        RateLimit {
            per_second: NonZeroU32::new(per_second).expect("non-zero"),
            burst: NonZeroU32::new(burst).expect("non-zero"),
        }
    }

    fn leased(id: u64) -> Source {
        Source {
            lease: Some(LeaseId(id)),
            ..Source::default()
        }
    }

    #[test]
    fn acquires_past_the_burst_wait_about_one_interval() {
        let limiter = AcquireLimiter::new(&RateLimits {
            acquires: Some(limit(1, 2)),
            ..RateLimits::default()
        });
        assert!(limiter.check(None).is_ok());
        assert!(limiter.check(None).is_ok());
        let (name, wait) = limiter.check(None).expect_err("past the burst");
        assert_eq!(name, "acquires");
        assert!(
            wait > Duration::from_millis(500) && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
    }

    #[test]
    fn tenants_are_limited_one_by_one() {
        let limiter = AcquireLimiter::new(&RateLimits {
            tenant_acquires: Some(limit(1, 1)),
            ..RateLimits::default()
        });
        let (alice, bob): (Arc<str>, Arc<str>) = ("alice".into(), "bob".into());
        assert!(limiter.check(Some(&alice)).is_ok());
        assert_eq!(
            limiter.check(Some(&alice)).map_err(|(name, _)| name),
            Err("tenant_acquires")
        );
        assert!(limiter.check(Some(&bob)).is_ok());
        // No tenant, no tenant limit.
        assert!(limiter.check(None).is_ok());
    }

    #[test]
    fn leases_have_their_own_exec_and_byte_budgets() {
        let gate = LeaseGate::new(&RateLimits {
            lease_execs: Some(limit(1, 2)),
            lease_file_bytes: Some(limit(1024, 1024)),
            ..RateLimits::default()
        })
        .expect("a gate");
        let exec = paddock_agent_client::Execute::argv(["true"]);
        let request = GateRequest::Exec(&exec);
        assert!(gate.admit(&leased(1), &request).is_ok());
        assert!(gate.admit(&leased(1), &request).is_ok());
        let refusal = gate.admit(&leased(1), &request).expect_err("third");
        assert_eq!(refusal.limit, "lease_execs");
        assert!(refusal.retry_after.is_some());
        assert!(gate.admit(&leased(2), &request).is_ok(), "another lease");
        assert!(gate.admit(&Source::default(), &request).is_ok(), "no lease");

        let bytes = |bytes| GateRequest::FileBytes {
            direction: paddock_events::FileDirection::Put,
            bytes,
        };
        assert!(gate.admit(&leased(1), &bytes(512 * 1024)).is_ok());
        let refusal = gate
            .admit(&leased(1), &bytes(600 * 1024))
            .expect_err("over the rest of the budget");
        assert!(refusal.retry_after.is_some());
        let never = gate
            .admit(&leased(3), &bytes(2 << 30))
            .expect_err("larger than the burst");
        assert_eq!(never.retry_after, None);
    }

    #[test]
    fn keyed_limiters_forget_idle_keys() {
        let gate = LeaseGate::new(&RateLimits {
            lease_execs: Some(limit(1000, 1)),
            ..RateLimits::default()
        })
        .expect("a gate");
        let exec = paddock_agent_client::Execute::argv(["true"]);
        for id in 0..2000 {
            let _ = gate.admit(&leased(id), &GateRequest::Exec(&exec));
        }
        std::thread::sleep(Duration::from_millis(20));
        let _ = gate.admit(&leased(5000), &GateRequest::Exec(&exec));
        let held = gate.execs.as_ref().map_or(0, DefaultKeyedRateLimiter::len);
        assert!(held <= PRUNE_ABOVE + 1, "{held} keys held");
    }
}
