//! The Prometheus harness (`paddock_tests::prometheus_server`) on its own, without
//! the daemon: a real Prometheus scrapes a tiny exposition served by the
//! test and answers queries about it. Skips without `PADDOCK_PROMETHEUS`,
//! except the start-failure test, which needs no Prometheus.
#![cfg(test)]

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use paddock_tests::prometheus_server::{PrometheusServer, prometheus_binary};

type TestResult = anyhow::Result<()>;

const EXPOSITION: &str = "# TYPE paddock_harness_up gauge\npaddock_harness_up 1\n";

/// Serves `GET /metrics` with [`EXPOSITION`] (anything else is a 404) on a
/// loopback port, in a thread that lives as long as the test process.
/// Returns the address and a count of the scrapes served.
fn serve_metrics() -> anyhow::Result<(SocketAddr, Arc<AtomicUsize>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    let scrapes = Arc::new(AtomicUsize::new(0));
    let counter = scrapes.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            if answer(stream).unwrap_or(false) {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    Ok((address, scrapes))
}

/// Answers one request on `stream` and closes it; whether it was a scrape.
fn answer(stream: TcpStream) -> std::io::Result<bool> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" || header == "\n" {
            break;
        }
    }
    let scrape = request_line.starts_with("GET /metrics ");
    let (status, body) = if scrape {
        ("200 OK", EXPOSITION)
    } else {
        ("404 Not Found", "not found\n")
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()?;
    Ok(scrape)
}

#[test]
fn prometheus_scrapes_a_target_and_answers_queries_about_it() -> TestResult {
    let Some(binary) =
        prometheus_binary("prometheus_scrapes_a_target_and_answers_queries_about_it")
    else {
        return Ok(());
    };
    let (target, scrapes) = serve_metrics()?;
    let prometheus = PrometheusServer::start(&binary, &[target], Duration::from_secs(1))?;
    assert!(prometheus.address().ip().is_loopback());

    let result = prometheus.wait_for("paddock_harness_up", Duration::from_secs(30))?;
    let series = result
        .as_array()
        .expect("wait_for returns the vector's samples");
    assert_eq!(series.len(), 1, "{result}");
    assert_eq!(series[0]["value"][1], "1", "{result}");
    assert_eq!(series[0]["metric"]["job"], "paddock", "{result}");
    assert_eq!(
        series[0]["metric"]["instance"],
        target.to_string(),
        "{result}"
    );
    assert!(scrapes.load(Ordering::Relaxed) >= 1, "no scrape was served");

    // Prometheus's own view of the target: up.
    let up = prometheus.query(&format!("up{{instance=\"{target}\"}}"))?;
    assert_eq!(up["resultType"], "vector", "{up}");
    assert_eq!(up["result"][0]["value"][1], "1", "{up}");
    // A series nobody exposes is an empty vector, not an error.
    let none = prometheus.query("paddock_harness_absent")?;
    assert_eq!(none["result"].as_array().map(Vec::len), Some(0), "{none}");
    Ok(())
}

#[test]
fn a_query_error_and_a_series_that_never_comes_fail_clearly() -> TestResult {
    let Some(binary) =
        prometheus_binary("a_query_error_and_a_series_that_never_comes_fail_clearly")
    else {
        return Ok(());
    };
    let (target, _) = serve_metrics()?;
    let prometheus = PrometheusServer::start(&binary, &[target], Duration::from_secs(1))?;
    let err = prometheus
        .query("paddock_harness_up{")
        .expect_err("a query that does not parse");
    assert!(err.to_string().contains("bad_data"), "{err:#}");
    let err = prometheus
        .wait_for("paddock_harness_absent", Duration::from_secs(2))
        .expect_err("no such series");
    assert!(
        err.to_string().contains("gave no sample within 2s"),
        "{err:#}"
    );
    Ok(())
}

#[test]
fn the_process_is_gone_once_the_server_is_dropped() -> TestResult {
    let Some(binary) = prometheus_binary("the_process_is_gone_once_the_server_is_dropped") else {
        return Ok(());
    };
    let prometheus = PrometheusServer::start(&binary, &[], Duration::from_secs(1))?;
    let proc_dir = std::path::PathBuf::from(format!("/proc/{}", prometheus.pid()));
    let address = prometheus.address();
    assert!(proc_dir.exists());
    drop(prometheus);
    // Dropping reaps it: no process, not even a zombie, and the port is free.
    assert!(!proc_dir.exists(), "{} still exists", proc_dir.display());
    assert!(
        TcpStream::connect(address).is_err(),
        "{address} still answers"
    );
    Ok(())
}

#[test]
fn a_start_failure_carries_the_output_of_the_process() {
    // A stand-in that fails as a bad configuration would: no Prometheus needed.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let fake = dir.path().join("prometheus");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho \"fake prometheus: bad flags: $*\" >&2\nexit 1\n",
    )
    .expect("writing the stand-in");
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("making it executable");
    let err = PrometheusServer::start(&fake, &[], Duration::from_secs(1))
        .expect_err("the stand-in exits at once");
    let text = format!("{err:#}");
    assert!(text.contains("exited with"), "{text}");
    assert!(text.contains("fake prometheus: bad flags"), "{text}");
    assert!(text.contains("--web.listen-address=127.0.0.1:"), "{text}");
}
