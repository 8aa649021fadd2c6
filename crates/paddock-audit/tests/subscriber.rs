//! The audit log as a subscriber of Paddock's event hub.
#![cfg(test)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use paddock_audit::{
    ActorKind, AuditConfig, AuditOptions, AuditRecord, AuditSubscriber, AuditWriter,
    CommandRecording, Digest, Stage, Target, audit_event, verify,
};
use paddock_events::{
    AcquireOutcome, Event, EventHub, EventKind, ExecOutcome, FileDirection, LeaseId, ResetOutcome,
    Source,
};
use paddock_proto::{Command, ExecResult};

fn options(command: CommandRecording) -> AuditOptions {
    AuditOptions {
        command,
        actor_process: "paddockd".into(),
    }
}

/// Every record of the log in `dir`, in order.
fn records(dir: &Path) -> anyhow::Result<Vec<AuditRecord>> {
    let text = log_text(dir)?;
    text.lines()
        .map(|line| Ok(AuditRecord::from_line(line.as_bytes())?))
        .collect()
}

/// The log's bytes, every file in order.
fn log_text(dir: &Path) -> anyhow::Result<String> {
    let mut names: Vec<_> = std::fs::read_dir(dir)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    names.sort();
    let mut text = String::new();
    for name in names {
        text.push_str(&std::fs::read_to_string(name)?);
    }
    Ok(text)
}

fn target(slot: Option<u32>, lease: Option<&str>) -> Target {
    Target {
        pool: Some("ci".into()),
        slot,
        lease: lease.map(str::to_owned),
        domain: slot.map(|s| format!("paddock-ci-{s}")),
    }
}

fn exec_started(env: &BTreeMap<String, String>, command: Command) -> EventKind {
    EventKind::ExecStarted {
        exec: 41,
        command,
        // What the agent client emits: the request's variable names only.
        env_names: env.keys().cloned().collect(),
        cwd: Some("/work".into()),
        timeout: Some(Duration::from_secs(30)),
    }
}

#[test]
fn a_lease_s_events_become_one_record_each_in_a_verified_chain() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let log = AuditWriter::open(dir.path(), AuditConfig::default())?;
    let subscriber = Arc::new(AuditSubscriber::new(
        log.clone(),
        options(CommandRecording::Full),
    ));
    let hub = EventHub::new();
    hub.subscribe(subscriber.clone());

    let pool = hub.emitter(Source {
        pool: Some("ci".into()),
        ..Source::default()
    });
    let slot = pool.for_slot(3, Some("paddock-ci-3"));
    let lease = LeaseId(7);
    pool.emit(|| EventKind::PoolCreated {
        golden_id: "golden-1".into(),
        image_hash: "sha256:abc".into(),
        strategy: "snapshot",
    });
    pool.emit(|| EventKind::GoldenBuilt {
        golden_id: "golden-1".into(),
        duration: Duration::from_secs(20),
    });
    slot.emit(|| EventKind::SlotCreated {
        duration: Duration::from_secs(2),
    });
    slot.emit_from(
        |s| {
            s.lease = Some(lease);
            s.tenant = Some("alice".into());
        },
        || EventKind::Acquire {
            outcome: AcquireOutcome::Ok,
            wait: Duration::from_millis(12),
        },
    );
    slot.set_lease(Some((lease, Some("alice".into()))));
    slot.emit(|| EventKind::AgentRoundTrip {
        duration: Duration::from_millis(1),
    });
    let env = BTreeMap::from([("HOME".to_owned(), "/root".to_owned())]);
    slot.emit(|| {
        exec_started(
            &env,
            Command::Argv(vec!["python3".into(), "main.py".into()]),
        )
    });
    slot.emit(|| EventKind::ExecFinished {
        exec: 41,
        outcome: ExecOutcome::Ok,
        result: Some(ExecResult {
            exit_code: Some(0),
            stdout_bytes: 100,
            stderr_bytes: 20,
            stderr_truncated: true,
            duration_us: 1_400_000,
            ..ExecResult::default()
        }),
        duration: Duration::from_millis(1500),
        error: None,
    });
    slot.emit(|| EventKind::FileTransferred {
        direction: FileDirection::Put,
        path: "/work/input.csv".into(),
        bytes: 2048,
        ok: true,
        error: None,
        duration: Duration::from_millis(20),
    });
    slot.emit(|| EventKind::Alert {
        rule: "repeated_exec_timeouts",
        action: "log",
        value: 3.0,
        threshold: 3.0,
        message: "3 exec timeouts within 300 s".into(),
    });
    slot.emit(|| EventKind::LeaseReleased {
        held: Duration::from_secs(5),
    });
    slot.set_lease(None);
    slot.emit(|| EventKind::ResetFinished {
        strategy: "snapshot",
        outcome: ResetOutcome::Ok,
        reason: None,
        duration: Duration::from_millis(300),
        phases: vec![("revert", Duration::from_millis(250))],
    });
    // A refused acquire, as the pool emits it: the limit's refusal, then
    // the acquire's outcome. One record.
    pool.emit_from(
        |s| s.tenant = Some("bob".into()),
        || EventKind::RateLimited {
            limit: "tenant_acquires",
            retry_after: Duration::from_secs(2),
        },
    );
    pool.emit_from(
        |s| s.tenant = Some("bob".into()),
        || EventKind::Acquire {
            outcome: AcquireOutcome::RateLimited,
            wait: Duration::ZERO,
        },
    );
    log.close()?;
    assert_eq!(subscriber.append_failures(), 0);

    let records = records(dir.path())?;
    let summary: Vec<_> = records
        .iter()
        .map(|r| (r.event.stage, r.event.verb.as_str()))
        .collect();
    assert_eq!(
        summary,
        vec![
            (Stage::Completed, "create_pool"),
            (Stage::Completed, "acquire"),
            (Stage::Received, "exec"),
            (Stage::Completed, "exec"),
            (Stage::Completed, "file_put"),
            (Stage::Completed, "alert"),
            (Stage::Completed, "release"),
            (Stage::Completed, "reset"),
            (Stage::Denied, "acquire"),
        ]
    );
    let report = verify(dir.path())?;
    assert!(report.is_intact(), "{report}");
    assert_eq!(report.records, 9);

    // Ids: `<run>:<hub event id>`, unique, in emission order; the skipped
    // telemetry (golden, slot creation, round trip) left gaps. The two
    // stages of the execution share `<run>:exec-<its number>`.
    let ids: Vec<&str> = records
        .iter()
        .map(|r| {
            let (run, id) = r.event.id.split_once(':').expect("run:id");
            assert_eq!(run, subscriber.run_id());
            id
        })
        .collect();
    assert_eq!(
        ids,
        ["0", "3", "exec-41", "exec-41", "7", "8", "9", "10", "11"]
    );
    assert_eq!(
        uuid::Uuid::parse_str(subscriber.run_id())?.get_version_num(),
        4
    );

    let json = |r: &AuditRecord| serde_json::to_value(&r.event.request).expect("json");
    let [
        created,
        acquired,
        received,
        completed,
        put,
        alert,
        released,
        reset,
        refused,
    ] = records.as_slice()
    else {
        panic!("9 records");
    };

    assert_eq!(created.event.actor.kind, ActorKind::Process);
    assert_eq!(created.event.actor.name, "paddockd");
    assert_eq!(created.event.target, Target::pool("ci"));
    assert_eq!(
        json(created),
        serde_json::json!({"kind": "pool", "golden_id": "golden-1",
            "image_hash": "sha256:abc", "strategy": "snapshot"})
    );

    let alice = |r: &AuditRecord| {
        assert_eq!(r.event.actor.kind, ActorKind::Tenant, "{:?}", r.event);
        assert_eq!(r.event.actor.name, "alice");
        assert_eq!(r.event.target, target(Some(3), Some("lease-7")));
    };
    for r in [acquired, received, completed, put, alert, released] {
        alice(r);
    }
    let response = |r: &AuditRecord| r.event.response.clone().expect("a response");
    let acquired_response = response(acquired);
    assert_eq!(acquired_response.outcome.as_deref(), Some("ok"));
    assert_eq!(acquired_response.duration_seconds, Some(0.012));
    // The acquire was received `wait` before it ended.
    let micros = |t: paddock_audit::Timestamp| i128::from(t.unix_micros());
    assert!(
        (micros(acquired.event.stage_at) - micros(acquired.event.received_at) - 12_000).abs() <= 1
    );

    assert_eq!(
        json(received),
        serde_json::json!({"kind": "exec", "form": "argv", "argv": ["python3", "main.py"],
            "env_names": ["HOME"], "cwd": "/work", "timeout_seconds": 30.0})
    );
    assert!(received.event.response.is_none());
    assert_eq!(received.event.received_at, received.event.stage_at);

    assert!(completed.event.request.is_none());
    let done = response(completed);
    assert_eq!(done.outcome.as_deref(), Some("ok"));
    assert_eq!(done.exit_code, Some(0));
    assert_eq!(done.signal, None);
    assert_eq!(done.bytes, Some(120));
    assert_eq!(done.truncated, Some(true));
    // The host's time, not the guest's duration_us.
    assert_eq!(done.duration_seconds, Some(1.5));
    assert!(
        (micros(completed.event.stage_at) - micros(completed.event.received_at) - 1_500_000).abs()
            <= 1
    );

    assert_eq!(
        json(put),
        serde_json::json!({"kind": "file", "path": "/work/input.csv", "size": 2048})
    );
    let put_response = response(put);
    assert_eq!(put_response.outcome.as_deref(), Some("ok"));
    assert_eq!(put_response.bytes, Some(2048));
    assert_eq!(put_response.duration_seconds, Some(0.02));

    assert_eq!(
        json(alert),
        serde_json::json!({"kind": "alert", "rule": "repeated_exec_timeouts",
            "action": "log", "value": 3.0, "threshold": 3.0})
    );
    assert_eq!(
        response(alert).error.as_deref(),
        Some("3 exec timeouts within 300 s")
    );

    let released_response = response(released);
    assert_eq!(released_response.outcome.as_deref(), Some("ok"));
    assert_eq!(released_response.duration_seconds, Some(5.0));
    assert_eq!(released.event.received_at, released.event.stage_at);

    // After the release: the slot's own work, by the host.
    assert_eq!(reset.event.actor.kind, ActorKind::Process);
    assert_eq!(reset.event.target, target(Some(3), None));
    assert_eq!(
        json(reset),
        serde_json::json!({"kind": "reset", "strategy": "snapshot"})
    );
    let reset_response = response(reset);
    assert_eq!(reset_response.outcome.as_deref(), Some("ok"));
    assert_eq!(reset_response.duration_seconds, Some(0.3));
    assert_eq!(reset_response.error, None);

    assert_eq!(refused.event.actor.kind, ActorKind::Tenant);
    assert_eq!(refused.event.actor.name, "bob");
    assert_eq!(refused.event.target, Target::pool("ci"));
    assert_eq!(
        json(refused),
        serde_json::json!({"kind": "rate_limit", "limit": "tenant_acquires",
            "retry_after_seconds": 2.0})
    );
    let refused_response = response(refused);
    assert_eq!(refused_response.outcome.as_deref(), Some("denied"));
    assert_eq!(refused_response.error.as_deref(), Some("rate_limited"));
    Ok(())
}

#[test]
fn environment_values_and_hashed_commands_never_reach_the_log() -> anyhow::Result<()> {
    let shell = "curl -H \"Authorization: Bearer $TOKEN\" https://internal.example/marker-7f3a";
    // The host's request carries the value; the event only its name.
    let env = BTreeMap::from([("TOKEN".to_owned(), "s3cr3t-value".to_owned())]);
    for recording in [CommandRecording::Full, CommandRecording::Hashed] {
        let dir = tempfile::tempdir()?;
        let log = AuditWriter::open(dir.path(), AuditConfig::default())?;
        let hub = EventHub::new();
        hub.subscribe(Arc::new(AuditSubscriber::new(
            log.clone(),
            options(recording),
        )));
        let slot = hub.emitter(Source {
            pool: Some("ci".into()),
            slot: Some(1),
            lease: Some(LeaseId(1)),
            tenant: Some("alice".into()),
            domain: Some("paddock-ci-1".into()),
        });
        slot.emit(|| exec_started(&env, Command::Shell(shell.into())));
        slot.emit(|| EventKind::ExecFinished {
            exec: 0,
            outcome: ExecOutcome::NonZero,
            result: Some(ExecResult {
                exit_code: Some(22),
                ..ExecResult::default()
            }),
            duration: Duration::from_millis(80),
            error: None,
        });
        log.close()?;
        let text = log_text(dir.path())?;
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.contains("\"env_names\":[\"TOKEN\"]"), "{text}");
        assert!(!text.contains("s3cr3t-value"), "{text}");
        let records = records(dir.path())?;
        let request = records[0].event.request.clone().expect("a request").0;
        match recording {
            CommandRecording::Full => {
                assert!(text.contains("marker-7f3a"), "{text}");
                assert_eq!(request.get("shell").and_then(|v| v.as_str()), Some(shell));
            }
            _ => {
                assert!(!text.contains("marker-7f3a"), "{text}");
                assert!(!text.contains("curl"), "{text}");
                assert_eq!(
                    request.get("argv_sha256").and_then(|v| v.as_str()),
                    Some(Digest::of(shell.as_bytes()).to_hex().as_str())
                );
            }
        }
        let finished = records[1].event.response.clone().expect("a response");
        assert_eq!(finished.outcome.as_deref(), Some("non_zero"));
        assert_eq!(finished.exit_code, Some(22));
    }
    Ok(())
}

#[test]
fn failed_appends_are_counted_not_silent() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let log = AuditWriter::open(dir.path(), AuditConfig::default())?;
    let subscriber = Arc::new(AuditSubscriber::new(
        log.clone(),
        options(CommandRecording::Full),
    ));
    let hub = EventHub::new();
    hub.subscribe(subscriber.clone());
    let source = Source {
        pool: Some("ci".into()),
        ..Source::default()
    };
    hub.emit(source.clone(), EventKind::ProtocolError { kind: "crc" });
    log.close()?;
    assert_eq!(subscriber.append_failures(), 0);
    hub.emit(source.clone(), EventKind::ProtocolError { kind: "crc" });
    hub.emit(
        source.clone(),
        EventKind::Denied {
            request: "exec",
            rule: "exec.program",
            policy: "read-only".into(),
            detail: "program \"rm\"".into(),
        },
    );
    // Telemetry is not audited, so it cannot fail.
    hub.emit(source, EventKind::BackendConnection { connected: true });
    assert_eq!(subscriber.append_failures(), 2);
    assert_eq!(records(dir.path())?.len(), 1);
    Ok(())
}

fn event(source: Source, kind: EventKind) -> Event {
    Event {
        id: 5,
        at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        source,
        kind,
    }
}

#[test]
fn every_event_kind_is_mapped_or_deliberately_skipped() {
    let options = options(CommandRecording::Full);
    let slot = Source {
        pool: Some("ci".into()),
        slot: Some(2),
        lease: None,
        tenant: None,
        domain: Some("paddock-ci-2".into()),
    };
    let map = |kind: EventKind| audit_event(&event(slot.clone(), kind), &options, "run");
    let skipped = [
        EventKind::GoldenBuilt {
            golden_id: "g".into(),
            duration: Duration::from_secs(1),
        },
        EventKind::SlotCreated {
            duration: Duration::from_secs(1),
        },
        EventKind::SlotCreateFailed {
            reason: "no_memory",
        },
        EventKind::HealthCheckFailed { reason: "ping" },
        EventKind::BackendConnection { connected: false },
        EventKind::AgentRoundTrip {
            duration: Duration::from_millis(1),
        },
    ];
    for kind in skipped {
        let name = kind.name();
        assert!(map(kind).is_none(), "{name} is telemetry");
    }

    let record = map(EventKind::SlotDestroyed {
        cause: paddock_events::DestroyCause::ResetFailed,
        reason: Some("revert_failed"),
    })
    .expect("audited");
    assert_eq!(record.id, "run:5");
    assert_eq!(
        (record.stage, record.verb.as_str()),
        (Stage::Completed, "destroy_slot")
    );
    assert_eq!(
        serde_json::to_value(&record.request).expect("json"),
        serde_json::json!({"kind": "destroy_slot", "cause": "reset_failed", "reason": "revert_failed"})
    );

    let record = map(EventKind::ResetFinished {
        strategy: "snapshot",
        outcome: ResetOutcome::Failed,
        reason: Some("revert_failed"),
        duration: Duration::from_secs(2),
        phases: Vec::new(),
    })
    .expect("audited");
    let response = record.response.expect("a response");
    assert_eq!(response.outcome.as_deref(), Some("failed"));
    assert_eq!(response.error.as_deref(), Some("revert_failed"));

    let record = map(EventKind::ProtocolError {
        kind: "window_overrun",
    })
    .expect("audited");
    assert_eq!(
        (record.stage, record.verb.as_str()),
        (Stage::Completed, "protocol_error")
    );
    assert_eq!(record.actor.kind, ActorKind::Process);
    let response = record.response.expect("a response");
    assert_eq!(response.outcome.as_deref(), Some("error"));
    assert_eq!(response.error.as_deref(), Some("window_overrun"));

    let record = map(EventKind::RateLimited {
        limit: "lease_execs",
        retry_after: Duration::from_millis(1500),
    })
    .expect("audited");
    assert_eq!(
        (record.stage, record.verb.as_str()),
        (Stage::Denied, "exec")
    );
    assert_eq!(
        serde_json::to_value(&record.request).expect("json"),
        serde_json::json!({"kind": "rate_limit", "limit": "lease_execs", "retry_after_seconds": 1.5})
    );
    for (limit, verb) in [
        ("acquires", "acquire"),
        ("tenant_acquires", "acquire"),
        ("lease_file_bytes", "file_put"),
        ("gpu_minutes", "gpu_minutes"),
    ] {
        let record = map(EventKind::RateLimited {
            limit,
            retry_after: Duration::ZERO,
        })
        .expect("audited");
        assert_eq!((record.stage, record.verb.as_str()), (Stage::Denied, verb));
    }
    // Recorded through the RateLimited event the pool emits with it.
    assert!(
        map(EventKind::Acquire {
            outcome: AcquireOutcome::RateLimited,
            wait: Duration::ZERO,
        })
        .is_none()
    );

    for (request, verb) in [
        ("exec", "exec"),
        ("put", "file_put"),
        ("get", "file_get"),
        ("signal", "signal"),
        ("status", "status"),
        ("stop_agent", "stop_agent"),
    ] {
        let record = map(EventKind::Denied {
            request,
            rule: "exec.program",
            policy: "read-only".into(),
            detail: "program \"rm\" is not in [\"ls\"]".into(),
        })
        .expect("audited");
        assert_eq!((record.stage, record.verb.as_str()), (Stage::Denied, verb));
        let summary = serde_json::to_value(record.request.expect("a request")).expect("json");
        assert_eq!(summary["kind"], "policy");
        assert_eq!(summary["policy"], "read-only");
        assert_eq!(summary["rule"], "exec.program");
        assert_eq!(summary["detail"], "program \"rm\" is not in [\"ls\"]");
        let response = record.response.expect("a response");
        assert_eq!(response.outcome.as_deref(), Some("denied"));
        assert_eq!(response.error.as_deref(), Some("policy_denied"));
    }

    let record = map(EventKind::ExecFinished {
        exec: 0,
        outcome: ExecOutcome::Error,
        result: None,
        duration: Duration::from_millis(5),
        error: Some("connection_lost"),
    })
    .expect("audited");
    let response = record.response.expect("a response");
    assert_eq!(response.outcome.as_deref(), Some("error"));
    assert_eq!(response.error.as_deref(), Some("connection_lost"));
    assert_eq!((response.exit_code, response.bytes), (None, None));

    let record = map(EventKind::FileTransferred {
        direction: FileDirection::Get,
        path: "/work/out.bin".into(),
        bytes: 512,
        ok: false,
        error: Some("checksum"),
        duration: Duration::from_millis(3),
    })
    .expect("audited");
    assert_eq!(record.verb.as_str(), "file_get");
    // A failed transfer's bytes are what moved, not the file's size.
    assert_eq!(
        serde_json::to_value(&record.request).expect("json"),
        serde_json::json!({"kind": "file", "path": "/work/out.bin"})
    );
    let response = record.response.expect("a response");
    assert_eq!(response.outcome.as_deref(), Some("error"));
    assert_eq!(response.bytes, Some(512));
    assert_eq!(response.error.as_deref(), Some("checksum"));

    for (outcome, expected) in [
        (AcquireOutcome::Timeout, "timeout"),
        (AcquireOutcome::Unavailable, "unavailable"),
        (AcquireOutcome::Closed, "closed"),
    ] {
        let record = map(EventKind::Acquire {
            outcome,
            wait: Duration::from_secs(1),
        })
        .expect("audited");
        assert_eq!(record.stage, Stage::Completed);
        let response = record.response.expect("a response");
        assert_eq!(response.outcome.as_deref(), Some(expected));
    }

    // A non-finite alert value is written as null, not refused.
    let record = map(EventKind::Alert {
        rule: "cpu_pinned",
        action: "log",
        value: f64::NAN,
        threshold: 60.0,
        message: "m".into(),
    })
    .expect("audited");
    assert_eq!(
        record.request.expect("a request").0.get("value"),
        Some(&serde_json::Value::Null)
    );
}
