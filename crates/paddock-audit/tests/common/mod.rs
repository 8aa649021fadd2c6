//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use paddock_audit::{
    Actor, AuditConfig, AuditEvent, AuditLog, AuditWriter, CommandRecording, ExecSummary, Request,
    Response, Stage, Target, Timestamp, Verb, outcome,
};

/// A typical exec event; `i` makes it distinct.
pub fn event(i: u64) -> AuditEvent {
    let at = Timestamp::from_unix_micros(1_700_000_000_000_000 + i * 1000);
    AuditEvent::new(
        format!("req-{i:06}"),
        Stage::Completed,
        Actor::tenant("acme"),
        Verb::EXEC,
    )
    .with_target(
        Target::pool("default")
            .with_slot(u32::try_from(i % 8).expect("small"))
            .with_lease(format!("lease-{i}")),
    )
    .with_request(Request::exec(
        &ExecSummary::argv(["python3", "-c", "print(42)"])
            .env_names(["PATH", "HOME"])
            .cwd("/work")
            .timeout(Duration::from_secs(30)),
        CommandRecording::Full,
    ))
    .with_response(
        Response::outcome(outcome::OK)
            .with_exit_code(0)
            .with_duration(Duration::from_millis(12))
            .with_bytes(3),
    )
    .with_received_at(at)
    .with_stage_at(at)
}

/// Appends events `from..to` and closes.
pub fn append_range(dir: &Path, config: AuditConfig, from: u64, to: u64) -> anyhow::Result<()> {
    let log = AuditWriter::open(dir, config)?;
    for i in from..to {
        log.append(event(i))?;
    }
    log.close()?;
    Ok(())
}

/// Opens, appends `n` events, flushes and returns the still open log.
pub fn open_with(dir: &Path, config: AuditConfig, n: u64) -> anyhow::Result<AuditLog> {
    let log = AuditWriter::open(dir, config)?;
    for i in 0..n {
        log.append(event(i))?;
    }
    log.flush()?;
    Ok(log)
}

/// The log's files with their lines (without `\n`), oldest first. A torn
/// tail is returned as a last line too; `torn` says whether there was one.
pub struct Files {
    pub files: Vec<(PathBuf, Vec<Vec<u8>>, bool)>,
}

impl Files {
    pub fn read(dir: &Path) -> anyhow::Result<Self> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(dir)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        names.retain(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(paddock_audit::parse_file_name)
                .is_some()
        });
        names.sort();
        let mut files = Vec::new();
        for path in names {
            let bytes = std::fs::read(&path)?;
            let torn = !bytes.is_empty() && bytes.last() != Some(&b'\n');
            let mut lines: Vec<Vec<u8>> =
                bytes.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
            if !torn {
                // split leaves an empty piece after the final newline.
                lines.pop();
            }
            files.push((path, lines, torn));
        }
        Ok(Self { files })
    }

    pub fn write(&self) -> anyhow::Result<()> {
        for (path, lines, torn) in &self.files {
            let mut bytes = lines.join(&b'\n');
            if !*torn && !lines.is_empty() {
                bytes.push(b'\n');
            }
            std::fs::write(path, bytes)?;
        }
        Ok(())
    }

    /// All lines, in order.
    pub fn lines(&self) -> Vec<Vec<u8>> {
        self.files.iter().flat_map(|(_, l, _)| l.clone()).collect()
    }

    /// The (file index, 0-based line index) of the `global`-th line.
    pub fn locate(&self, global: usize) -> (usize, usize) {
        let mut left = global;
        for (i, (_, lines, _)) in self.files.iter().enumerate() {
            if left < lines.len() {
                return (i, left);
            }
            left -= lines.len();
        }
        panic!("line {global} is past the end");
    }

    /// The global 0-based index of a 1-based line in a file.
    pub fn global(&self, file: &Path, line_number: u64) -> usize {
        let mut base = 0;
        for (path, lines, _) in &self.files {
            if path == file {
                return base + usize::try_from(line_number).expect("small") - 1;
            }
            base += lines.len();
        }
        panic!("{} is not in the log", file.display());
    }
}
