//! The observability layer in one place: an event hub with Prometheus
//! metrics subscribed, and, when asked for, the audit log and the anomaly
//! detector. Give it to [`crate::PaddockConfig::observe`] and every pool
//! made from that [`crate::Paddock`] emits into it, has its slot gauges
//! watched, and has its slots recycled or its leases ended by the alerts
//! whose action says so.
//!
//! ```no_run
//! # fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use paddock::observe::Observability;
//! let registry = prometheus::Registry::new();
//! let observability = Observability::new(&registry)?
//!     .with_audit("/var/log/paddock/audit".as_ref(), Default::default(), Default::default())?
//!     .with_anomaly_detection(Default::default())?;
//! // ... pools, leases ...
//! println!("{}", observability.render()?);
//! observability.close()?;
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use paddock_anomaly::{AnomalySubscriber, Detector, DetectorConfig};
use paddock_audit::{AuditConfig, AuditLog, AuditOptions, AuditSubscriber, AuditWriter};
use paddock_events::{EventHub, Subscriber};
use paddock_metrics::Metrics;

use crate::{VmError, VmPool};

pub use paddock_anomaly as anomaly;
pub use paddock_audit as audit;
pub use paddock_metrics as metrics;

/// Why a part of the layer could not be set up or closed.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    /// The metrics could not be registered or rendered.
    #[error("Metrics")]
    Metrics(#[source] paddock_metrics::MetricsError),
    /// The audit log could not be opened.
    #[error("The audit log could not be opened")]
    AuditOpen(#[source] paddock_audit::OpenError),
    /// The audit log failed to write or close.
    #[error("The audit log failed")]
    Audit(#[source] paddock_audit::AuditError),
    /// The detector's configuration is invalid.
    #[error("Invalid anomaly detector configuration")]
    Anomaly(#[source] paddock_anomaly::ConfigError),
}

/// The hub and its subscribers. Cheap to clone; clones share everything.
#[derive(Debug, Clone)]
pub struct Observability {
    hub: EventHub,
    metrics: Arc<Metrics>,
    audit: Option<Arc<AuditSubscriber>>,
    anomaly: Option<Arc<AnomalySubscriber>>,
    /// Each slot's CPU seconds at its last sample, and when: a slot's
    /// utilization is the growth between two samples.
    cpu_seen: Arc<Mutex<CpuSeen>>,
}

/// By pool and slot: when its CPU seconds were last read, and the value.
type CpuSeen = HashMap<(String, u32), (Instant, f64)>;

impl Observability {
    /// A hub with metrics registered into `registry` and subscribed.
    ///
    /// # Errors
    /// [`ObserveError::Metrics`] if `registry` already has Paddock's
    /// metrics.
    pub fn new(registry: &prometheus::Registry) -> Result<Self, ObserveError> {
        let hub = EventHub::new();
        let metrics = Arc::new(Metrics::register(registry).map_err(ObserveError::Metrics)?);
        hub.subscribe(Arc::clone(&metrics) as Arc<dyn Subscriber>);
        Ok(Self {
            hub,
            metrics,
            audit: None,
            anomaly: None,
            cpu_seen: Arc::default(),
        })
    }

    /// Adds the audit log in `dir` (continuing its chain if it exists).
    ///
    /// # Errors
    /// [`ObserveError::AuditOpen`].
    pub fn with_audit(
        mut self,
        dir: &Path,
        config: AuditConfig,
        options: AuditOptions,
    ) -> Result<Self, ObserveError> {
        let log = AuditWriter::open(dir, config).map_err(ObserveError::AuditOpen)?;
        let audit = Arc::new(AuditSubscriber::new(log, options));
        self.hub
            .subscribe(Arc::clone(&audit) as Arc<dyn Subscriber>);
        self.audit = Some(audit);
        Ok(self)
    }

    /// Adds the anomaly detector: its alerts are events (counted and
    /// audited), and pools act on those whose action is `recycle_slot` or
    /// `end_lease`.
    ///
    /// # Errors
    /// [`ObserveError::Anomaly`] for an invalid configuration.
    pub fn with_anomaly_detection(mut self, config: DetectorConfig) -> Result<Self, ObserveError> {
        let detector = Detector::new(config).map_err(ObserveError::Anomaly)?;
        let anomaly = Arc::new(AnomalySubscriber::new(detector, self.hub.clone()));
        self.hub
            .subscribe(Arc::clone(&anomaly) as Arc<dyn Subscriber>);
        self.anomaly = Some(anomaly);
        Ok(self)
    }

    /// The hub: subscribe to it, or read its stream.
    #[must_use]
    pub fn hub(&self) -> &EventHub {
        &self.hub
    }

    /// The metrics.
    #[must_use]
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The audit log, if there is one.
    #[must_use]
    pub fn audit_log(&self) -> Option<&AuditLog> {
        self.audit.as_ref().map(|audit| audit.log())
    }

    /// The anomaly detector's subscriber, if there is one (to feed it CPU
    /// samples, or prune it on a timer).
    #[must_use]
    pub fn anomaly(&self) -> Option<&Arc<AnomalySubscriber>> {
        self.anomaly.as_ref()
    }

    /// Samples `pool`'s live slots with one bulk libvirt call: records
    /// their resource figures into the metrics and, with the anomaly
    /// detector on, feeds it each slot's CPU utilization since its previous
    /// sample (for `cpu_pinned`). Returns how many slots were sampled.
    ///
    /// # Errors
    /// libvirt's, when the bulk call fails.
    pub async fn sample_pool(&self, pool: &VmPool) -> Result<usize, VmError> {
        let samples = pool.slot_resources().await?;
        let now = Instant::now();
        let name = pool.backend().spec().name.clone();
        let mut seen = self
            .cpu_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Slots gone since the last sample are forgotten.
        seen.retain(|(pool_name, index), _| {
            *pool_name != name || samples.iter().any(|s| s.index == *index)
        });
        for sample in &samples {
            self.metrics
                .set_slot_resources(&name, sample.index, sample.resources);
            let cpu = sample.resources.cpu_seconds;
            let previous = seen.insert((name.clone(), sample.index), (now, cpu));
            if let (Some(anomaly), Some((then, before))) = (&self.anomaly, previous) {
                if let Some(utilization) =
                    cpu_utilization(before, cpu, now.duration_since(then), sample.vcpus)
                {
                    anomaly.observe_cpu(&sample.source, utilization);
                }
            }
        }
        Ok(samples.len())
    }

    /// Samples `pool` every `interval` ([`Observability::sample_pool`]) and
    /// prunes the anomaly detector's idle scopes once a minute, until the
    /// returned task is aborted. A failed sample (libvirtd away) is skipped.
    #[must_use]
    pub fn spawn_sampler(&self, pool: VmPool, interval: Duration) -> tokio::task::JoinHandle<()> {
        let observability = self.clone();
        tokio::spawn(async move {
            let mut last_prune = Instant::now();
            loop {
                if let Err(err) = observability.sample_pool(&pool).await {
                    tracing::debug!(error = %err, "slot sample skipped");
                }
                if let Some(anomaly) = &observability.anomaly {
                    if last_prune.elapsed() >= Duration::from_secs(60) {
                        anomaly.prune();
                        last_prune = Instant::now();
                    }
                }
                tokio::time::sleep(interval).await;
            }
        })
    }

    /// The metrics registry's text exposition.
    ///
    /// # Errors
    /// [`ObserveError::Metrics`].
    pub fn render(&self) -> Result<String, ObserveError> {
        self.metrics.render().map_err(ObserveError::Metrics)
    }

    /// Unsubscribes the audit log and the detector, and closes the log
    /// once every record appended so far is written and synced.
    ///
    /// # Errors
    /// [`ObserveError::Audit`] if the log failed.
    pub fn close(self) -> Result<(), ObserveError> {
        if let Some(anomaly) = &self.anomaly {
            self.hub
                .unsubscribe(&(Arc::clone(anomaly) as Arc<dyn Subscriber>));
        }
        if let Some(audit) = &self.audit {
            self.hub
                .unsubscribe(&(Arc::clone(audit) as Arc<dyn Subscriber>));
            audit.log().flush().map_err(ObserveError::Audit)?;
        }
        Ok(())
    }
}

/// The share of its `vcpus` a slot used between two samples of its CPU
/// seconds taken `elapsed` apart: 1.0 is every vCPU busy. `None` when the
/// interval is too short to say, or the counter went backwards (a new
/// QEMU after a restore reset).
fn cpu_utilization(before: f64, now: f64, elapsed: Duration, vcpus: u32) -> Option<f64> {
    let seconds = elapsed.as_secs_f64() * f64::from(vcpus.max(1));
    (seconds >= 0.05 && now >= before).then(|| (now - before) / seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utilization_is_cpu_time_over_wall_time_per_vcpu() {
        let second = Duration::from_secs(1);
        assert_eq!(cpu_utilization(10.0, 10.5, second, 1), Some(0.5));
        assert_eq!(cpu_utilization(10.0, 12.0, second, 2), Some(1.0));
        assert_eq!(cpu_utilization(10.0, 9.0, second, 1), None, "a new QEMU");
        assert_eq!(
            cpu_utilization(10.0, 10.01, Duration::from_millis(10), 1),
            None
        );
    }
}
