//! The chain end to end: writing, reopening, rotating, verifying, and every
//! kind of tampering at the first, a middle and the last position.
#![cfg(test)]

mod common;

use std::path::{Path, PathBuf};

use common::{Files, append_range, event};
use paddock_audit::{
    AuditConfig, AuditRecord, AuditWriter, BreakKind, Digest, Head, VerifyOptions, VerifyReport,
    file_name, verify, verify_files, verify_with,
};

fn small_files() -> AuditConfig {
    AuditConfig {
        // About two records per file.
        max_file_bytes: 1000,
        ..AuditConfig::default()
    }
}

fn head_of(lines: &[Vec<u8>]) -> Head {
    let last = lines.last().expect("a record");
    Head {
        seq: AuditRecord::from_line(last).expect("decodes").seq,
        hash: Digest::of(last),
    }
}

fn with_head(dir: &Path, head: Head) -> VerifyReport {
    verify_with(dir, &VerifyOptions { head: Some(head) }).expect("verifies")
}

/// Asserts a break at the `global`-th line (0-based, in the untampered
/// numbering of `files` after tampering) with `kind`.
fn assert_break(report: &VerifyReport, files: &Files, global: usize, kind: &BreakKind) {
    let b = report.broken.as_ref().expect("a break");
    assert_eq!(&b.kind, kind, "{report}");
    assert_eq!(files.global(&b.file, b.line_number), global, "{report}");
}

#[test]
fn round_trip_is_intact() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    append_range(dir.path(), AuditConfig::default(), 0, 100)?;
    let report = verify(dir.path())?;
    assert!(report.is_intact(), "{report}");
    assert_eq!(report.records, 100);
    assert_eq!(report.first_seq, Some(0));
    assert_eq!(report.last_seq, Some(99));
    assert_eq!(report.files, vec![dir.path().join(file_name(0))]);
    assert_eq!(report.torn_tail, None);
    assert_eq!(
        report.to_string(),
        "verified 100 records in 1 file, seq 0..=99"
    );

    let lines = Files::read(dir.path())?.lines();
    let mut prev = Digest::ZERO;
    for (i, line) in lines.iter().enumerate() {
        let record = AuditRecord::from_line(line)?;
        assert_eq!(record.seq, u64::try_from(i)?);
        assert_eq!(record.prev, prev);
        assert_eq!(record.event, event(record.seq));
        prev = Digest::of(line);
    }
    Ok(())
}

#[test]
fn empty_directory_verifies() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let report = verify(dir.path())?;
    assert!(report.is_intact());
    assert_eq!(report.records, 0);
    assert_eq!(report.to_string(), "verified 0 records in 0 files");
    // An open and close without records leaves no file.
    AuditWriter::open(dir.path(), AuditConfig::default())?.close()?;
    assert_eq!(std::fs::read_dir(dir.path())?.count(), 0);
    Ok(())
}

#[test]
fn reopen_continues_the_chain() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    append_range(dir.path(), AuditConfig::default(), 0, 10)?;
    let log = AuditWriter::open(dir.path(), AuditConfig::default())?;
    let head = log.head().expect("a head");
    assert_eq!(head.seq, 9);
    for i in 10..20 {
        log.append(event(i))?;
    }
    log.flush()?;
    let head = log.head().expect("a head");
    log.close()?;
    let report = with_head(dir.path(), head);
    assert!(report.is_intact(), "{report}");
    assert_eq!((report.records, report.last_seq), (20, Some(19)));
    assert_eq!(report.files.len(), 1);
    assert_eq!(head.seq, 19);
    assert_eq!(head, head_of(&Files::read(dir.path())?.lines()));
    Ok(())
}

#[test]
fn rotation_continues_the_chain() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    append_range(dir.path(), small_files(), 0, 30)?;
    append_range(dir.path(), small_files(), 30, 50)?;
    let report = verify(dir.path())?;
    assert!(report.is_intact(), "{report}");
    assert_eq!((report.records, report.last_seq), (50, Some(49)));
    let files = Files::read(dir.path())?;
    assert!(files.files.len() >= 10, "{} files", files.files.len());
    assert_eq!(report.files.len(), files.files.len());
    for (path, lines, _) in &files.files {
        let first = AuditRecord::from_line(&lines[0])?.seq;
        assert_eq!(path.file_name(), Some(file_name(first).as_ref()));
        assert!(std::fs::metadata(path)?.len() <= 1000);
    }
    Ok(())
}

#[test]
fn a_record_larger_than_a_file_goes_alone() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = AuditConfig {
        max_file_bytes: 10,
        ..AuditConfig::default()
    };
    append_range(dir.path(), config, 0, 3)?;
    let report = verify(dir.path())?;
    assert!(report.is_intact(), "{report}");
    assert_eq!((report.records, report.files.len()), (3, 3));
    Ok(())
}

#[test]
fn retention_of_whole_files_still_verifies() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    append_range(dir.path(), small_files(), 0, 20)?;
    let files = Files::read(dir.path())?;
    std::fs::remove_file(&files.files[0].0)?;
    std::fs::remove_file(&files.files[1].0)?;
    let first = AuditRecord::from_line(&files.files[2].1[0])?.seq;
    let report = verify(dir.path())?;
    assert!(report.is_intact(), "{report}");
    assert_eq!(report.first_seq, Some(first));
    assert!(first > 0);
    assert_eq!(report.records, 20 - first);
    // A head that retention deleted is not held against the log.
    let old = head_of(&files.files[0].1);
    assert!(with_head(dir.path(), old).is_intact());
    Ok(())
}

/// Changes one character of the `id` value of line `global`, keeping it
/// valid JSON.
fn edit(files: &mut Files, global: usize) {
    let (f, l) = files.locate(global);
    let line = &mut files.files[f].1[l];
    let at = line
        .windows(6)
        .position(|w| w == b"\"id\":\"")
        .expect("an id")
        + 6;
    line[at] = if line[at] == b'x' { b'y' } else { b'x' };
}

fn remove(files: &mut Files, global: usize) {
    let (f, l) = files.locate(global);
    files.files[f].1.remove(l);
}

/// Swaps line `global` with the next line.
fn swap(files: &mut Files, global: usize) {
    let a = files.locate(global);
    let b = files.locate(global + 1);
    let first = files.files[a.0].1[a.1].clone();
    files.files[a.0].1[a.1] = files.files[b.0].1[b.1].clone();
    files.files[b.0].1[b.1] = first;
}

/// Inserts before line `global` a forged record with a correct seq and prev,
/// and renumbers the records after it (each keeps its `prev`).
fn forge(files: &mut Files, global: usize) -> anyhow::Result<()> {
    let lines = files.lines();
    let (f, l) = files.locate(global);
    let prev = if global == 0 {
        Digest::ZERO
    } else {
        Digest::of(&lines[global - 1])
    };
    let forged = AuditRecord {
        seq: u64::try_from(global)?,
        prev,
        event: event(999_999),
    };
    let mut seen = 0;
    for (_, file_lines, _) in &mut files.files {
        for line in file_lines.iter_mut() {
            if seen >= global {
                let mut record = AuditRecord::from_line(line)?;
                record.seq += 1;
                *line = record.to_line()?;
            }
            seen += 1;
        }
    }
    files.files[f].1.insert(l, forged.to_line()?);
    Ok(())
}

/// Runs `tamper` on a fresh log of `n` records at each of the first, a middle
/// and the last position the tampering allows, and checks the report.
fn each_position(
    n: u64,
    config: AuditConfig,
    positions: &[usize],
    tamper: impl Fn(&mut Files, usize) -> anyhow::Result<()>,
    check: impl Fn(usize, &Files, &VerifyReport, &VerifyReport),
) -> anyhow::Result<()> {
    for &at in positions {
        let dir = tempfile::tempdir()?;
        append_range(dir.path(), config, 0, n)?;
        let original = Files::read(dir.path())?;
        let head = head_of(&original.lines());
        let mut files = Files::read(dir.path())?;
        tamper(&mut files, at)?;
        files.write()?;
        let plain = verify(dir.path())?;
        let anchored = with_head(dir.path(), head);
        check(at, &files, &plain, &anchored);
    }
    Ok(())
}

#[test]
fn an_edited_record_is_caught() -> anyhow::Result<()> {
    for config in [AuditConfig::default(), small_files()] {
        each_position(
            20,
            config,
            &[0, 9, 19],
            |f, at| {
                edit(f, at);
                Ok(())
            },
            |at, files, plain, anchored| {
                if at < 19 {
                    // The next record's prev no longer matches.
                    assert_break(plain, files, at + 1, &BreakKind::HashMismatch);
                    assert_break(anchored, files, at + 1, &BreakKind::HashMismatch);
                } else {
                    // The last record has no successor: only the head sees it.
                    assert!(plain.is_intact(), "{plain}");
                    assert_break(anchored, files, at, &BreakKind::HeadMismatch);
                }
            },
        )?;
    }
    Ok(())
}

#[test]
fn a_removed_record_is_caught() -> anyhow::Result<()> {
    for config in [AuditConfig::default(), small_files()] {
        each_position(
            20,
            config,
            &[0, 9, 19],
            |f, at| {
                remove(f, at);
                Ok(())
            },
            |at, files, plain, anchored| {
                let gap = BreakKind::SeqGap {
                    expected: u64::try_from(at).expect("small"),
                    found: u64::try_from(at + 1).expect("small"),
                };
                if at < 19 {
                    // Removing the very first record is caught by the oldest
                    // file's name, the others by the seq.
                    assert_break(plain, files, at, &gap);
                    assert_break(anchored, files, at, &gap);
                } else {
                    assert!(plain.is_intact(), "{plain}");
                    let b = anchored.broken.as_ref().expect("a break");
                    assert_eq!(b.kind, BreakKind::HeadMissing { head_seq: 19 });
                    assert_eq!(b.seq, Some(19));
                }
            },
        )?;
    }
    Ok(())
}

#[test]
fn reordered_records_are_caught() -> anyhow::Result<()> {
    for config in [AuditConfig::default(), small_files()] {
        each_position(
            20,
            config,
            &[0, 9, 18],
            |f, at| {
                swap(f, at);
                Ok(())
            },
            |at, files, plain, anchored| {
                let gap = BreakKind::SeqGap {
                    expected: u64::try_from(at).expect("small"),
                    found: u64::try_from(at + 1).expect("small"),
                };
                assert_break(plain, files, at, &gap);
                assert_break(anchored, files, at, &gap);
            },
        )?;
    }
    Ok(())
}

#[test]
fn a_forged_insertion_is_caught_by_the_hash() -> anyhow::Result<()> {
    for config in [AuditConfig::default(), small_files()] {
        each_position(
            20,
            config,
            &[0, 9, 19],
            forge,
            |at, files, plain, anchored| {
                // The forged record itself chains correctly; the record after
                // it still points at the original predecessor.
                assert_break(plain, files, at + 1, &BreakKind::HashMismatch);
                if at < 19 {
                    assert_break(anchored, files, at + 1, &BreakKind::HashMismatch);
                } else {
                    // The forged record took the head's seq.
                    assert_break(anchored, files, at, &BreakKind::HeadMismatch);
                }
                let b = plain.broken.as_ref().expect("a break");
                assert_eq!(b.seq, Some(u64::try_from(at + 1).expect("small")));
            },
        )?;
    }
    Ok(())
}

#[test]
fn a_removed_middle_file_is_caught() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    append_range(dir.path(), small_files(), 0, 20)?;
    let files = Files::read(dir.path())?;
    let (removed, lines, _) = &files.files[3];
    let expected = AuditRecord::from_line(&lines[0])?.seq;
    std::fs::remove_file(removed)?;
    let report = verify(dir.path())?;
    let b = report.broken.as_ref().expect("a break");
    assert_eq!(b.file, files.files[4].0);
    assert_eq!(b.line_number, 1);
    assert_eq!(
        b.kind,
        BreakKind::SeqGap {
            expected,
            found: expected + u64::try_from(lines.len())?
        }
    );
    Ok(())
}

#[test]
fn files_out_of_order_are_caught() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    append_range(dir.path(), small_files(), 0, 10)?;
    let mut paths: Vec<PathBuf> = Files::read(dir.path())?
        .files
        .into_iter()
        .map(|(p, _, _)| p)
        .collect();
    assert!(verify_files(&paths)?.is_intact());
    paths.swap(1, 2);
    let report = verify_files(&paths)?;
    assert!(matches!(
        report.broken.as_ref().map(|b| &b.kind),
        Some(BreakKind::SeqGap { .. })
    ));
    Ok(())
}

#[test]
fn display_names_file_line_and_seq() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    append_range(dir.path(), AuditConfig::default(), 0, 20)?;
    let mut files = Files::read(dir.path())?;
    edit(&mut files, 15);
    files.write()?;
    assert_eq!(
        verify(dir.path())?.to_string(),
        "chain broken at audit-00000000000000000000.jsonl line 17 (seq 16): hash mismatch"
    );
    Ok(())
}

#[test]
fn malformed_lines_are_findings() -> anyhow::Result<()> {
    let replacements: [(&[u8], &str); 4] = [
        (b"not json", "malformed record: not a v1 record"),
        (b"\xff\xfe{}", "malformed record: not a v1 record"),
        (b"", "malformed record: not a v1 record"),
        (
            br#"{"schema":"paddock.audit/v2","seq":5}"#,
            "malformed record: unknown schema \"paddock.audit/v2\"",
        ),
    ];
    for (bytes, message) in replacements {
        let dir = tempfile::tempdir()?;
        append_range(dir.path(), AuditConfig::default(), 0, 10)?;
        let mut files = Files::read(dir.path())?;
        files.files[0].1[5] = bytes.to_vec();
        files.write()?;
        let report = verify(dir.path())?;
        let b = report.broken.as_ref().expect("a break");
        assert_eq!((b.line_number, b.seq), (6, None));
        let text = report.to_string();
        assert!(
            text.starts_with(&format!(
                "chain broken at audit-00000000000000000000.jsonl line 6: {message}"
            )),
            "{text}"
        );
        assert_eq!(report.records, 5);
    }
    Ok(())
}

#[test]
fn seq_zero_needs_a_zero_prev() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    append_range(dir.path(), AuditConfig::default(), 0, 3)?;
    let mut files = Files::read(dir.path())?;
    let mut first = AuditRecord::from_line(&files.files[0].1[0])?;
    first.prev = Digest::of(b"something before");
    files.files[0].1[0] = first.to_line()?;
    files.write()?;
    let b = verify(dir.path())?.broken.expect("a break");
    assert_eq!((b.line_number, b.kind), (1, BreakKind::HashMismatch));
    Ok(())
}

/// Cuts the last line of the newest file in half (a crash mid-write).
fn tear_tail(dir: &Path) -> anyhow::Result<u64> {
    let files = Files::read(dir)?;
    let (path, lines, _) = files.files.last().expect("a file");
    let keep = lines.last().expect("a line").len() / 2;
    let len = std::fs::metadata(path)?.len();
    let cut = u64::try_from(lines.last().expect("a line").len() + 1 - keep)?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .set_len(len - cut)?;
    Ok(u64::try_from(keep)?)
}

#[test]
fn a_torn_tail_is_not_tampering_and_reopen_starts_a_new_file() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    append_range(dir.path(), AuditConfig::default(), 0, 10)?;
    let torn_bytes = tear_tail(dir.path())?;
    let report = verify(dir.path())?;
    assert!(report.is_intact(), "{report}");
    assert_eq!((report.records, report.last_seq), (9, Some(8)));
    let torn = report.torn_tail.clone().expect("a torn tail");
    assert_eq!((torn.line_number, torn.bytes), (10, torn_bytes));
    assert_eq!(
        report.to_string(),
        format!(
            "verified 9 records in 1 file, seq 0..=8, torn tail at audit-00000000000000000000.jsonl line 10 ({torn_bytes} bytes)"
        )
    );
    let before = std::fs::read(dir.path().join(file_name(0)))?;

    // The writer continues from seq 8's line, in a new file, and never
    // appends after the torn bytes.
    append_range(dir.path(), AuditConfig::default(), 9, 15)?;
    assert_eq!(std::fs::read(dir.path().join(file_name(0)))?, before);
    let report = verify(dir.path())?;
    assert!(report.is_intact(), "{report}");
    assert_eq!((report.records, report.last_seq), (15, Some(14)));
    assert_eq!(report.torn_tail, None);
    assert_eq!(report.torn_lines, vec![torn]);
    assert_eq!(
        report.files,
        vec![dir.path().join(file_name(0)), dir.path().join(file_name(9))]
    );

    // A torn line that the next file does not continue after is a break.
    let mut files = Files::read(dir.path())?;
    files.files[1].1.remove(0);
    files.write()?;
    let report = verify(dir.path())?;
    let b = report.broken.as_ref().expect("a break");
    assert_eq!((b.line_number, &b.kind), (10, &BreakKind::Torn));
    assert_eq!(b.file, dir.path().join(file_name(0)));

    // So is one followed by a malformed line: the torn line is the first break.
    let mut files = Files::read(dir.path())?;
    files.files[1].1[0] = b"garbage".to_vec();
    files.write()?;
    let b = verify(dir.path())?.broken.expect("a break");
    assert_eq!((b.line_number, b.kind), (10, BreakKind::Torn));
    Ok(())
}

#[test]
fn a_torn_only_file_is_moved_aside() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    append_range(dir.path(), AuditConfig::default(), 0, 3)?;
    // A crash during the first write to a freshly rotated file.
    let torn = dir.path().join(file_name(3));
    std::fs::write(&torn, br#"{"schema":"paddock.au"#)?;
    let report = verify(dir.path())?;
    assert!(report.is_intact(), "{report}");
    assert_eq!(report.torn_tail.as_ref().map(|t| t.line_number), Some(1));

    append_range(dir.path(), AuditConfig::default(), 3, 5)?;
    let report = verify(dir.path())?;
    assert!(report.is_intact(), "{report}");
    assert_eq!((report.records, report.torn_tail), (5, None));
    let aside = dir.path().join(format!("{}.torn", file_name(3)));
    assert_eq!(std::fs::read(aside)?, br#"{"schema":"paddock.au"#);
    Ok(())
}

#[test]
fn an_empty_newest_file_is_reused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    append_range(dir.path(), AuditConfig::default(), 0, 3)?;
    std::fs::write(dir.path().join(file_name(3)), b"")?;
    assert!(verify(dir.path())?.is_intact());
    append_range(dir.path(), AuditConfig::default(), 3, 5)?;
    let report = verify(dir.path())?;
    assert!(report.is_intact(), "{report}");
    assert_eq!((report.records, report.files.len()), (5, 2));
    Ok(())
}

#[test]
fn open_refuses_a_malformed_last_line() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    append_range(dir.path(), AuditConfig::default(), 0, 3)?;
    let mut files = Files::read(dir.path())?;
    files.files[0].1[2] = b"{}".to_vec();
    files.write()?;
    let err = AuditWriter::open(dir.path(), AuditConfig::default()).expect_err("refused");
    assert!(
        matches!(err, paddock_audit::OpenError::Malformed { .. }),
        "{err:?}"
    );
    Ok(())
}
