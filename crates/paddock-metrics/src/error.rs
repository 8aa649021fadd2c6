//! The crate's one error type.

/// Why metrics could not be set up or rendered.
///
/// Messages are short and never repeat their source: walk
/// [`std::error::Error::source`] for Prometheus' own words.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// Prometheus refused a metric's definition (its name, labels or
    /// buckets). A bug in this crate, never a runtime condition.
    #[error("defining metric {name}")]
    Define {
        /// The metric's name.
        name: &'static str,
        /// Prometheus' reason.
        #[source]
        source: prometheus::Error,
    },
    /// The registry refused a metric, most often because one of the same
    /// name is already registered there (two `Metrics` on one registry).
    #[error("registering metric {name}")]
    Register {
        /// The metric's (or collector's first metric's) name.
        name: &'static str,
        /// Prometheus' reason.
        #[source]
        source: prometheus::Error,
    },
    /// The text exposition format could not be written.
    #[error("rendering metrics")]
    Render {
        /// Prometheus' reason.
        #[source]
        source: prometheus::Error,
    },
}
