//! The writer: overflow policies, fsync policies, async use, redaction in the
//! bytes on disk, and failures.
#![cfg(test)]

mod common;

use std::time::Duration;

use common::{Files, event};
use paddock_audit::{
    Actor, AuditConfig, AuditError, AuditEvent, AuditWriter, CommandRecording, ExecSummary,
    FileSummary, FsyncPolicy, OverflowPolicy, Request, Response, Stage, Verb, WriteError, verify,
};

const THREADS: u64 = 4;
const PER_THREAD: u64 = 300;

fn tiny_queue(overflow: OverflowPolicy) -> AuditConfig {
    AuditConfig {
        queue_capacity: 2,
        overflow,
        // A sync per record keeps the writer slower than the appenders.
        fsync: FsyncPolicy::EachRecord,
        ..AuditConfig::default()
    }
}

fn hammer(log: &paddock_audit::AuditLog) -> anyhow::Result<()> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let log = log.clone();
                s.spawn(move || -> Result<(), AuditError> {
                    for i in 0..PER_THREAD {
                        log.append(event(t * PER_THREAD + i))?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("appender panicked"))??;
        }
        Ok(())
    })
}

#[test]
fn overflow_drop_counts_what_it_drops() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let log = AuditWriter::open(dir.path(), tiny_queue(OverflowPolicy::Drop))?;
    hammer(&log)?;
    let dropped = log.dropped();
    let after = log.clone();
    log.close()?;
    let stats = after.stats();
    let report = verify(dir.path())?;
    assert!(report.is_intact(), "{report}");
    assert!(dropped > 0, "nothing dropped");
    assert_eq!(stats.dropped, dropped);
    assert_eq!(report.records + dropped, THREADS * PER_THREAD);
    assert_eq!(stats.records_written, report.records);
    Ok(())
}

#[test]
fn overflow_wait_loses_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let log = AuditWriter::open(dir.path(), tiny_queue(OverflowPolicy::Wait))?;
    hammer(&log)?;
    assert_eq!(log.dropped(), 0);
    log.close()?;
    let report = verify(dir.path())?;
    assert!(report.is_intact(), "{report}");
    assert_eq!(report.records, THREADS * PER_THREAD);
    // Every event is there exactly once.
    let mut ids: Vec<String> = Files::read(dir.path())?
        .lines()
        .iter()
        .map(|l| paddock_audit::AuditRecord::from_line(l).map(|r| r.event.id))
        .collect::<Result<_, _>>()?;
    ids.sort();
    ids.dedup();
    assert_eq!(u64::try_from(ids.len())?, THREADS * PER_THREAD);
    Ok(())
}

#[test]
fn full_queue_on_a_multi_thread_runtime() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let log = AuditWriter::open(dir.path(), tiny_queue(OverflowPolicy::Wait))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()?;
    rt.block_on(async {
        let mut tasks = Vec::new();
        for t in 0..4u64 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..100 {
                    let e = event(t * 1000 + i);
                    // Half blocking (block_in_place), half awaiting.
                    if t % 2 == 0 {
                        log.append(e)?;
                    } else {
                        log.append_async(e).await?;
                    }
                }
                log.flush_async().await
            }));
        }
        for task in tasks {
            task.await??;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    assert_eq!(log.stats().records_written, 400);
    assert_eq!(log.stats().queue_depth, 0);
    log.close()?;
    assert_eq!(verify(dir.path())?.records, 400);
    Ok(())
}

#[test]
fn append_async_on_a_current_thread_runtime() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let log = AuditWriter::open(dir.path(), tiny_queue(OverflowPolicy::Wait))?;
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    rt.block_on(async {
        let a = {
            let log = log.clone();
            tokio::spawn(async move {
                for i in 0..100 {
                    log.append_async(event(i)).await?;
                }
                Ok::<_, AuditError>(())
            })
        };
        for i in 100..200 {
            log.append_async(event(i)).await?;
        }
        a.await??;
        log.flush_async().await?;
        Ok::<_, anyhow::Error>(())
    })?;
    assert_eq!(log.stats().records_written, 200);
    log.close()?;
    Ok(())
}

#[test]
fn fsync_policies_sync_when_they_say() -> anyhow::Result<()> {
    // (policy, records, expected file syncs); the directory sync of the new
    // file is one more.
    let cases = [
        (FsyncPolicy::EachRecord, 10, 10),
        // Only close syncs.
        (FsyncPolicy::Never, 10, 1),
    ];
    for (fsync, n, file_syncs) in cases {
        let dir = tempfile::tempdir()?;
        let log = AuditWriter::open(
            dir.path(),
            AuditConfig {
                fsync,
                ..AuditConfig::default()
            },
        )?;
        for i in 0..n {
            log.append(event(i))?;
        }
        let clone = log.clone();
        log.close()?;
        assert_eq!(clone.stats().fsyncs, file_syncs + 1, "{fsync:?}");
        assert_eq!(clone.stats().records_written, n);
        let on_disk: u64 = Files::read(dir.path())?
            .lines()
            .iter()
            .map(|l| l.len() as u64 + 1)
            .sum();
        assert_eq!(clone.stats().bytes_written, on_disk);
    }
    // Under Never, flush syncs.
    let dir = tempfile::tempdir()?;
    let log = AuditWriter::open(
        dir.path(),
        AuditConfig {
            fsync: FsyncPolicy::Never,
            ..AuditConfig::default()
        },
    )?;
    log.append(event(0))?;
    log.flush()?;
    assert_eq!(log.stats().fsyncs, 2);
    // Nothing new: no sync.
    log.flush()?;
    assert_eq!(log.stats().fsyncs, 2);
    log.close()?;
    Ok(())
}

#[test]
fn batched_syncs_at_most_every_max_records() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let log = AuditWriter::open(
        dir.path(),
        AuditConfig {
            queue_capacity: 1000,
            fsync: FsyncPolicy::Batched {
                max_records: 8,
                max_delay: Duration::from_secs(3600),
            },
            ..AuditConfig::default()
        },
    )?;
    for i in 0..100 {
        log.append(event(i))?;
    }
    log.flush()?;
    let stats = log.stats();
    log.close()?;
    // At least one sync per 8 records; at most one per record (the writer
    // also syncs whenever the queue runs empty).
    assert!(stats.fsyncs > 100 / 8, "{stats:?}");
    assert!(stats.fsyncs <= 100 + 1, "{stats:?}");
    Ok(())
}

#[test]
fn secrets_never_reach_the_file() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let log = AuditWriter::open(dir.path(), AuditConfig::default())?;
    let exec = ExecSummary::argv(["deploy", "--password=argv-secret-1"])
        .env([("API_TOKEN", "env-secret-2"), ("PATH", "/usr/bin")])
        .cwd("/srv");
    let contents = "file-secret-3";
    let at = |stage| AuditEvent::new("r1", stage, Actor::token("ci"), Verb::EXEC);
    log.append(at(Stage::Received).with_request(Request::exec(&exec, CommandRecording::Hashed)))?;
    log.append(
        at(Stage::Completed)
            .with_request(Request::exec(&exec, CommandRecording::Omitted))
            .with_response(Response::outcome("ok").with_exit_code(0)),
    )?;
    log.append(
        AuditEvent::new("r2", Stage::Completed, Actor::token("ci"), Verb::FILE_PUT).with_request(
            Request::file(&FileSummary::new("/tmp/key").size(contents.len() as u64)),
        ),
    )?;
    log.close()?;
    let bytes = Files::read(dir.path())?.lines().join(&b'\n');
    let text = String::from_utf8(bytes)?;
    for secret in [
        "argv-secret-1",
        "env-secret-2",
        "/usr/bin",
        contents,
        "deploy",
    ] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    for expected in [
        "\"argv_sha256\":\"",
        "\"env_names\":[\"API_TOKEN\",\"PATH\"]",
        "\"path\":\"/tmp/key\",\"size\":13",
    ] {
        assert!(text.contains(expected), "{expected} not in {text}");
    }
    Ok(())
}

#[test]
fn a_write_failure_is_reported_and_sticks() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // The first file is /dev/full: every write fails with ENOSPC.
    std::os::unix::fs::symlink("/dev/full", dir.path().join(paddock_audit::file_name(0)))?;
    let log = AuditWriter::open(dir.path(), AuditConfig::default())?;
    log.append(event(0))?;
    let err = log.flush().expect_err("the write fails");
    let AuditError::Failed(cause) = &err else {
        panic!("{err:?}");
    };
    assert!(matches!(**cause, WriteError::Write { .. }), "{cause:?}");
    assert!(log.failed());
    assert!(matches!(log.append(event(1)), Err(AuditError::Failed(_))));
    assert!(matches!(log.flush(), Err(AuditError::Failed(_))));
    let stats = log.stats();
    assert_eq!(
        (stats.write_errors, stats.lost, stats.records_written),
        (1, 1, 0)
    );
    assert!(matches!(log.close(), Err(AuditError::Failed(_))));
    Ok(())
}

#[test]
fn closed_logs_refuse_events_on_every_handle() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let log = AuditWriter::open(dir.path(), AuditConfig::default())?;
    let other = log.clone();
    log.append(event(0))?;
    log.close()?;
    assert!(matches!(other.append(event(1)), Err(AuditError::Closed)));
    assert_eq!(verify(dir.path())?.records, 1);
    Ok(())
}

#[test]
fn dropping_the_last_handle_writes_the_queue() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    {
        let log = AuditWriter::open(
            dir.path(),
            AuditConfig {
                fsync: FsyncPolicy::Never,
                ..AuditConfig::default()
            },
        )?;
        for i in 0..50 {
            log.append(event(i))?;
        }
    }
    assert_eq!(verify(dir.path())?.records, 50);
    Ok(())
}

#[test]
fn a_non_finite_duration_is_refused_up_front() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let log = AuditWriter::open(dir.path(), AuditConfig::default())?;
    let mut bad = event(0);
    bad.response = Some(Response {
        duration_seconds: Some(f64::INFINITY),
        ..Response::default()
    });
    assert!(matches!(log.append(bad), Err(AuditError::InvalidEvent(_))));
    assert!(!log.failed());
    log.append(event(1))?;
    log.close()?;
    assert_eq!(verify(dir.path())?.records, 1);
    Ok(())
}

/// A compile-time check: the handle can be shared by threads and tasks.
#[test]
fn the_handle_is_send_and_sync() {
    fn check<T: Send + Sync + Clone + 'static>() {}
    check::<paddock_audit::AuditLog>();
    check::<AuditError>();
}
