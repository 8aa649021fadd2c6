//! The record schema, version 1: types, the line encoding and decoding, and
//! the SHA-256 digest that chains lines.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

use crate::time::Timestamp;

/// The value of every v1 record's `schema` field.
pub const SCHEMA_V1: &str = "paddock.audit/v1";

/// A SHA-256 digest; in records, 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The `prev` of the record with seq 0: 32 zero bytes.
    pub const ZERO: Self = Self([0; 32]);

    /// SHA-256 of `bytes`. For a record line, pass the line without its `\n`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        self.to_string()
    }

    /// Parses exactly 64 lowercase hex digits; anything else is `None`.
    pub fn from_hex(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let nibble = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        let mut out = [0u8; 32];
        for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            *o = nibble(pair[0])? << 4 | nibble(pair[1])?;
        }
        Some(Self(out))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::from_hex(&text)
            .ok_or_else(|| serde::de::Error::custom("expected 64 lowercase hex digits"))
    }
}

/// The stage of a request a record describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// The request arrived and was accepted for processing.
    Received,
    /// The request finished (successfully or not); `response` says how.
    Completed,
    /// The request was refused (authorization, quota, policy).
    Denied,
}

/// What kind of principal an [`Actor`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActorKind {
    /// A tenant, by tenant name.
    Tenant,
    /// An API token, by its name or id (never the secret).
    Token,
    /// A process of the host itself (the pool's reaper, a health check).
    Process,
}

/// Who asked for the action.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Actor {
    /// The kind of principal.
    pub kind: ActorKind,
    /// Its name within that kind.
    pub name: String,
}

impl Actor {
    /// A tenant.
    pub fn tenant(name: impl Into<String>) -> Self {
        Self {
            kind: ActorKind::Tenant,
            name: name.into(),
        }
    }

    /// An API token (its name or id, never its secret).
    pub fn token(name: impl Into<String>) -> Self {
        Self {
            kind: ActorKind::Token,
            name: name.into(),
        }
    }

    /// A process of the host.
    pub fn process(name: impl Into<String>) -> Self {
        Self {
            kind: ActorKind::Process,
            name: name.into(),
        }
    }
}

/// The action, an open set of lowercase snake-case names.
///
/// The constants are the verbs Paddock uses; a caller may use others (the
/// type is open so that old readers keep reading newer logs).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Verb(pub String);

impl Verb {
    /// A pool was created.
    pub const CREATE_POOL: &str = "create_pool";
    /// A pool was closed.
    pub const CLOSE_POOL: &str = "close_pool";
    /// A VM slot was leased from a pool.
    pub const ACQUIRE: &str = "acquire";
    /// A lease was given back.
    pub const RELEASE: &str = "release";
    /// A command ran in a guest.
    pub const EXEC: &str = "exec";
    /// A file was written into a guest.
    pub const FILE_PUT: &str = "file_put";
    /// A file was read from a guest.
    pub const FILE_GET: &str = "file_get";
    /// A VM was reset to its golden snapshot.
    pub const RESET: &str = "reset";
    /// A signal was sent to a guest process.
    pub const SIGNAL: &str = "signal";
    /// The host raised an alert (e.g. a guest misbehaved).
    pub const ALERT: &str = "alert";
    /// A VM slot was destroyed (failed reset or check, expiry, wear,
    /// shutdown, recycling).
    pub const DESTROY_SLOT: &str = "destroy_slot";
    /// A guest's agent broke the wire protocol (a bad frame, an unknown
    /// kind, a window overrun): a broken or hostile guest.
    pub const PROTOCOL_ERROR: &str = "protocol_error";
    /// The agent's status was read.
    pub const STATUS: &str = "status";
    /// The guest agent was told to stop.
    pub const STOP_AGENT: &str = "stop_agent";

    /// A verb from its name.
    pub fn new(name: impl Into<String>) -> Self {
        Self(name.into())
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Verb {
    fn from(name: &str) -> Self {
        Self(name.to_owned())
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the action was about; every field is optional and omitted when absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Target {
    /// The pool's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// The slot (VM) index within the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u32>,
    /// The lease's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
    /// The libvirt domain's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

impl Target {
    /// A target naming only a pool.
    pub fn pool(pool: impl Into<String>) -> Self {
        Self {
            pool: Some(pool.into()),
            ..Self::default()
        }
    }

    /// Adds the slot.
    pub fn with_slot(mut self, slot: u32) -> Self {
        self.slot = Some(slot);
        self
    }

    /// Adds the lease.
    pub fn with_lease(mut self, lease: impl Into<String>) -> Self {
        self.lease = Some(lease.into());
        self
    }

    /// Adds the domain.
    pub fn with_domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = Some(domain.into());
        self
    }
}

/// How a command line is recorded in an exec summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum CommandRecording {
    /// The argv (or shell string) as given.
    #[default]
    Full,
    /// Only `argv_sha256`: SHA-256 of the argv's elements joined with NUL
    /// bytes (a shell string counts as a one-element argv).
    Hashed,
    /// Nothing about the command line.
    Omitted,
}

/// The command of an [`ExecSummary`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Command {
    Argv(Vec<String>),
    Shell(String),
}

/// A summary of an exec request that cannot carry environment values.
///
/// It takes environment variable *names* only ([`ExecSummary::env`] drops the
/// values it is given), and the command line is recorded according to a
/// [`CommandRecording`]. See [`Request::exec`] for the JSON it produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSummary {
    command: Command,
    env_names: Vec<String>,
    cwd: Option<String>,
    timeout: Option<Duration>,
}

impl ExecSummary {
    /// A command given as an argv.
    pub fn argv<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::with(Command::Argv(argv.into_iter().map(Into::into).collect()))
    }

    /// A command given as one shell string.
    pub fn shell(command: impl Into<String>) -> Self {
        Self::with(Command::Shell(command.into()))
    }

    fn with(command: Command) -> Self {
        Self {
            command,
            env_names: Vec::new(),
            cwd: None,
            timeout: None,
        }
    }

    /// Records the names of the environment; the values are dropped here and
    /// never stored.
    pub fn env<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
    {
        self.env_names
            .extend(vars.into_iter().map(|(name, _value)| name.into()));
        self
    }

    /// Records environment variable names.
    pub fn env_names<I, K>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = K>,
        K: Into<String>,
    {
        self.env_names.extend(names.into_iter().map(Into::into));
        self
    }

    /// Records the working directory.
    pub fn cwd(mut self, cwd: impl Into<String>) -> Self {
        self.cwd = Some(cwd.into());
        self
    }

    /// Records the timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// A summary of a file transfer that cannot carry the file's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSummary {
    path: String,
    size: Option<u64>,
}

impl FileSummary {
    /// A transfer of the file at `path` in the guest.
    pub fn new(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            size: None,
        }
    }

    /// Records the size in bytes.
    pub fn size(mut self, size: u64) -> Self {
        self.size = Some(size);
        self
    }
}

/// The `request` field: a JSON object summarizing the request. Its keys are
/// written in sorted order (at every depth), whatever order they were
/// inserted in.
///
/// [`Request::exec`] and [`Request::file`] redact by construction.
/// [`Request::free_form`] stores whatever object it is given: keeping secrets
/// out of it is the caller's responsibility.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Request(pub serde_json::Map<String, serde_json::Value>);

impl Request {
    /// An exec summary with the keys `argv` | `shell` | `argv_sha256`,
    /// `cwd`, `env_names`, `form` (`"argv"` or `"shell"`), `kind`
    /// (`"exec"`), `timeout_seconds`, e.g.
    /// `{"argv":["ls","-l"],"cwd":"/w","env_names":["HOME"],"form":"argv","kind":"exec","timeout_seconds":30.0}`. `argv`, `shell` and `argv_sha256` follow
    /// `recording` (none of them with [`CommandRecording::Omitted`]);
    /// `env_names`, `cwd` and `timeout_seconds` are present when given.
    pub fn exec(summary: &ExecSummary, recording: CommandRecording) -> Self {
        use serde_json::Value;
        let mut map = serde_json::Map::new();
        map.insert("kind".into(), "exec".into());
        let form = match summary.command {
            Command::Argv(_) => "argv",
            Command::Shell(_) => "shell",
        };
        map.insert("form".into(), form.into());
        match (recording, &summary.command) {
            (CommandRecording::Full, Command::Argv(argv)) => {
                map.insert("argv".into(), argv.clone().into());
            }
            (CommandRecording::Full, Command::Shell(shell)) => {
                map.insert("shell".into(), shell.clone().into());
            }
            (CommandRecording::Hashed, command) => {
                let mut hasher = Sha256::new();
                match command {
                    Command::Argv(argv) => {
                        for (i, arg) in argv.iter().enumerate() {
                            if i > 0 {
                                hasher.update([0u8]);
                            }
                            hasher.update(arg.as_bytes());
                        }
                    }
                    Command::Shell(shell) => hasher.update(shell.as_bytes()),
                }
                let digest = Digest(hasher.finalize().into());
                map.insert("argv_sha256".into(), digest.to_hex().into());
            }
            (CommandRecording::Omitted, _) => {}
        }
        if !summary.env_names.is_empty() {
            map.insert("env_names".into(), summary.env_names.clone().into());
        }
        if let Some(cwd) = &summary.cwd {
            map.insert("cwd".into(), cwd.clone().into());
        }
        if let Some(timeout) = summary.timeout {
            map.insert("timeout_seconds".into(), Value::from(timeout.as_secs_f64()));
        }
        Self(map)
    }

    /// A file summary: `{"kind":"file","path":"..","size":123}` (`size` when
    /// given).
    pub fn file(summary: &FileSummary) -> Self {
        let mut map = serde_json::Map::new();
        map.insert("kind".into(), "file".into());
        map.insert("path".into(), summary.path.clone().into());
        if let Some(size) = summary.size {
            map.insert("size".into(), size.into());
        }
        Self(map)
    }

    /// Any JSON object. The caller must keep secrets out of it.
    pub fn free_form(object: serde_json::Map<String, serde_json::Value>) -> Self {
        Self(object)
    }
}

/// Well-known values of [`Response::outcome`].
pub mod outcome {
    /// The request succeeded.
    pub const OK: &str = "ok";
    /// The request failed; `error` says why.
    pub const ERROR: &str = "error";
    /// The request was refused.
    pub const DENIED: &str = "denied";
    /// The request ran out of time.
    pub const TIMEOUT: &str = "timeout";
    /// The request was cancelled by its caller.
    pub const CANCELLED: &str = "cancelled";
}

/// The `response` field: how the request ended. Absent fields are omitted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// `ok`, `error`, `denied`, `timeout`, `cancelled` (see [`outcome`]), or
    /// another short word.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// The exit code of an exec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The signal that ended an exec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// How long the request took, in seconds. Must be finite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    /// Bytes transferred (file size, output size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Whether output was cut.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated: Option<bool>,
    /// A short error message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    /// A response with only an outcome.
    pub fn outcome(outcome: impl Into<String>) -> Self {
        Self {
            outcome: Some(outcome.into()),
            ..Self::default()
        }
    }

    /// Adds the duration.
    pub fn with_duration(mut self, duration: Duration) -> Self {
        self.duration_seconds = Some(duration.as_secs_f64());
        self
    }

    /// Adds the exit code.
    pub fn with_exit_code(mut self, code: i32) -> Self {
        self.exit_code = Some(code);
        self
    }

    /// Adds the signal.
    pub fn with_signal(mut self, signal: i32) -> Self {
        self.signal = Some(signal);
        self
    }

    /// Adds the byte count.
    pub fn with_bytes(mut self, bytes: u64) -> Self {
        self.bytes = Some(bytes);
        self
    }

    /// Adds the truncation flag.
    pub fn with_truncated(mut self, truncated: bool) -> Self {
        self.truncated = Some(truncated);
        self
    }

    /// Adds an error message.
    pub fn with_error(mut self, error: impl Into<String>) -> Self {
        self.error = Some(error.into());
        self
    }
}

/// An event as the caller gives it: a record without `schema`, `seq` and
/// `prev`, which the writer assigns.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    /// The request's id (e.g. a UUID v4); the records of one request's stages
    /// share it.
    pub id: String,
    /// The stage this record describes.
    pub stage: Stage,
    /// Who asked.
    pub actor: Actor,
    /// What was asked.
    pub verb: Verb,
    /// What it was about.
    pub target: Target,
    /// A summary of the request.
    pub request: Option<Request>,
    /// How it ended.
    pub response: Option<Response>,
    /// When the request was received.
    pub received_at: Timestamp,
    /// When this stage happened.
    pub stage_at: Timestamp,
}

impl AuditEvent {
    /// An event with an empty target, no request or response, received and
    /// staged now.
    pub fn new(id: impl Into<String>, stage: Stage, actor: Actor, verb: impl Into<Verb>) -> Self {
        let now = Timestamp::now();
        Self {
            id: id.into(),
            stage,
            actor,
            verb: verb.into(),
            target: Target::default(),
            request: None,
            response: None,
            received_at: now,
            stage_at: now,
        }
    }

    /// Sets the target.
    pub fn with_target(mut self, target: Target) -> Self {
        self.target = target;
        self
    }

    /// Sets the request summary.
    pub fn with_request(mut self, request: Request) -> Self {
        self.request = Some(request);
        self
    }

    /// Sets the response.
    pub fn with_response(mut self, response: Response) -> Self {
        self.response = Some(response);
        self
    }

    /// Sets when the request was received.
    pub fn with_received_at(mut self, at: Timestamp) -> Self {
        self.received_at = at;
        self
    }

    /// Sets when this stage happened.
    pub fn with_stage_at(mut self, at: Timestamp) -> Self {
        self.stage_at = at;
        self
    }

    /// Whether the event can be written: `duration_seconds` must be finite
    /// (JSON has no NaN or infinity).
    pub(crate) fn check(&self) -> Result<(), RecordError> {
        match self.response.as_ref().and_then(|r| r.duration_seconds) {
            Some(d) if !d.is_finite() => Err(RecordError::NonFiniteDuration),
            _ => Ok(()),
        }
    }
}

/// A whole v1 record: the chain fields and the event.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    /// 0 for the first record of a log, +1 per record, across files.
    pub seq: u64,
    /// SHA-256 of the previous record's line (without its `\n`).
    pub prev: Digest,
    /// The event.
    pub event: AuditEvent,
}

/// Errors of encoding and decoding records.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The line is not JSON, or not a JSON object with the v1 fields.
    #[error("not a v1 record")]
    Json(#[source] serde_json::Error),
    /// The `schema` field is not [`SCHEMA_V1`].
    #[error("unknown schema {found:?}")]
    UnknownSchema {
        /// The schema found (cut to 64 characters).
        found: String,
    },
    /// A `duration_seconds` is NaN or infinite.
    #[error("duration_seconds is not finite")]
    NonFiniteDuration,
}

/// The serialized shape, borrowing, in the documented field order.
#[derive(Serialize)]
struct LineOut<'a> {
    schema: &'static str,
    seq: u64,
    prev: Digest,
    id: &'a str,
    stage: Stage,
    actor: &'a Actor,
    verb: &'a Verb,
    target: &'a Target,
    #[serde(skip_serializing_if = "Option::is_none")]
    request: Option<&'a Request>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<&'a Response>,
    received_at: Timestamp,
    stage_at: Timestamp,
}

/// Only the schema, read first so that a v2 line is reported as an unknown
/// schema rather than as a shape error.
#[derive(Deserialize)]
struct SchemaProbe<'a> {
    #[serde(borrow)]
    schema: std::borrow::Cow<'a, str>,
}

/// The decoded shape. Unknown fields are ignored (forward compatibility).
#[derive(Deserialize)]
struct LineIn {
    seq: u64,
    prev: Digest,
    id: String,
    stage: Stage,
    actor: Actor,
    verb: Verb,
    #[serde(default)]
    target: Target,
    #[serde(default)]
    request: Option<Request>,
    #[serde(default)]
    response: Option<Response>,
    received_at: Timestamp,
    stage_at: Timestamp,
}

impl AuditRecord {
    /// The record's line: compact JSON in the documented field order, without
    /// the trailing `\n`.
    pub fn to_line(&self) -> Result<Vec<u8>, RecordError> {
        self.event.check()?;
        let e = &self.event;
        let out = LineOut {
            schema: SCHEMA_V1,
            seq: self.seq,
            prev: self.prev,
            id: &e.id,
            stage: e.stage,
            actor: &e.actor,
            verb: &e.verb,
            target: &e.target,
            request: e.request.as_ref(),
            response: e.response.as_ref(),
            received_at: e.received_at,
            stage_at: e.stage_at,
        };
        serde_json::to_vec(&out).map_err(RecordError::Json)
    }

    /// Decodes one line (with or without its trailing `\n`).
    ///
    /// A `schema` other than [`SCHEMA_V1`] is [`RecordError::UnknownSchema`];
    /// unknown extra fields are ignored.
    pub fn from_line(line: &[u8]) -> Result<Self, RecordError> {
        let probe: SchemaProbe<'_> = serde_json::from_slice(line).map_err(RecordError::Json)?;
        if probe.schema != SCHEMA_V1 {
            return Err(RecordError::UnknownSchema {
                found: probe.schema.chars().take(64).collect(),
            });
        }
        let l: LineIn = serde_json::from_slice(line).map_err(RecordError::Json)?;
        Ok(Self {
            seq: l.seq,
            prev: l.prev,
            event: AuditEvent {
                id: l.id,
                stage: l.stage,
                actor: l.actor,
                verb: l.verb,
                target: l.target,
                request: l.request,
                response: l.response,
                received_at: l.received_at,
                stage_at: l.stage_at,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AuditRecord {
        let at = Timestamp::from_unix_micros(1_709_210_096_789_012);
        AuditRecord {
            seq: 7,
            prev: Digest::of(b"x"),
            event: AuditEvent::new("req-1", Stage::Completed, Actor::tenant("acme"), Verb::EXEC)
                .with_target(Target::pool("p").with_slot(3))
                .with_request(Request::exec(
                    &ExecSummary::argv(["echo", "hi"]),
                    CommandRecording::Full,
                ))
                .with_response(
                    Response::outcome(outcome::OK)
                        .with_exit_code(0)
                        .with_duration(Duration::from_millis(1500)),
                )
                .with_received_at(at)
                .with_stage_at(at),
        }
    }

    #[test]
    fn line_has_the_documented_shape() {
        let line = String::from_utf8(sample().to_line().expect("encodes")).expect("utf-8");
        let expected = concat!(
            r#"{"schema":"paddock.audit/v1","seq":7,"#,
            r#""prev":"2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881","#,
            r#""id":"req-1","stage":"completed","actor":{"kind":"tenant","name":"acme"},"#,
            r#""verb":"exec","target":{"pool":"p","slot":3},"#,
            r#""request":{"argv":["echo","hi"],"form":"argv","kind":"exec"},"#,
            r#""response":{"outcome":"ok","exit_code":0,"duration_seconds":1.5},"#,
            r#""received_at":"2024-02-29T12:34:56.789012Z","stage_at":"2024-02-29T12:34:56.789012Z"}"#
        );
        assert_eq!(line, expected);
        assert_eq!(
            AuditRecord::from_line(line.as_bytes()).expect("decodes"),
            sample()
        );
    }

    #[test]
    fn digest_hex_round_trip() {
        let d = Digest::of(b"");
        assert_eq!(
            d.to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(Digest::from_hex(&d.to_hex()), Some(d));
        assert_eq!(Digest::from_hex(&d.to_hex().to_uppercase()), None);
        assert_eq!(Digest::from_hex("00"), None);
    }

    #[test]
    fn unknown_schema_is_typed_and_extra_fields_are_accepted() {
        let line = String::from_utf8(sample().to_line().expect("encodes")).expect("utf-8");
        let v2 = line.replace("paddock.audit/v1", "paddock.audit/v2");
        assert!(matches!(
            AuditRecord::from_line(v2.as_bytes()),
            Err(RecordError::UnknownSchema { found }) if found == "paddock.audit/v2"
        ));
        let extra = line.replacen('{', r#"{"future":{"x":[1,2]},"#, 1);
        assert_eq!(
            AuditRecord::from_line(extra.as_bytes()).expect("decodes"),
            sample()
        );
        assert!(matches!(
            AuditRecord::from_line(b"{\"seq\":1"),
            Err(RecordError::Json(_))
        ));
        assert!(matches!(
            AuditRecord::from_line(b"\xff\xfe"),
            Err(RecordError::Json(_))
        ));
    }

    #[test]
    fn env_values_and_hashed_argv_never_reach_the_request() {
        let summary = ExecSummary::argv(["curl", "-H", "secret-token"])
            .env([("API_KEY", "hunter2"), ("HOME", "/root")])
            .cwd("/work")
            .timeout(Duration::from_secs(30));
        let hashed = serde_json::to_string(&Request::exec(&summary, CommandRecording::Hashed))
            .expect("serializes");
        assert!(!hashed.contains("hunter2"), "{hashed}");
        assert!(!hashed.contains("secret-token"), "{hashed}");
        assert!(!hashed.contains("curl"), "{hashed}");
        let expected = Digest::of(b"curl\0-H\0secret-token").to_hex();
        assert_eq!(
            hashed,
            format!(
                r#"{{"argv_sha256":"{expected}","cwd":"/work","env_names":["API_KEY","HOME"],"form":"argv","kind":"exec","timeout_seconds":30.0}}"#
            )
        );
        let omitted = serde_json::to_string(&Request::exec(&summary, CommandRecording::Omitted))
            .expect("serializes");
        assert_eq!(
            omitted,
            r#"{"cwd":"/work","env_names":["API_KEY","HOME"],"form":"argv","kind":"exec","timeout_seconds":30.0}"#
        );
        let shell = Request::exec(&ExecSummary::shell("ls -l"), CommandRecording::Hashed);
        assert_eq!(
            shell.0.get("argv_sha256").and_then(|v| v.as_str()),
            Some(Digest::of(b"ls -l").to_hex().as_str())
        );
    }

    #[test]
    fn non_finite_duration_is_refused() {
        let mut record = sample();
        record.event.response = Some(Response {
            duration_seconds: Some(f64::NAN),
            ..Response::default()
        });
        assert!(matches!(
            record.to_line(),
            Err(RecordError::NonFiniteDuration)
        ));
    }
}
