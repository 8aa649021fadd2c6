//! SIGKILL while writing: the chain stays intact up to the last complete line,
//! a torn line is reported as torn, and the next writer continues the chain.
//!
//! The child is this test binary run again with `--exact crash_child` and
//! `PADDOCK_AUDIT_CRASH_DIR` set; without that variable `crash_child` returns
//! at once.
#![cfg(test)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::event;
use paddock_audit::{
    AuditConfig, AuditWriter, CommandRecording, ExecSummary, FsyncPolicy, Request, verify,
};

const DIR_ENV: &str = "PADDOCK_AUDIT_CRASH_DIR";
const POLICY_ENV: &str = "PADDOCK_AUDIT_CRASH_POLICY";

fn config(policy: &str) -> AuditConfig {
    AuditConfig {
        fsync: if policy == "each" {
            FsyncPolicy::EachRecord
        } else {
            FsyncPolicy::Never
        },
        // Rotations happen during the run too.
        max_file_bytes: 256 * 1024,
        ..AuditConfig::default()
    }
}

/// The child: appends until killed. Some records carry a large argument so
/// that a kill can land inside one long write(2) and tear it (the kernel
/// checks for fatal signals between pages): every 10th record with `never`,
/// every 50th with `each`, carries 256 KiB. Each child writes at most about
/// 12 MiB, then waits to be killed. (Tearing a line this way is rare: the
/// simulated torn-line tests in `chain.rs` cover that case for sure; this
/// test asserts that whatever the kills left verifies.)
#[test]
fn crash_child() -> anyhow::Result<()> {
    let Some(dir) = std::env::var_os(DIR_ENV) else {
        return Ok(());
    };
    let policy = std::env::var(POLICY_ENV)?;
    let every = if policy == "each" { 50 } else { 10 };
    let log = AuditWriter::open(&dir, config(&policy))?;
    let start = log.head().map_or(0, |h| h.seq + 1);
    let big = "b".repeat(256 * 1024);
    for i in 0..every * 48 {
        let mut e = event(start + i);
        if i % every == every - 1 {
            e = e.with_request(Request::exec(
                &ExecSummary::argv(["echo", big.as_str()]),
                CommandRecording::Full,
            ));
        }
        log.append(e)?;
    }
    log.flush()?;
    // Wait to be killed; the parent never lets this end.
    std::thread::sleep(Duration::from_secs(60));
    Ok(())
}

/// A small xorshift generator seeded from the clock: no two runs kill at the
/// same moments. The seed is printed so a failure can be discussed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn sigkill_mid_write_keeps_the_chain() -> anyhow::Result<()> {
    if std::env::var_os(DIR_ENV).is_some() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let exe = std::env::current_exe()?;
    let seed = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    let mut rng = Rng(u64::try_from(seed % u128::from(u64::MAX))? | 1);
    eprintln!("seed {seed}");
    let mut last_seq = None;
    let mut torn = 0;
    for round in 0..10 {
        let policy = if round % 2 == 0 { "each" } else { "never" };
        let mut child = Command::new(&exe)
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(DIR_ENV, dir.path())
            .env(POLICY_ENV, policy)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        std::thread::sleep(Duration::from_millis(10 + rng.next() % 400));
        // Child::kill sends SIGKILL on Unix.
        child.kill()?;
        let status = child.wait()?;
        assert!(
            !status.success(),
            "round {round}: the child ended by itself"
        );

        let report = verify(dir.path())?;
        assert!(report.is_intact(), "round {round} ({policy}): {report}");
        torn += report.torn_lines.len() + usize::from(report.torn_tail.is_some());
        if report.records > 0 {
            assert_eq!(report.first_seq, Some(0));
            assert_eq!(report.last_seq, Some(report.records - 1));
        }
        // No complete line is ever lost to a later writer.
        assert!(report.last_seq >= last_seq, "round {round}: {report}");
        last_seq = report.last_seq;
        eprintln!("round {round} ({policy}): {report}");
    }
    assert!(last_seq.is_some(), "no child wrote anything");
    eprintln!("torn lines seen: {torn}");

    // A last, clean writer continues after whatever the kills left.
    let log = AuditWriter::open(dir.path(), AuditConfig::default())?;
    let next = log.head().map_or(0, |h| h.seq + 1);
    log.append(event(next))?;
    log.close()?;
    let report = verify(dir.path())?;
    assert!(report.is_intact(), "{report}");
    assert_eq!(report.last_seq, Some(next));
    assert_eq!(report.torn_tail, None);
    Ok(())
}
