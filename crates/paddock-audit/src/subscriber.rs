//! [`AuditSubscriber`]: writes the audit-worthy events of a
//! [`paddock_events::EventHub`] to an [`AuditLog`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use paddock_events::{AcquireOutcome, Event, EventKind, FileDirection, Source, Subscriber};
use paddock_proto::Command;
use serde_json::{Map, Value};

use crate::record::{
    Actor, AuditEvent, CommandRecording, ExecSummary, FileSummary, Request, Response, Stage,
    Target, Verb, outcome,
};
use crate::time::Timestamp;
use crate::writer::AuditLog;

/// The actor name of the host process when the executable's name cannot be
/// found.
const DEFAULT_PROCESS: &str = "paddock";

/// How [`AuditSubscriber`] writes records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditOptions {
    /// How exec command lines are recorded. Default
    /// [`CommandRecording::Full`].
    pub command: CommandRecording,
    /// The actor name ([`Actor::process`]) of events that carry no tenant.
    /// Default: the file stem of the running executable, or `"paddock"`
    /// when it cannot be found.
    pub actor_process: String,
}

impl Default for AuditOptions {
    fn default() -> Self {
        let actor_process = std::env::current_exe()
            .ok()
            .and_then(|path| {
                path.file_stem()
                    .and_then(|stem| stem.to_str())
                    .map(str::to_owned)
            })
            .filter(|stem| !stem.is_empty())
            .unwrap_or_else(|| DEFAULT_PROCESS.to_owned());
        Self {
            command: CommandRecording::Full,
            actor_process,
        }
    }
}

/// A [`Subscriber`] that appends one audit record per audit-worthy event
/// (actions and security-relevant facts, not telemetry) to an [`AuditLog`].
/// The mapping is in `AUDIT.md`, *From Paddock's events*.
///
/// It appends on the emitting thread with [`AuditLog::append`]. Under
/// [`OverflowPolicy::Wait`](crate::OverflowPolicy::Wait) a full queue makes
/// that thread wait for the writer, so the data path slows to the disk's
/// pace instead of losing records; open the log with
/// [`OverflowPolicy::Drop`](crate::OverflowPolicy::Drop) to never wait (and
/// count lost records in [`AuditLog::dropped`]).
///
/// `on_event` cannot return an error: an append that fails (the log failed
/// or was closed) is counted in [`AuditSubscriber::append_failures`] and the
/// first one is logged with `tracing::error!`.
#[derive(Debug)]
pub struct AuditSubscriber {
    log: AuditLog,
    options: AuditOptions,
    /// Drawn once per subscriber: with the hub's event id it makes every
    /// record's `id` unique across processes (see [`audit_event`]).
    run: String,
    failures: AtomicU64,
}

impl AuditSubscriber {
    /// A subscriber appending to `log`.
    pub fn new(log: AuditLog, options: AuditOptions) -> Self {
        Self {
            log,
            options,
            run: uuid::Uuid::new_v4().to_string(),
            failures: AtomicU64::new(0),
        }
    }

    /// The log it appends to.
    pub fn log(&self) -> &AuditLog {
        &self.log
    }

    /// The options in force.
    pub fn options(&self) -> &AuditOptions {
        &self.options
    }

    /// The run id at the start of every record `id` it writes
    /// (`<run>:<event id>`).
    pub fn run_id(&self) -> &str {
        &self.run
    }

    /// Audit-worthy events whose append failed (the log failed or was
    /// closed): records that are not in the log.
    pub fn append_failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
}

impl Subscriber for AuditSubscriber {
    fn on_event(&self, event: &Event) {
        let Some(record) = audit_event(event, &self.options, &self.run) else {
            return;
        };
        if let Err(error) = self.log.append(record) {
            // Once: a failed log fails every later append, and one line per
            // event would flood the process log with the same cause.
            if self.failures.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::error!(
                    error = &error as &dyn std::error::Error,
                    event = event.kind.name(),
                    event_id = event.id,
                    "audit append failed; this and later audit records are lost \
                     (counted in AuditSubscriber::append_failures)"
                );
            }
        }
    }
}

/// The audit record for `event`, or `None` for telemetry that is not
/// audited. This is what [`AuditSubscriber`] appends; it is public for hosts
/// that read [`EventHub::stream`](paddock_events::EventHub::stream) and
/// append with [`AuditLog::append_async`] instead.
///
/// The record's `id` is `<run>:<event id>`: `run` (for the subscriber, a
/// UUID v4 drawn when it is created) and the hub's event id, so records are
/// unique across processes and ordered by emission within one hub. The two
/// records of one execution (`received`, `completed`) share the id
/// `<run>:exec-<n>`, `n` the execution's number in its events.
pub fn audit_event(event: &Event, options: &AuditOptions, run: &str) -> Option<AuditEvent> {
    let source = &event.source;
    let at = event.at;
    // (stage, verb, request, response, received_at)
    let (stage, verb, request, response, received): (_, &str, _, _, _) = match &event.kind {
        EventKind::PoolCreated {
            golden_id,
            image_hash,
            strategy,
        } => (
            Stage::Completed,
            Verb::CREATE_POOL,
            Some(free_form(
                "pool",
                [
                    ("golden_id", golden_id.as_str().into()),
                    ("image_hash", image_hash.as_str().into()),
                    ("strategy", (*strategy).into()),
                ],
            )),
            Some(Response::outcome(outcome::OK)),
            at,
        ),
        EventKind::Acquire {
            outcome: acquired,
            wait,
        } => {
            // The pool emits a RateLimited event for the same refusal just
            // before, with the limit and the retry time: that one is the
            // record.
            if *acquired == AcquireOutcome::RateLimited {
                return None;
            }
            (
                Stage::Completed,
                Verb::ACQUIRE,
                None,
                Some(Response::outcome(acquired.as_str()).with_duration(*wait)),
                before(at, *wait),
            )
        }
        EventKind::LeaseReleased { held } => (
            Stage::Completed,
            Verb::RELEASE,
            None,
            Some(Response::outcome(outcome::OK).with_duration(*held)),
            // `held` reaches back to the acquire, not to the release request.
            at,
        ),
        EventKind::ResetFinished {
            strategy,
            outcome: reset,
            reason,
            duration,
            phases: _,
        } => {
            let mut response = Response::outcome(reset.as_str()).with_duration(*duration);
            if let Some(reason) = reason {
                response = response.with_error(*reason);
            }
            (
                Stage::Completed,
                Verb::RESET,
                Some(free_form("reset", [("strategy", (*strategy).into())])),
                Some(response),
                before(at, *duration),
            )
        }
        EventKind::SlotDestroyed { cause, reason } => {
            let mut fields = vec![("cause", Value::from(cause.as_str()))];
            if let Some(reason) = reason {
                fields.push(("reason", (*reason).into()));
            }
            (
                Stage::Completed,
                Verb::DESTROY_SLOT,
                Some(free_form("destroy_slot", fields)),
                Some(Response::outcome(outcome::OK)),
                at,
            )
        }
        EventKind::ExecStarted {
            exec: _,
            command,
            env_names,
            cwd,
            timeout,
        } => {
            let mut summary = match command {
                Command::Argv(argv) => ExecSummary::argv(argv.iter().cloned()),
                Command::Shell(shell) => ExecSummary::shell(shell.clone()),
            };
            summary = summary.env_names(env_names.iter().cloned());
            if let Some(cwd) = cwd {
                summary = summary.cwd(cwd.clone());
            }
            if let Some(timeout) = timeout {
                summary = summary.timeout(*timeout);
            }
            (
                Stage::Received,
                Verb::EXEC,
                Some(Request::exec(&summary, options.command)),
                None,
                at,
            )
        }
        EventKind::ExecFinished {
            exec: _,
            outcome: finished,
            result,
            duration,
            error,
        } => {
            let mut response = Response::outcome(finished.as_str()).with_duration(*duration);
            if let Some(result) = result {
                response.exit_code = result.exit_code;
                response.signal = result.signal;
                response.bytes = Some(result.stdout_bytes.saturating_add(result.stderr_bytes));
                response.truncated = Some(result.stdout_truncated || result.stderr_truncated);
            }
            if let Some(error) = error {
                response = response.with_error(*error);
            }
            (
                Stage::Completed,
                Verb::EXEC,
                None,
                Some(response),
                before(at, *duration),
            )
        }
        EventKind::FileTransferred {
            direction,
            path,
            bytes,
            ok,
            error,
            duration,
        } => {
            let verb = match direction {
                FileDirection::Put => Verb::FILE_PUT,
                FileDirection::Get => Verb::FILE_GET,
            };
            let mut summary = FileSummary::new(path.clone());
            // A failed transfer's byte count is what moved, not the file's
            // size.
            if *ok {
                summary = summary.size(*bytes);
            }
            let mut response = Response::outcome(if *ok { outcome::OK } else { outcome::ERROR })
                .with_bytes(*bytes)
                .with_duration(*duration);
            if let Some(error) = error {
                response = response.with_error(*error);
            }
            (
                Stage::Completed,
                verb,
                Some(Request::file(&summary)),
                Some(response),
                before(at, *duration),
            )
        }
        EventKind::ProtocolError { kind } => (
            Stage::Completed,
            Verb::PROTOCOL_ERROR,
            None,
            Some(Response::outcome(outcome::ERROR).with_error(*kind)),
            at,
        ),
        EventKind::RateLimited { limit, retry_after } => (
            Stage::Denied,
            rate_limited_verb(limit),
            Some(free_form(
                "rate_limit",
                [
                    ("limit", (*limit).into()),
                    ("retry_after_seconds", retry_after.as_secs_f64().into()),
                ],
            )),
            Some(Response::outcome(outcome::DENIED).with_error("rate_limited")),
            at,
        ),
        EventKind::Denied {
            request,
            rule,
            policy,
            detail,
        } => (
            Stage::Denied,
            denied_verb(request),
            Some(free_form(
                "policy",
                [
                    ("policy", policy.as_str().into()),
                    ("rule", (*rule).into()),
                    ("detail", detail.as_str().into()),
                ],
            )),
            Some(Response::outcome(outcome::DENIED).with_error("policy_denied")),
            at,
        ),
        EventKind::Alert {
            rule,
            action,
            value,
            threshold,
            message,
        } => (
            Stage::Completed,
            Verb::ALERT,
            Some(free_form(
                "alert",
                [
                    ("rule", (*rule).into()),
                    ("action", (*action).into()),
                    // A non-finite value becomes JSON null.
                    ("value", (*value).into()),
                    ("threshold", (*threshold).into()),
                ],
            )),
            Some(Response {
                error: Some(message.clone()),
                ..Response::default()
            }),
            at,
        ),
        // Telemetry: timings, capacity and connectivity, not actions (a
        // throttled flow refused nothing). HealthCheckFailed is followed by SlotDestroyed (check_failed),
        // which is audited; GoldenBuilt is part of the audited PoolCreated.
        EventKind::GoldenBuilt { .. }
        | EventKind::SlotCreated { .. }
        | EventKind::SlotCreateFailed { .. }
        | EventKind::HealthCheckFailed { .. }
        | EventKind::BackendConnection { .. }
        | EventKind::AgentRoundTrip { .. }
        | EventKind::Throttled { .. } => return None,
    };
    // An execution's two stages share an id, as the stages of one request
    // do in a Kubernetes audit log.
    let id = match &event.kind {
        EventKind::ExecStarted { exec, .. } | EventKind::ExecFinished { exec, .. } => {
            format!("{run}:exec-{exec}")
        }
        _ => format!("{run}:{}", event.id),
    };
    let mut record = AuditEvent::new(id, stage, actor(source, options), verb)
        .with_target(target(source))
        .with_received_at(Timestamp::from_system_time(received))
        .with_stage_at(Timestamp::from_system_time(at));
    record.request = request;
    record.response = response;
    Some(record)
}

/// The verb of the request a rate limit refused. The event names only the
/// limit: Paddock's limits each guard one kind of request; another limit's
/// name stands in for the verb.
/// The verb of a request a policy denied, from its kind.
fn denied_verb(request: &str) -> &str {
    match request {
        "exec" => Verb::EXEC,
        "put" => Verb::FILE_PUT,
        "get" => Verb::FILE_GET,
        "signal" => Verb::SIGNAL,
        "status" => Verb::STATUS,
        "stop_agent" => Verb::STOP_AGENT,
        other => other,
    }
}

fn rate_limited_verb(limit: &str) -> &str {
    match limit {
        "acquires" | "tenant_acquires" => Verb::ACQUIRE,
        "lease_execs" => Verb::EXEC,
        // Only uploads are admitted against the lease's byte limit.
        "lease_file_bytes" => Verb::FILE_PUT,
        other => other,
    }
}

/// The tenant the event is attributed to, else the host process.
fn actor(source: &Source, options: &AuditOptions) -> Actor {
    match &source.tenant {
        Some(tenant) => Actor::tenant(tenant.as_ref()),
        None => Actor::process(options.actor_process.clone()),
    }
}

fn target(source: &Source) -> Target {
    Target {
        pool: source.pool.as_deref().map(str::to_owned),
        slot: source.slot,
        lease: source.lease.map(|lease| lease.to_string()),
        domain: source.domain.as_deref().map(str::to_owned),
    }
}

/// When a request that took `took` and ended at `at` was received. The
/// events carry only their end; their own duration gives the start.
fn before(at: SystemTime, took: std::time::Duration) -> SystemTime {
    at.checked_sub(took).unwrap_or(at)
}

/// A free-form request: `kind` and the given fields, none of them secret.
fn free_form<'a>(kind: &str, fields: impl IntoIterator<Item = (&'a str, Value)>) -> Request {
    let mut map = Map::new();
    map.insert("kind".into(), kind.into());
    for (key, value) in fields {
        map.insert(key.into(), value);
    }
    Request::free_form(map)
}
