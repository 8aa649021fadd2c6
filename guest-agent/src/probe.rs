//! `paddock-agent probe`: the floors the agent is measured against, taken
//! inside the guest without the agent's protocol.
//!
//! The agent's cost per request only means something next to what the same
//! guest and channel allow: a raw byte echo over the same kind of channel,
//! the channel's raw throughput, and the guest's own time to spawn a
//! program. The host's benchmarks start the probe through the agent (an
//! ordinary execution) on a channel the agent does not use: a second
//! virtio-serial port on the same controller, or another vsock port behind
//! the same multiplexer.
//!
//! # Modes
//! - **echo**: every byte read is written back, until the host leaves.
//! - **stream**: the host sends commands of 9 bytes, an op and a
//!   little-endian `u64` length:
//!   - `S` (sink): the length's worth of bytes follows; the probe reads and
//!     drops them, then answers with the length (8 bytes, little-endian);
//!   - `R` (read): the probe writes the length's worth of zero bytes.
//!
//!   Any other op ends the probe with an error.
//! - **spawn**: runs a program `count` times, one after the other, with
//!   stdio on `/dev/null`, and returns each spawn-to-exit time.
//!
//! A virtio-serial port reads end-of-file while no host is connected, so a
//! probe on one treats end-of-file before the first byte as "not yet" and
//! polls ([`HOST_POLL`]) until the host's first byte or the deadline; after
//! it, end-of-file means the host left and the probe ends.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How often a probe on a virtio-serial port looks for the host before its
/// first byte.
pub const HOST_POLL: Duration = Duration::from_millis(2);

/// The size of a probe's reads and writes.
pub const PROBE_BUFFER: usize = 256 * 1024;

/// A stream command's length: one op byte and a little-endian `u64`.
pub const COMMAND_LEN: usize = 9;

/// The stream op that sends bytes to the guest.
pub const OP_SINK: u8 = b'S';

/// The stream op that asks the guest for bytes.
pub const OP_READ: u8 = b'R';

/// The host end of a probe's channel, as the guest sees it.
#[derive(Debug)]
pub struct HostStream {
    inner: Inner,
    /// No byte has arrived yet: end-of-file means "no host yet".
    waiting: bool,
    deadline: Instant,
}

#[derive(Debug)]
enum Inner {
    Serial(File),
    Vsock(vsock::VsockStream),
}

impl HostStream {
    /// Opens the virtio-serial port device at `device` (once, read-write:
    /// a port opens only once at a time). The host has until `deadline` to
    /// send its first byte.
    ///
    /// # Errors
    /// The device cannot be opened.
    pub fn serial(device: &Path, deadline: Instant) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(device)?;
        Ok(Self {
            inner: Inner::Serial(file),
            waiting: true,
            deadline,
        })
    }

    /// Listens on vsock `port` and accepts one connection. The accept
    /// itself has no deadline: the caller's watchdog bounds it.
    ///
    /// # Errors
    /// The port cannot be bound, or the accept fails.
    pub fn vsock(port: u32, deadline: Instant) -> io::Result<Self> {
        let listener = vsock::VsockListener::bind_with_cid_port(vsock::VMADDR_CID_ANY, port)?;
        let (stream, _) = listener.accept()?;
        Ok(Self {
            inner: Inner::Vsock(stream),
            waiting: false,
            deadline,
        })
    }
}

impl Read for HostStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let read = match &mut self.inner {
                Inner::Serial(file) => file.read(buf)?,
                Inner::Vsock(stream) => stream.read(buf)?,
            };
            if read > 0 || !self.waiting || buf.is_empty() {
                self.waiting &= read == 0;
                return Ok(read);
            }
            if Instant::now() >= self.deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no host connected to the probe's port",
                ));
            }
            std::thread::sleep(HOST_POLL);
        }
    }
}

impl Write for HostStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.inner {
            Inner::Serial(file) => file.write(buf),
            Inner::Vsock(stream) => stream.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes back every byte read until the host leaves; returns the bytes
/// echoed.
///
/// # Errors
/// A read or write fails.
pub fn echo(stream: &mut (impl Read + Write)) -> io::Result<u64> {
    let mut buf = vec![0; PROBE_BUFFER];
    let mut total = 0;
    loop {
        let read = stream.read(&mut buf)?;
        if read == 0 {
            return Ok(total);
        }
        stream.write_all(&buf[..read])?;
        total += read as u64;
    }
}

/// What [`serve_stream`] moved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StreamTotals {
    /// Bytes the host sent (`S`).
    pub sunk: u64,
    /// Bytes the probe sent (`R`).
    pub sent: u64,
}

/// Serves stream commands until the host leaves.
///
/// # Errors
/// A read or write fails, the host leaves in the middle of a command, or
/// sends an unknown op ([`io::ErrorKind::InvalidData`]).
pub fn serve_stream(stream: &mut (impl Read + Write)) -> io::Result<StreamTotals> {
    let mut buf = vec![0; PROBE_BUFFER];
    let mut totals = StreamTotals::default();
    loop {
        let mut command = [0; COMMAND_LEN];
        if !read_command(stream, &mut command)? {
            return Ok(totals);
        }
        let mut len_bytes = [0; 8];
        len_bytes.copy_from_slice(&command[1..]);
        let len = u64::from_le_bytes(len_bytes);
        match command[0] {
            OP_SINK => {
                let mut left = len;
                while left > 0 {
                    let want =
                        usize::try_from(left.min(PROBE_BUFFER as u64)).unwrap_or(PROBE_BUFFER);
                    let read = stream.read(&mut buf[..want])?;
                    if read == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    left -= read as u64;
                }
                stream.write_all(&len.to_le_bytes())?;
                totals.sunk += len;
            }
            OP_READ => {
                buf.fill(0);
                let mut left = len;
                while left > 0 {
                    let chunk =
                        usize::try_from(left.min(PROBE_BUFFER as u64)).unwrap_or(PROBE_BUFFER);
                    stream.write_all(&buf[..chunk])?;
                    left -= chunk as u64;
                }
                totals.sent += len;
            }
            op => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unknown probe op {op:#04x}"),
                ));
            }
        }
    }
}

/// Reads one command; `false` when the host left before its first byte.
fn read_command(stream: &mut impl Read, command: &mut [u8; COMMAND_LEN]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < COMMAND_LEN {
        let read = stream.read(&mut command[filled..])?;
        if read == 0 {
            return if filled == 0 {
                Ok(false)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        filled += read;
    }
    Ok(true)
}

/// Spawns `program` with `args` `count` times, one after the other, stdio
/// on `/dev/null`; returns each spawn-to-exit time. A program that exits
/// unsuccessfully still counts: the floor is the cost of a process, not of
/// its work.
///
/// # Errors
/// The program cannot be spawned or waited for.
pub fn spawn_times(program: &Path, args: &[String], count: usize) -> io::Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        times.push(started.elapsed());
    }
    Ok(times)
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;

    use super::*;

    fn command(op: u8, len: u64) -> Vec<u8> {
        let mut command = vec![op];
        command.extend_from_slice(&len.to_le_bytes());
        command
    }

    #[test]
    fn echo_returns_every_byte_until_the_host_leaves() {
        let (mut host, mut guest) = UnixStream::pair().expect("pair");
        let probe = std::thread::spawn(move || echo(&mut guest));
        let message: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
        let writer = {
            let mut host = host.try_clone().expect("clone");
            let message = message.clone();
            std::thread::spawn(move || {
                host.write_all(&message).expect("write");
                host.shutdown(std::net::Shutdown::Write).expect("shutdown");
            })
        };
        let mut back = Vec::new();
        host.read_to_end(&mut back).expect("read");
        writer.join().expect("writer");
        assert_eq!(back, message);
        assert_eq!(probe.join().expect("probe").expect("echo"), 300_000);
    }

    #[test]
    fn stream_sinks_acknowledges_and_sends_the_asked_lengths() {
        let (mut host, mut guest) = UnixStream::pair().expect("pair");
        let probe = std::thread::spawn(move || serve_stream(&mut guest));
        let len = 3 * PROBE_BUFFER as u64 + 17;
        host.write_all(&command(OP_SINK, len)).expect("command");
        host.write_all(&vec![7; usize::try_from(len).expect("len")])
            .expect("payload");
        let mut ack = [0; 8];
        host.read_exact(&mut ack).expect("ack");
        assert_eq!(u64::from_le_bytes(ack), len);
        host.write_all(&command(OP_READ, 1000)).expect("command");
        let mut bytes = vec![1; 1000];
        host.read_exact(&mut bytes).expect("bytes");
        assert!(bytes.iter().all(|&b| b == 0));
        host.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let totals = probe.join().expect("probe").expect("serve");
        assert_eq!(
            totals,
            StreamTotals {
                sunk: len,
                sent: 1000
            }
        );
    }

    #[test]
    fn stream_refuses_an_unknown_op_and_a_command_cut_short() {
        let (mut host, mut guest) = UnixStream::pair().expect("pair");
        let probe = std::thread::spawn(move || serve_stream(&mut guest));
        host.write_all(&command(b'X', 1)).expect("command");
        let err = probe.join().expect("probe").expect_err("unknown op");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);

        let (mut host, mut guest) = UnixStream::pair().expect("pair");
        let probe = std::thread::spawn(move || serve_stream(&mut guest));
        host.write_all(&[OP_SINK, 1, 2]).expect("part of a command");
        host.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let err = probe.join().expect("probe").expect_err("cut short");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn spawn_times_one_sample_per_spawn_and_reports_a_missing_program() {
        let times = spawn_times(Path::new("/bin/true"), &[], 5).expect("spawn");
        assert_eq!(times.len(), 5);
        assert!(times.iter().all(|t| *t > Duration::ZERO));
        let err = spawn_times(Path::new("/nonexistent/program"), &[], 1).expect_err("missing");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
