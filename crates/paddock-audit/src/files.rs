//! File naming and the backward read of a file's last complete line.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

const PREFIX: &str = "audit-";
const SUFFIX: &str = ".jsonl";

/// The name of the file whose first record has `first_seq`:
/// `audit-<20 zero-padded digits>.jsonl`.
pub fn file_name(first_seq: u64) -> String {
    format!("{PREFIX}{first_seq:020}{SUFFIX}")
}

/// The first seq a log file's name announces, or `None` for other names.
pub fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The log files of `dir`, oldest first (by the seq in their names). Other
/// files are ignored.
pub fn list(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Some(seq) = entry.file_name().to_str().and_then(parse_file_name) else {
            continue;
        };
        if entry.file_type()?.is_file() {
            files.push((seq, entry.path()));
        }
    }
    files.sort();
    Ok(files)
}

/// The end of a file as the writer needs it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tail {
    /// The last `\n`-terminated line, without its `\n`.
    pub last_line: Option<Vec<u8>>,
    /// Bytes after the last `\n` (a torn line), 0 if none.
    pub torn_bytes: u64,
    /// The file's length.
    pub len: u64,
}

/// Reads backwards in growing chunks, so that a 64 MiB file costs a few KiB
/// of reading unless its last line is long.
pub fn read_tail(path: &Path) -> io::Result<Tail> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(Tail::default());
    }
    let mut chunk = 8 * 1024u64;
    loop {
        let start = len.saturating_sub(chunk);
        file.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::new();
        file.by_ref().take(len - start).read_to_end(&mut buf)?;
        // Bytes after the last newline are a torn line.
        let (body, torn) = match buf.iter().rposition(|&b| b == b'\n') {
            Some(i) => (&buf[..i], buf.len() - i - 1),
            None if start == 0 => {
                return Ok(Tail {
                    last_line: None,
                    torn_bytes: len,
                    len,
                });
            }
            None => {
                chunk = chunk.saturating_mul(4);
                continue;
            }
        };
        match body.iter().rposition(|&b| b == b'\n') {
            Some(j) => {
                return Ok(Tail {
                    last_line: Some(body[j + 1..].to_vec()),
                    torn_bytes: torn as u64,
                    len,
                });
            }
            // The whole file is one line (plus a torn one).
            None if start == 0 => {
                return Ok(Tail {
                    last_line: Some(body.to_vec()),
                    torn_bytes: torn as u64,
                    len,
                });
            }
            None => chunk = chunk.saturating_mul(4),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(file_name(42), "audit-00000000000000000042.jsonl");
        assert_eq!(parse_file_name(&file_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_file_name("audit-42.jsonl"), None);
        assert_eq!(parse_file_name("audit-0000000000000000004x.jsonl"), None);
        assert_eq!(
            parse_file_name("audit-00000000000000000042.jsonl.torn"),
            None
        );
    }

    #[test]
    fn tail_finds_last_complete_line() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("f");
        // (content, last complete line, torn bytes)
        type Case = (&'static [u8], Option<&'static [u8]>, u64);
        let cases: [Case; 6] = [
            (b"", None, 0),
            (b"abc", None, 3),
            (b"abc\n", Some(b"abc"), 0),
            (b"abc\ndef\n", Some(b"def"), 0),
            (b"abc\ndef\ngh", Some(b"def"), 2),
            (b"\n", Some(b""), 0),
        ];
        for (content, last, torn) in cases {
            std::fs::write(&path, content)?;
            let tail = read_tail(&path)?;
            assert_eq!(tail.last_line.as_deref(), last, "{content:?}");
            assert_eq!(tail.torn_bytes, torn, "{content:?}");
        }
        // Lines longer than the first chunk.
        let long = vec![b'x'; 100_000];
        let mut content = b"first\n".to_vec();
        content.extend_from_slice(&long);
        content.extend_from_slice(b"\n");
        content.extend_from_slice(&long);
        std::fs::write(&path, &content)?;
        let tail = read_tail(&path)?;
        assert_eq!(tail.last_line.as_deref(), Some(&long[..]));
        assert_eq!(tail.torn_bytes, 100_000);
        Ok(())
    }
}
