//! Constructors that define a metric and, where asked, register it, mapping
//! Prometheus' errors to [`MetricsError`] with the metric's name.

use prometheus::{
    CounterVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
};

use crate::MetricsError;

/// Registers `vec` (a clone shares its series) under `name`.
fn register<C>(registry: &Registry, name: &'static str, vec: &C) -> Result<(), MetricsError>
where
    C: prometheus::core::Collector + Clone + 'static,
{
    registry
        .register(Box::new(vec.clone()))
        .map_err(|source| MetricsError::Register { name, source })
}

/// An integer counter family, registered when `registry` is given (the
/// scrape-time collectors keep theirs unregistered and collect them
/// themselves).
pub(crate) fn int_counter(
    registry: Option<&Registry>,
    name: &'static str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, MetricsError> {
    let vec = IntCounterVec::new(Opts::new(name, help), labels)
        .map_err(|source| MetricsError::Define { name, source })?;
    if let Some(registry) = registry {
        register(registry, name, &vec)?;
    }
    Ok(vec)
}

/// A float counter family, for cumulative values that are not whole
/// numbers (CPU seconds).
pub(crate) fn float_counter(
    registry: Option<&Registry>,
    name: &'static str,
    help: &str,
    labels: &[&str],
) -> Result<CounterVec, MetricsError> {
    let vec = CounterVec::new(Opts::new(name, help), labels)
        .map_err(|source| MetricsError::Define { name, source })?;
    if let Some(registry) = registry {
        register(registry, name, &vec)?;
    }
    Ok(vec)
}

/// An integer gauge family.
pub(crate) fn int_gauge(
    registry: Option<&Registry>,
    name: &'static str,
    help: &str,
    labels: &[&str],
) -> Result<IntGaugeVec, MetricsError> {
    let vec = IntGaugeVec::new(Opts::new(name, help), labels)
        .map_err(|source| MetricsError::Define { name, source })?;
    if let Some(registry) = registry {
        register(registry, name, &vec)?;
    }
    Ok(vec)
}

/// A histogram family with explicit buckets (seconds).
pub(crate) fn histogram(
    registry: &Registry,
    name: &'static str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> Result<HistogramVec, MetricsError> {
    let vec = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .map_err(|source| MetricsError::Define { name, source })?;
    register(registry, name, &vec)?;
    Ok(vec)
}

/// Saturating conversion for gauges fed from `usize`/`u64` counts: a count
/// beyond `i64::MAX` cannot happen, and a clamped value beats a panic on
/// the scrape path.
pub(crate) fn to_i64<T: TryInto<i64>>(value: T) -> i64 {
    value.try_into().unwrap_or(i64::MAX)
}
