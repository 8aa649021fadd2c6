//! [`AnomalySubscriber`]: feeds a [`Detector`] from a
//! [`paddock_events::EventHub`] and emits its alerts back into the hub.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use paddock_events::{
    AcquireOutcome, Event, EventHub, EventKind, ExecOutcome, ResetOutcome, Source, Subscriber,
};

use crate::{Alert, Detector, Observation, ProtocolErrorKind, Scope};

/// The time [`AnomalySubscriber`] passes to [`Detector::observe`]: a
/// monotonic [`Duration`] since an arbitrary epoch. Read under the
/// detector's lock, so it must be quick.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> Duration;
}

/// The default [`Clock`]: [`Instant`] since the clock was made. Monotonic,
/// so the detector's windows never see the wall clock jump.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    start: Instant,
}

impl MonotonicClock {
    /// A clock that reads zero now.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }
}

/// A [`Subscriber`] that turns Paddock's events into [`Observation`]s for a
/// [`Detector`] and emits every [`Alert`] it raises into the same hub as an
/// [`EventKind::Alert`]. The mapping is in `ANOMALY.md`, *From Paddock's
/// events*.
///
/// The detector sits behind a std `Mutex`, held only for the observation;
/// alerts are emitted after it is released, since the emitted alert comes
/// back through `on_event` (which ignores alerts) and other subscribers may
/// call back into this one. Observations are timed by a [`Clock`] read when
/// the event arrives ([`MonotonicClock`] by default), not by `Event::at`,
/// which is wall-clock time.
///
/// The subscriber holds the hub and the hub holds the subscriber: neither
/// is freed until the subscriber is removed with
/// [`EventHub::unsubscribe`].
pub struct AnomalySubscriber {
    detector: Mutex<Detector>,
    hub: EventHub,
    clock: Arc<dyn Clock>,
    alerts: AtomicU64,
}

impl fmt::Debug for AnomalySubscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnomalySubscriber")
            .field("detector", &self.detector)
            .field("hub", &self.hub)
            .field("alerts", &self.alerts)
            .finish_non_exhaustive()
    }
}

impl AnomalySubscriber {
    /// A subscriber feeding `detector` and emitting alerts into `hub`, timed
    /// by a [`MonotonicClock`] started now. Subscribe it to the same hub:
    /// `hub.subscribe(Arc::new(AnomalySubscriber::new(detector, hub.clone())))`.
    pub fn new(detector: Detector, hub: EventHub) -> Self {
        Self::with_clock(detector, hub, Arc::new(MonotonicClock::new()))
    }

    /// [`AnomalySubscriber::new`] with another clock (a simulated one in
    /// tests and soaks).
    pub fn with_clock(detector: Detector, hub: EventHub, clock: Arc<dyn Clock>) -> Self {
        Self {
            detector: Mutex::new(detector),
            hub,
            clock,
            alerts: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Detector> {
        // The detector does not panic on any input; if something did, its
        // state is still usable.
        self.detector.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Feeds a CPU utilization sample of the slot `source` names (its
    /// `pool` and `slot`; nothing is observed without both) to the slot's
    /// scope. There is no CPU event: the host's stats poller calls this.
    /// `source` is the slot's (e.g. its emitter's `source()`), so that an
    /// alert carries its lease and domain.
    pub fn observe_cpu(&self, source: &Source, utilization: f64) {
        let scopes = slot_scope(source).into_iter().collect();
        self.observe(source, scopes, &Observation::CpuSample { utilization });
    }

    /// Feeds an egress denial of the slot `source` names (its `pool` and
    /// `slot`) to its lease's scopes (the slot's, and the tenant's when
    /// `source` has one). There is no egress event: the host's network
    /// filter calls this.
    pub fn observe_egress_denied(&self, source: &Source) {
        let scopes = if source.slot.is_some() {
            lease_scopes(source)
        } else {
            Vec::new()
        };
        self.observe(source, scopes, &Observation::EgressDenied);
    }

    /// Drops the detector's scopes idle for its `idle_timeout_ms`
    /// ([`Detector::prune`] at the clock's now). Call it from a timer (once
    /// a minute is plenty).
    pub fn prune(&self) {
        let mut detector = self.lock();
        let now = self.clock.now();
        detector.prune(now);
    }

    /// How many scopes the detector tracks (a gauge).
    pub fn scopes(&self) -> usize {
        self.lock().scopes()
    }

    /// How many values the detector's scopes retain (a memory gauge; see
    /// [`Detector::retained_samples`]).
    pub fn retained_samples(&self) -> usize {
        self.lock().retained_samples()
    }

    /// How many alerts it has emitted into the hub.
    pub fn alerts_emitted(&self) -> u64 {
        self.alerts.load(Ordering::Relaxed)
    }

    /// Observes `obs` under `scopes`, then emits the alerts with the lock
    /// released.
    fn observe(&self, source: &Source, scopes: Vec<Scope>, obs: &Observation) {
        if scopes.is_empty() {
            return;
        }
        let alerts = {
            let mut detector = self.lock();
            let now = self.clock.now();
            detector.observe_each(&scopes, now, obs)
        };
        for alert in alerts {
            self.emit(source, alert);
        }
    }

    fn emit(&self, trigger: &Source, alert: Alert) {
        self.alerts.fetch_add(1, Ordering::Relaxed);
        let scope = alert.scope;
        // The alert is about its scope: a tenant scope's alert names no
        // slot (and so no domain), a slot scope's no tenant. The lease is
        // the triggering event's, for the host to act on.
        let source = Source {
            pool: Some(scope.pool.as_str().into()),
            slot: scope.slot,
            lease: trigger.lease,
            domain: scope.slot.and(trigger.domain.clone()),
            tenant: scope.tenant.as_deref().map(Into::into),
        };
        self.hub.emit(
            source,
            EventKind::Alert {
                rule: alert.rule.as_str(),
                action: alert.action.as_str(),
                value: alert.value,
                threshold: alert.threshold,
                message: alert.message,
            },
        );
    }
}

impl Subscriber for AnomalySubscriber {
    fn on_event(&self, event: &Event) {
        let source = &event.source;
        let (scopes, obs) = match &event.kind {
            EventKind::ExecFinished {
                outcome,
                result,
                duration,
                ..
            } => {
                // An exec without a result (the request failed) says
                // nothing about the guest's speed or output; the connection
                // failure has its own events.
                let Some(result) = result else {
                    return;
                };
                (
                    lease_scopes(source),
                    Observation::ExecFinished {
                        duration: *duration,
                        output_bytes: result.stdout_bytes.saturating_add(result.stderr_bytes),
                        timed_out: *outcome == ExecOutcome::Timeout || result.timed_out,
                    },
                )
            }
            EventKind::ResetFinished {
                outcome, duration, ..
            } => {
                // An outage is the backend's, not the slot's: neither a
                // failure nor a duration of this slot.
                if *outcome == ResetOutcome::Outage {
                    return;
                }
                (
                    slot_scope(source).into_iter().collect(),
                    Observation::ResetFinished {
                        duration: *duration,
                        ok: *outcome == ResetOutcome::Ok,
                    },
                )
            }
            EventKind::Acquire {
                outcome: AcquireOutcome::Ok,
                wait,
            } => (
                // The wait came before any slot was chosen: the tenant's
                // (or the pool's) wait, never the slot's.
                tenant_or_pool_scope(source).into_iter().collect(),
                Observation::AcquireWait { wait: *wait },
            ),
            EventKind::ProtocolError { kind } => (
                lease_scopes(source),
                Observation::ProtocolError {
                    kind: protocol_error_kind(kind),
                },
            ),
            // Alerts (our own included) are never observations: no loops.
            _ => return,
        };
        self.observe(source, scopes, &obs);
    }
}

/// The detector's kind for an event's protocol error name.
pub fn protocol_error_kind(name: &str) -> ProtocolErrorKind {
    match name {
        "crc" => ProtocolErrorKind::Crc,
        "resync" => ProtocolErrorKind::Resync,
        "unknown_kind" => ProtocolErrorKind::UnknownKind,
        "window_overrun" => ProtocolErrorKind::WindowOverrun,
        _ => ProtocolErrorKind::Other,
    }
}

/// The slot's scope, when the source names a pool and a slot.
fn slot_scope(source: &Source) -> Option<Scope> {
    Some(Scope::slot(source.pool.as_deref()?, source.slot?))
}

/// The scopes of something that happened in a lease: the slot's and the
/// tenant's (as [`Scope::for_lease`]), whichever the source names; the
/// pool's when it names neither; none without a pool.
fn lease_scopes(source: &Source) -> Vec<Scope> {
    let Some(pool) = source.pool.as_deref() else {
        return Vec::new();
    };
    match (source.slot, source.tenant.as_deref()) {
        (Some(slot), Some(tenant)) => Scope::for_lease(pool, slot, tenant).into(),
        (Some(slot), None) => vec![Scope::slot(pool, slot)],
        (None, Some(tenant)) => vec![Scope::tenant(pool, tenant)],
        (None, None) => vec![Scope::pool(pool)],
    }
}

/// The tenant's scope, or the pool's without a tenant; none without a pool.
fn tenant_or_pool_scope(source: &Source) -> Option<Scope> {
    let pool = source.pool.as_deref()?;
    Some(match source.tenant.as_deref() {
        Some(tenant) => Scope::tenant(pool, tenant),
        None => Scope::pool(pool),
    })
}
