//! The detector as a subscriber of Paddock's event hub: events in, alert
#![cfg(test)]
//! events out, through a real `EventHub`.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use common::SplitMix;
use paddock_anomaly::{AnomalySubscriber, Clock, Detector, DetectorConfig};
use paddock_events::{
    AcquireOutcome, Event, EventHub, EventKind, ExecOutcome, LeaseId, ResetOutcome, Source,
    Subscriber,
};
use paddock_proto::ExecResult;

/// A clock the test moves by hand, in milliseconds.
#[derive(Debug, Default)]
struct ManualClock(AtomicU64);

impl ManualClock {
    fn advance_ms(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_millis(self.0.load(Ordering::Relaxed))
    }
}

/// Records every event.
#[derive(Debug, Default)]
struct Recorder(Mutex<Vec<Event>>);

impl Subscriber for Recorder {
    fn on_event(&self, event: &Event) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(event.clone());
    }
}

/// An alert event, flattened for comparison.
#[derive(Debug, Clone, PartialEq)]
struct Raised {
    rule: &'static str,
    action: &'static str,
    pool: Option<String>,
    slot: Option<u32>,
    tenant: Option<String>,
    lease: Option<LeaseId>,
    domain: Option<String>,
    value: f64,
    threshold: f64,
}

impl Recorder {
    fn events(&self) -> Vec<Event> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn alerts(&self) -> Vec<Raised> {
        self.events()
            .into_iter()
            .filter_map(|event| match event.kind {
                EventKind::Alert {
                    rule,
                    action,
                    value,
                    threshold,
                    ..
                } => Some(Raised {
                    rule,
                    action,
                    pool: event.source.pool.as_deref().map(str::to_owned),
                    slot: event.source.slot,
                    tenant: event.source.tenant.as_deref().map(str::to_owned),
                    lease: event.source.lease,
                    domain: event.source.domain.as_deref().map(str::to_owned),
                    value,
                    threshold,
                }),
                _ => None,
            })
            .collect()
    }

    fn rules(&self) -> Vec<&'static str> {
        self.alerts().iter().map(|a| a.rule).collect()
    }
}

struct Setup {
    hub: EventHub,
    anomaly: Arc<AnomalySubscriber>,
    recorder: Arc<Recorder>,
    clock: Arc<ManualClock>,
}

fn setup() -> Setup {
    let hub = EventHub::new();
    let clock = Arc::new(ManualClock::default());
    let detector = Detector::new(DetectorConfig::default()).expect("the default config is valid");
    let anomaly = Arc::new(AnomalySubscriber::with_clock(
        detector,
        hub.clone(),
        clock.clone(),
    ));
    let recorder = Arc::new(Recorder::default());
    hub.subscribe(anomaly.clone());
    hub.subscribe(recorder.clone());
    Setup {
        hub,
        anomaly,
        recorder,
        clock,
    }
}

/// Slot 3 of pool `ci`, leased by alice as lease 7.
fn leased() -> Source {
    Source {
        pool: Some("ci".into()),
        slot: Some(3),
        lease: Some(LeaseId(7)),
        tenant: Some("alice".into()),
        domain: Some("paddock-ci-3".into()),
    }
}

/// Slot 4 of pool `ci`, between leases.
fn idle_slot() -> Source {
    Source {
        pool: Some("ci".into()),
        slot: Some(4),
        lease: None,
        tenant: None,
        domain: Some("paddock-ci-4".into()),
    }
}

fn exec(duration: Duration, output_bytes: u64) -> EventKind {
    EventKind::ExecFinished {
        exec: 0,
        outcome: ExecOutcome::Ok,
        result: Some(ExecResult {
            exit_code: Some(0),
            stdout_bytes: output_bytes / 2,
            stderr_bytes: output_bytes - output_bytes / 2,
            ..ExecResult::default()
        }),
        duration,
        error: None,
    }
}

fn timed_out() -> EventKind {
    EventKind::ExecFinished {
        exec: 0,
        outcome: ExecOutcome::Timeout,
        result: Some(ExecResult {
            timed_out: true,
            signal: Some(9),
            ..ExecResult::default()
        }),
        duration: Duration::from_secs(30),
        error: None,
    }
}

/// The slot scope's and the tenant scope's version of an alert on `leased()`.
fn for_lease(rule: &'static str, action: &'static str, value: f64, threshold: f64) -> [Raised; 2] {
    let slot = Raised {
        rule,
        action,
        pool: Some("ci".into()),
        slot: Some(3),
        tenant: None,
        lease: Some(LeaseId(7)),
        domain: Some("paddock-ci-3".into()),
        value,
        threshold,
    };
    let tenant = Raised {
        slot: None,
        tenant: Some("alice".into()),
        domain: None,
        ..slot.clone()
    };
    [slot, tenant]
}

#[test]
fn a_protocol_error_raises_a_recycle_alert_carrying_pool_and_slot() {
    let s = setup();
    s.hub
        .emit(idle_slot(), EventKind::ProtocolError { kind: "crc" });
    assert_eq!(
        s.recorder.alerts(),
        vec![Raised {
            rule: "agent_protocol_errors",
            action: "recycle_slot",
            pool: Some("ci".into()),
            slot: Some(4),
            tenant: None,
            lease: None,
            domain: Some("paddock-ci-4".into()),
            value: 1.0,
            threshold: 1.0,
        }]
    );
    // In a lease: the slot's scope and the tenant's each fire once, and
    // carry the lease.
    s.hub.emit(
        leased(),
        EventKind::ProtocolError {
            kind: "window_overrun",
        },
    );
    assert_eq!(
        s.recorder.alerts()[1..],
        for_lease("agent_protocol_errors", "recycle_slot", 1.0, 1.0)
    );
    let message = s.recorder.events().into_iter().find_map(|e| match e.kind {
        EventKind::Alert { message, .. } if e.source.tenant.is_some() => Some(message),
        _ => None,
    });
    assert_eq!(
        message.as_deref(),
        Some("1 agent protocol errors (last: window_overrun) within 300 s")
    );
    assert_eq!(s.anomaly.alerts_emitted(), 3);
}

#[test]
fn three_exec_timeouts_within_the_window_raise_repeated_exec_timeouts() {
    let s = setup();
    for _ in 0..2 {
        s.hub.emit(leased(), timed_out());
        s.clock.advance_ms(40_000);
    }
    assert!(s.recorder.alerts().is_empty(), "{:?}", s.recorder.alerts());
    s.hub.emit(leased(), timed_out());
    assert_eq!(
        s.recorder.alerts(),
        for_lease("repeated_exec_timeouts", "log", 3.0, 3.0)
    );
}

#[test]
fn a_steady_stream_of_normal_work_raises_nothing() {
    let s = setup();
    let mut rng = SplitMix(7);
    // Ten minutes of a busy lease: ~5 execs/s of ~100 ms and ~2 KiB each,
    // an acquire and a reset now and then.
    for i in 0..3000_u64 {
        if i % 300 == 0 {
            s.hub.emit(
                leased(),
                EventKind::Acquire {
                    outcome: AcquireOutcome::Ok,
                    wait: rng.noisy_ms(5.0, 0.5),
                },
            );
        }
        let output = rng.noisy_count(2048.0, 0.3);
        s.hub.emit(leased(), exec(rng.noisy_ms(100.0, 0.3), output));
        if i % 300 == 299 {
            s.hub.emit(
                idle_slot(),
                EventKind::ResetFinished {
                    strategy: "snapshot",
                    outcome: ResetOutcome::Ok,
                    reason: None,
                    duration: rng.noisy_ms(300.0, 0.2),
                    phases: Vec::new(),
                },
            );
        }
        s.clock.advance_ms(rng.noisy_count(200.0, 0.2));
    }
    assert_eq!(s.recorder.alerts(), vec![]);
    assert_eq!(s.anomaly.alerts_emitted(), 0);
    // alice's slot 3, alice across slots (execs and acquires), slot 4 (resets).
    assert_eq!(s.anomaly.scopes(), 3);
}

#[test]
fn an_output_flood_after_a_steady_baseline_raises_output_rate_spike() {
    let s = setup();
    let mut rng = SplitMix(11);
    // The default config: 60 active one-second buckets before the rate
    // rules judge; the manual clock makes 90 s of baseline instant.
    for _ in 0..450 {
        let output = rng.noisy_count(2048.0, 0.2);
        s.hub.emit(leased(), exec(rng.noisy_ms(100.0, 0.2), output));
        s.clock.advance_ms(200);
    }
    assert!(s.recorder.alerts().is_empty(), "{:?}", s.recorder.alerts());
    // Same exec rate and durations, 10 MiB of output each: 50 MiB/s.
    let mut after_first_bucket = None;
    for i in 0..15 {
        s.hub
            .emit(leased(), exec(rng.noisy_ms(100.0, 0.2), 10 * 1024 * 1024));
        s.clock.advance_ms(200);
        if i == 4 {
            after_first_bucket = Some(s.recorder.alerts().len());
        }
    }
    // Caught within the first one-second bucket of the flood, once per
    // scope: the cooldown holds the next three seconds.
    assert_eq!(after_first_bucket, Some(2));
    let alerts = s.recorder.alerts();
    assert_eq!(
        alerts.iter().map(|a| a.rule).collect::<Vec<_>>(),
        vec!["output_rate_spike", "output_rate_spike"]
    );
    for (alert, expected) in alerts
        .iter()
        .zip(for_lease("output_rate_spike", "log", 0.0, 0.0))
    {
        assert_eq!(
            (&alert.slot, &alert.tenant, &alert.lease, &alert.domain),
            (
                &expected.slot,
                &expected.tenant,
                &expected.lease,
                &expected.domain
            )
        );
        // The first flood exec alone: 10 MiB in the bucket so far.
        assert!(alert.value >= 10.0 * 1024.0 * 1024.0, "{alert:?}");
        assert!(alert.threshold >= 1024.0 * 1024.0, "{alert:?}");
        assert!(alert.threshold < alert.value, "{alert:?}");
    }
}

/// On every alert, reads the anomaly subscriber (which takes its lock).
struct ReadsBack(Arc<AnomalySubscriber>, AtomicU64);

impl Subscriber for ReadsBack {
    fn on_event(&self, event: &Event) {
        if matches!(event.kind, EventKind::Alert { .. }) {
            self.1.fetch_add(
                u64::try_from(self.0.scopes()).unwrap_or(0),
                Ordering::Relaxed,
            );
        }
    }
}

#[test]
fn alerts_are_emitted_once_outside_the_lock_and_never_observed() {
    let s = setup();
    let reads = Arc::new(ReadsBack(s.anomaly.clone(), AtomicU64::new(0)));
    s.hub.subscribe(reads.clone());
    // Emitting while holding the detector's lock would deadlock ReadsBack:
    // run it on a thread and give up after a while rather than hang.
    let (done, finished) = mpsc::channel();
    let hub = s.hub.clone();
    std::thread::spawn(move || {
        hub.emit(leased(), EventKind::ProtocolError { kind: "resync" });
        let _ = done.send(());
    });
    finished
        .recv_timeout(Duration::from_secs(10))
        .expect("the alert was emitted with the detector's lock held");
    // Two firings (slot and tenant scope), two alert events, each read two
    // scopes back.
    assert_eq!(s.recorder.rules(), vec!["agent_protocol_errors"; 2]);
    assert_eq!(s.anomaly.alerts_emitted(), 2);
    assert_eq!(reads.1.load(Ordering::Relaxed), 4);
    assert_eq!(s.recorder.events().len(), 3);

    // Someone else's alert is not an observation either.
    s.hub.emit(
        idle_slot(),
        EventKind::Alert {
            rule: "agent_protocol_errors",
            action: "recycle_slot",
            value: 1.0,
            threshold: 1.0,
            message: String::new(),
        },
    );
    assert_eq!(s.anomaly.alerts_emitted(), 2);
    assert_eq!(s.anomaly.scopes(), 2);
}

#[test]
fn resets_acquires_and_skipped_outcomes_map_as_documented() {
    let s = setup();
    let reset = |outcome| EventKind::ResetFinished {
        strategy: "snapshot",
        outcome,
        reason: Some("revert_failed"),
        duration: Duration::from_millis(400),
        phases: Vec::new(),
    };
    // Outages are the backend's: not failures of the slot.
    for _ in 0..3 {
        s.hub.emit(idle_slot(), reset(ResetOutcome::Outage));
    }
    // Failed execs (no result) and events without a pool are skipped.
    s.hub.emit(
        leased(),
        EventKind::ExecFinished {
            exec: 0,
            outcome: ExecOutcome::Error,
            result: None,
            duration: Duration::from_secs(1),
            error: Some("connection_lost"),
        },
    );
    s.hub.emit(
        Source {
            slot: Some(1),
            ..Source::default()
        },
        EventKind::ProtocolError { kind: "crc" },
    );
    // A refused acquire is not a wait.
    s.hub.emit(
        leased(),
        EventKind::Acquire {
            outcome: AcquireOutcome::Timeout,
            wait: Duration::from_secs(30),
        },
    );
    assert_eq!(s.anomaly.scopes(), 0);
    assert!(s.recorder.alerts().is_empty());

    s.hub.emit(idle_slot(), reset(ResetOutcome::Failed));
    s.clock.advance_ms(1000);
    s.hub.emit(idle_slot(), reset(ResetOutcome::Failed));
    assert_eq!(s.recorder.rules(), vec!["reset_failures"]);
    assert_eq!(s.recorder.alerts()[0].slot, Some(4));

    // An acquire's wait goes to the tenant's scope only.
    s.hub.emit(
        leased(),
        EventKind::Acquire {
            outcome: AcquireOutcome::Ok,
            wait: Duration::from_millis(3),
        },
    );
    assert_eq!(s.anomaly.scopes(), 2);
}

#[test]
fn cpu_samples_and_egress_denials_from_the_host_raise_their_rules() {
    let s = setup();
    for _ in 0..=60 {
        s.anomaly.observe_cpu(&leased(), 0.99);
        s.clock.advance_ms(1000);
    }
    let [slot_alert, _] = for_lease("cpu_pinned", "log", 60.0, 60.0);
    assert_eq!(s.recorder.alerts(), vec![slot_alert]);

    for _ in 0..10 {
        s.anomaly.observe_egress_denied(&leased());
        s.clock.advance_ms(100);
    }
    assert_eq!(
        s.recorder.alerts()[1..],
        for_lease("egress_denied", "log", 10.0, 10.0)
    );
    // Without a slot there is nothing to attribute them to.
    s.anomaly.observe_cpu(&Source::default(), 1.0);
    s.anomaly.observe_egress_denied(&Source {
        pool: Some("ci".into()),
        ..Source::default()
    });
    assert_eq!(s.anomaly.alerts_emitted(), 3);
}

#[test]
fn prune_forgets_idle_scopes() {
    let s = setup();
    s.hub.emit(leased(), exec(Duration::from_millis(100), 10));
    assert_eq!(s.anomaly.scopes(), 2);
    assert!(s.anomaly.retained_samples() > 0);
    s.clock.advance_ms(3_599_999);
    s.anomaly.prune();
    assert_eq!(s.anomaly.scopes(), 2);
    s.clock.advance_ms(1);
    s.anomaly.prune();
    assert_eq!(s.anomaly.scopes(), 0);
    assert_eq!(s.anomaly.retained_samples(), 0);
}
