//! The API's edges without VMs: a daemon with no pool on libvirt's test
//! driver, driven through its router. Callers, JSON errors with stable
//! codes, bounds, metrics and audit records.
#![cfg(test)]

use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt as _;
use paddock::observe::Observability;
use paddock::observe::audit::{AuditConfig, AuditOptions};
use paddock_server::Config;
use paddock_server::auth::token_digest;
use paddock_server::daemon::Daemon;
use paddock_server::http::{Listener, http_requests_counter, router};
use tower::ServiceExt as _;

struct Api {
    unix: axum::Router,
    tcp: axum::Router,
    daemon: Arc<Daemon>,
    _audit: tempfile::TempDir,
}

async fn api() -> Api {
    let audit = tempfile::tempdir().expect("tempdir");
    let text = format!(
        r#"
[server]
image = "/nonexistent/manifest.json"
max_json_bytes = 1024

[[tenant]]
name = "acme"
token_sha256 = "{}"

[[tenant]]
name = "slow"
token_sha256 = "{}"
requests_per_second = 1
"#,
        token_digest("acme-token"),
        token_digest("slow-token"),
    );
    let config = Config::parse(Path::new("test.toml"), &text).expect("config");
    let registry = prometheus::Registry::new();
    let observability = Observability::new(&registry)
        .expect("metrics")
        .with_audit(
            audit.path(),
            AuditConfig::default(),
            AuditOptions::default(),
        )
        .expect("audit");
    let image = paddock::GuestImage {
        hash: "none".into(),
        kernel: "/nonexistent/vmlinuz".into(),
        initramfs: "/nonexistent/initramfs".into(),
        cmdline: String::new(),
        agent_serial_port: "org.paddock.agent.0".into(),
        agent_vsock_port: 1024,
        root_disk: None,
        build: None,
    };
    let mut settings = paddock::PaddockConfig::new(image).observe(&observability);
    settings.libvirt_uri = "test:///default".into();
    let paddock = paddock::Paddock::connect(settings)
        .await
        .expect("test driver");
    let daemon = Arc::new(Daemon::new(paddock, observability, config));
    let requests = http_requests_counter(&registry).expect("counter");
    Api {
        unix: router(Arc::clone(&daemon), Listener::Unix, requests.clone()),
        tcp: router(Arc::clone(&daemon), Listener::Tcp, requests),
        daemon,
        _audit: audit,
    }
}

async fn call(
    app: &axum::Router,
    method: Method,
    uri: &str,
    token: Option<&str>,
    body: Body,
) -> (StatusCode, serde_json::Value, String) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request
        .header("content-type", "application/json")
        .body(body)
        .expect("request");
    let response = app.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, json, text)
}

fn code(json: &serde_json::Value) -> &str {
    json["error"]["code"].as_str().unwrap_or("(no code)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_are_who_their_listener_and_token_say() {
    let api = api().await;
    let (status, json, _) = call(&api.unix, Method::GET, "/v1/pools", None, Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json, serde_json::json!({"pools": []}));
    for token in [None, Some("wrong"), Some("")] {
        let (status, json, _) =
            call(&api.tcp, Method::GET, "/v1/pools", token, Body::empty()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert_eq!(code(&json), "unauthorized");
    }
    let (status, _, _) = call(
        &api.tcp,
        Method::GET,
        "/v1/leases",
        Some("acme-token"),
        Body::empty(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // A tenant past its request rate is told when to retry.
    let (first, _, _) = call(
        &api.tcp,
        Method::GET,
        "/v1/pools",
        Some("slow-token"),
        Body::empty(),
    )
    .await;
    assert_eq!(first, StatusCode::OK);
    let (status, json, _) = call(
        &api.tcp,
        Method::GET,
        "/v1/pools",
        Some("slow-token"),
        Body::empty(),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(code(&json), "rate_limited");
    assert!(
        json["error"]["retry_after_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 0 && ms <= 1000),
        "{json}"
    );
    // Operator endpoints need the operator (or an admin tenant).
    let (status, json, _) = call(
        &api.tcp,
        Method::POST,
        "/v1/pools/p/slots/0/reset",
        Some("acme-token"),
        Body::empty(),
    )
    .await;
    assert_eq!((status, code(&json)), (StatusCode::FORBIDDEN, "forbidden"));
    let (status, json, _) = call(
        &api.unix,
        Method::POST,
        "/v1/pools/p/slots/0/reset",
        None,
        Body::empty(),
    )
    .await;
    assert_eq!(
        (status, code(&json)),
        (StatusCode::NOT_FOUND, "pool_not_found")
    );
    // Health and metrics need no token.
    let (status, json, _) = call(&api.tcp, Method::GET, "/healthz", None, Body::empty()).await;
    assert_eq!(
        (status, json["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let (status, _, text) = call(&api.tcp, Method::GET, "/metrics", None, Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        text.contains(r#"paddock_http_requests_total{route="/v1/pools",status="401"} 3"#),
        "{text}"
    );
    drop(api.daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_json_errors_with_stable_codes() {
    let api = api().await;
    let cases: [(Method, &str, Body, StatusCode, &str); 9] = [
        (
            Method::GET,
            "/v1/nothing",
            Body::empty(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::PATCH,
            "/v1/pools",
            Body::empty(),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            Method::POST,
            "/v1/pools/p/leases",
            Body::from("{bad json"),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            Method::POST,
            "/v1/pools/p/leases",
            Body::from(r#"{"wait_ms": "soon"}"#),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            Method::POST,
            "/v1/pools/p/leases",
            Body::from(r#"{"unknown": 1}"#),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            Method::POST,
            "/v1/pools/p/leases",
            Body::from(format!(r#"{{"wait_ms": 1, "x": "{}"}}"#, "y".repeat(2000))),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            Method::POST,
            "/v1/pools/p/leases",
            Body::from("{}"),
            StatusCode::NOT_FOUND,
            "pool_not_found",
        ),
        (
            Method::POST,
            "/v1/leases/l-9/exec",
            Body::from(r#"{"argv": ["true"]}"#),
            StatusCode::NOT_FOUND,
            "lease_not_found",
        ),
        (
            Method::POST,
            "/v1/pools/p/slots/zero/reset",
            Body::empty(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
    ];
    for (method, uri, body, status, expected) in cases {
        let (got, json, text) = call(&api.unix, method.clone(), uri, None, body).await;
        assert_eq!(
            (got, code(&json)),
            (status, expected),
            "{method} {uri}: {text}"
        );
        assert!(
            json["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{text}"
        );
    }
    // An exec needs exactly one of argv and shell, checked before the lease.
    let (status, json, _) = call(
        &api.unix,
        Method::POST,
        "/v1/leases/l-9/exec",
        None,
        Body::from(r#"{"argv": ["true"], "shell": "true"}"#),
    )
    .await;
    assert_eq!(
        (status, code(&json)),
        (StatusCode::BAD_REQUEST, "bad_request")
    );
    let (status, json, _) = call(
        &api.unix,
        Method::DELETE,
        "/v1/leases/l-9",
        None,
        Body::empty(),
    )
    .await;
    assert_eq!(
        (status, code(&json)),
        (StatusCode::NOT_FOUND, "lease_not_found")
    );
    let (status, json, _) = call(
        &api.unix,
        Method::GET,
        "/v1/leases/l-9/files?path=relative",
        None,
        Body::empty(),
    )
    .await;
    assert_eq!(
        (status, code(&json)),
        (StatusCode::BAD_REQUEST, "bad_request")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_call_is_audited_with_its_caller() {
    let api = api().await;
    call(
        &api.tcp,
        Method::GET,
        "/v1/leases",
        Some("acme-token"),
        Body::empty(),
    )
    .await;
    call(
        &api.tcp,
        Method::GET,
        "/v1/leases",
        Some("wrong"),
        Body::empty(),
    )
    .await;
    call(&api.unix, Method::GET, "/v1/pools", None, Body::empty()).await;
    call(&api.unix, Method::GET, "/healthz", None, Body::empty()).await;
    let log = api.daemon.observability.audit_log().expect("audit log");
    log.flush_async().await.expect("flush");
    let dir = api._audit.path();
    let report = paddock::observe::audit::verify(dir).expect("verify");
    assert!(report.is_intact(), "{report}");
    let text: String = std::fs::read_dir(dir)
        .expect("dir")
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "health checks are not audited: {text}");
    assert!(
        lines[0].contains(r#""actor":{"kind":"tenant","name":"acme"}"#),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains(r#""route":"/v1/leases""#), "{}", lines[0]);
    assert!(
        lines[1].contains(r#""stage":"denied""#) && lines[1].contains(r#""kind":"token""#),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].contains(r#""actor":{"kind":"process","name":"local"}"#),
        "{}",
        lines[2]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_body_that_never_finishes_is_cut_off() {
    let api = api().await;
    let first = futures_util::stream::iter([Ok::<_, std::io::Error>(
        axum::body::Bytes::from_static(b"{\"wait_ms\":"),
    )]);
    let never = futures_util::stream::pending::<Result<axum::body::Bytes, std::io::Error>>();
    let body = Body::from_stream(futures_util::StreamExt::chain(first, never));
    let started = std::time::Instant::now();
    let (status, json, text) =
        call(&api.unix, Method::POST, "/v1/pools/p/leases", None, body).await;
    assert_eq!(
        (status, code(&json)),
        (StatusCode::REQUEST_TIMEOUT, "timeout"),
        "{text}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}
