//! Per-slot resource figures, copied from libvirt's bulk stats by whoever
//! polls them ([`crate::Metrics::set_slot_resources`]).
//!
//! libvirt's CPU time and block/network byte figures are cumulative since
//! the domain started, so they are exposed as *counters* (`_total`), as
//! Prometheus' conventions ask of a value copied from an external
//! cumulative source: a custom collector writes the latest copied value at
//! scrape time instead of incrementing. Memory is a level, a gauge. When a
//! domain restarts its figures fall back to zero, which `rate()` reads as a
//! counter reset, as it should.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{CounterVec, IntCounterVec, IntGaugeVec, Registry};

use crate::MetricsError;
use crate::define::{float_counter, int_counter, int_gauge, to_i64};

/// One slot's resource figures, as libvirt reports them for its domain.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SlotResources {
    /// CPU time used since the domain started, in seconds (cumulative).
    pub cpu_seconds: f64,
    /// Memory the domain uses now (its balloon's current size or RSS), in
    /// bytes (a level).
    pub memory_bytes: u64,
    /// Bytes read from its disks since it started (cumulative).
    pub block_read_bytes: u64,
    /// Bytes written to its disks since it started (cumulative).
    pub block_write_bytes: u64,
    /// Bytes its network interfaces received since it started (cumulative).
    pub net_rx_bytes: u64,
    /// Bytes its network interfaces sent since it started (cumulative).
    pub net_tx_bytes: u64,
}

struct Families {
    cpu: CounterVec,
    memory: IntGaugeVec,
    block_read: IntCounterVec,
    block_write: IntCounterVec,
    net_rx: IntCounterVec,
    net_tx: IntCounterVec,
}

impl Families {
    fn reset(&self) {
        self.cpu.reset();
        self.memory.reset();
        for family in [
            &self.block_read,
            &self.block_write,
            &self.net_rx,
            &self.net_tx,
        ] {
            family.reset();
        }
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut out = self.cpu.collect();
        out.extend(self.memory.collect());
        for family in [
            &self.block_read,
            &self.block_write,
            &self.net_rx,
            &self.net_tx,
        ] {
            out.extend(family.collect());
        }
        out
    }

    fn descs(&self) -> Vec<Desc> {
        let mut out: Vec<Desc> = self.cpu.desc().into_iter().cloned().collect();
        out.extend(self.memory.desc().into_iter().cloned());
        for family in [
            &self.block_read,
            &self.block_write,
            &self.net_rx,
            &self.net_tx,
        ] {
            out.extend(family.desc().into_iter().cloned());
        }
        out
    }
}

/// The latest figures per pool and slot, and the families they are
/// written into at scrape time.
pub(crate) struct SlotStats {
    latest: Mutex<HashMap<Arc<str>, HashMap<u32, SlotResources>>>,
    /// Held while the families are reset, filled and collected.
    scrape: Mutex<Families>,
    descs: Vec<Desc>,
}

impl SlotStats {
    pub(crate) fn new() -> Result<Self, MetricsError> {
        let labels = &["pool", "slot"];
        let families = Families {
            cpu: float_counter(
                None,
                "paddock_slot_cpu_seconds_total",
                "CPU time the slot's domain used since it started, from libvirt.",
                labels,
            )?,
            memory: int_gauge(
                None,
                "paddock_slot_memory_bytes",
                "Memory the slot's domain uses, from libvirt.",
                labels,
            )?,
            block_read: int_counter(
                None,
                "paddock_slot_block_read_bytes_total",
                "Bytes the slot's domain read from its disks since it started, from libvirt.",
                labels,
            )?,
            block_write: int_counter(
                None,
                "paddock_slot_block_write_bytes_total",
                "Bytes the slot's domain wrote to its disks since it started, from libvirt.",
                labels,
            )?,
            net_rx: int_counter(
                None,
                "paddock_slot_network_receive_bytes_total",
                "Bytes the slot's domain received on its interfaces since it started, from libvirt.",
                labels,
            )?,
            net_tx: int_counter(
                None,
                "paddock_slot_network_transmit_bytes_total",
                "Bytes the slot's domain sent on its interfaces since it started, from libvirt.",
                labels,
            )?,
        };
        let descs = families.descs();
        Ok(Self {
            latest: Mutex::new(HashMap::new()),
            scrape: Mutex::new(families),
            descs,
        })
    }

    pub(crate) fn set(&self, pool: &str, slot: u32, figures: SlotResources) {
        let mut latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
        match latest.get_mut(pool) {
            Some(slots) => {
                slots.insert(slot, figures);
            }
            None => {
                latest.insert(Arc::from(pool), HashMap::from([(slot, figures)]));
            }
        }
    }

    pub(crate) fn remove(&self, pool: &str, slot: u32) {
        let mut latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slots) = latest.get_mut(pool) {
            slots.remove(&slot);
            if slots.is_empty() {
                latest.remove(pool);
            }
        }
    }

    pub(crate) fn slots(&self) -> usize {
        self.latest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(HashMap::len)
            .sum()
    }
}

/// The registered collector: a handle on the shared state.
pub(crate) struct SlotCollector(pub(crate) Arc<SlotStats>);

impl SlotCollector {
    pub(crate) fn register(self, registry: &Registry) -> Result<(), MetricsError> {
        registry
            .register(Box::new(self))
            .map_err(|source| MetricsError::Register {
                name: "paddock_slot_cpu_seconds_total",
                source,
            })
    }
}

impl Collector for SlotCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.0.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        // A copy, so the setter's lock is not held while encoding.
        let latest: Vec<(Arc<str>, u32, SlotResources)> = self
            .0
            .latest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .flat_map(|(pool, slots)| {
                slots
                    .iter()
                    .map(move |(slot, figures)| (pool.clone(), *slot, *figures))
            })
            .collect();
        let families = self.0.scrape.lock().unwrap_or_else(PoisonError::into_inner);
        families.reset();
        for (pool, slot, figures) in latest {
            let slot = slot.to_string();
            let labels = [pool.as_ref(), slot.as_str()];
            // A counter only goes up from zero: a negative or NaN figure (a
            // libvirt oddity) is exposed as zero rather than panicking.
            if figures.cpu_seconds.is_finite() && figures.cpu_seconds > 0.0 {
                families
                    .cpu
                    .with_label_values(&labels)
                    .inc_by(figures.cpu_seconds);
            } else {
                families.cpu.with_label_values(&labels).reset();
            }
            families
                .memory
                .with_label_values(&labels)
                .set(to_i64(figures.memory_bytes));
            families
                .block_read
                .with_label_values(&labels)
                .inc_by(figures.block_read_bytes);
            families
                .block_write
                .with_label_values(&labels)
                .inc_by(figures.block_write_bytes);
            families
                .net_rx
                .with_label_values(&labels)
                .inc_by(figures.net_rx_bytes);
            families
                .net_tx
                .with_label_values(&labels)
                .inc_by(figures.net_tx_bytes);
        }
        families.collect()
    }
}
