#![doc = include_str!("../METRICS.md")]

pub mod buckets;
mod define;
mod error;
mod metrics;
mod pool;
mod slot;
#[cfg(test)]
mod tests;

pub use error::MetricsError;
pub use metrics::{Metrics, render};
pub use pool::{PoolGauge, SlotCounts};
pub use slot::SlotResources;
