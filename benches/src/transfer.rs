//! File transfer throughput through the agent (FILE_PUT and FILE_GET), for
//! the `transfer` bench and the SLO harness.
//!
//! A transfer is timed on the host around `put_file` / `get_file`, from the
//! call until the agent's checksum came back: the guest has the whole file
//! (renamed into place) or the host has written and renamed its copy. The
//! host file lives in a host directory (page cache), the guest file in the
//! guest's `/tmp` (tmpfs). Every copy's size and CRC-32 is checked.
//!
//! The floor is the raw throughput of the same kind of channel in the same
//! guest, measured in the same runs: the same number of bytes through
//! `paddock-agent probe stream` (a sink and a source that neither store nor
//! checksum) on the sandbox's probe port, or on a second vsock port behind
//! the same hybrid-vsock multiplexer ([`paddock_tests::probe`]).

use std::path::Path;
use std::time::{Duration, Instant};

use paddock::agent::AgentClient;
use paddock_tests::probe::{ProbeChannel, ProbeMode, RunningProbe};

use crate::Samples;

/// Decimal megabytes (10^6 bytes), the unit every MB/s figure uses.
const MB: f64 = 1_000_000.0;

/// MB/s of `bytes` moved in `time`, rounded to 0.1.
#[must_use]
pub fn mb_per_s(bytes: u64, time: Duration) -> f64 {
    if time.is_zero() {
        return 0.0;
    }
    #[allow(clippy::cast_precision_loss)]
    let mb = bytes as f64 / MB;
    (mb / time.as_secs_f64() * 10.0).round() / 10.0
}

/// Throughput of `bytes` per sample: `{"p50": MB/s of the median time,
/// "p99": MB/s of the p99 time (the slow tail), "n"}`.
#[must_use]
pub fn throughput_json(bytes: u64, samples: &Samples) -> serde_json::Value {
    let mut sorted = samples.0.clone();
    sorted.sort();
    let n = sorted.len();
    let at = |q: usize| {
        sorted
            .get((n * q / 100).min(n.saturating_sub(1)))
            .map_or(0.0, |d| mb_per_s(bytes, *d))
    };
    serde_json::json!({ "p50": at(50), "p99": at(99), "n": n })
}

/// The median MB/s of `bytes` per sample (0 without samples).
#[must_use]
pub fn median_mb_s(bytes: u64, samples: &Samples) -> f64 {
    let mut sorted = samples.0.clone();
    sorted.sort();
    sorted
        .get(sorted.len() / 2)
        .map_or(0.0, |median| mb_per_s(bytes, *median))
}

/// One file's transfers both ways.
#[derive(Debug, Default)]
pub struct FileTimes {
    /// The file's size in bytes.
    pub bytes: u64,
    /// `put_file` times (host to guest).
    pub put: Samples,
    /// `get_file` times (guest to host).
    pub get: Samples,
    /// The same bytes to the guest through the raw channel.
    pub raw_to_guest: Samples,
    /// The same bytes from the guest through the raw channel.
    pub raw_from_guest: Samples,
}

impl FileTimes {
    /// `{"bytes", "put_mb_s", "get_mb_s", "channel_raw_mb_s", "ratio"...}`:
    /// the ratios are the medians' (file MB/s over raw MB/s).
    #[must_use]
    pub fn json(&mut self) -> serde_json::Value {
        let ratio = |file: f64, raw: f64| {
            if raw > 0.0 {
                (file / raw * 100.0).round() / 100.0
            } else {
                0.0
            }
        };
        let (put, get) = (
            median_mb_s(self.bytes, &self.put),
            median_mb_s(self.bytes, &self.get),
        );
        let (raw_to, raw_from) = (
            median_mb_s(self.bytes, &self.raw_to_guest),
            median_mb_s(self.bytes, &self.raw_from_guest),
        );
        serde_json::json!({
            "bytes": self.bytes,
            "file_mb_s": {
                "put": throughput_json(self.bytes, &self.put),
                "get": throughput_json(self.bytes, &self.get),
            },
            "channel_raw_mb_s": {
                "to_guest": throughput_json(self.bytes, &self.raw_to_guest),
                "from_guest": throughput_json(self.bytes, &self.raw_from_guest),
            },
            "file_over_raw_p50": { "put": ratio(put, raw_to), "get": ratio(get, raw_from) },
            "put_ms": self.put.json(),
            "get_ms": self.get.json(),
        })
    }
}

/// Puts a random file of `bytes` to `guest_path` and gets it back, `runs`
/// times, through `client`, and sends and receives as many bytes through
/// a stream probe on `channel` in each run (a probe of its own per run: a
/// probe ends itself after two minutes); `host_dir` holds the host's copies.
/// Each run's guest copy is checked by the agent's CRC-32 (FILE_DONE), the
/// host's copy by reading it back.
///
/// # Errors
/// A transfer fails, or a copy differs.
pub async fn put_and_get(
    client: &AgentClient,
    host_dir: &Path,
    guest_path: &str,
    bytes: usize,
    runs: usize,
    channel: &ProbeChannel,
) -> anyhow::Result<FileTimes> {
    let source = host_dir.join("source.bin");
    let crc = paddock_tests::write_random_file(&source, bytes, 0x7e57_f11e ^ bytes as u64)?;
    let fetched = host_dir.join("fetched.bin");
    let mut times = FileTimes {
        bytes: u64::try_from(bytes)?,
        ..FileTimes::default()
    };
    for run in 0..runs {
        let mut raw = RunningProbe::start(client, ProbeMode::Stream, channel).await?;
        times.raw_to_guest.push(raw.to_guest(times.bytes).await?);
        times
            .raw_from_guest
            .push(raw.from_guest(times.bytes).await?);
        raw.finish().await?;
        let t = Instant::now();
        let done = client.put_file(&source, guest_path).await?;
        times.put.push(t.elapsed());
        anyhow::ensure!(
            (done.size, done.crc32) == (times.bytes, crc),
            "run {run}: the guest got {done:?}"
        );
        let _ = std::fs::remove_file(&fetched);
        let t = Instant::now();
        let download = client.get_file(guest_path, &fetched).await?;
        times.get.push(t.elapsed());
        anyhow::ensure!(
            (download.size, download.crc32) == (times.bytes, crc),
            "run {run}: the host got {download:?}"
        );
        anyhow::ensure!(
            paddock_tests::file_crc32(&fetched)? == crc,
            "run {run}: the host's copy differs"
        );
        // Untimed: the next put's temporary file must fit beside nothing
        // (a 256 MiB file twice does not fit a 1 GiB guest's tmpfs).
        client
            .exec_collect(paddock::agent::Execute::argv(["rm", "-f", guest_path]))
            .await?;
    }
    let _ = std::fs::remove_file(&fetched);
    let _ = std::fs::remove_file(&source);
    Ok(times)
}
