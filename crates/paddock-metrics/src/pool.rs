//! Pool counts read at scrape time: a pool knows how many of its slots
//! are ready, leased or preparing better than any replay of its events
//! could, so these gauges ask it when Prometheus scrapes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGaugeVec, Registry};

use crate::MetricsError;
use crate::define::{int_gauge, to_i64};

/// A pool's slot counts, as [`PoolGauge::counts`] reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlotCounts {
    /// Slots ready to be acquired.
    pub ready: usize,
    /// Slots out on lease.
    pub leased: usize,
    /// Slots being created, reset or checked.
    pub preparing: usize,
    /// Acquires waiting for a slot.
    pub waiting: usize,
    /// Slots that exist or are being created, in any state.
    pub total: usize,
    /// Whether the backend can create and reset slots now; `false` is a
    /// degraded pool that still hands out its ready slots.
    pub backend_available: bool,
}

/// A pool whose counts are read at every scrape ([`crate::Metrics::watch_pool`]).
pub trait PoolGauge: Send + Sync {
    /// The pool's name: its `pool` label.
    fn name(&self) -> &str;
    /// The counts now. Called on the scrape path: it must be quick, and must
    /// not call back into [`crate::Metrics`] (a scrape lock is held).
    fn counts(&self) -> SlotCounts;
}

/// What the collector and [`crate::Metrics`] share.
pub(crate) struct PoolGauges {
    /// Watched pools by name. Weak: a pool that is dropped disappears from
    /// the next scrape without an `unwatch_pool`.
    watched: Mutex<HashMap<String, Weak<dyn PoolGauge>>>,
    /// Held while the families below are reset, filled and collected, so
    /// two concurrent scrapes never see each other's half-filled state.
    scrape: Mutex<Families>,
    /// The families' descriptions, for registration.
    descs: Vec<Desc>,
}

struct Families {
    slots: IntGaugeVec,
    pool_slots: IntGaugeVec,
    waiting: IntGaugeVec,
    backend: IntGaugeVec,
}

impl Families {
    fn all(&self) -> [&IntGaugeVec; 4] {
        [&self.slots, &self.pool_slots, &self.waiting, &self.backend]
    }
}

impl PoolGauges {
    pub(crate) fn new() -> Result<Self, MetricsError> {
        let families = Families {
            slots: int_gauge(
                None,
                "paddock_slots",
                "Slots of the pool by state, read from the pool at scrape time.",
                &["pool", "state"],
            )?,
            pool_slots: int_gauge(
                None,
                "paddock_pool_slots",
                "Slots that exist or are being created, in any state, read at scrape time.",
                &["pool"],
            )?,
            waiting: int_gauge(
                None,
                "paddock_acquires_waiting",
                "Acquires waiting for a slot, read at scrape time.",
                &["pool"],
            )?,
            backend: int_gauge(
                None,
                "paddock_pool_backend_available",
                "1 when the pool's backend can create and reset slots, 0 when the pool is degraded.",
                &["pool"],
            )?,
        };
        let descs = families
            .all()
            .iter()
            .flat_map(|f| f.desc())
            .cloned()
            .collect();
        Ok(Self {
            watched: Mutex::new(HashMap::new()),
            scrape: Mutex::new(families),
            descs,
        })
    }

    pub(crate) fn watch(&self, pool: &Arc<dyn PoolGauge>) {
        self.watched
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(pool.name().to_owned(), Arc::downgrade(pool));
    }

    pub(crate) fn unwatch(&self, name: &str) -> bool {
        self.watched
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name)
            .is_some()
    }

    pub(crate) fn watched(&self) -> usize {
        self.watched
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// The live pools, forgetting the dropped ones.
    fn live(&self) -> Vec<(String, Arc<dyn PoolGauge>)> {
        let mut watched = self.watched.lock().unwrap_or_else(PoisonError::into_inner);
        watched.retain(|_, pool| pool.strong_count() > 0);
        watched
            .iter()
            .filter_map(|(name, pool)| pool.upgrade().map(|pool| (name.clone(), pool)))
            .collect()
    }
}

/// The registered collector: a handle on the shared state.
pub(crate) struct PoolCollector(pub(crate) Arc<PoolGauges>);

impl PoolCollector {
    pub(crate) fn register(self, registry: &Registry) -> Result<(), MetricsError> {
        registry
            .register(Box::new(self))
            .map_err(|source| MetricsError::Register {
                name: "paddock_slots",
                source,
            })
    }
}

impl Collector for PoolCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.0.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        // Outside the scrape lock: `counts` may take the pool's own locks.
        let live = self.0.live();
        let families = self.0.scrape.lock().unwrap_or_else(PoisonError::into_inner);
        for family in families.all() {
            family.reset();
        }
        for (name, pool) in live {
            let counts = pool.counts();
            for (state, n) in [
                ("ready", counts.ready),
                ("leased", counts.leased),
                ("preparing", counts.preparing),
            ] {
                families
                    .slots
                    .with_label_values(&[name.as_str(), state])
                    .set(to_i64(n));
            }
            families
                .pool_slots
                .with_label_values(&[name.as_str()])
                .set(to_i64(counts.total));
            families
                .waiting
                .with_label_values(&[name.as_str()])
                .set(to_i64(counts.waiting));
            families
                .backend
                .with_label_values(&[name.as_str()])
                .set(i64::from(counts.backend_available));
        }
        families.all().iter().flat_map(|f| f.collect()).collect()
    }
}
