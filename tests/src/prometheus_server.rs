//! A real Prometheus server for tests: it scrapes the targets a test names
//! and answers PromQL queries, so a test checks what Prometheus itself makes
//! of an exposition, not what the code under test says it exposes.
//!
//! The binary is Debian's (`cargo xtask test` installs the `prometheus`
//! package and passes its path as `PADDOCK_PROMETHEUS`; see
//! [`prometheus_binary`]). Each [`PrometheusServer`] has its own temporary
//! directory (configuration, storage, log) and listens on a free loopback
//! port only; it is killed on drop.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::Value;

/// How long Prometheus may take to answer `GET /-/ready` after it starts.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one HTTP request to Prometheus may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How often [`PrometheusServer::wait_for`] and the start poll.
const POLL: Duration = Duration::from_millis(200);

/// The Prometheus binary named by `$PADDOCK_PROMETHEUS`, or `None` after
/// printing that `test` is skipped (how the environment-dependent tests
/// skip themselves when run outside `cargo xtask test`).
#[must_use]
pub fn prometheus_binary(test: &str) -> Option<PathBuf> {
    let binary = std::env::var_os("PADDOCK_PROMETHEUS").map(PathBuf::from);
    if binary.is_none() {
        eprintln!(
            "SKIPPED {test}: set PADDOCK_PROMETHEUS to a prometheus binary \
             (cargo xtask test does; cargo xtask api-test-tools installs one)"
        );
    }
    binary
}

/// A Prometheus server scraping a test's targets, on a loopback port;
/// killed on drop.
#[derive(Debug)]
pub struct PrometheusServer {
    child: Child,
    address: SocketAddr,
    agent: ureq::Agent,
    // Last: removed after the process is gone.
    dir: tempfile::TempDir,
}

impl PrometheusServer {
    /// Starts `binary` with a generated configuration: one job `paddock`
    /// scraping `targets` (over HTTP, path `/metrics`) every
    /// `scrape_interval`, its storage in a temporary directory, listening on
    /// a free port of 127.0.0.1. Returns once `GET /-/ready` answers 200.
    ///
    /// # Errors
    /// The interval is under a millisecond, the process does not start, or
    /// it exits or is not ready within [`START_TIMEOUT`] (the error then
    /// carries its output).
    pub fn start(
        binary: &Path,
        targets: &[SocketAddr],
        scrape_interval: Duration,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            scrape_interval >= Duration::from_millis(1),
            "a scrape interval under 1 ms: {scrape_interval:?}"
        );
        let dir = tempfile::tempdir().context("temporary directory")?;
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, config_yaml(targets, scrape_interval))
            .with_context(|| format!("writing {}", config.display()))?;
        let log_path = dir.path().join("prometheus.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let address = free_loopback_port()?;
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the log file")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(REQUEST_TIMEOUT))
            .http_status_as_error(false)
            // Loopback only: no proxy from the environment.
            .proxy(None)
            .build()
            .into();
        let mut server = Self {
            child,
            address,
            agent,
            dir,
        };
        server
            .wait_ready()
            .with_context(|| server.output_for_error())?;
        Ok(server)
    }

    /// Polls `GET /-/ready` until it answers 200.
    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let url = format!("http://{}/-/ready", self.address);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().context("waiting for prometheus")? {
                bail!("prometheus exited with {status} before it was ready");
            }
            let last = match self.agent.get(&url).call() {
                Ok(response) if response.status() == 200 => return Ok(()),
                Ok(response) => format!("answered {}", response.status()),
                Err(err) => err.to_string(),
            };
            if Instant::now() >= deadline {
                bail!("prometheus was not ready on {url} within {START_TIMEOUT:?} (last: {last})");
            }
            std::thread::sleep(POLL);
        }
    }

    /// The output Prometheus wrote so far, for an error message.
    fn output_for_error(&self) -> String {
        let log = self.dir.path().join("prometheus.log");
        let output = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: String = {
            let lines: Vec<&str> = output.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        };
        format!("prometheus output ({}):\n{tail}", log.display())
    }

    /// Where Prometheus listens (127.0.0.1 and a free port).
    #[must_use]
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The Prometheus process's id.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs the instant query `promql` (`GET /api/v1/query`) and returns the
    /// answer's `data`: `{"resultType": ..., "result": ...}`, where a
    /// vector's `result` is a list of `{"metric": {labels}, "value": [time,
    /// "value"]}`.
    ///
    /// # Errors
    /// The request fails, or Prometheus answers an error (e.g. `bad_data`
    /// for a query that does not parse), whose type and text the error
    /// carries.
    pub fn query(&self, promql: &str) -> anyhow::Result<Value> {
        let url = format!("http://{}/api/v1/query", self.address);
        let mut response = self
            .agent
            .get(&url)
            .query("query", promql)
            .call()
            .with_context(|| format!("querying {promql:?}"))?;
        let status = response.status();
        let body = response
            .body_mut()
            .read_to_string()
            .with_context(|| format!("reading the answer to {promql:?}"))?;
        let answer: Value = serde_json::from_str(&body)
            .with_context(|| format!("the answer to {promql:?} is not JSON ({status}): {body}"))?;
        if answer["status"] != "success" {
            bail!(
                "Prometheus refused {promql:?} ({status}): {}: {}",
                answer["errorType"],
                answer["error"]
            );
        }
        answer
            .get("data")
            .cloned()
            .with_context(|| format!("the answer to {promql:?} has no data: {body}"))
    }

    /// Polls [`PrometheusServer::query`] until `promql` gives a non-empty
    /// vector, and returns that vector (the `result` list).
    ///
    /// # Errors
    /// A query error, or still no sample after `timeout` (the error says
    /// what the last answer was).
    pub fn wait_for(&self, promql: &str, timeout: Duration) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let data = self.query(promql)?;
            if data["resultType"] == "vector"
                && data["result"].as_array().is_some_and(|r| !r.is_empty())
            {
                return Ok(data["result"].clone());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{promql:?} gave no sample within {timeout:?}; last answer: {data}; scrape targets: {}",
                    self.targets_summary()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Each scrape target's health and last error (`/api/v1/targets`), for
    /// error messages.
    fn targets_summary(&self) -> String {
        let url = format!("http://{}/api/v1/targets", self.address);
        let answer = self
            .agent
            .get(&url)
            .call()
            .ok()
            .and_then(|mut response| response.body_mut().read_to_string().ok())
            .and_then(|body| serde_json::from_str::<Value>(&body).ok());
        let Some(targets) = answer
            .as_ref()
            .and_then(|a| a["data"]["activeTargets"].as_array())
        else {
            return "unknown".into();
        };
        let mut summary = String::new();
        for target in targets {
            let _ = write!(
                summary,
                "[{} {} {}] ",
                target["scrapeUrl"], target["health"], target["lastError"]
            );
        }
        summary
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The configuration: one job `paddock` scraping `targets`.
fn config_yaml(targets: &[SocketAddr], scrape_interval: Duration) -> String {
    let interval = format!("{}ms", scrape_interval.as_millis());
    let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
    // The scrape timeout may not exceed the interval (its default is 10 s).
    format!(
        "global:\n  scrape_interval: {interval}\n  scrape_timeout: {interval}\n\
         scrape_configs:\n  - job_name: paddock\n    static_configs:\n      - targets: [{}]\n",
        targets.join(", ")
    )
}

/// A loopback address with a port that was free a moment ago (bound, then
/// released for Prometheus to take).
fn free_loopback_port() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    listener.local_addr().context("the bound address")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_names_the_job_targets_and_interval() {
        let targets: Vec<SocketAddr> = vec![
            SocketAddr::from(([127, 0, 0, 1], 9100)),
            "[::1]:9200".parse().expect("an address"),
        ];
        let yaml = config_yaml(&targets, Duration::from_millis(1500));
        assert_eq!(
            yaml,
            "global:\n  scrape_interval: 1500ms\n  scrape_timeout: 1500ms\n\
             scrape_configs:\n  - job_name: paddock\n    static_configs:\n      \
             - targets: ['127.0.0.1:9100', '[::1]:9200']\n"
        );
    }
}
