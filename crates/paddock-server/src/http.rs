//! The HTTP API (axum): routes, the caller of each request, JSON errors
//! for everything the client did wrong, one audit record and one counter
//! per call. `API.md` is its contract.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::Engine as _;
use futures_util::StreamExt as _;
use paddock::agent::{ClientError, Execute, Execution};
use paddock::observe::audit::{
    Actor, AuditEvent, Request as AuditRequest, Response as AuditResponse, Stage,
};
use tokio::io::AsyncSeekExt as _;
use tokio::sync::mpsc;

mod tree;

pub use tree::{DEFAULT_TREE_MAX_BYTES, TreeResult};

use crate::auth::{AuthError, Caller};
use crate::daemon::{Daemon, Hold};
use crate::error::ApiError;
use crate::wire::{
    AcquireRequest, ExecEnd, ExecOutput, ExecRequest, GoldenRequest, Health, LeaseList,
    OutputEncoding, PoolList, PutResult, StreamLine,
};

/// Which listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The operator's Unix socket.
    Unix,
    /// The tenants' TCP listener.
    Tcp,
}

/// What the handlers share.
#[derive(Debug, Clone)]
pub(crate) struct App {
    pub(crate) daemon: Arc<Daemon>,
    requests: prometheus::IntCounterVec,
    audit_seq: Arc<AtomicU64>,
}

/// The API's router for requests from `listener`; `requests` is
/// [`http_requests_counter`]'s, shared by every listener.
pub fn router(
    daemon: Arc<Daemon>,
    listener: Listener,
    requests: prometheus::IntCounterVec,
) -> Router {
    let max_json = daemon.config.server.max_json_bytes;
    let app = App {
        daemon,
        requests,
        audit_seq: Arc::new(AtomicU64::new(0)),
    };
    let api = Router::new()
        .route("/v1/pools", get(list_pools))
        .route("/v1/pools/{pool}/slots", get(list_slots))
        .route("/v1/pools/{pool}/leases", post(acquire))
        .route("/v1/pools/{pool}/drain", post(drain_pool))
        .route("/v1/pools/{pool}/golden", post(rebuild_golden))
        .route("/v1/pools/{pool}/slots/{index}/{action}", post(slot_action))
        .route("/v1/leases", get(list_leases))
        .route("/v1/leases/{id}", axum::routing::delete(release))
        .route("/v1/leases/{id}/exec", post(exec))
        .route("/v1/leases/{id}/terminal", get(terminal))
        .route(
            "/v1/leases/{id}/files",
            get(get_file)
                .put(put_file)
                .layer(DefaultBodyLimit::disable()),
        )
        .merge(crate::fs::routes())
        .route(
            "/v1/leases/{id}/tree",
            get(tree::get_tree)
                .put(tree::put_tree)
                .layer(DefaultBodyLimit::disable()),
        )
        .route_layer(middleware::from_fn_with_state(app.clone(), authenticate));
    let open = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics));
    api.merge(open)
        .fallback(|| async { ApiError::not_found("not_found", "No such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "This route does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(max_json))
        .layer(middleware::from_fn_with_state(app.clone(), observe))
        .layer(Extension(listener))
        .with_state(app)
}

/// `paddock_http_requests_total`, registered in `registry`: API answers by
/// route template and status (bounded: the routes are fixed).
///
/// # Errors
/// It could not be registered (e.g. it already is).
pub fn http_requests_counter(
    registry: &prometheus::Registry,
) -> Result<prometheus::IntCounterVec, prometheus::Error> {
    let counter = prometheus::IntCounterVec::new(
        prometheus::Opts::new(
            "paddock_http_requests_total",
            "API requests the daemon answered, by route template and status.",
        ),
        &["route", "status"],
    )?;
    registry.register(Box::new(counter.clone()))?;
    Ok(counter)
}

/// Who is calling: the operator on the Unix socket; on TCP, the tenant
/// whose bearer token the request carries.
async fn authenticate(
    State(app): State<App>,
    Extension(listener): Extension<Listener>,
    mut request: Request,
    next: Next,
) -> Response {
    let caller = match listener {
        Listener::Unix => Ok(Caller::operator()),
        Listener::Tcp => app.daemon.authenticate(
            request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
        ),
    };
    match caller {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(AuthError::Unauthorized) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "A bearer token of a configured tenant is needed",
        )
        .into_response(),
        Err(AuthError::RateLimited(wait)) => {
            ApiError::rate_limited("requests_per_second", wait).into_response()
        }
    }
}

/// Counts every answer by route template and status, and writes one audit
/// record per API call (not for `/healthz` and `/metrics`).
async fn observe(State(app): State<App>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().clone();
    let received = paddock::observe::audit::Timestamp::now();
    let listener = request.extensions().get::<Listener>().copied();
    let authorization_present = request.headers().contains_key(header::AUTHORIZATION);
    let response = next.run(request).await;
    let status = response.status();
    app.requests
        .with_label_values(&[route.as_str(), status.as_str()])
        .inc();
    if route.starts_with("/v1/") {
        let caller = response.extensions().get::<Caller>().cloned();
        audit_call(
            &app,
            caller,
            listener,
            authorization_present,
            &method,
            &route,
            status,
            received,
        )
        .await;
    }
    response
}

/// Appends the audit record of one API call.
#[allow(clippy::too_many_arguments)]
async fn audit_call(
    app: &App,
    caller: Option<Caller>,
    listener: Option<Listener>,
    authorization_present: bool,
    method: &axum::http::Method,
    route: &str,
    status: StatusCode,
    received: paddock::observe::audit::Timestamp,
) {
    let Some(log) = app.daemon.observability.audit_log() else {
        return;
    };
    let actor = match (&caller, listener) {
        (Some(caller), _) if caller.operator => Actor::process(crate::auth::OPERATOR),
        (Some(caller), _) => Actor::tenant(caller.name.to_string()),
        (None, Some(Listener::Unix)) => Actor::process(crate::auth::OPERATOR),
        (None, _) if authorization_present => Actor::token("unknown"),
        (None, _) => Actor::process("anonymous"),
    };
    let stage = match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS => {
            Stage::Denied
        }
        _ => Stage::Completed,
    };
    let mut request = serde_json::Map::new();
    request.insert("kind".into(), "api".into());
    request.insert("method".into(), method.as_str().into());
    request.insert("route".into(), route.into());
    let outcome = if status.is_success() {
        "ok"
    } else if stage == Stage::Denied {
        "denied"
    } else {
        "error"
    };
    let id = format!(
        "api:{}:{}",
        std::process::id(),
        app.audit_seq.fetch_add(1, Ordering::Relaxed)
    );
    let record = AuditEvent::new(id, stage, actor, "api")
        .with_request(AuditRequest::free_form(request))
        .with_response(AuditResponse::outcome(outcome).with_error(status.as_str()))
        .with_received_at(received);
    if let Err(err) = log.append_async(record).await {
        tracing::error!(error = %err, route, "an API call's audit record was lost");
    }
}

/// How long a JSON request body may take to arrive.
const JSON_BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// A JSON body whose rejection is a JSON error.
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<T, S> FromRequest<S> for JsonBody<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let empty = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() == b"0");
        if empty {
            return serde_json::from_str("{}")
                .map(JsonBody)
                .map_err(|err| ApiError::bad_request(err.to_string()));
        }
        // A client that sends its head and then trickles the body out is
        // cut off like one that is slow with its head.
        match tokio::time::timeout(JSON_BODY_TIMEOUT, Json::<T>::from_request(request, state)).await
        {
            Ok(Ok(Json(value))) => Ok(Self(value)),
            Ok(Err(rejection)) => Err(json_rejection(&rejection)),
            Err(_) => Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                format!("The JSON body took longer than {JSON_BODY_TIMEOUT:?} to arrive"),
            )),
        }
    }
}

fn json_rejection(rejection: &JsonRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            rejection.body_text(),
        )
    } else {
        ApiError::bad_request(rejection.body_text())
    }
}

/// Returns the caller with the response, for the audit record.
pub(crate) fn answered(caller: Caller, response: impl IntoResponse) -> Response {
    let mut response = response.into_response();
    response.extensions_mut().insert(caller);
    response
}

async fn healthz(State(app): State<App>) -> Response {
    let pools = app.daemon.pools().len();
    if app.daemon.is_draining() {
        let health = Health {
            status: "draining".into(),
            pools,
        };
        (StatusCode::SERVICE_UNAVAILABLE, Json(health)).into_response()
    } else {
        Json(Health {
            status: "ok".into(),
            pools,
        })
        .into_response()
    }
}

async fn metrics(State(app): State<App>) -> Response {
    match app.daemon.observability.render() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            )],
            text,
        )
            .into_response(),
        Err(err) => ApiError::internal(err.to_string()).into_response(),
    }
}

async fn list_pools(State(app): State<App>, Extension(caller): Extension<Caller>) -> Response {
    let pools = app
        .daemon
        .pools()
        .iter()
        .map(|entry| Daemon::pool_status(entry))
        .collect();
    answered(caller, Json(PoolList { pools }))
}

async fn list_slots(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(pool): Path<String>,
) -> Response {
    let result = app.daemon.slots(&caller, &pool).map(Json);
    answered(caller, result)
}

async fn list_leases(State(app): State<App>, Extension(caller): Extension<Caller>) -> Response {
    let leases = app.daemon.leases(&caller);
    answered(caller, Json(LeaseList { leases }))
}

async fn acquire(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(pool): Path<String>,
    body: Result<JsonBody<AcquireRequest>, ApiError>,
) -> Response {
    let result = async {
        let JsonBody(request) = body?;
        let wait = request.wait_ms.map(Duration::from_millis);
        let lease = app.daemon.acquire(&caller, &pool, wait).await?;
        Ok::<_, ApiError>((StatusCode::CREATED, Json(lease)))
    }
    .await;
    answered(caller, result)
}

async fn release(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let result = async {
        app.daemon.lease(&caller, &id)?;
        app.daemon.end_and_release(&id, "released").await;
        Ok::<_, ApiError>(StatusCode::NO_CONTENT)
    }
    .await;
    answered(caller, result)
}

async fn slot_action(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path((pool, index, action)): Path<(String, String, String)>,
) -> Response {
    let result = async {
        require_admin(&caller)?;
        let index: u32 = index
            .parse()
            .map_err(|_| ApiError::bad_request(format!("`{index}` is not a slot number")))?;
        match action.as_str() {
            "reset" => app.daemon.reset_slot(&pool, index).await?,
            "recycle" => app.daemon.recycle_slot(&pool, index).await?,
            _ => return Err(ApiError::not_found("not_found", "No such route")),
        }
        Ok(StatusCode::ACCEPTED)
    }
    .await;
    answered(caller, result)
}

async fn drain_pool(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(pool): Path<String>,
) -> Response {
    let result = async {
        require_admin(&caller)?;
        app.daemon.pool(&pool)?;
        let daemon = Arc::clone(&app.daemon);
        tokio::spawn(async move {
            if let Err(err) = daemon.drain_pool(&pool).await {
                tracing::error!(pool, error = %err.message, "draining the pool left something behind");
            }
        });
        Ok::<_, ApiError>(StatusCode::ACCEPTED)
    }
    .await;
    answered(caller, result)
}

async fn rebuild_golden(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(pool): Path<String>,
    body: Result<JsonBody<GoldenRequest>, ApiError>,
) -> Response {
    let result = async {
        require_admin(&caller)?;
        let JsonBody(request) = body?;
        let done = app.daemon.rebuild_golden(&pool, &request).await?;
        Ok::<_, ApiError>(Json(done))
    }
    .await;
    answered(caller, result)
}

fn require_admin(caller: &Caller) -> Result<(), ApiError> {
    if caller.admin {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Operator endpoints need the operator or an admin tenant",
        ))
    }
}

/// The library's request for an API exec.
fn execute_of(request: &ExecRequest) -> Result<Execute, ApiError> {
    let mut execute = match (&request.argv, &request.shell) {
        (Some(argv), None) if !argv.is_empty() => Execute::argv(argv.iter().cloned()),
        (None, Some(shell)) => Execute::shell(shell.clone()),
        _ => {
            return Err(ApiError::bad_request(
                "Give exactly one of `argv` (a non-empty list) and `shell`",
            ));
        }
    };
    execute.env = request.env.clone();
    execute.cwd.clone_from(&request.cwd);
    execute.timeout_ms = request.timeout_ms;
    execute.stdin = request.stdin.is_some();
    Ok(execute)
}

pub(crate) fn exec_end(result: &paddock::agent::ExecResult) -> ExecEnd {
    ExecEnd {
        exit_code: result.exit_code,
        signal: result.signal,
        timed_out: result.timed_out,
        duration_ms: result.duration_us / 1000,
        stdout_truncated: result.stdout_truncated,
        stderr_truncated: result.stderr_truncated,
    }
}

fn encode(bytes: &[u8], encoding: OutputEncoding) -> String {
    match encoding {
        OutputEncoding::Text => String::from_utf8_lossy(bytes).into_owned(),
        OutputEncoding::Base64 => base64::engine::general_purpose::STANDARD.encode(bytes),
    }
}

/// Starts an execution in a held lease, with its stdin written and closed.
async fn start_exec(hold: &Hold, request: &ExecRequest) -> Result<Execution, ApiError> {
    let execute = execute_of(request)?;
    let mut execution = hold
        .client
        .exec(execute)
        .await
        .map_err(|e| hold.explain(e.into()))?;
    if let (Some(text), Some(mut stdin)) = (&request.stdin, execution.take_stdin()) {
        stdin
            .write_all(text.as_bytes())
            .await
            .map_err(|e| hold.explain(e.into()))?;
        stdin.close().map_err(|e| hold.explain(e.into()))?;
    }
    Ok(execution)
}

async fn exec(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Result<JsonBody<ExecRequest>, ApiError>,
) -> Response {
    let result = async {
        let JsonBody(request) = body?;
        execute_of(&request)?;
        let hold = app.daemon.hold(&caller, &id).await?;
        let execution = start_exec(&hold, &request).await?;
        if request.stream {
            return Ok::<_, ApiError>(stream_exec(hold, execution, request.output));
        }
        let output = execution
            .collect()
            .await
            .map_err(|e| hold.explain(e.into()))?;
        Ok(Json(ExecOutput {
            end: exec_end(&output.result),
            stdout: encode(&output.stdout, request.output),
            stderr: encode(&output.stderr, request.output),
        })
        .into_response())
    }
    .await;
    answered(caller, result)
}

/// A terminal over a WebSocket (`crate::terminal`).
async fn terminal(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    upgrade: Result<
        axum::extract::ws::WebSocketUpgrade,
        axum::extract::ws::rejection::WebSocketUpgradeRejection,
    >,
) -> Response {
    let result = async {
        let upgrade = upgrade.map_err(|rejection| {
            ApiError::bad_request(format!("Expected a WebSocket upgrade: {rejection}"))
        })?;
        crate::terminal::request_of(&query)?;
        let hold = app.daemon.hold(&caller, &id).await?;
        crate::terminal::open(hold, &query, upgrade).await
    }
    .await;
    answered(caller, result)
}

/// The NDJSON response of a streamed execution: its output as it comes,
/// then its end. The hold lives as long as the stream.
fn stream_exec(hold: Hold, mut execution: Execution, encoding: OutputEncoding) -> Response {
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let line = |line: &StreamLine| {
            let mut bytes = serde_json::to_vec(line).unwrap_or_default();
            bytes.push(b'\n');
            Bytes::from(bytes)
        };
        let mut stdout = execution.take_stdout();
        let mut stderr = execution.take_stderr();
        let mut failure: Option<ClientError> = None;
        while stdout.is_some() || stderr.is_some() {
            let (chunk, is_stdout) = tokio::select! {
                chunk = next_chunk(&mut stdout), if stdout.is_some() => (chunk, true),
                chunk = next_chunk(&mut stderr), if stderr.is_some() => (chunk, false),
                // The client went away while the command printed nothing.
                () = tx.closed() => {
                    let _ = execution.stop();
                    return;
                }
            };
            match chunk {
                Ok(Some(bytes)) => {
                    let text = encode(&bytes, encoding);
                    let message = match (is_stdout, encoding) {
                        (true, OutputEncoding::Text) => StreamLine::Stdout(text),
                        (false, OutputEncoding::Text) => StreamLine::Stderr(text),
                        (true, OutputEncoding::Base64) => StreamLine::StdoutB64(text),
                        (false, OutputEncoding::Base64) => StreamLine::StderrB64(text),
                    };
                    if tx.send(line(&message)).await.is_err() {
                        // The client went away: end the execution.
                        let _ = execution.stop();
                        return;
                    }
                }
                Ok(None) => {
                    if is_stdout {
                        stdout = None;
                    } else {
                        stderr = None;
                    }
                }
                Err(err) => {
                    failure = Some(err);
                    break;
                }
            }
        }
        let last = match failure {
            Some(err) => Err(err),
            None => execution.wait().await,
        };
        let last = match last {
            Ok(result) => StreamLine::Result(exec_end(&result)),
            Err(err) => StreamLine::Error(hold.explain(err.into()).body()),
        };
        let _ = tx.send(line(&last)).await;
        drop(hold);
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|bytes| (Ok::<_, Infallible>(bytes), rx))
    });
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        )],
        Body::from_stream(body),
    )
        .into_response()
}

async fn next_chunk(
    stream: &mut Option<paddock::agent::OutputStream>,
) -> Result<Option<Vec<u8>>, ClientError> {
    match stream {
        Some(stream) => stream.chunk().await,
        None => Ok(None),
    }
}

/// `path` (absolute) and `mode` (octal) of a file request.
fn file_query(query: &HashMap<String, String>) -> Result<(String, u32), ApiError> {
    let path = query
        .get("path")
        .filter(|p| p.starts_with('/'))
        .ok_or_else(|| ApiError::bad_request("`path` must be an absolute guest path"))?;
    let mode = match query.get("mode") {
        None => 0o644,
        Some(text) => u32::from_str_radix(text, 8)
            .ok()
            .filter(|m| *m <= 0o7777)
            .ok_or_else(|| ApiError::bad_request(format!("`mode` {text} is not octal 0..=7777")))?,
    };
    Ok((path.clone(), mode))
}

async fn put_file(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    body: Body,
) -> Response {
    let result = async {
        let (path, mode) = file_query(&query)?;
        let hold = app.daemon.hold(&caller, &id).await?;
        let stream = body
            .into_data_stream()
            .map(|chunk| chunk.map_err(std::io::Error::other));
        let mut reader = tokio_util::io::StreamReader::new(stream);
        let done = hold
            .client
            .put_reader(&mut reader, &path, mode)
            .await
            .map_err(|e| match e {
                ClientError::LocalIo { source, .. } => {
                    ApiError::bad_request(format!("The request body broke off: {source}"))
                }
                other => hold.explain(other.into()),
            })?;
        Ok::<_, ApiError>(Json(PutResult {
            path,
            size: done.size,
            crc32: done.crc32,
        }))
    }
    .await;
    answered(caller, result)
}

async fn get_file(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let result = async {
        let (path, _) = file_query(&query)?;
        let hold = app.daemon.hold(&caller, &id).await?;
        // Received whole and checked before the answer starts, so that a
        // broken transfer is an error status, not a cut body.
        let spool = tempfile::tempfile().map_err(|e| ApiError::internal(e.to_string()))?;
        let mut spool = tokio::fs::File::from_std(spool);
        let download = hold
            .client
            .get_writer(&path, &mut spool)
            .await
            .map_err(|e| hold.explain(e.into()))?;
        drop(hold);
        spool
            .rewind()
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let body = Body::from_stream(tokio_util::io::ReaderStream::new(spool));
        tracing::debug!(path, size = download.size, "serving a downloaded file");
        Ok::<_, ApiError>(
            (
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/octet-stream"),
                    ),
                    (header::CONTENT_LENGTH, HeaderValue::from(download.size)),
                    (
                        header::HeaderName::from_static("x-paddock-crc32"),
                        HeaderValue::from(download.crc32),
                    ),
                    (
                        header::HeaderName::from_static("x-paddock-mode"),
                        HeaderValue::from_str(&format!("{:o}", download.mode))
                            .unwrap_or_else(|_| HeaderValue::from_static("644")),
                    ),
                ],
                body,
            )
                .into_response(),
        )
    }
    .await;
    answered(caller, result)
}
