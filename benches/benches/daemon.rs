//! The daemon's cost on real VMs (TCG here, 256 MiB guests), printed as one
//! JSON object on stdout:
//!
//! - `round_trip_ms`: acquire, exec `true`, release (each step, and the
//!   whole round trip) through the library (a `VmPool`) and through
//!   `paddock serve`'s HTTP API: over its Unix socket (the operator) and over
//!   TCP with a tenant's bearer token, each with a new connection per
//!   request (as the `paddock` command does) and over one kept-alive
//!   connection. The pools are alike (2 ready of 2, 256 MiB, reset in
//!   place, the default health checks), but the daemon's have its
//!   observability on (metrics, audit log), as every daemon does: that is
//!   part of its cost. Every round trip starts once every pool is back to 2
//!   ready, and the ways take turns, so that neither resets nor drift weigh
//!   on one of them more than on another.
//! - `stream_exec`: `head -c 33554432 /dev/zero` (32 MiB) streamed by the
//!   daemon as NDJSON (`"output": "text"`, the default, and `base64`) and
//!   read to the end by the client, and the same command's stdout read
//!   through the library: MiB/s of the command's output, median and min.
//! - `daemon_process`: the daemon's resident memory, threads and open file
//!   descriptors with its two pools ready, after the round trips (the two
//!   kept-alive connections still open) and after the streams.
//! - `host_load`: the load average and the running libvirt domains when the
//!   measurements start and end, since anything else the host runs weighs
//!   on the figures (mostly their p99).
//!
//! Run with `cargo xtask bench-daemon` (root; it starts libvirtd, builds the
//! image and the release `paddock` binary, and passes the binary's path in
//! `PADDOCK_BIN`). It takes about thirteen minutes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use paddock::agent::Execute;
use paddock::{PoolConfig, VmPool, VmPoolSpec};
use paddock_benches::Samples;
use paddock_server::auth::token_digest;
use paddock_server::wire::{ExecEnd, ExecOutput, LeaseInfo, PoolList, StreamLine};
use paddock_tests::daemon::DaemonProcess;
use paddock_tests::vm::{POOL_ROOT, image_manifest_path, test_paddock};

const WARMUPS: usize = 5;
const ROUND_TRIPS: usize = 60;
const STREAM_RUNS: usize = 5;
/// What the streamed command writes: 32 MiB (halved while the output is
/// truncated).
const STREAM_BYTES: u32 = 32 << 20;
const POOL_SIZE: usize = 2;
/// The tenant's bearer token on the TCP listener.
const TOKEN: &str = "bench-daemon-tenant-token";
/// The streamed command's timeout (the default, 30 s, is short for TCG).
const STREAM_TIMEOUT_MS: u64 = 300_000;
/// How long every pool may take to be full again.
const READY_WITHIN: Duration = Duration::from_secs(180);

fn main() -> anyhow::Result<()> {
    paddock_benches::run_harness(run())
}

/// Where requests to the daemon go.
#[derive(Debug, Clone)]
enum Listener {
    /// Its Unix socket, as the operator.
    Unix(PathBuf),
    /// Its TCP listener, with the tenant's token.
    Tcp(SocketAddr),
}

/// A plain HTTP/1 client of the daemon (hyper): a new connection per
/// request, as the `paddock` command, or one connection kept alive.
struct Client {
    listener: Listener,
    keep_alive: bool,
    kept: Option<SendRequest<Full<Bytes>>>,
    /// Connections opened.
    connections: usize,
}

impl Client {
    fn new(listener: Listener, keep_alive: bool) -> Self {
        Self {
            listener,
            keep_alive,
            kept: None,
            connections: 0,
        }
    }

    async fn connect(&mut self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        self.connections += 1;
        match &self.listener {
            Listener::Unix(path) => handshake(tokio::net::UnixStream::connect(path).await?).await,
            Listener::Tcp(addr) => handshake(tokio::net::TcpStream::connect(addr).await?).await,
        }
    }

    /// For a kept-alive client: makes sure its connection is open (a new
    /// one if the daemon closed it), outside the measured time.
    async fn prime(&mut self) -> anyhow::Result<()> {
        if self.keep_alive {
            let sender = self.sender().await?;
            self.kept = Some(sender);
        }
        Ok(())
    }

    /// The kept-alive connection while it is open, else a new one.
    async fn sender(&mut self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        if let Some(mut sender) = self.kept.take() {
            if sender.ready().await.is_ok() {
                return Ok(sender);
            }
        }
        self.connect().await
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<Request<Full<Bytes>>> {
        let mut builder = Request::builder().method(method).uri(path);
        builder = match &self.listener {
            Listener::Unix(_) => builder.header(HOST, "paddock"),
            Listener::Tcp(addr) => builder
                .header(HOST, addr.to_string())
                .header(AUTHORIZATION, format!("Bearer {TOKEN}")),
        };
        let bytes = match body {
            Some(value) => {
                builder = builder.header(CONTENT_TYPE, "application/json");
                serde_json::to_vec(value)?
            }
            None => Vec::new(),
        };
        Ok(builder.body(Full::new(Bytes::from(bytes)))?)
    }

    /// Sends one request; the answer's body is the caller's to read.
    async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<Response<Incoming>> {
        let request = self.request(method, path, body)?;
        let mut sender = self.sender().await?;
        let response = sender
            .send_request(request)
            .await
            .with_context(|| format!("{path}: no answer"))?;
        if self.keep_alive {
            self.kept = Some(sender);
        }
        Ok(response)
    }

    /// Sends one request and reads the whole answer, which must have status
    /// `expect`.
    async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        expect: StatusCode,
    ) -> anyhow::Result<Bytes> {
        let response = self.send(method.clone(), path, body).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        ensure!(
            status == expect,
            "{method} {path}: {status} {}",
            String::from_utf8_lossy(&bytes)
        );
        Ok(bytes)
    }

    async fn acquire(&mut self, pool: &str) -> anyhow::Result<LeaseInfo> {
        let body = serde_json::json!({ "wait_ms": 60_000 });
        let path = format!("/v1/pools/{pool}/leases");
        let bytes = self
            .call(Method::POST, &path, Some(&body), StatusCode::CREATED)
            .await?;
        Ok(serde_json::from_slice(&bytes)?)
    }

    async fn release(&mut self, lease: &str) -> anyhow::Result<()> {
        let path = format!("/v1/leases/{lease}");
        self.call(Method::DELETE, &path, None, StatusCode::NO_CONTENT)
            .await?;
        Ok(())
    }
}

async fn handshake<S>(stream: S) -> anyhow::Result<SendRequest<Full<Bytes>>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// The lease round trips of one way, per step.
#[derive(Default)]
struct RoundTrips {
    acquire: Samples,
    exec: Samples,
    release: Samples,
    total: Samples,
}

impl RoundTrips {
    /// Records a round trip from the instants it started, acquired,
    /// executed and released.
    fn push(&mut self, [start, acquired, executed, released]: [Instant; 4]) {
        self.acquire.push(acquired - start);
        self.exec.push(executed - acquired);
        self.release.push(released - executed);
        self.total.push(released - start);
    }

    fn json(&mut self) -> serde_json::Value {
        serde_json::json!({
            "acquire": self.acquire.json(),
            "exec_true": self.exec.json(),
            "release": self.release.json(),
            "total": self.total.json(),
        })
    }
}

async fn library_round_trip(pool: &VmPool) -> anyhow::Result<[Instant; 4]> {
    let start = Instant::now();
    let lease = pool.acquire().await?;
    let acquired = Instant::now();
    let output = lease.client().exec_collect(Execute::argv(["true"])).await?;
    let executed = Instant::now();
    lease.release();
    let released = Instant::now();
    ensure!(
        output.result.exit_code == Some(0),
        "true: {:?}",
        output.result
    );
    Ok([start, acquired, executed, released])
}

async fn api_round_trip(client: &mut Client, pool: &str) -> anyhow::Result<[Instant; 4]> {
    let exec = serde_json::json!({ "argv": ["true"] });
    let start = Instant::now();
    let lease = client.acquire(pool).await?;
    let acquired = Instant::now();
    let path = format!("/v1/leases/{}/exec", lease.id);
    let bytes = client
        .call(Method::POST, &path, Some(&exec), StatusCode::OK)
        .await?;
    let output: ExecOutput = serde_json::from_slice(&bytes)?;
    let executed = Instant::now();
    client.release(&lease.id).await?;
    let released = Instant::now();
    ensure!(output.end.exit_code == Some(0), "true: {:?}", output.end);
    Ok([start, acquired, executed, released])
}

/// The library's pool and the daemon's two, and how to see they are full.
struct Pools<'a> {
    library: &'a VmPool,
    /// The daemon's pools: round trips, streams.
    daemon: [String; 2],
    /// The operator's client that polls `GET /v1/pools`.
    operator: Client,
}

impl Pools<'_> {
    /// Waits until every pool has all of its slots ready: no reset runs
    /// while a measurement does.
    async fn wait_full(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let bytes = self
                .operator
                .call(Method::GET, "/v1/pools", None, StatusCode::OK)
                .await?;
            let list: PoolList = serde_json::from_slice(&bytes)?;
            let daemon_full = self.daemon.iter().all(|name| {
                list.pools
                    .iter()
                    .any(|p| &p.name == name && p.ready >= POOL_SIZE)
            });
            let library = self.library.stats();
            if daemon_full && library.ready >= POOL_SIZE {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "pools not full within {READY_WITHIN:?}: {list:?}, library {library:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The daemon process's figures from `/proc`.
fn process_figures(pid: u32) -> anyhow::Result<serde_json::Value> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u32>().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    let mib = |kib: u32| (f64::from(kib) / 1024.0 * 10.0).round() / 10.0;
    let (rss, peak) = (field("VmRSS:")?, field("VmHWM:")?);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    Ok(serde_json::json!({
        "rss_mib": mib(rss),
        "peak_rss_mib": mib(peak),
        "threads": field("Threads:")?,
        "open_fds": fds,
    }))
}

/// What the host runs besides: the 1-minute load average, and the running
/// libvirt domains (this bench's six included).
fn host_load() -> serde_json::Value {
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| {
            text.split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok())
        });
    let domains = std::fs::read_dir("/run/libvirt/qemu").ok().map(|dir| {
        dir.flatten()
            .filter(|e| {
                // Each running domain has a pid file; libvirt's own is
                // driver.pid.
                e.path().extension().is_some_and(|ext| ext == "pid")
                    && e.file_name() != "driver.pid"
            })
            .count()
    });
    serde_json::json!({ "load_average_1m": load, "running_domains": domains })
}

/// One run of the streamed command.
struct StreamRun {
    /// From the request to the end of the output.
    elapsed: Duration,
    /// The command's stdout bytes the client got.
    stdout: u64,
    /// What went over the connection (the NDJSON body), for the daemon.
    wire: u64,
    stdout_truncated: bool,
}

fn stream_command(bytes: u32) -> Vec<String> {
    vec![
        "head".into(),
        "-c".into(),
        bytes.to_string(),
        "/dev/zero".into(),
    ]
}

/// The bytes a padded base64 text stands for.
fn base64_len(text: &str) -> u64 {
    let padding = text.bytes().rev().take_while(|&b| b == b'=').count();
    u64::try_from(text.len() / 4 * 3 - padding).unwrap_or(u64::MAX)
}

/// The streamed command through the daemon, `output` `text` or `base64`,
/// in a lease of `pool`; the body is read to its end, then checked.
async fn api_stream(
    client: &mut Client,
    pool: &str,
    bytes: u32,
    output: &str,
) -> anyhow::Result<StreamRun> {
    let lease = client.acquire(pool).await?;
    let request = serde_json::json!({
        "argv": stream_command(bytes),
        "stream": true,
        "output": output,
        "timeout_ms": STREAM_TIMEOUT_MS,
    });
    let path = format!("/v1/leases/{}/exec", lease.id);
    let start = Instant::now();
    let response = client.send(Method::POST, &path, Some(&request)).await?;
    ensure!(response.status() == StatusCode::OK, "{}", response.status());
    let mut body = response.into_body();
    let mut ndjson = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            ndjson.extend_from_slice(&data);
        }
    }
    let elapsed = start.elapsed();
    client.release(&lease.id).await?;
    let (mut stdout, mut end): (u64, Option<ExecEnd>) = (0, None);
    for line in ndjson.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        match serde_json::from_slice::<StreamLine>(line)? {
            StreamLine::Stdout(text) => stdout += u64::try_from(text.len())?,
            StreamLine::StdoutB64(text) => stdout += base64_len(&text),
            StreamLine::Stderr(_) | StreamLine::StderrB64(_) => {}
            StreamLine::Result(result) => end = Some(result),
            StreamLine::Error(error) => bail!("the stream failed: {error:?}"),
        }
    }
    let end = end.context("the stream has no result line")?;
    ensure!(end.exit_code == Some(0), "head: {end:?}");
    Ok(StreamRun {
        elapsed,
        stdout,
        wire: u64::try_from(ndjson.len())?,
        stdout_truncated: end.stdout_truncated,
    })
}

/// The streamed command through the library: its stdout read chunk by
/// chunk to the end, then its result.
async fn library_stream(pool: &VmPool, bytes: u32) -> anyhow::Result<StreamRun> {
    let lease = pool.acquire().await?;
    let mut execute = Execute::argv(stream_command(bytes));
    execute.timeout_ms = Some(STREAM_TIMEOUT_MS);
    let start = Instant::now();
    let mut execution = lease.client().exec(execute).await?;
    let mut out = execution.take_stdout().context("no stdout stream")?;
    let mut stdout = 0;
    while let Some(chunk) = out.chunk().await? {
        stdout += u64::try_from(chunk.len())?;
    }
    drop(out);
    let result = execution.wait().await?;
    let elapsed = start.elapsed();
    lease.release();
    ensure!(result.exit_code == Some(0), "head: {result:?}");
    Ok(StreamRun {
        elapsed,
        stdout,
        wire: stdout,
        stdout_truncated: result.stdout_truncated,
    })
}

/// The runs of one way of streaming.
#[derive(Default)]
struct StreamRuns(Vec<StreamRun>);

impl StreamRuns {
    fn push(&mut self, run: StreamRun, bytes: u32) -> anyhow::Result<()> {
        ensure!(
            run.stdout == u64::from(bytes) && !run.stdout_truncated,
            "got {} of {bytes} bytes (truncated: {})",
            run.stdout,
            run.stdout_truncated
        );
        self.0.push(run);
        Ok(())
    }

    /// MiB/s of the command's output, median and min, and the seconds.
    fn json(&self, bytes: u32) -> serde_json::Value {
        let mib = f64::from(bytes) / f64::from(1u32 << 20);
        let mut rates: Vec<f64> = self
            .0
            .iter()
            .map(|run| mib / run.elapsed.as_secs_f64())
            .collect();
        rates.sort_by(f64::total_cmp);
        let mut seconds: Vec<f64> = self.0.iter().map(|r| r.elapsed.as_secs_f64()).collect();
        seconds.sort_by(f64::total_cmp);
        let round = |v: f64, places: i32| {
            let scale = 10f64.powi(places);
            (v * scale).round() / scale
        };
        let median = |v: &[f64]| v.get(v.len() / 2).copied().unwrap_or(0.0);
        serde_json::json!({
            "n": self.0.len(),
            "mib_per_s": {
                "median": round(median(&rates), 1),
                "min": round(rates.first().copied().unwrap_or(0.0), 1),
            },
            "seconds": {
                "median": round(median(&seconds), 3),
                "max": round(seconds.last().copied().unwrap_or(0.0), 3),
            },
            "bytes_received_per_run": self.0.first().map_or(0, |r| r.wire),
        })
    }
}

/// The ways the round trips are made, by name.
const WAYS: [&str; 5] = [
    "library",
    "unix_socket_new_connection_per_request",
    "tcp_token_new_connection_per_request",
    "unix_socket_keep_alive",
    "tcp_token_keep_alive",
];

async fn measure(daemon: &DaemonProcess, library: &VmPool) -> anyhow::Result<serde_json::Value> {
    let pid = std::process::id();
    let (rt_pool, stream_pool) = (format!("bd-rt-{pid}"), format!("bd-st-{pid}"));
    let mut pools = Pools {
        library,
        daemon: [rt_pool.clone(), stream_pool.clone()],
        operator: Client::new(Listener::Unix(daemon.socket.clone()), false),
    };
    pools.wait_full().await?;
    let pools_ready = process_figures(daemon.pid())?;
    let load_at_start = host_load();
    eprintln!("every pool is full");

    // The round trips, the ways taking turns.
    let mut clients = [
        Client::new(Listener::Unix(daemon.socket.clone()), false),
        Client::new(Listener::Tcp(daemon.tcp), false),
        Client::new(Listener::Unix(daemon.socket.clone()), true),
        Client::new(Listener::Tcp(daemon.tcp), true),
    ];
    let mut trips: Vec<RoundTrips> = WAYS.iter().map(|_| RoundTrips::default()).collect();
    for round in 0..WARMUPS + ROUND_TRIPS {
        for (way, samples) in trips.iter_mut().enumerate() {
            pools.wait_full().await?;
            let instants = match way.checked_sub(1) {
                None => library_round_trip(library).await?,
                Some(i) => {
                    let client = &mut clients[i];
                    client.prime().await?;
                    api_round_trip(client, &rt_pool).await?
                }
            };
            if round >= WARMUPS {
                samples.push(instants);
            }
        }
    }
    pools.wait_full().await?;
    let after_round_trips = process_figures(daemon.pid())?;
    let mut round_trips = serde_json::Map::new();
    for (way, samples) in WAYS.iter().zip(&mut trips) {
        round_trips.insert((*way).into(), samples.json());
    }
    let connections = serde_json::json!({
        WAYS[1]: clients[0].connections,
        WAYS[2]: clients[1].connections,
        WAYS[3]: clients[2].connections,
        WAYS[4]: clients[3].connections,
    });
    drop(clients);
    eprintln!("round trips done");

    // The streams: one untimed run first, which halves the size while the
    // output is truncated.
    let mut unix = Client::new(Listener::Unix(daemon.socket.clone()), false);
    let mut tcp = Client::new(Listener::Tcp(daemon.tcp), false);
    let mut bytes = STREAM_BYTES;
    let mut truncated_at = Vec::new();
    loop {
        pools.wait_full().await?;
        let run = api_stream(&mut unix, &stream_pool, bytes, "text").await?;
        if !run.stdout_truncated && run.stdout == u64::from(bytes) {
            break;
        }
        truncated_at.push(bytes);
        ensure!(
            bytes > 1 << 20,
            "streamed output truncated down to {bytes} bytes"
        );
        bytes /= 2;
    }
    pools.wait_full().await?;
    library_stream(library, bytes).await?;
    let mut streams: [StreamRuns; 5] = Default::default();
    for _ in 0..STREAM_RUNS {
        pools.wait_full().await?;
        streams[0].push(library_stream(library, bytes).await?, bytes)?;
        for (i, (over_tcp, output)) in [
            (false, "text"),
            (true, "text"),
            (false, "base64"),
            (true, "base64"),
        ]
        .into_iter()
        .enumerate()
        {
            let client = if over_tcp { &mut tcp } else { &mut unix };
            pools.wait_full().await?;
            let run = api_stream(client, &stream_pool, bytes, output).await?;
            streams[i + 1].push(run, bytes)?;
        }
    }
    pools.wait_full().await?;
    let after_streams = process_figures(daemon.pid())?;
    let load_at_end = host_load();
    eprintln!("streams done");

    Ok(serde_json::json!({
        "accelerator": "tcg",
        "host_cpus": std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        "pools": {
            "slots": POOL_SIZE,
            "guest_memory_mib": 256,
            "running_vms": 3 * POOL_SIZE,
            "note": "a library pool and the daemon's two pools (round trips, streams) run at once; each measurement starts once all three are full",
        },
        "host_load": { "at_start": load_at_start, "at_end": load_at_end },
        "round_trip_ms": round_trips,
        "round_trip_warmups": WARMUPS,
        "round_trip_connections_opened": connections,
        "stream_exec": {
            "command": format!("head -c {bytes} /dev/zero"),
            "bytes": bytes,
            "truncated_at": truncated_at,
            "library_exec_stdout_stream": streams[0].json(bytes),
            "daemon_unix_socket_ndjson_text": streams[1].json(bytes),
            "daemon_tcp_token_ndjson_text": streams[2].json(bytes),
            "daemon_unix_socket_ndjson_base64": streams[3].json(bytes),
            "daemon_tcp_token_ndjson_base64": streams[4].json(bytes),
        },
        "daemon_process": {
            "pools_ready": pools_ready,
            "after_round_trips": after_round_trips,
            "after_streams": after_streams,
        },
    }))
}

/// The daemon's configuration: two pools of two, the operator's socket and
/// the audit log in `dir`, a tenant with [`TOKEN`] on TCP.
fn write_config(dir: &Path) -> anyhow::Result<PathBuf> {
    let pid = std::process::id();
    let config = dir.join("paddock.toml");
    let pool = |name: String| {
        format!(
            "\n[[pool]]\nname = \"{name}\"\nmin_ready = {POOL_SIZE}\nmax_size = {POOL_SIZE}\nacquire_timeout_ms = 120000\n"
        )
    };
    let text = format!(
        r#"[server]
image = "{image}"
socket = "{socket}"
tcp = "127.0.0.1:0"
state_root = "{POOL_ROOT}"
audit_dir = "{audit}"

[[tenant]]
name = "bench"
token_sha256 = "{digest}"
{rt}{st}"#,
        image = image_manifest_path().display(),
        socket = dir.join("paddock.sock").display(),
        audit = dir.join("audit").display(),
        digest = token_digest(TOKEN),
        rt = pool(format!("bd-rt-{pid}")),
        st = pool(format!("bd-st-{pid}")),
    );
    std::fs::write(&config, text)?;
    Ok(config)
}

/// Makes the library's pool, measures, and closes the pool whatever
/// happened.
async fn with_library_pool(daemon: &DaemonProcess) -> anyhow::Result<serde_json::Value> {
    let paddock = test_paddock().await?;
    let pool = paddock
        .create_pool(
            VmPoolSpec::new(format!("bd-lib-{}", std::process::id())),
            PoolConfig {
                min_ready: POOL_SIZE,
                max_size: POOL_SIZE,
                acquire_timeout: Duration::from_secs(120),
                ..PoolConfig::default()
            },
        )
        .await?;
    let measured = measure(daemon, &pool).await;
    let closed = pool.close().await;
    let report = measured?;
    closed?;
    Ok(report)
}

async fn run() -> anyhow::Result<()> {
    let binary = std::env::var_os("PADDOCK_BIN").map(PathBuf::from).context(
        "set PADDOCK_BIN to the `paddock` binary (`cargo xtask bench-daemon` builds it and does)",
    )?;
    let dir = tempfile::tempdir()?;
    let config = write_config(dir.path())?;
    let daemon = DaemonProcess::start_binary(&binary, &config, Duration::from_secs(300))?;
    let measured = with_library_pool(&daemon).await;
    // SIGTERM drains the daemon: it exits 0 once nothing of its pools is left.
    let stopped = daemon.stop(Duration::from_secs(180));
    let mut report = measured?;
    let status = stopped?;
    ensure!(status.success(), "the daemon exited with {status}");
    report["daemon_exit_code"] = status.code().into();
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
