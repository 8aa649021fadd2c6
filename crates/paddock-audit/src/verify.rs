//! Walking the chain: [`verify`], [`verify_files`] and their report.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use crate::files;
use crate::record::{AuditRecord, Digest};

/// Errors that stop a verification before it can judge the log. Findings about
/// the log's content are never errors: they are in the [`VerifyReport`].
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The directory cannot be listed.
    #[error("cannot list {path}")]
    List {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A file cannot be opened or read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// A record the verifier expects to find, with the hash of its line: the head
/// of the log as the writer reported it ([`crate::AuditLog::head`]), kept
/// somewhere the log's writer cannot rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Head {
    /// The record's seq.
    pub seq: u64,
    /// SHA-256 of its line without the `\n`.
    pub hash: Digest,
}

/// Options of [`verify_with`] and [`verify_files_with`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VerifyOptions {
    /// A head the log must contain: the record with this seq must be present
    /// and its line must hash to `hash`. This catches edits of the last
    /// records and truncation, which a hash chain alone cannot. Not checked
    /// when retention deleted that record (its seq is below the first
    /// present record's).
    pub head: Option<Head>,
}

/// A line without its `\n` at the end of a file: a write cut short by a crash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornLine {
    /// The file.
    pub file: PathBuf,
    /// The line's 1-based number in the file.
    pub line_number: u64,
    /// Its length in bytes.
    pub bytes: u64,
}

/// What broke the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BreakKind {
    /// `prev` is not the SHA-256 of the previous line (or, for seq 0, not
    /// 64 zeros).
    HashMismatch,
    /// `seq` is not the expected one: the previous record's seq + 1, or, for
    /// the first record of the oldest file, the seq in the file's name.
    SeqGap {
        /// The seq expected.
        expected: u64,
        /// The seq found.
        found: u64,
    },
    /// The line is not a JSON v1 record.
    Malformed {
        /// Why, in a few words.
        reason: String,
    },
    /// A torn line at the end of a file that is not continued by the next
    /// record (which should have followed the file's last complete line).
    Torn,
    /// The record with the [`Head`]'s seq does not hash to the head's hash.
    HeadMismatch,
    /// The log ends before the [`Head`]'s seq.
    HeadMissing {
        /// The head's seq.
        head_seq: u64,
    },
}

impl fmt::Display for BreakKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::HashMismatch => f.write_str("hash mismatch"),
            Self::SeqGap { expected, found } => {
                write!(f, "seq gap: expected {expected}, found {found}")
            }
            Self::Malformed { reason } => write!(f, "malformed record: {reason}"),
            Self::Torn => f.write_str("torn line not continued by the next record"),
            Self::HeadMismatch => f.write_str("head mismatch"),
            Self::HeadMissing { head_seq } => write!(f, "head seq {head_seq} missing"),
        }
    }
}

/// Where and how the chain broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    /// The file.
    pub file: PathBuf,
    /// The 1-based line number in the file (for [`BreakKind::HeadMissing`],
    /// one past the last line of the last file).
    pub line_number: u64,
    /// The seq of the offending record, when its line could be decoded.
    pub seq: Option<u64>,
    /// What broke.
    pub kind: BreakKind,
}

/// The result of a verification.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// The files walked, oldest first.
    pub files: Vec<PathBuf>,
    /// Records whose line was checked and found in order (up to the break,
    /// if any).
    pub records: u64,
    /// The seq of the first present record.
    pub first_seq: Option<u64>,
    /// The seq of the last record checked.
    pub last_seq: Option<u64>,
    /// A torn line at the very end of the log (crash during a write): not
    /// tampering.
    pub torn_tail: Option<TornLine>,
    /// Torn lines at the end of older files that the next file continues
    /// after (the writer restarted after a crash): not tampering.
    pub torn_lines: Vec<TornLine>,
    /// The first break of the chain, if any.
    pub broken: Option<ChainBreak>,
}

impl VerifyReport {
    /// Whether no break was found. Torn lines do not count as breaks.
    pub fn is_intact(&self) -> bool {
        self.broken.is_none()
    }
}

fn display_name(path: &Path) -> std::borrow::Cow<'_, str> {
    path.file_name()
        .map_or_else(|| path.to_string_lossy(), |n| n.to_string_lossy())
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(b) = &self.broken {
            write!(
                f,
                "chain broken at {} line {}",
                display_name(&b.file),
                b.line_number
            )?;
            if let Some(seq) = b.seq {
                write!(f, " (seq {seq})")?;
            }
            return write!(f, ": {}", b.kind);
        }
        let plural =
            |n: u64, one: &'static str, many: &'static str| if n == 1 { one } else { many };
        let files = self.files.len() as u64;
        write!(
            f,
            "verified {} {} in {} {}",
            self.records,
            plural(self.records, "record", "records"),
            files,
            plural(files, "file", "files")
        )?;
        if let (Some(first), Some(last)) = (self.first_seq, self.last_seq) {
            write!(f, ", seq {first}..={last}")?;
        }
        if let Some(t) = &self.torn_tail {
            write!(
                f,
                ", torn tail at {} line {} ({} bytes)",
                display_name(&t.file),
                t.line_number,
                t.bytes
            )?;
        }
        Ok(())
    }
}

fn torn_break(t: TornLine) -> ChainBreak {
    ChainBreak {
        file: t.file,
        line_number: t.line_number,
        seq: None,
        kind: BreakKind::Torn,
    }
}

/// Verifies the log in `dir`: its `audit-<seq>.jsonl` files in seq order
/// (other files are ignored). See [`verify_files_with`].
pub fn verify(dir: &Path) -> Result<VerifyReport, VerifyError> {
    verify_with(dir, &VerifyOptions::default())
}

/// [`verify`] with options.
pub fn verify_with(dir: &Path, options: &VerifyOptions) -> Result<VerifyReport, VerifyError> {
    let files = files::list(dir).map_err(|source| VerifyError::List {
        path: dir.to_owned(),
        source,
    })?;
    let paths: Vec<PathBuf> = files.into_iter().map(|(_, p)| p).collect();
    verify_files_with(&paths, options)
}

/// Verifies `files`, given oldest first. See [`verify_files_with`].
pub fn verify_files(files: &[PathBuf]) -> Result<VerifyReport, VerifyError> {
    verify_files_with(files, &VerifyOptions::default())
}

/// Verifies `files`, given oldest first, and stops at the first break.
///
/// Each line must decode as a v1 record whose `seq` is one more than the
/// previous record's and whose `prev` is the SHA-256 of the previous line's
/// bytes. The first record may have any seq (older files may have been
/// deleted), except that when the first file's name is `audit-<seq>.jsonl`
/// the first record must have that seq, and a record with seq 0 must have a
/// zero `prev`. Empty files hold no records and are fine. The crate
/// documentation has the details, torn lines included.
pub fn verify_files_with(
    files: &[PathBuf],
    options: &VerifyOptions,
) -> Result<VerifyReport, VerifyError> {
    let mut report = VerifyReport {
        files: files.to_vec(),
        ..VerifyReport::default()
    };
    // The seq and prev the next record must have.
    let mut expected: Option<(u64, Digest)> = None;
    // A torn line at the end of a file, judged by the record after it.
    let mut pending_torn: Option<TornLine> = None;
    let mut end = (PathBuf::new(), 0u64);
    // Retention deletes whole files, oldest first, so the first record present
    // must be the first of the oldest file, with the seq in its name.
    let oldest_name_seq = files
        .first()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .and_then(files::parse_file_name);

    for path in files {
        let read_err = |source| VerifyError::Read {
            path: path.clone(),
            source,
        };
        let mut reader = BufReader::new(File::open(path).map_err(read_err)?);
        let mut line = Vec::new();
        let mut line_number = 0u64;
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line).map_err(read_err)?;
            if n == 0 {
                break;
            }
            line_number += 1;
            let at = |seq, kind| ChainBreak {
                file: path.clone(),
                line_number,
                seq,
                kind,
            };
            if line.last() != Some(&b'\n') {
                // read_until only stops without a newline at the end of the file.
                pending_torn = Some(TornLine {
                    file: path.clone(),
                    line_number,
                    bytes: line.len() as u64,
                });
                break;
            }
            let bytes = &line[..line.len() - 1];
            let record = match AuditRecord::from_line(bytes) {
                Ok(record) => record,
                Err(e) => {
                    let reason = match &e {
                        crate::record::RecordError::Json(j) => format!("{e}: {j}"),
                        _ => e.to_string(),
                    };
                    // A torn line before it is the earlier break: nothing
                    // continues after it.
                    report.broken = Some(match pending_torn.take() {
                        Some(t) => torn_break(t),
                        None => at(None, BreakKind::Malformed { reason }),
                    });
                    return Ok(report);
                }
            };
            let seq = Some(record.seq);
            let fault = match expected {
                None => match oldest_name_seq {
                    Some(first) if record.seq != first => Some(BreakKind::SeqGap {
                        expected: first,
                        found: record.seq,
                    }),
                    _ if record.seq == 0 && record.prev != Digest::ZERO => {
                        Some(BreakKind::HashMismatch)
                    }
                    _ => None,
                },
                Some((next, prev)) => {
                    if record.seq != next {
                        Some(BreakKind::SeqGap {
                            expected: next,
                            found: record.seq,
                        })
                    } else if record.prev != prev {
                        Some(BreakKind::HashMismatch)
                    } else {
                        None
                    }
                }
            };
            if let Some(kind) = fault {
                // A torn line that the next record does not continue after is
                // the first break.
                report.broken = Some(match pending_torn.take() {
                    Some(t) => torn_break(t),
                    None => at(seq, kind),
                });
                return Ok(report);
            }
            report.torn_lines.extend(pending_torn.take());
            let hash = Digest::of(bytes);
            if let Some(head) = options.head {
                if head.seq == record.seq && head.hash != hash {
                    report.broken = Some(at(seq, BreakKind::HeadMismatch));
                    return Ok(report);
                }
            }
            report.first_seq.get_or_insert(record.seq);
            report.last_seq = seq;
            report.records += 1;
            expected = Some((record.seq.wrapping_add(1), hash));
        }
        end = (path.clone(), line_number + 1);
    }
    report.torn_tail = pending_torn;
    if let Some(head) = options.head {
        let covered = match (report.first_seq, report.last_seq) {
            // Deleted by retention: nothing to check against.
            (Some(first), _) if head.seq < first => true,
            (_, Some(last)) => head.seq <= last,
            _ => false,
        };
        if !covered {
            report.broken = Some(ChainBreak {
                file: end.0,
                line_number: end.1,
                seq: Some(head.seq),
                kind: BreakKind::HeadMissing { head_seq: head.seq },
            });
        }
    }
    Ok(report)
}
