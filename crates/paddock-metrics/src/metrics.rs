//! The subscriber: event-fed metric families, a per-pool cache of their
//! children for the data path, and the scrape-time collectors.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use paddock_events::{AcquireOutcome, Event, EventKind, ExecOutcome, FileDirection, Subscriber};
use prometheus::core::Collector;
use prometheus::{
    CounterVec, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Registry,
    TextEncoder,
};

use crate::MetricsError;
use crate::buckets;
use crate::define::{float_counter, histogram, int_counter, int_gauge};
use crate::pool::{PoolCollector, PoolGauge, PoolGauges};
use crate::slot::{SlotCollector, SlotResources, SlotStats};

/// Every [`EventKind::name`], in [`kind_index`] order: the values of
/// `paddock_events_total`'s `kind` label, created at zero.
pub(crate) const EVENT_KINDS: [&str; 19] = [
    "pool_created",
    "golden_built",
    "slot_created",
    "slot_create_failed",
    "slot_destroyed",
    "acquire",
    "lease_released",
    "reset_finished",
    "health_check_failed",
    "backend_connection",
    "exec_started",
    "exec_finished",
    "file_transferred",
    "agent_round_trip",
    "protocol_error",
    "rate_limited",
    "throttled",
    "denied",
    "alert",
];

/// The position of `kind`'s name in [`EVENT_KINDS`]. Exhaustive on
/// purpose: a new kind of event fails to build here until it is counted
/// (and documented).
pub(crate) fn kind_index(kind: &EventKind) -> usize {
    match kind {
        EventKind::PoolCreated { .. } => 0,
        EventKind::GoldenBuilt { .. } => 1,
        EventKind::SlotCreated { .. } => 2,
        EventKind::SlotCreateFailed { .. } => 3,
        EventKind::SlotDestroyed { .. } => 4,
        EventKind::Acquire { .. } => 5,
        EventKind::LeaseReleased { .. } => 6,
        EventKind::ResetFinished { .. } => 7,
        EventKind::HealthCheckFailed { .. } => 8,
        EventKind::BackendConnection { .. } => 9,
        EventKind::ExecStarted { .. } => 10,
        EventKind::ExecFinished { .. } => 11,
        EventKind::FileTransferred { .. } => 12,
        EventKind::AgentRoundTrip { .. } => 13,
        EventKind::ProtocolError { .. } => 14,
        EventKind::RateLimited { .. } => 15,
        EventKind::Throttled { .. } => 16,
        EventKind::Denied { .. } => 17,
        EventKind::Alert { .. } => 18,
    }
}

/// The position of `outcome` in [`AcquireOutcome::ALL`].
pub(crate) fn acquire_index(outcome: AcquireOutcome) -> usize {
    match outcome {
        AcquireOutcome::Ok => 0,
        AcquireOutcome::Timeout => 1,
        AcquireOutcome::Unavailable => 2,
        AcquireOutcome::Closed => 3,
        AcquireOutcome::RateLimited => 4,
    }
}

/// The position of `outcome` in [`ExecOutcome::ALL`].
pub(crate) fn exec_index(outcome: ExecOutcome) -> usize {
    match outcome {
        ExecOutcome::Ok => 0,
        ExecOutcome::NonZero => 1,
        ExecOutcome::Signal => 2,
        ExecOutcome::Timeout => 3,
        ExecOutcome::Error => 4,
    }
}

/// Both directions, in [`direction_index`] order (the events crate has no
/// `ALL` for them).
const DIRECTIONS: [FileDirection; 2] = [FileDirection::Put, FileDirection::Get];

fn direction_index(direction: FileDirection) -> usize {
    match direction {
        FileDirection::Put => 0,
        FileDirection::Get => 1,
    }
}

/// The families fed by events. Clones of the registered ones: a clone
/// shares its series.
struct Families {
    events: IntCounterVec,
    acquire_wait: HistogramVec,
    acquires: IntCounterVec,
    lease_held: HistogramVec,
    reset_duration: HistogramVec,
    reset_phase_duration: HistogramVec,
    resets: IntCounterVec,
    slot_recycles: IntCounterVec,
    slot_creations: IntCounterVec,
    slot_creation_failures: IntCounterVec,
    slot_creation_duration: HistogramVec,
    golden_build_duration: HistogramVec,
    health_check_failures: IntCounterVec,
    exec_duration: HistogramVec,
    execs: IntCounterVec,
    exec_output_bytes: IntCounterVec,
    exec_truncated: IntCounterVec,
    file_transfer_bytes: IntCounterVec,
    file_transfers: IntCounterVec,
    file_transfer_duration: HistogramVec,
    agent_round_trip: HistogramVec,
    protocol_errors: IntCounterVec,
    rate_limited: IntCounterVec,
    throttled: CounterVec,
    denied: IntCounterVec,
    anomalies: IntCounterVec,
    libvirt_connected: IntGaugeVec,
    libvirt_reconnects: IntCounterVec,
    golden_info: IntGaugeVec,
    build_info: IntGaugeVec,
}

impl Families {
    #[allow(clippy::too_many_lines)] // One definition per metric, nothing else.
    fn register(registry: &Registry) -> Result<Self, MetricsError> {
        let r = Some(registry);
        Ok(Self {
            events: int_counter(
                r,
                "paddock_events_total",
                "Events the subscriber received, by kind of event.",
                &["kind"],
            )?,
            acquire_wait: histogram(
                registry,
                "paddock_acquire_wait_seconds",
                "Time an acquire waited for a slot, whatever its outcome.",
                &["pool"],
                buckets::ACQUIRE_WAIT,
            )?,
            acquires: int_counter(
                r,
                "paddock_acquires_total",
                "Acquires that ended, by outcome.",
                &["pool", "outcome"],
            )?,
            lease_held: histogram(
                registry,
                "paddock_lease_held_seconds",
                "Time a lease was held, from acquire to release or drop.",
                &["pool"],
                buckets::LEASE_HELD,
            )?,
            reset_duration: histogram(
                registry,
                "paddock_reset_duration_seconds",
                "Time a slot's reset to its golden state took, whatever its outcome.",
                &["pool", "strategy"],
                buckets::RESET,
            )?,
            reset_phase_duration: histogram(
                registry,
                "paddock_reset_phase_duration_seconds",
                "Time each phase of a reset took, where the backend reports phases.",
                &["pool", "strategy", "phase"],
                buckets::RESET,
            )?,
            resets: int_counter(
                r,
                "paddock_resets_total",
                "Resets that ended, by strategy and outcome.",
                &["pool", "strategy", "outcome"],
            )?,
            slot_recycles: int_counter(
                r,
                "paddock_slot_recycles_total",
                "Slots destroyed, by cause and short failure reason (none when there is none).",
                &["pool", "cause", "reason"],
            )?,
            slot_creations: int_counter(
                r,
                "paddock_slot_creations_total",
                "Slot creations that ended, by outcome (ok or failed).",
                &["pool", "outcome"],
            )?,
            slot_creation_failures: int_counter(
                r,
                "paddock_slot_creation_failures_total",
                "Slot creations that failed, by the backend's short reason.",
                &["pool", "reason"],
            )?,
            slot_creation_duration: histogram(
                registry,
                "paddock_slot_creation_duration_seconds",
                "Time a successful slot creation took.",
                &["pool"],
                buckets::BOOT,
            )?,
            golden_build_duration: histogram(
                registry,
                "paddock_golden_build_duration_seconds",
                "Time building a golden state took (boot, warm-up, capture).",
                &["pool"],
                buckets::BOOT,
            )?,
            health_check_failures: int_counter(
                r,
                "paddock_health_check_failures_total",
                "Health checks of ready slots that failed, by short reason.",
                &["pool", "reason"],
            )?,
            exec_duration: histogram(
                registry,
                "paddock_exec_duration_seconds",
                "Time from sending an execution to its end, as the host saw it, whatever its outcome.",
                &["pool"],
                buckets::EXEC,
            )?,
            execs: int_counter(
                r,
                "paddock_execs_total",
                "Executions that ended, by outcome.",
                &["pool", "outcome"],
            )?,
            exec_output_bytes: int_counter(
                r,
                "paddock_exec_output_bytes_total",
                "Bytes executions wrote to stdout or stderr, sent or not.",
                &["pool", "stream"],
            )?,
            exec_truncated: int_counter(
                r,
                "paddock_exec_truncated_total",
                "Executions whose stdout or stderr (or both) was longer than its cap and truncated.",
                &["pool"],
            )?,
            file_transfer_bytes: int_counter(
                r,
                "paddock_file_transfer_bytes_total",
                "Bytes moved by file transfers, completed or not.",
                &["pool", "direction"],
            )?,
            file_transfers: int_counter(
                r,
                "paddock_file_transfers_total",
                "File transfers that ended, by direction and outcome (ok or error).",
                &["pool", "direction", "outcome"],
            )?,
            file_transfer_duration: histogram(
                registry,
                "paddock_file_transfer_duration_seconds",
                "Time a file transfer took, whatever its outcome.",
                &["pool", "direction"],
                buckets::FILE_TRANSFER,
            )?,
            agent_round_trip: histogram(
                registry,
                "paddock_agent_round_trip_seconds",
                "Time of a request/answer round trip to the guest agent (PING or STATUS).",
                &["pool"],
                buckets::AGENT_ROUND_TRIP,
            )?,
            protocol_errors: int_counter(
                r,
                "paddock_agent_protocol_errors_total",
                "Protocol errors from a guest agent, per slot and kind; series go when the slot is destroyed.",
                &["pool", "slot", "kind"],
            )?,
            rate_limited: int_counter(
                r,
                "paddock_rate_limited_total",
                "Requests a rate limit refused, by limit.",
                &["pool", "limit"],
            )?,
            throttled: float_counter(
                r,
                "paddock_throttled_seconds_total",
                "Time a rate limit held data flows back (credit for received bytes returned late), by limit.",
                &["pool", "limit"],
            )?,
            denied: int_counter(
                r,
                "paddock_policy_denials_total",
                "Requests the pool's request policy denied before they were sent, by rule.",
                &["pool", "rule"],
            )?,
            anomalies: int_counter(
                r,
                "paddock_anomalies_total",
                "Anomaly rules that fired, by rule and configured action.",
                &["pool", "rule", "action"],
            )?,
            libvirt_connected: int_gauge(
                r,
                "paddock_libvirt_connected",
                "1 while the libvirt connection is up, 0 after it was lost.",
                &["pool"],
            )?,
            libvirt_reconnects: int_counter(
                r,
                "paddock_libvirt_reconnects_total",
                "Times the libvirt connection came back after being lost.",
                &["pool"],
            )?,
            golden_info: int_gauge(
                r,
                "paddock_golden_info",
                "1 for the pool's current golden state and guest image; the old series goes when it changes.",
                &["pool", "golden_id", "image_hash"],
            )?,
            build_info: int_gauge(
                r,
                "paddock_build_info",
                "1, labelled with the version of Paddock's metrics crate.",
                &["version"],
            )?,
        })
    }
}

/// One pool's children of the families an event touches on the data path,
/// resolved once so that an event costs a map lookup by pool name instead
/// of hashing its label values into every family it touches. Created at
/// the pool's first event, so every outcome starts at zero.
struct PoolChildren {
    acquire_wait: Histogram,
    acquires: [IntCounter; AcquireOutcome::ALL.len()],
    lease_held: Histogram,
    slot_created: IntCounter,
    slot_create_failed: IntCounter,
    slot_creation_duration: Histogram,
    exec_duration: Histogram,
    execs: [IntCounter; ExecOutcome::ALL.len()],
    stdout_bytes: IntCounter,
    stderr_bytes: IntCounter,
    exec_truncated: IntCounter,
    transfer_bytes: [IntCounter; 2],
    /// By direction, then ok (0) or error (1).
    transfers: [[IntCounter; 2]; 2],
    transfer_duration: [Histogram; 2],
    agent_round_trip: Histogram,
}

impl PoolChildren {
    fn new(f: &Families, pool: &str) -> Self {
        let dir = |d: FileDirection| d.as_str();
        Self {
            acquire_wait: f.acquire_wait.with_label_values(&[pool]),
            acquires: AcquireOutcome::ALL
                .map(|o| f.acquires.with_label_values(&[pool, o.as_str()])),
            lease_held: f.lease_held.with_label_values(&[pool]),
            slot_created: f.slot_creations.with_label_values(&[pool, "ok"]),
            slot_create_failed: f.slot_creations.with_label_values(&[pool, "failed"]),
            slot_creation_duration: f.slot_creation_duration.with_label_values(&[pool]),
            exec_duration: f.exec_duration.with_label_values(&[pool]),
            execs: ExecOutcome::ALL.map(|o| f.execs.with_label_values(&[pool, o.as_str()])),
            stdout_bytes: f.exec_output_bytes.with_label_values(&[pool, "stdout"]),
            stderr_bytes: f.exec_output_bytes.with_label_values(&[pool, "stderr"]),
            exec_truncated: f.exec_truncated.with_label_values(&[pool]),
            transfer_bytes: DIRECTIONS
                .map(|d| f.file_transfer_bytes.with_label_values(&[pool, dir(d)])),
            transfers: DIRECTIONS.map(|d| {
                ["ok", "error"].map(|o| f.file_transfers.with_label_values(&[pool, dir(d), o]))
            }),
            transfer_duration: DIRECTIONS
                .map(|d| f.file_transfer_duration.with_label_values(&[pool, dir(d)])),
            agent_round_trip: f.agent_round_trip.with_label_values(&[pool]),
        }
    }
}

/// Paddock's Prometheus metrics: an event-hub [`Subscriber`] that counts
/// and times what the events say, plus gauges read from watched pools and
/// per-slot resource figures at scrape time.
///
/// Subscribe it with `hub.subscribe(Arc::new(metrics))` (keep a clone of
/// the `Arc` to call [`Metrics::watch_pool`] and the like), and serve
/// [`Metrics::render`] (or [`render`] of the embedder's registry) as
/// `text/plain; version=0.0.4`. The crate documentation's table lists every
/// metric.
pub struct Metrics {
    registry: Registry,
    families: Families,
    /// `paddock_events_total`'s children, by [`kind_index`].
    events: [IntCounter; EVENT_KINDS.len()],
    pools: RwLock<HashMap<Arc<str>, PoolChildren>>,
    /// Each pool's current `paddock_golden_info` labels (golden id, image
    /// hash), to remove the old series when they change.
    goldens: Mutex<HashMap<Arc<str>, (String, String)>>,
    pool_gauges: Arc<PoolGauges>,
    slot_stats: Arc<SlotStats>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pools = self
            .pools
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        f.debug_struct("Metrics")
            .field("pools_seen", &pools)
            .field("pools_watched", &self.pool_gauges.watched())
            .field("slots_with_resources", &self.slot_stats.slots())
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// Registers every metric into the embedder's `registry` (which may hold
    /// other metrics too; none of them may be named `paddock_*`).
    ///
    /// # Errors
    ///
    /// [`MetricsError::Register`] when the registry already has one of these
    /// metrics (a second `Metrics` on the same registry).
    pub fn register(registry: &Registry) -> Result<Self, MetricsError> {
        let families = Families::register(registry)?;
        families
            .build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let events = EVENT_KINDS.map(|kind| families.events.with_label_values(&[kind]));
        let pool_gauges = Arc::new(PoolGauges::new()?);
        PoolCollector(pool_gauges.clone()).register(registry)?;
        let slot_stats = Arc::new(SlotStats::new()?);
        SlotCollector(slot_stats.clone()).register(registry)?;
        Ok(Self {
            registry: registry.clone(),
            families,
            events,
            pools: RwLock::new(HashMap::new()),
            goldens: Mutex::new(HashMap::new()),
            pool_gauges,
            slot_stats,
        })
    }

    /// Metrics in a registry of their own, returned too (it is the same one
    /// [`Metrics::registry`] gives).
    ///
    /// # Errors
    ///
    /// As [`Metrics::register`]; on a new registry, only a bug here.
    pub fn new() -> Result<(Self, Registry), MetricsError> {
        let registry = Registry::new();
        let metrics = Self::register(&registry)?;
        Ok((metrics, registry))
    }

    /// The registry the metrics were registered into.
    #[must_use]
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The text exposition format of [`Metrics::registry`], everything in
    /// it (the embedder's metrics too).
    ///
    /// # Errors
    ///
    /// [`MetricsError::Render`] when encoding fails.
    pub fn render(&self) -> Result<String, MetricsError> {
        render(&self.registry)
    }

    /// Reads `pool`'s counts at every scrape (`paddock_slots`,
    /// `paddock_pool_slots`, `paddock_acquires_waiting`,
    /// `paddock_pool_backend_available`) under the label `pool` =
    /// [`PoolGauge::name`]. Only a weak reference is kept: once the pool is
    /// dropped its series vanish from the next scrape. Watching a second
    /// pool of the same name replaces the first.
    pub fn watch_pool(&self, pool: Arc<dyn PoolGauge>) {
        self.pool_gauges.watch(&pool);
    }

    /// Stops reading the pool named `name`; whether it was watched.
    pub fn unwatch_pool(&self, name: &str) -> bool {
        self.pool_gauges.unwatch(name)
    }

    /// Records slot `slot` of `pool`'s latest resource figures from
    /// libvirt's bulk stats, exposed from the next scrape on as
    /// `paddock_slot_*` {pool, slot}. The figures are kept until the slot's
    /// [`EventKind::SlotDestroyed`] event; a poller must not report a slot
    /// after that, or it comes back.
    pub fn set_slot_resources(&self, pool: &str, slot: u32, figures: SlotResources) {
        self.slot_stats.set(pool, slot, figures);
    }

    /// Runs `f` with `pool`'s children, creating them at its first event.
    fn with_pool(&self, pool: &str, f: impl FnOnce(&PoolChildren)) {
        {
            let pools = self.pools.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(children) = pools.get(pool) {
                f(children);
                return;
            }
        }
        let mut pools = self.pools.write().unwrap_or_else(PoisonError::into_inner);
        let children = pools
            .entry(Arc::from(pool))
            .or_insert_with(|| PoolChildren::new(&self.families, pool));
        f(children);
    }

    fn set_golden(&self, pool: &str, golden_id: &str, image_hash: &str) {
        let mut goldens = self.goldens.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((old_id, old_hash)) = goldens.get(pool) {
            if old_id != golden_id || old_hash != image_hash {
                // Absent only if someone else removed it: nothing to do then.
                let _ = self.families.golden_info.remove_label_values(&[
                    pool,
                    old_id.as_str(),
                    old_hash.as_str(),
                ]);
            }
        }
        self.families
            .golden_info
            .with_label_values(&[pool, golden_id, image_hash])
            .set(1);
        goldens.insert(
            Arc::from(pool),
            (golden_id.to_owned(), image_hash.to_owned()),
        );
    }

    /// Drops a destroyed slot's per-slot series, so that they do not pile up
    /// as slots are replaced.
    fn forget_slot(&self, pool: &str, slot: u32) {
        remove_series(&self.families.protocol_errors, pool, &slot.to_string());
        self.slot_stats.remove(pool, slot);
    }
}

/// Removes every series of `family` whose `pool` and `slot` labels are
/// these. A family has no partial-match removal, so its series are listed
/// (rare: once per destroyed slot).
fn remove_series(family: &IntCounterVec, pool: &str, slot: &str) {
    for mf in family.collect() {
        for metric in mf.get_metric() {
            let labels: HashMap<&str, &str> = metric
                .get_label()
                .iter()
                .map(|pair| (pair.name(), pair.value()))
                .collect();
            if labels.get("pool") == Some(&pool) && labels.get("slot") == Some(&slot) {
                // Absent only if a concurrent destroy removed it first.
                let _ = family.remove(&labels);
            }
        }
    }
}

/// A duration as Prometheus' base unit.
fn seconds(duration: &Duration) -> f64 {
    duration.as_secs_f64()
}

impl Subscriber for Metrics {
    fn on_event(&self, event: &Event) {
        self.events[kind_index(&event.kind)].inc();
        // Events from outside any pool (a sandbox of its own, a shared
        // libvirt connection) are counted under pool="".
        let pool = event.source.pool.as_deref().unwrap_or("");
        let f = &self.families;
        match &event.kind {
            EventKind::PoolCreated {
                golden_id,
                image_hash,
                ..
            } => self.set_golden(pool, golden_id, image_hash),
            EventKind::GoldenBuilt { duration, .. } => f
                .golden_build_duration
                .with_label_values(&[pool])
                .observe(seconds(duration)),
            EventKind::SlotCreated { duration } => self.with_pool(pool, |p| {
                p.slot_created.inc();
                p.slot_creation_duration.observe(seconds(duration));
            }),
            EventKind::SlotCreateFailed { reason } => {
                self.with_pool(pool, |p| p.slot_create_failed.inc());
                f.slot_creation_failures
                    .with_label_values(&[pool, reason])
                    .inc();
            }
            EventKind::SlotDestroyed { cause, reason } => {
                f.slot_recycles
                    .with_label_values(&[pool, cause.as_str(), reason.unwrap_or("none")])
                    .inc();
                if let Some(slot) = event.source.slot {
                    self.forget_slot(pool, slot);
                }
            }
            EventKind::Acquire { outcome, wait } => self.with_pool(pool, |p| {
                p.acquires[acquire_index(*outcome)].inc();
                p.acquire_wait.observe(seconds(wait));
            }),
            EventKind::LeaseReleased { held } => {
                self.with_pool(pool, |p| p.lease_held.observe(seconds(held)));
            }
            EventKind::ResetFinished {
                strategy,
                outcome,
                duration,
                phases,
                ..
            } => {
                f.reset_duration
                    .with_label_values(&[pool, strategy])
                    .observe(seconds(duration));
                f.resets
                    .with_label_values(&[pool, strategy, outcome.as_str()])
                    .inc();
                for (phase, took) in phases {
                    f.reset_phase_duration
                        .with_label_values(&[pool, strategy, phase])
                        .observe(seconds(took));
                }
            }
            EventKind::HealthCheckFailed { reason } => f
                .health_check_failures
                .with_label_values(&[pool, reason])
                .inc(),
            // Not cached per pool: rare, and the gauge must not exist (at 0,
            // "down") before the first connection event says anything.
            EventKind::BackendConnection { connected } => {
                f.libvirt_connected
                    .with_label_values(&[pool])
                    .set(i64::from(*connected));
                let reconnects = f.libvirt_reconnects.with_label_values(&[pool]);
                if *connected {
                    reconnects.inc();
                }
            }
            // Counted in paddock_events_total only: its end carries the
            // figures.
            EventKind::ExecStarted { .. } => {}
            EventKind::ExecFinished {
                outcome,
                result,
                duration,
                ..
            } => self.with_pool(pool, |p| {
                p.execs[exec_index(*outcome)].inc();
                p.exec_duration.observe(seconds(duration));
                if let Some(result) = result {
                    p.stdout_bytes.inc_by(result.stdout_bytes);
                    p.stderr_bytes.inc_by(result.stderr_bytes);
                    if result.stdout_truncated || result.stderr_truncated {
                        p.exec_truncated.inc();
                    }
                }
            }),
            EventKind::FileTransferred {
                direction,
                bytes,
                ok,
                duration,
                ..
            } => self.with_pool(pool, |p| {
                let d = direction_index(*direction);
                p.transfer_bytes[d].inc_by(*bytes);
                p.transfers[d][usize::from(!*ok)].inc();
                p.transfer_duration[d].observe(seconds(duration));
            }),
            EventKind::AgentRoundTrip { duration } => {
                self.with_pool(pool, |p| p.agent_round_trip.observe(seconds(duration)));
            }
            EventKind::ProtocolError { kind } => {
                // Per slot: one broken or hostile guest matters on its own.
                // No slot (an agent outside a pool) is slot="".
                let slot = event.source.slot.map(|s| s.to_string()).unwrap_or_default();
                f.protocol_errors
                    .with_label_values(&[pool, slot.as_str(), kind])
                    .inc();
            }
            EventKind::RateLimited { limit, .. } => {
                f.rate_limited.with_label_values(&[pool, limit]).inc();
            }
            EventKind::Throttled { limit, delay } => {
                f.throttled
                    .with_label_values(&[pool, limit])
                    .inc_by(delay.as_secs_f64());
            }
            // The rule is one of a fixed set (`paddock_policy::Rule`); the
            // policy's name and the detail are free text, not labels.
            EventKind::Denied { rule, .. } => {
                f.denied.with_label_values(&[pool, rule]).inc();
            }
            EventKind::Alert { rule, action, .. } => {
                f.anomalies.with_label_values(&[pool, rule, action]).inc();
            }
        }
    }
}

/// The text exposition format (`text/plain; version=0.0.4`) of everything
/// in `registry`.
///
/// # Errors
///
/// [`MetricsError::Render`] when encoding fails.
pub fn render(registry: &Registry) -> Result<String, MetricsError> {
    TextEncoder::new()
        .encode_to_string(&registry.gather())
        .map_err(|source| MetricsError::Render { source })
}
