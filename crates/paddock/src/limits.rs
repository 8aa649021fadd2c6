//! Rate limits (GCRA, the `governor` crate): acquires per pool and per
//! tenant, executions and uploaded bytes per lease, and received bytes
//! (exec output, downloads) per lease. A refusal is a typed error that says
//! when to retry ([`crate::PoolError::RateLimited`],
//! [`paddock_agent_client::ClientError::Refused`]), an event
//! ([`paddock_events::EventKind::RateLimited`]), and so a metric and an
//! audit record. Received bytes are never refused: their credit is held
//! back ([`paddock_events::EventKind::Throttled`]), which slows the guest's
//! writer down.
//!
//! An anomaly rule whose action is `throttle_tenant` refuses the tenant's
//! acquires for [`RateLimits::tenant_throttle`] (limit `tenant_throttled`).
//!
//! Keyed state (per tenant, per lease) is pruned on a timer
//! ([`PRUNE_INTERVAL`]), and as it is used once it holds more than
//! [`PRUNE_ABOVE`] keys, so it never grows with every key ever seen.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};
use paddock_agent_client::{Flow, GateRequest, Refusal, RequestGate, Size};
use paddock_events::{LeaseId, Source};
use paddock_policy::Policy;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// Acquires per second, for the whole pool.
    pub acquires: Option<RateLimit>,
    /// Acquires per second, per tenant ([`crate::Pool::acquire_for`]).
    pub tenant_acquires: Option<RateLimit>,
    /// Executions per second, per lease.
    pub lease_execs: Option<RateLimit>,
    /// Uploaded file bytes per second, per lease, counted in KiB: `per_second`
    /// and `burst` are KiB. A file larger than the burst is refused for
    /// good (its `retry_after` is `None`).
    pub lease_file_bytes: Option<RateLimit>,
    /// Received bytes per second, per lease (exec output and downloads),
    /// counted in KiB: `per_second` and `burst` are KiB. Paced, never
    /// refused. A burst below the client's window
    /// ([`paddock_agent_client::ClientConfig::window`]) is charged at most
    /// the burst per returned credit, so keep it at least that large.
    pub lease_received_bytes: Option<RateLimit>,
    /// How long a tenant's acquires are refused once an anomaly rule with
    /// the `throttle_tenant` action fired for one of its leases; 60 s by
    /// default.
    pub tenant_throttle: Duration,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            acquires: None,
            tenant_acquires: None,
            lease_execs: None,
            lease_file_bytes: None,
            lease_received_bytes: None,
            tenant_throttle: Duration::from_secs(60),
        }
    }
}

/// Keyed limiters drop the state of keys that are back to a fresh state
/// once they hold more keys than this (checked as they are used).
pub const PRUNE_ABOVE: usize = 256;

/// How often a pool prunes its keyed limiters.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

fn retry_after(
    until: governor::NotUntil<<DefaultClock as governor::clock::Clock>::Instant>,
) -> Duration {
    until.wait_time_from(DefaultClock::default().now())
}

fn prune_if_large<K: std::hash::Hash + Eq + Clone>(limiter: &DefaultKeyedRateLimiter<K>) {
    if limiter.len() > PRUNE_ABOVE {
        prune(limiter);
    }
}

fn prune<K: std::hash::Hash + Eq + Clone>(limiter: &DefaultKeyedRateLimiter<K>) {
    limiter.retain_recent();
    limiter.shrink_to_fit();
}

/// `bytes` as governor cells: KiB rounded up, at least one.
fn kib_cells(bytes: u64) -> NonZeroU32 {
    let kib = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX);
    NonZeroU32::new(kib).unwrap_or(NonZeroU32::MIN)
}

/// The pool's acquire limits, and the tenants an anomaly throttled.
#[derive(Debug)]
pub(crate) struct AcquireLimiter {
    /// Replaced whole by [`AcquireLimiter::set_limits`].
    limiters: std::sync::RwLock<AcquireLimiters>,
    /// Tenants whose acquires are refused until the instant (the runtime's
    /// clock, like the acquire timeout's).
    throttled: Mutex<HashMap<Arc<str>, Instant>>,
}

/// The limiters of one set of [`RateLimits`].
#[derive(Debug)]
struct AcquireLimiters {
    limits: RateLimits,
    pool: Option<DefaultDirectRateLimiter>,
    tenants: Option<DefaultKeyedRateLimiter<Arc<str>>>,
}

impl AcquireLimiters {
    fn new(limits: &RateLimits) -> Self {
        Self {
            limits: *limits,
            pool: limits
                .acquires
                .map(|limit| DefaultDirectRateLimiter::direct(limit.quota())),
            tenants: limits
                .tenant_acquires
                .map(|limit| DefaultKeyedRateLimiter::keyed(limit.quota())),
        }
    }
}

impl AcquireLimiter {
    pub(crate) fn new(limits: &RateLimits) -> Self {
        Self {
            limiters: std::sync::RwLock::new(AcquireLimiters::new(limits)),
            throttled: Mutex::new(HashMap::new()),
        }
    }

    /// Applies `limits` from now on (their counts start afresh; tenants
    /// throttled stay throttled).
    pub(crate) fn set_limits(&self, limits: &RateLimits) {
        *self
            .limiters
            .write()
            .unwrap_or_else(PoisonError::into_inner) = AcquireLimiters::new(limits);
    }

    /// The limits in force.
    pub(crate) fn limits(&self) -> RateLimits {
        self.limiters
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .limits
    }

    /// `Err((limit, retry after))` when an acquire for `tenant` must wait.
    pub(crate) fn check(&self, tenant: Option<&Arc<str>>) -> Result<(), (&'static str, Duration)> {
        if let Some(tenant) = tenant {
            let until = self
                .throttled
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(tenant)
                .copied();
            if let Some(wait) = until.and_then(|until| until.checked_duration_since(Instant::now()))
            {
                return Err(("tenant_throttled", wait));
            }
        }
        let limiters = self.limiters.read().unwrap_or_else(PoisonError::into_inner);
        if let (Some(limiter), Some(tenant)) = (&limiters.tenants, tenant) {
            prune_if_large(limiter);
            limiter
                .check_key(tenant)
                .map_err(|until| ("tenant_acquires", retry_after(until)))?;
        }
        if let Some(limiter) = &limiters.pool {
            limiter
                .check()
                .map_err(|until| ("acquires", retry_after(until)))?;
        }
        Ok(())
    }

    /// Refuses `tenant`'s acquires for the configured time from now.
    pub(crate) fn throttle(&self, tenant: &Arc<str>) {
        let until = Instant::now() + self.limits().tenant_throttle;
        let mut throttled = self
            .throttled
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let entry = throttled.entry(Arc::clone(tenant)).or_insert(until);
        *entry = (*entry).max(until);
    }

    /// Forgets tenants back to a fresh state and throttles that ended.
    pub(crate) fn prune(&self) {
        if let Some(limiter) = &self
            .limiters
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .tenants
        {
            prune(limiter);
        }
        let now = Instant::now();
        self.throttled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, until| *until > now);
    }

    /// How many tenants the limiter holds state for (rate and throttle).
    #[cfg(test)]
    fn tenants_held(&self) -> usize {
        self.limiters
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .tenants
            .as_ref()
            .map_or(0, DefaultKeyedRateLimiter::len)
            + self
                .throttled
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len()
    }
}

/// A pool's per-lease limits and its request policy, as the request gate
/// of its slots' agent clients: keyed by the lease in the event source the
/// pool sets on each slot. Requests outside a lease (the pool's own checks
/// and rewarm commands) pass both. Its limits and policy can be replaced
/// while the pool serves ([`LeaseGate::set_limits`],
/// [`LeaseGate::set_policy`]).
#[derive(Debug)]
pub struct LeaseGate {
    limiters: std::sync::RwLock<LeaseLimiters>,
    policy: std::sync::RwLock<Option<Arc<Policy>>>,
}

/// The per-lease limiters of one set of [`RateLimits`].
#[derive(Debug)]
struct LeaseLimiters {
    execs: Option<DefaultKeyedRateLimiter<LeaseId>>,
    file_bytes: Option<(DefaultKeyedRateLimiter<LeaseId>, NonZeroU32)>,
    received_bytes: Option<(DefaultKeyedRateLimiter<LeaseId>, NonZeroU32)>,
}

impl LeaseLimiters {
    fn new(limits: &RateLimits) -> Self {
        let keyed = |limit: RateLimit| (DefaultKeyedRateLimiter::keyed(limit.quota()), limit.burst);
        Self {
            execs: limits
                .lease_execs
                .map(|limit| DefaultKeyedRateLimiter::keyed(limit.quota())),
            file_bytes: limits.lease_file_bytes.map(keyed),
            received_bytes: limits.lease_received_bytes.map(keyed),
        }
    }
}

impl LeaseGate {
    /// The gate for `limits`, or `None` when it has no per-lease limit.
    #[must_use]
    pub fn new(limits: &RateLimits) -> Option<Self> {
        (limits.lease_execs.is_some()
            || limits.lease_file_bytes.is_some()
            || limits.lease_received_bytes.is_some())
        .then(|| Self::with_limits(limits))
    }

    /// The gate for `limits`, even with no per-lease limit (it admits
    /// everything until [`LeaseGate::set_limits`] gives it some).
    #[must_use]
    pub fn with_limits(limits: &RateLimits) -> Self {
        Self {
            limiters: std::sync::RwLock::new(LeaseLimiters::new(limits)),
            policy: std::sync::RwLock::new(None),
        }
    }

    /// Checks every lease's requests against `policy` from now on (`None`:
    /// every well-formed request is sent).
    pub fn set_policy(&self, policy: Option<Arc<Policy>>) {
        *self.policy.write().unwrap_or_else(PoisonError::into_inner) = policy;
    }

    /// The request policy in force.
    #[must_use]
    pub fn policy(&self) -> Option<Arc<Policy>> {
        self.policy
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Applies `limits`' per-lease limits from now on; every lease's counts
    /// start afresh.
    pub fn set_limits(&self, limits: &RateLimits) {
        *self
            .limiters
            .write()
            .unwrap_or_else(PoisonError::into_inner) = LeaseLimiters::new(limits);
    }

    fn limiters(&self) -> std::sync::RwLockReadGuard<'_, LeaseLimiters> {
        self.limiters.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many leases the gate holds state for, over all its limits.
    #[must_use]
    pub fn leases_held(&self) -> usize {
        let limiters = self.limiters();
        limiters
            .execs
            .as_ref()
            .map_or(0, DefaultKeyedRateLimiter::len)
            + [&limiters.file_bytes, &limiters.received_bytes]
                .into_iter()
                .flatten()
                .map(|(limiter, _)| limiter.len())
                .sum::<usize>()
    }
}

impl RequestGate for LeaseGate {
    fn admit(&self, source: &Source, request: &mut GateRequest<'_>) -> Result<(), Refusal> {
        // A slot's client outside a lease (the pool's own checks and
        // rewarm commands) is not limited.
        let Some(lease) = source.lease else {
            return Ok(());
        };
        // The policy first: a denied request costs no rate budget.
        if let Some(policy) = self.policy() {
            policy.check(request).map_err(Refusal::Denied)?;
        }
        let limiters = self.limiters();
        match request {
            GateRequest::Exec { .. } => {
                if let Some(limiter) = &limiters.execs {
                    prune_if_large(limiter);
                    limiter
                        .check_key(&lease)
                        .map_err(|until| Refusal::RateLimited {
                            limit: "lease_execs",
                            retry_after: Some(retry_after(until)),
                        })?;
                }
            }
            // An upload of known size is admitted whole; one from a reader
            // is paced chunk by chunk instead (`pace`).
            GateRequest::Put {
                size: Size::Known(bytes),
                ..
            } => {
                if let Some((limiter, _)) = &limiters.file_bytes {
                    prune_if_large(limiter);
                    let refused = |retry_after| Refusal::RateLimited {
                        limit: "lease_file_bytes",
                        retry_after,
                    };
                    if *bytes == 0 {
                        return Ok(());
                    }
                    match limiter.check_key_n(&lease, kib_cells(*bytes)) {
                        Ok(Ok(())) => {}
                        Ok(Err(until)) => return Err(refused(Some(retry_after(until)))),
                        Err(_insufficient) => return Err(refused(None)),
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn pace(&self, source: &Source, flow: Flow, bytes: u64) -> Option<(&'static str, Duration)> {
        let lease = source.lease?;
        let limiters = self.limiters();
        let (limiter, burst, limit) = match flow {
            Flow::Received => {
                let (limiter, burst) = limiters.received_bytes.as_ref()?;
                (limiter, *burst, "lease_received_bytes")
            }
            Flow::Sent => {
                let (limiter, burst) = limiters.file_bytes.as_ref()?;
                (limiter, *burst, "lease_file_bytes")
            }
        };
        prune_if_large(limiter);
        // More than the burst at once could never pass: charge the burst.
        let cells = kib_cells(bytes).min(burst);
        match limiter.check_key_n(&lease, cells) {
            Ok(Ok(())) | Err(_) => None,
            Ok(Err(until)) => Some((limit, retry_after(until))),
        }
    }

    fn prune(&self) {
        let limiters = self.limiters();
        if let Some(limiter) = &limiters.execs {
            prune(limiter);
        }
        for (limiter, _) in [&limiters.file_bytes, &limiters.received_bytes]
            .into_iter()
            .flatten()
        {
            prune(limiter);
        }
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

    /// Asks `gate` to let `argv` run for `source`.
    fn exec_at(gate: &LeaseGate, source: &Source, argv: &[&str]) -> Result<(), Refusal> {
        let mut exec = paddock_agent_client::Execute::argv(argv.iter().copied());
        gate.admit(
            source,
            &mut GateRequest::Exec {
                request: &mut exec,
                timeout_defaulted: true,
                running: 0,
            },
        )
    }

    #[test]
    fn a_policy_judges_lease_requests_before_any_limit() {
        let gate = LeaseGate::with_limits(&RateLimits {
            lease_execs: Some(limit(1, 1)),
            ..RateLimits::default()
        });
        let policy =
            Policy::from_toml("schema = 1\nname = \"ls-only\"\n[exec]\nprograms = [\"ls\"]\n")
                .expect("a policy");
        gate.set_policy(Some(Arc::new(policy)));
        assert_eq!(
            gate.policy().map(|p| p.name().to_owned()).as_deref(),
            Some("ls-only")
        );
        for _ in 0..3 {
            let refusal = exec_at(&gate, &leased(1), &["rm", "-rf", "/"]).expect_err("denied");
            let Refusal::Denied(denial) = refusal else {
                panic!("{refusal:?}");
            };
            assert_eq!(denial.rule, paddock_policy::Rule::ExecProgram);
        }
        // The denials cost nothing of the lease's one execution.
        assert!(exec_at(&gate, &leased(1), &["ls"]).is_ok());
        assert!(matches!(
            exec_at(&gate, &leased(1), &["ls"]),
            Err(Refusal::RateLimited { .. })
        ));
        // The pool's own requests, outside a lease, are not judged.
        assert!(exec_at(&gate, &Source::default(), &["rm"]).is_ok());
        let mut status = GateRequest::Status;
        assert!(gate.admit(&leased(2), &mut status).is_err());
        assert!(gate.admit(&Source::default(), &mut status).is_ok());
        gate.set_policy(None);
        assert!(exec_at(&gate, &leased(3), &["rm"]).is_ok(), "no policy");
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
        let admit = |source: &Source| exec_at(&gate, source, &["true"]);
        assert!(admit(&leased(1)).is_ok());
        assert!(admit(&leased(1)).is_ok());
        let refusal = admit(&leased(1)).expect_err("third");
        assert!(
            matches!(
                refusal,
                Refusal::RateLimited {
                    limit: "lease_execs",
                    retry_after: Some(_)
                }
            ),
            "{refusal:?}"
        );
        assert!(admit(&leased(2)).is_ok(), "another lease");
        assert!(admit(&Source::default()).is_ok(), "no lease");

        let put = |source: &Source, bytes| {
            gate.admit(
                source,
                &mut GateRequest::Put {
                    path: "/tmp/x",
                    size: Size::Known(bytes),
                },
            )
        };
        assert!(put(&leased(1), 512 * 1024).is_ok());
        let refusal = put(&leased(1), 600 * 1024).expect_err("over the rest of the budget");
        assert!(matches!(
            refusal,
            Refusal::RateLimited {
                retry_after: Some(_),
                ..
            }
        ));
        let never = put(&leased(3), 2 << 30).expect_err("larger than the burst");
        assert!(matches!(
            never,
            Refusal::RateLimited {
                retry_after: None,
                ..
            }
        ));
        // Uploads from a reader are paced, not admitted against the budget.
        let streamed = gate.admit(
            &leased(3),
            &mut GateRequest::Put {
                path: "/tmp/x",
                size: Size::AtLeast(2 << 30),
            },
        );
        assert!(streamed.is_ok());
    }

    #[test]
    fn keyed_limiters_forget_idle_keys() {
        let gate = LeaseGate::new(&RateLimits {
            lease_execs: Some(limit(1000, 1)),
            ..RateLimits::default()
        })
        .expect("a gate");
        let admit = |id| {
            let _ = exec_at(&gate, &leased(id), &["true"]);
        };
        for id in 0..2000 {
            admit(id);
        }
        std::thread::sleep(Duration::from_millis(20));
        admit(5000);
        let held = gate.leases_held();
        assert!(held <= PRUNE_ABOVE + 1, "{held} keys held");
    }

    #[test]
    fn a_throttled_tenant_is_refused_until_its_time_and_then_forgotten() {
        let limiter = AcquireLimiter::new(&RateLimits {
            tenant_throttle: Duration::from_millis(30),
            ..RateLimits::default()
        });
        let (alice, bob): (Arc<str>, Arc<str>) = ("alice".into(), "bob".into());
        limiter.throttle(&alice);
        let (name, wait) = limiter.check(Some(&alice)).expect_err("throttled");
        assert_eq!(name, "tenant_throttled");
        assert!(wait <= Duration::from_millis(30), "{wait:?}");
        assert!(limiter.check(Some(&bob)).is_ok());
        assert!(limiter.check(None).is_ok());
        assert_eq!(limiter.tenants_held(), 1);
        std::thread::sleep(Duration::from_millis(40));
        assert!(limiter.check(Some(&alice)).is_ok(), "the throttle ended");
        limiter.prune();
        assert_eq!(limiter.tenants_held(), 0);
    }

    #[test]
    fn received_bytes_are_paced_per_lease_never_refused() {
        let gate = LeaseGate::new(&RateLimits {
            lease_received_bytes: Some(limit(64, 64)),
            ..RateLimits::default()
        })
        .expect("a gate");
        // The burst passes at once, and is charged.
        assert_eq!(gate.pace(&leased(1), Flow::Received, 64 * 1024), None);
        let (name, wait) = gate
            .pace(&leased(1), Flow::Received, 32 * 1024)
            .expect("held");
        assert_eq!(name, "lease_received_bytes");
        // 32 KiB at 64 KiB/s.
        assert!(
            wait > Duration::from_millis(400) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert_eq!(
            gate.pace(&leased(2), Flow::Received, 64 * 1024),
            None,
            "another lease"
        );
        assert_eq!(
            gate.pace(&Source::default(), Flow::Received, 1 << 30),
            None,
            "no lease"
        );
        // More than the burst at once is charged the burst: held, not stuck.
        assert!(gate.pace(&leased(3), Flow::Received, 1 << 30).is_none());
        assert!(gate.pace(&leased(3), Flow::Received, 1024).is_some());
        // Received bytes do not count against uploads or executions, and
        // a flow without a limit is not paced.
        assert!(exec_at(&gate, &leased(1), &["true"]).is_ok());
        assert_eq!(gate.pace(&leased(1), Flow::Sent, 1 << 20), None);
    }

    #[test]
    fn pruning_on_the_timer_forgets_every_idle_lease() {
        let gate = LeaseGate::new(&RateLimits {
            lease_execs: Some(limit(1000, 1)),
            lease_received_bytes: Some(limit(1024, 1024)),
            ..RateLimits::default()
        })
        .expect("a gate");
        for id in 0..100 {
            let _ = exec_at(&gate, &leased(id), &["true"]);
            let _ = gate.pace(&leased(id), Flow::Received, 1024);
        }
        assert_eq!(gate.leases_held(), 200);
        // Idle long enough for both to be back to fresh (1 ms per exec,
        // 1 ms per KiB).
        std::thread::sleep(Duration::from_millis(20));
        gate.prune();
        assert_eq!(gate.leases_held(), 0);
    }

    #[test]
    fn limits_set_while_serving_apply_at_once() {
        let gate = LeaseGate::with_limits(&RateLimits::default());
        let request = |gate: &LeaseGate| exec_at(gate, &leased(1), &["true"]);
        for _ in 0..10 {
            assert!(request(&gate).is_ok(), "no limit yet");
        }
        gate.set_limits(&RateLimits {
            lease_execs: Some(limit(1, 1)),
            ..RateLimits::default()
        });
        assert!(request(&gate).is_ok());
        assert!(request(&gate).is_err(), "the new limit holds");
        gate.set_limits(&RateLimits::default());
        assert!(request(&gate).is_ok(), "and goes");

        let acquires = AcquireLimiter::new(&RateLimits::default());
        assert!(acquires.check(None).is_ok() && acquires.check(None).is_ok());
        let one = RateLimits {
            acquires: Some(limit(1, 1)),
            ..RateLimits::default()
        };
        acquires.set_limits(&one);
        assert_eq!(acquires.limits(), one);
        assert!(acquires.check(None).is_ok());
        assert_eq!(
            acquires.check(None).map_err(|(name, _)| name),
            Err("acquires")
        );
    }
}
