//! One stream of typed events for what happens in Paddock: slots made,
//! leased, reset and destroyed, executions and file transfers in a lease,
//! agent protocol errors, the libvirt connection, rate-limit and policy
//! refusals, anomaly alerts.
//!
//! The pool, the sandboxes and the agent client *emit* through an
//! [`Emitter`], a cheap handle that carries where the event comes from (a
//! [`Source`]: pool, slot, lease, tenant). An [`EventHub`] delivers every
//! event to its [`Subscriber`]s in the emitting thread, in order:
//! Prometheus metrics, the audit log and the anomaly detector are
//! subscribers, and so can an embedder be ([`EventHub::subscribe`], or
//! [`EventHub::stream`] for an async receiver that may lag).
//!
//! Observation must not slow the data path: a disabled emitter (the
//! default) costs a branch, and subscribers must return quickly without
//! blocking (counters, a bounded queue). The cost per event with every
//! subscriber on is measured by `benches/benches/events.rs`.

mod event;
mod hub;

pub use event::{
    AcquireOutcome, DestroyCause, Event, EventKind, ExecOutcome, FileDirection, LeaseId,
    ResetOutcome, Source,
};
pub use hub::{Emitter, EventHub, Subscriber};
