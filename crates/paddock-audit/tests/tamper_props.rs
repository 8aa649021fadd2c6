//! Property: any single edit, removal, reorder or insertion of a line in a
//! random multi-file log is caught.
//!
//! What is guaranteed, with `i` the 0-based index (over the whole log, files
//! in order) of the first line the tampering touches:
//!
//! - with the log's head as an anchor ([`VerifyOptions::head`]): `verify`
//!   reports a break at an index `<= i + 1` (or, for the removal of the last
//!   record, `HeadMissing`);
//! - without an anchor, when a record of the original log follows the
//!   tampered one: the break is at exactly `i` for a removal or a swap of two
//!   neighbours (`SeqGap`), and at exactly `i + 1` for an edit or a forged
//!   insertion (`HashMismatch`: the changed line is self-consistent, its
//!   successor's `prev` is not).
//!
//! Not guaranteed (a hash chain has no key): an edit or removal of the last
//! record without an anchor, and a forged record appended after the head.
#![cfg(test)]

mod common;

use std::path::Path;

use common::{Files, event};
use paddock_audit::{
    AuditRecord, BreakKind, Digest, Head, VerifyOptions, VerifyReport, file_name, verify,
    verify_with,
};
use proptest::prelude::*;

/// Writes `n` chained records directly (no writer thread: thousands of cases
/// stay fast), starting a new file after line `k` when `cuts[k]`.
fn build(dir: &Path, n: usize, cuts: &[bool]) -> anyhow::Result<Head> {
    let mut prev = Digest::ZERO;
    let mut file = Vec::new();
    let mut first = 0u64;
    for (k, &cut) in cuts.iter().enumerate().take(n) {
        let seq = u64::try_from(k)?;
        let line = AuditRecord {
            seq,
            prev,
            event: event(seq),
        }
        .to_line()?;
        prev = Digest::of(&line);
        file.extend_from_slice(&line);
        file.push(b'\n');
        if cut || k + 1 == n {
            std::fs::write(dir.join(file_name(first)), &file)?;
            file.clear();
            first = seq + 1;
        }
    }
    Ok(Head {
        seq: u64::try_from(n - 1)?,
        hash: prev,
    })
}

#[derive(Debug, Clone, Copy)]
enum Tamper {
    Edit,
    Remove,
    Swap,
    Forge,
}

fn apply(files: &mut Files, tamper: Tamper, i: usize) -> anyhow::Result<()> {
    match tamper {
        Tamper::Edit => {
            let (f, l) = files.locate(i);
            let line = &mut files.files[f].1[l];
            let at = line
                .windows(6)
                .position(|w| w == b"\"id\":\"")
                .ok_or_else(|| anyhow::anyhow!("no id"))?
                + 6;
            line[at] = if line[at] == b'x' { b'y' } else { b'x' };
        }
        Tamper::Remove => {
            let (f, l) = files.locate(i);
            files.files[f].1.remove(l);
        }
        Tamper::Swap => {
            let a = files.locate(i);
            let b = files.locate(i + 1);
            let first = files.files[a.0].1[a.1].clone();
            files.files[a.0].1[a.1] = files.files[b.0].1[b.1].clone();
            files.files[b.0].1[b.1] = first;
        }
        Tamper::Forge => {
            let lines = files.lines();
            let (f, l) = files.locate(i);
            let prev = if i == 0 {
                Digest::ZERO
            } else {
                Digest::of(&lines[i - 1])
            };
            let mut seen = 0;
            for (_, file_lines, _) in &mut files.files {
                for line in file_lines.iter_mut() {
                    if seen >= i {
                        let mut record = AuditRecord::from_line(line)?;
                        record.seq += 1;
                        *line = record.to_line()?;
                    }
                    seen += 1;
                }
            }
            let forged = AuditRecord {
                seq: u64::try_from(i)?,
                prev,
                event: event(777_777),
            };
            files.files[f].1.insert(l, forged.to_line()?);
        }
    }
    Ok(())
}

fn break_index(report: &VerifyReport, files: &Files) -> Option<usize> {
    let b = report.broken.as_ref()?;
    if matches!(b.kind, BreakKind::HeadMissing { .. }) {
        return Some(usize::MAX);
    }
    Some(files.global(&b.file, b.line_number))
}

fn tamper_strategy() -> impl Strategy<Value = Tamper> {
    prop_oneof![
        Just(Tamper::Edit),
        Just(Tamper::Remove),
        Just(Tamper::Swap),
        Just(Tamper::Forge),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_single_tampering_is_caught(
        n in 2usize..=40,
        cuts in prop::collection::vec(prop::bool::weighted(0.2), 40),
        tamper in tamper_strategy(),
        at in any::<prop::sample::Index>(),
    ) {
        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let run = || -> anyhow::Result<(Files, VerifyReport, VerifyReport, usize)> {
            let head = build(dir.path(), n, &cuts)?;
            assert!(verify(dir.path())?.is_intact());
            // A swap needs a neighbour.
            let i = at.index(if matches!(tamper, Tamper::Swap) { n - 1 } else { n });
            let mut files = Files::read(dir.path())?;
            apply(&mut files, tamper, i)?;
            files.write()?;
            let plain = verify(dir.path())?;
            let anchored = verify_with(dir.path(), &VerifyOptions { head: Some(head) })?;
            Ok((files, plain, anchored, i))
        };
        let (files, plain, anchored, i) = run().map_err(|e| TestCaseError::fail(format!("{e:#}")))?;

        // Anchored: always caught, at or before i + 1.
        let found = break_index(&anchored, &files);
        prop_assert!(found.is_some(), "{:?} at {} not caught: {}", tamper, i, anchored);
        if !(matches!(tamper, Tamper::Remove) && i == n - 1) {
            prop_assert!(found <= Some(i + 1), "{:?} at {}: {}", tamper, i, anchored);
        }

        // Without an anchor: exact positions when a record follows.
        let followed = match tamper {
            Tamper::Edit | Tamper::Remove => i + 1 < n,
            Tamper::Swap | Tamper::Forge => true,
        };
        if followed {
            let expected = match tamper {
                Tamper::Remove | Tamper::Swap => i,
                Tamper::Edit | Tamper::Forge => i + 1,
            };
            prop_assert_eq!(break_index(&plain, &files), Some(expected), "{:?}: {}", tamper, plain);
        } else {
            prop_assert!(plain.is_intact(), "{}", plain);
        }
    }
}
