//! Events in, text exposition out, parsed and checked value by value.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use paddock_events::{
    AcquireOutcome, DestroyCause, EventHub, EventKind, ExecOutcome, FileDirection, LeaseId,
    ResetOutcome, Source,
};
use paddock_proto::{Command, ExecResult};

use crate::metrics::{EVENT_KINDS, acquire_index, exec_index, kind_index};
use crate::{Metrics, MetricsError, PoolGauge, SlotCounts, SlotResources, buckets, render};

/// The crate doc, whose tables are checked against the output.
const DOC: &str = include_str!("../METRICS.md");

/// One parsed exposition: samples by canonical series key, and each
/// family's `# TYPE`.
#[derive(Debug, Default)]
struct Exposition {
    samples: BTreeMap<String, f64>,
    types: BTreeMap<String, String>,
    /// The label names of each sample's metric name (`le` included).
    labels: BTreeMap<String, BTreeSet<String>>,
}

impl Exposition {
    fn parse(text: &str) -> Self {
        let mut out = Self::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("a TYPE line has two words");
                out.types.insert(name.to_owned(), kind.to_owned());
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
            let value: f64 = value.parse().expect("a numeric value");
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, parse_labels(labels.trim_end_matches('}'))),
                None => (series, BTreeMap::new()),
            };
            out.labels
                .entry(name.to_owned())
                .or_default()
                .extend(labels.keys().cloned());
            let key = key(
                name,
                &labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect::<Vec<_>>(),
            );
            assert!(
                out.samples.insert(key, value).is_none(),
                "duplicate series in {line}"
            );
        }
        out
    }

    /// The value of `name` with exactly `labels`.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples.get(&key(name, labels)).copied()
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no series {}", key(name, labels)))
    }

    /// The family a sample name belongs to (histogram suffixes removed).
    fn family_of(&self, sample: &str) -> String {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = sample.strip_suffix(suffix) {
                if self.types.get(base).map(String::as_str) == Some("histogram") {
                    return base.to_owned();
                }
            }
        }
        sample.to_owned()
    }

    /// How many series there are.
    fn series(&self) -> usize {
        self.samples.len()
    }

    /// Series whose labels include every pair in `labels`.
    fn matching(&self, labels: &[(&str, &str)]) -> Vec<&String> {
        self.samples
            .keys()
            .filter(|k| {
                labels
                    .iter()
                    .all(|(n, v)| k.contains(&format!("{n}=\"{v}\"")))
            })
            .collect()
    }
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = text.chars().peekable();
    loop {
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if name.is_empty() {
            return out;
        }
        assert_eq!(chars.next(), Some('"'), "a label value is quoted");
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => panic!("a dangling escape"),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        out.insert(name.trim_start_matches(',').to_owned(), value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
}

fn key(name: &str, labels: &[(&str, &str)]) -> String {
    let sorted: BTreeMap<&str, &str> = labels.iter().copied().collect();
    let inner: Vec<String> = sorted.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{name}{{{}}}", inner.join(","))
}

fn setup() -> (Arc<Metrics>, EventHub) {
    let (metrics, _registry) = Metrics::new().expect("metrics register");
    let metrics = Arc::new(metrics);
    let hub = EventHub::new();
    hub.subscribe(metrics.clone());
    (metrics, hub)
}

fn scrape(metrics: &Metrics) -> Exposition {
    Exposition::parse(&metrics.render().expect("renders"))
}

fn src(pool: &str, slot: Option<u32>) -> Source {
    Source {
        pool: Some(pool.into()),
        slot,
        ..Source::default()
    }
}

fn result(exit: i32, stdout: u64, stderr: u64, truncated: bool) -> ExecResult {
    ExecResult {
        exit_code: Some(exit),
        stdout_bytes: stdout,
        stderr_bytes: stderr,
        stdout_truncated: truncated,
        ..ExecResult::default()
    }
}

/// One event of every kind, with the pool "ci" and slot 1.
fn one_of_each() -> Vec<EventKind> {
    let d = Duration::from_millis(3);
    vec![
        EventKind::PoolCreated {
            golden_id: "g1".into(),
            image_hash: "sha256:aa".into(),
            strategy: "snapshot",
        },
        EventKind::GoldenBuilt {
            golden_id: "g1".into(),
            duration: Duration::from_secs(12),
        },
        EventKind::SlotCreated { duration: d },
        EventKind::SlotCreateFailed { reason: "define" },
        EventKind::SlotDestroyed {
            cause: DestroyCause::Expired,
            reason: None,
        },
        EventKind::Acquire {
            outcome: AcquireOutcome::Ok,
            wait: d,
        },
        EventKind::LeaseReleased { held: d },
        EventKind::ResetFinished {
            strategy: "snapshot",
            outcome: ResetOutcome::Ok,
            reason: None,
            duration: d,
            phases: vec![("revert", d)],
        },
        EventKind::HealthCheckFailed { reason: "ping" },
        EventKind::BackendConnection { connected: true },
        EventKind::ExecStarted {
            exec: 0,
            command: Command::Argv(vec!["true".into()]),
            env_names: vec![],
            cwd: None,
            timeout: None,
        },
        EventKind::ExecFinished {
            exec: 0,
            outcome: ExecOutcome::Ok,
            result: Some(result(0, 1, 2, false)),
            duration: d,
            error: None,
        },
        EventKind::FileTransferred {
            direction: FileDirection::Put,
            path: "/tmp/x".into(),
            bytes: 10,
            ok: true,
            error: None,
            duration: d,
        },
        EventKind::AgentRoundTrip { duration: d },
        EventKind::ProtocolError { kind: "crc" },
        EventKind::RateLimited {
            limit: "exec",
            retry_after: d,
        },
        EventKind::Throttled {
            limit: "lease_received_bytes",
            delay: d,
        },
        EventKind::Denied {
            request: "exec",
            rule: "exec.program",
            policy: "read-only".into(),
            detail: "program \"rm\"".into(),
        },
        EventKind::Alert {
            rule: "exec_rate",
            action: "log",
            value: 2.0,
            threshold: 1.0,
            message: "fast".into(),
        },
    ]
}

/// A hub where every metric has at least one series: every kind of event
/// (the destroy on another slot, so slot 1's series stay), a watched pool
/// and one slot's resources. The pool gauge is returned to keep it alive.
fn everything() -> (Arc<Metrics>, EventHub, Arc<dyn PoolGauge>) {
    let (metrics, hub) = setup();
    for kind in one_of_each() {
        let slot = if matches!(kind, EventKind::SlotDestroyed { .. }) {
            9
        } else {
            1
        };
        hub.emit(src("ci", Some(slot)), kind);
    }
    let pool: Arc<dyn PoolGauge> = Arc::new(FakePool::new("ci", SlotCounts::default()));
    metrics.watch_pool(pool.clone());
    metrics.set_slot_resources("ci", 1, SlotResources::default());
    (metrics, hub, pool)
}

struct FakePool {
    name: String,
    counts: Mutex<SlotCounts>,
}

impl FakePool {
    fn new(name: &str, counts: SlotCounts) -> Self {
        Self {
            name: name.to_owned(),
            counts: Mutex::new(counts),
        }
    }
}

impl PoolGauge for FakePool {
    fn name(&self) -> &str {
        &self.name
    }

    fn counts(&self) -> SlotCounts {
        *self.counts.lock().expect("unpoisoned")
    }
}

#[test]
fn indexes_agree_with_the_events_crate() {
    let kinds = one_of_each();
    assert_eq!(kinds.len(), EVENT_KINDS.len(), "one event of every kind");
    for kind in &kinds {
        assert_eq!(EVENT_KINDS[kind_index(kind)], kind.name());
    }
    for (i, outcome) in AcquireOutcome::ALL.into_iter().enumerate() {
        assert_eq!(acquire_index(outcome), i);
    }
    for (i, outcome) in ExecOutcome::ALL.into_iter().enumerate() {
        assert_eq!(exec_index(outcome), i);
    }
}

#[test]
fn acquires_count_by_outcome_and_fill_inclusive_buckets() {
    let (metrics, hub) = setup();
    for wait_us in [500, 500, 2000] {
        hub.emit(
            src("ci", None),
            EventKind::Acquire {
                outcome: AcquireOutcome::Ok,
                wait: Duration::from_micros(wait_us),
            },
        );
    }
    hub.emit(
        src("ci", None),
        EventKind::Acquire {
            outcome: AcquireOutcome::Timeout,
            wait: Duration::from_secs(30),
        },
    );
    let x = scrape(&metrics);
    let ci = ("pool", "ci");
    assert_eq!(
        x.value("paddock_acquires_total", &[ci, ("outcome", "ok")]),
        2.0 + 1.0
    );
    assert_eq!(
        x.value("paddock_acquires_total", &[ci, ("outcome", "timeout")]),
        1.0
    );
    // Every outcome starts at zero.
    assert_eq!(
        x.value("paddock_acquires_total", &[ci, ("outcome", "closed")]),
        0.0
    );
    assert_eq!(x.value("paddock_acquire_wait_seconds_count", &[ci]), 4.0);
    let sum = x.value("paddock_acquire_wait_seconds_sum", &[ci]);
    assert!((sum - 30.003).abs() < 1e-9, "sum {sum}");
    let bucket = |le| x.value("paddock_acquire_wait_seconds_bucket", &[ci, ("le", le)]);
    // le is inclusive: 0.5 ms lands in le="0.0005".
    assert_eq!(bucket("0.00025"), 0.0);
    assert_eq!(bucket("0.0005"), 2.0);
    assert_eq!(bucket("0.001"), 2.0);
    assert_eq!(bucket("0.0025"), 3.0);
    assert_eq!(bucket("10"), 3.0);
    assert_eq!(bucket("30"), 4.0);
    assert_eq!(bucket("+Inf"), 4.0);
    assert_eq!(x.value("paddock_events_total", &[("kind", "acquire")]), 4.0);
    assert_eq!(x.value("paddock_events_total", &[("kind", "alert")]), 0.0);
}

#[test]
fn execs_transfers_resets_and_the_rest_have_exact_values() {
    let (metrics, hub) = setup();
    let ci = || src("ci", Some(2));
    let exec = |outcome, result, ms| EventKind::ExecFinished {
        exec: 0,
        outcome,
        result,
        duration: Duration::from_millis(ms),
        error: None,
    };
    hub.emit(
        ci(),
        exec(ExecOutcome::Ok, Some(result(0, 100, 5, false)), 20),
    );
    hub.emit(
        ci(),
        exec(ExecOutcome::NonZero, Some(result(1, 7, 3, true)), 30),
    );
    hub.emit(ci(), exec(ExecOutcome::Error, None, 50));
    for (direction, bytes, ok) in [
        (FileDirection::Put, 1000, true),
        (FileDirection::Put, 24, false),
        (FileDirection::Get, 5, true),
    ] {
        hub.emit(
            ci(),
            EventKind::FileTransferred {
                direction,
                path: "/work/in".into(),
                bytes,
                ok,
                error: None,
                duration: Duration::from_millis(4),
            },
        );
    }
    hub.emit(
        ci(),
        EventKind::ResetFinished {
            strategy: "snapshot",
            outcome: ResetOutcome::Ok,
            reason: None,
            duration: Duration::from_millis(40),
            phases: vec![
                ("revert", Duration::from_millis(30)),
                ("check", Duration::from_millis(10)),
            ],
        },
    );
    hub.emit(
        ci(),
        EventKind::ResetFinished {
            strategy: "snapshot",
            outcome: ResetOutcome::Failed,
            reason: Some("revert"),
            duration: Duration::from_millis(2),
            phases: vec![],
        },
    );
    hub.emit(
        ci(),
        EventKind::SlotDestroyed {
            cause: DestroyCause::ResetFailed,
            reason: Some("revert"),
        },
    );
    hub.emit(ci(), EventKind::SlotCreateFailed { reason: "define" });
    hub.emit(
        ci(),
        EventKind::SlotCreated {
            duration: Duration::from_secs(3),
        },
    );
    hub.emit(ci(), EventKind::HealthCheckFailed { reason: "ping" });
    hub.emit(
        ci(),
        EventKind::RateLimited {
            limit: "exec",
            retry_after: Duration::from_secs(1),
        },
    );
    for delay_ms in [250, 500] {
        hub.emit(
            ci(),
            EventKind::Throttled {
                limit: "lease_received_bytes",
                delay: Duration::from_millis(delay_ms),
            },
        );
    }
    hub.emit(
        ci(),
        EventKind::Denied {
            request: "put",
            rule: "put.path",
            policy: "read-only".into(),
            detail: "path \"/etc\"".into(),
        },
    );
    hub.emit(
        ci(),
        EventKind::Alert {
            rule: "exec_rate",
            action: "recycle",
            value: 9.0,
            threshold: 3.0,
            message: "x".into(),
        },
    );
    hub.emit(
        ci(),
        EventKind::AgentRoundTrip {
            duration: Duration::from_micros(300),
        },
    );
    let x = scrape(&metrics);
    let p = ("pool", "ci");
    assert_eq!(
        x.get("paddock_libvirt_connected", &[p]),
        None,
        "no connection event, no connection state"
    );
    hub.emit(ci(), EventKind::BackendConnection { connected: false });
    let x = scrape(&metrics);
    assert_eq!(x.value("paddock_execs_total", &[p, ("outcome", "ok")]), 1.0);
    assert_eq!(
        x.value("paddock_execs_total", &[p, ("outcome", "non_zero")]),
        1.0
    );
    assert_eq!(
        x.value("paddock_execs_total", &[p, ("outcome", "error")]),
        1.0
    );
    assert_eq!(
        x.value("paddock_execs_total", &[p, ("outcome", "timeout")]),
        0.0
    );
    assert_eq!(x.value("paddock_exec_duration_seconds_count", &[p]), 3.0);
    let sum = x.value("paddock_exec_duration_seconds_sum", &[p]);
    assert!((sum - 0.1).abs() < 1e-9, "sum {sum}");
    assert_eq!(
        x.value(
            "paddock_exec_output_bytes_total",
            &[p, ("stream", "stdout")]
        ),
        107.0
    );
    assert_eq!(
        x.value(
            "paddock_exec_output_bytes_total",
            &[p, ("stream", "stderr")]
        ),
        8.0
    );
    assert_eq!(x.value("paddock_exec_truncated_total", &[p]), 1.0);
    assert_eq!(
        x.value(
            "paddock_file_transfer_bytes_total",
            &[p, ("direction", "put")]
        ),
        1024.0
    );
    assert_eq!(
        x.value(
            "paddock_file_transfer_bytes_total",
            &[p, ("direction", "get")]
        ),
        5.0
    );
    let transfers = |d, o| {
        x.value(
            "paddock_file_transfers_total",
            &[p, ("direction", d), ("outcome", o)],
        )
    };
    assert_eq!(transfers("put", "ok"), 1.0);
    assert_eq!(transfers("put", "error"), 1.0);
    assert_eq!(transfers("get", "ok"), 1.0);
    assert_eq!(transfers("get", "error"), 0.0);
    assert_eq!(
        x.value(
            "paddock_file_transfer_duration_seconds_count",
            &[p, ("direction", "put")]
        ),
        2.0
    );
    let s = ("strategy", "snapshot");
    assert_eq!(
        x.value("paddock_resets_total", &[p, s, ("outcome", "ok")]),
        1.0
    );
    assert_eq!(
        x.value("paddock_resets_total", &[p, s, ("outcome", "failed")]),
        1.0
    );
    assert_eq!(
        x.value("paddock_reset_duration_seconds_count", &[p, s]),
        2.0
    );
    assert_eq!(
        x.value(
            "paddock_reset_duration_seconds_bucket",
            &[p, s, ("le", "0.0025")]
        ),
        1.0
    );
    assert_eq!(
        x.value(
            "paddock_reset_phase_duration_seconds_count",
            &[p, s, ("phase", "revert")]
        ),
        1.0
    );
    let phase_sum = x.value(
        "paddock_reset_phase_duration_seconds_sum",
        &[p, s, ("phase", "check")],
    );
    assert!((phase_sum - 0.01).abs() < 1e-12);
    assert_eq!(
        x.value(
            "paddock_slot_recycles_total",
            &[p, ("cause", "reset_failed"), ("reason", "revert")]
        ),
        1.0
    );
    assert_eq!(
        x.value("paddock_slot_creations_total", &[p, ("outcome", "ok")]),
        1.0
    );
    assert_eq!(
        x.value("paddock_slot_creations_total", &[p, ("outcome", "failed")]),
        1.0
    );
    assert_eq!(
        x.value(
            "paddock_slot_creation_failures_total",
            &[p, ("reason", "define")]
        ),
        1.0
    );
    assert_eq!(
        x.value("paddock_slot_creation_duration_seconds_sum", &[p]),
        3.0
    );
    assert_eq!(
        x.value(
            "paddock_health_check_failures_total",
            &[p, ("reason", "ping")]
        ),
        1.0
    );
    assert_eq!(
        x.value("paddock_rate_limited_total", &[p, ("limit", "exec")]),
        1.0
    );
    assert_eq!(
        x.value(
            "paddock_throttled_seconds_total",
            &[p, ("limit", "lease_received_bytes")]
        ),
        0.75
    );
    assert_eq!(
        x.value("paddock_policy_denials_total", &[p, ("rule", "put.path")]),
        1.0
    );
    assert_eq!(
        x.value(
            "paddock_anomalies_total",
            &[p, ("rule", "exec_rate"), ("action", "recycle")]
        ),
        1.0
    );
    assert_eq!(x.value("paddock_libvirt_connected", &[p]), 0.0);
    assert_eq!(x.value("paddock_libvirt_reconnects_total", &[p]), 0.0);
    assert_eq!(
        x.value(
            "paddock_agent_round_trip_seconds_bucket",
            &[p, ("le", "0.00025")]
        ),
        0.0
    );
    assert_eq!(
        x.value(
            "paddock_agent_round_trip_seconds_bucket",
            &[p, ("le", "0.0005")]
        ),
        1.0
    );

    hub.emit(ci(), EventKind::BackendConnection { connected: true });
    let x = scrape(&metrics);
    assert_eq!(x.value("paddock_libvirt_connected", &[p]), 1.0);
    assert_eq!(x.value("paddock_libvirt_reconnects_total", &[p]), 1.0);
}

#[test]
fn events_without_a_pool_count_under_the_empty_pool() {
    let (metrics, hub) = setup();
    hub.emit(Source::default(), EventKind::ProtocolError { kind: "crc" });
    hub.emit(
        Source::default(),
        EventKind::AgentRoundTrip {
            duration: Duration::from_millis(1),
        },
    );
    let x = scrape(&metrics);
    assert_eq!(
        x.value(
            "paddock_agent_protocol_errors_total",
            &[("pool", ""), ("slot", ""), ("kind", "crc")]
        ),
        1.0
    );
    assert_eq!(
        x.value("paddock_agent_round_trip_seconds_count", &[("pool", "")]),
        1.0
    );
}

#[test]
fn protocol_errors_count_per_slot_and_destroyed_slots_lose_their_series() {
    let (metrics, hub) = setup();
    for (slot, kind, times) in [(1, "crc", 3), (1, "unknown_kind", 1), (2, "crc", 2)] {
        for _ in 0..times {
            hub.emit(src("ci", Some(slot)), EventKind::ProtocolError { kind });
        }
    }
    hub.emit(
        src("other", Some(1)),
        EventKind::ProtocolError { kind: "crc" },
    );
    let figures = SlotResources {
        cpu_seconds: 1.5,
        memory_bytes: 512 << 20,
        block_read_bytes: 10,
        block_write_bytes: 20,
        net_rx_bytes: 30,
        net_tx_bytes: 40,
    };
    metrics.set_slot_resources("ci", 1, figures);
    metrics.set_slot_resources("ci", 2, figures);
    let x = scrape(&metrics);
    let errors = |pool, slot, kind| {
        x.get(
            "paddock_agent_protocol_errors_total",
            &[("pool", pool), ("slot", slot), ("kind", kind)],
        )
    };
    assert_eq!(errors("ci", "1", "crc"), Some(3.0));
    assert_eq!(errors("ci", "1", "unknown_kind"), Some(1.0));
    assert_eq!(errors("ci", "2", "crc"), Some(2.0));
    let one = [("pool", "ci"), ("slot", "1")];
    assert_eq!(x.value("paddock_slot_cpu_seconds_total", &one), 1.5);
    assert_eq!(
        x.value("paddock_slot_memory_bytes", &one),
        f64::from(512u32 << 20)
    );
    assert_eq!(x.value("paddock_slot_block_read_bytes_total", &one), 10.0);
    assert_eq!(x.value("paddock_slot_block_write_bytes_total", &one), 20.0);
    assert_eq!(
        x.value("paddock_slot_network_receive_bytes_total", &one),
        30.0
    );
    assert_eq!(
        x.value("paddock_slot_network_transmit_bytes_total", &one),
        40.0
    );
    assert_eq!(x.matching(&one).len(), 2 + 6);

    hub.emit(
        src("ci", Some(1)),
        EventKind::SlotDestroyed {
            cause: DestroyCause::Recycled,
            reason: None,
        },
    );
    let x = scrape(&metrics);
    assert!(x.matching(&one).is_empty(), "{:?}", x.matching(&one));
    // Slot 2 of the same pool and slot 1 of another pool keep theirs.
    assert_eq!(x.matching(&[("pool", "ci"), ("slot", "2")]).len(), 1 + 6);
    assert_eq!(
        x.get(
            "paddock_agent_protocol_errors_total",
            &[("pool", "other"), ("slot", "1"), ("kind", "crc")]
        ),
        Some(1.0)
    );
    assert_eq!(
        x.value(
            "paddock_slot_recycles_total",
            &[("pool", "ci"), ("cause", "recycled"), ("reason", "none")]
        ),
        1.0
    );

    // A replacement slot with the same number starts from zero.
    hub.emit(src("ci", Some(1)), EventKind::ProtocolError { kind: "crc" });
    let x = scrape(&metrics);
    assert_eq!(
        x.get(
            "paddock_agent_protocol_errors_total",
            &[("pool", "ci"), ("slot", "1"), ("kind", "crc")]
        ),
        Some(1.0)
    );
}

#[test]
fn golden_info_keeps_one_series_per_pool() {
    let (metrics, hub) = setup();
    let created = |id: &str, hash: &str| EventKind::PoolCreated {
        golden_id: id.into(),
        image_hash: hash.into(),
        strategy: "snapshot",
    };
    hub.emit(src("ci", None), created("g1", "sha256:aa"));
    hub.emit(src("gpu", None), created("g7", "sha256:cc"));
    let x = scrape(&metrics);
    let info = |x: &Exposition, pool, id, hash| {
        x.get(
            "paddock_golden_info",
            &[("pool", pool), ("golden_id", id), ("image_hash", hash)],
        )
    };
    assert_eq!(info(&x, "ci", "g1", "sha256:aa"), Some(1.0));
    hub.emit(src("ci", None), created("g2", "sha256:bb"));
    hub.emit(src("ci", None), created("g2", "sha256:bb"));
    let x = scrape(&metrics);
    assert_eq!(info(&x, "ci", "g1", "sha256:aa"), None);
    assert_eq!(info(&x, "ci", "g2", "sha256:bb"), Some(1.0));
    assert_eq!(info(&x, "gpu", "g7", "sha256:cc"), Some(1.0));
    let golden_series = x
        .samples
        .keys()
        .filter(|k| k.starts_with("paddock_golden_info{"))
        .count();
    assert_eq!(golden_series, 2);
}

#[test]
fn pool_gauges_are_read_at_scrape_time_and_vanish_with_the_pool() {
    let (metrics, _hub) = setup();
    let ci = Arc::new(FakePool::new(
        "ci",
        SlotCounts {
            ready: 3,
            leased: 4,
            preparing: 1,
            waiting: 2,
            total: 8,
            backend_available: true,
        },
    ));
    let gpu = Arc::new(FakePool::new("gpu", SlotCounts::default()));
    metrics.watch_pool(ci.clone());
    metrics.watch_pool(gpu.clone());
    let x = scrape(&metrics);
    let p = ("pool", "ci");
    assert_eq!(x.value("paddock_slots", &[p, ("state", "ready")]), 3.0);
    assert_eq!(x.value("paddock_slots", &[p, ("state", "leased")]), 4.0);
    assert_eq!(x.value("paddock_slots", &[p, ("state", "preparing")]), 1.0);
    assert_eq!(x.value("paddock_pool_slots", &[p]), 8.0);
    assert_eq!(x.value("paddock_acquires_waiting", &[p]), 2.0);
    assert_eq!(x.value("paddock_pool_backend_available", &[p]), 1.0);
    assert_eq!(
        x.value("paddock_pool_backend_available", &[("pool", "gpu")]),
        0.0
    );

    // Read anew at each scrape.
    ci.counts.lock().expect("unpoisoned").ready = 0;
    let x = scrape(&metrics);
    assert_eq!(x.value("paddock_slots", &[p, ("state", "ready")]), 0.0);

    // A dropped pool is gone from the next scrape.
    drop(ci);
    let x = scrape(&metrics);
    assert!(x.matching(&[p]).is_empty(), "{:?}", x.matching(&[p]));
    assert_eq!(x.value("paddock_pool_slots", &[("pool", "gpu")]), 0.0);

    // So is an unwatched one.
    assert!(metrics.unwatch_pool("gpu"));
    assert!(!metrics.unwatch_pool("gpu"));
    let x = scrape(&metrics);
    assert!(x.matching(&[("pool", "gpu")]).is_empty());
    assert!(!x.types.contains_key("paddock_slots"), "no pool, no family");
}

#[test]
fn build_info_is_set_at_registration() {
    let (metrics, _hub) = setup();
    let x = scrape(&metrics);
    assert_eq!(
        x.value(
            "paddock_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
}

#[test]
fn series_do_not_grow_with_leases_tenants_domains_paths_or_commands() {
    let (metrics, hub) = setup();
    let round = |n: u64| {
        let source = Source {
            pool: Some("ci".into()),
            slot: Some(u32::try_from(n % 4).expect("small")),
            lease: Some(LeaseId(n)),
            tenant: Some(format!("tenant-{n}").into()),
            domain: Some(format!("paddock-ci-{n}").into()),
        };
        for kind in one_of_each() {
            let kind = match kind {
                EventKind::ExecStarted { .. } => EventKind::ExecStarted {
                    exec: 0,
                    command: Command::Shell(format!("echo {n}")),
                    env_names: vec![format!("VAR_{n}")],
                    cwd: Some(format!("/work/{n}")),
                    timeout: None,
                },
                EventKind::FileTransferred { .. } => EventKind::FileTransferred {
                    direction: FileDirection::Get,
                    path: format!("/tmp/file-{n}"),
                    bytes: n,
                    ok: true,
                    error: None,
                    duration: Duration::from_millis(1),
                },
                EventKind::Denied { .. } => EventKind::Denied {
                    request: "exec",
                    rule: "exec.program",
                    policy: format!("policy-{n}"),
                    detail: format!("program {n}"),
                },
                EventKind::Alert { .. } => EventKind::Alert {
                    rule: "exec_rate",
                    action: "log",
                    value: 1.0,
                    threshold: 1.0,
                    message: format!("message {n}"),
                },
                // Destroys would remove the per-slot series being counted.
                EventKind::SlotDestroyed { .. } => continue,
                other => other,
            };
            hub.emit(source.clone(), kind);
        }
    };
    for n in 0..4 {
        round(n);
    }
    let before = scrape(&metrics).series();
    for n in 4..1000 {
        round(n);
    }
    let after = scrape(&metrics);
    assert_eq!(after.series(), before);
    let text = metrics.render().expect("renders");
    for leak in [
        "tenant-",
        "lease-",
        "paddock-ci-",
        "/tmp/file",
        "rule-",
        "echo",
        "message",
    ] {
        assert!(!text.contains(leak), "{leak} leaked into the output");
    }
}

/// Every metric in a fully populated output.
fn rendered_families() -> (Exposition, BTreeMap<String, BTreeSet<String>>) {
    let (metrics, _hub, _pool) = everything();
    let x = scrape(&metrics);
    let mut families: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (sample, labels) in &x.labels {
        let family = x.family_of(sample);
        let entry = families.entry(family).or_default();
        entry.extend(labels.iter().filter(|l| *l != "le").cloned());
    }
    (x, families)
}

#[test]
fn names_follow_prometheus_conventions() {
    let (x, families) = rendered_families();
    assert_eq!(families.len(), x.types.len());
    for (name, kind) in &x.types {
        assert!(name.starts_with("paddock_"), "{name}");
        match kind.as_str() {
            "counter" => assert!(name.ends_with("_total"), "counter {name}"),
            "histogram" => assert!(name.ends_with("_seconds"), "histogram {name}"),
            "gauge" => assert!(!name.ends_with("_total"), "gauge {name}"),
            other => panic!("{name} is a {other}"),
        }
        if ["seconds", "duration", "_wait_", "round_trip", "_held_"]
            .iter()
            .any(|word| name.contains(word))
        {
            assert!(
                name.ends_with("_seconds") || name.ends_with("_seconds_total"),
                "a time in base units: {name}"
            );
        }
        if name.contains("bytes") {
            assert!(
                name.ends_with("_bytes") || name.ends_with("_bytes_total"),
                "bytes in base units: {name}"
            );
        }
    }
}

/// The doc's metric table: name -> (type, labels).
fn doc_table() -> BTreeMap<String, (String, BTreeSet<String>)> {
    let mut out = BTreeMap::new();
    let mut in_table = false;
    for line in DOC.lines() {
        if line.starts_with("| Metric | Type | Labels | Unit | Meaning |") {
            in_table = true;
            continue;
        }
        if in_table && !line.starts_with('|') {
            break;
        }
        if !in_table || line.starts_with("| ---") {
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let name = cells[1].trim_matches('`').to_owned();
        let labels = cells[3]
            .split(',')
            .map(|l| l.trim().trim_matches('`').to_owned())
            .filter(|l| !l.is_empty())
            .collect();
        let previous = out.insert(name.clone(), (cells[2].to_owned(), labels));
        assert!(previous.is_none(), "{name} twice in the doc");
    }
    out
}

#[test]
fn the_doc_table_lists_exactly_the_rendered_metrics() {
    let (x, families) = rendered_families();
    let doc = doc_table();
    let rendered: BTreeSet<&String> = families.keys().collect();
    let documented: BTreeSet<&String> = doc.keys().collect();
    assert_eq!(
        rendered.difference(&documented).collect::<Vec<_>>(),
        Vec::<&&String>::new(),
        "rendered but not documented"
    );
    assert_eq!(
        documented.difference(&rendered).collect::<Vec<_>>(),
        Vec::<&&String>::new(),
        "documented but not rendered"
    );
    for (name, (kind, labels)) in &doc {
        assert_eq!(&x.types[name], kind, "{name}'s type");
        assert_eq!(&families[name], labels, "{name}'s labels");
    }
}

#[test]
fn the_doc_bucket_table_matches_the_histograms() {
    let (x, _) = rendered_families();
    let mut documented = BTreeMap::new();
    for line in DOC
        .lines()
        .skip_while(|l| !l.starts_with("| Metric | Buckets (s) |"))
    {
        if !line.starts_with('|') {
            break;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if let Some(name) = cells[1].strip_prefix('`') {
            let bounds: Vec<f64> = cells[2]
                .split(',')
                .map(|b| b.trim().parse().expect("a bound"))
                .collect();
            documented.insert(name.trim_end_matches('`').to_owned(), bounds);
        }
    }
    let histograms: Vec<&String> = x
        .types
        .iter()
        .filter(|(_, t)| *t == "histogram")
        .map(|(n, _)| n)
        .collect();
    assert_eq!(histograms.len(), documented.len());
    for name in histograms {
        let mut rendered: Vec<f64> = x
            .samples
            .keys()
            .filter(|k| k.starts_with(&format!("{name}_bucket{{")))
            .filter(|k| k.contains("pool=\"ci\""))
            .filter_map(|k| {
                let le = parse_labels(k.split_once('{')?.1.trim_end_matches('}')).remove("le")?;
                le.parse().ok().filter(|b: &f64| b.is_finite())
            })
            .collect();
        rendered.sort_by(f64::total_cmp);
        rendered.dedup();
        assert_eq!(&rendered, &documented[name.as_str()], "{name}'s buckets");
    }
    assert_eq!(
        documented["paddock_acquire_wait_seconds"],
        buckets::ACQUIRE_WAIT
    );
}

#[test]
fn a_second_registration_is_a_typed_error_with_a_short_message() {
    let (_metrics, registry) = Metrics::new().expect("metrics register");
    let err = Metrics::register(&registry).expect_err("already registered");
    assert!(matches!(
        err,
        MetricsError::Register {
            name: "paddock_events_total",
            ..
        }
    ));
    assert_eq!(err.to_string(), "registering metric paddock_events_total");
    assert!(std::error::Error::source(&err).is_some());
}

#[test]
fn render_of_an_embedder_registry_includes_its_own_metrics() {
    let registry = prometheus::Registry::new();
    let other = prometheus::IntCounter::new("app_requests_total", "x").expect("valid");
    registry
        .register(Box::new(other.clone()))
        .expect("registers");
    let metrics = Metrics::register(&registry).expect("registers");
    other.inc();
    let text = render(&registry).expect("renders");
    assert!(text.contains("app_requests_total 1"));
    assert_eq!(text, metrics.render().expect("renders"));
}

#[test]
fn metrics_are_send_sync_and_debug() {
    fn assert_traits<T: Send + Sync + std::fmt::Debug + 'static>() {}
    assert_traits::<Metrics>();
    let (metrics, _hub, _pool) = everything();
    let debug = format!("{metrics:?}");
    assert!(debug.contains("pools_watched: 1"), "{debug}");
}
