#![doc = include_str!("../ANOMALY.md")]

mod alert;
pub mod config;
mod detector;
mod observation;
pub mod rules;
mod scope;
pub mod stats;
mod subscriber;

pub use alert::{Action, Alert, RuleId};
pub use config::{ConfigError, DetectorConfig};
pub use detector::Detector;
pub use observation::{Observation, ProtocolErrorKind};
pub use rules::{CountConfig, CpuPinnedConfig, RuleConfigError};
pub use scope::Scope;
pub use stats::{OutlierConfig, RateConfig, StatConfigError};
pub use subscriber::{AnomalySubscriber, Clock, MonotonicClock, protocol_error_kind};
