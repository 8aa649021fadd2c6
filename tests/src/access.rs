//! What another local user can do to a guest's files on the host: the
//! `access_probe` binary run as `nobody` (through `setpriv`), and as root
//! for the control, against a path or an object opened by the test.
//!
//! An object passed [`Target::Opened`] is the probe's standard input and is
//! reached as `/proc/self/fd/0`: the kernel checks that object's own mode
//! (re-opening a file, looking up in a directory, connecting to a socket)
//! but not its parents', so each layer (state root, directory, file,
//! socket) is shown to refuse on its own.

use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

/// Who runs an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    /// This process's user (root on the test machines): the control.
    Root,
    /// `nobody` (uid and gid 65534) without supplementary groups.
    Nobody,
}

/// What an attempt is made on.
#[derive(Debug)]
pub enum Target<'a> {
    /// A path, resolved by the probe as its user.
    Path(&'a Path),
    /// An object the test opened (as root), reached as `/proc/self/fd/0`.
    Opened(std::fs::File),
}

/// Opens `path` for [`Target::Opened`]: directories and regular files for
/// reading, anything else (a socket) with `O_PATH`.
///
/// # Errors
/// When it cannot be opened.
pub fn open(path: &Path) -> anyhow::Result<Target<'static>> {
    let meta = std::fs::symlink_metadata(path).with_context(|| format!("{}", path.display()))?;
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    if !(meta.is_dir() || meta.is_file()) {
        options.custom_flags(libc::O_PATH);
    }
    let file = options
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    Ok(Target::Opened(file))
}

/// The `access_probe` binary, copied where any user may run it (the
/// build's own directory may be closed to `nobody`); removed on drop.
#[derive(Debug)]
pub struct Probe {
    dir: tempfile::TempDir,
}

impl Probe {
    /// Copies `built`, the probe cargo built for this test run (a test
    /// passes `env!("CARGO_BIN_EXE_access_probe")`).
    ///
    /// # Errors
    /// When it cannot be copied, or `nobody` cannot run it.
    pub fn new(built: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("paddock-probe-")
            .tempdir_in("/var/tmp")?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let copy = dir.path().join("access_probe");
        std::fs::copy(built, &copy)?;
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))?;
        let probe = Self { dir };
        // The probe itself must work as nobody, or every refusal below
        // would prove nothing.
        let public = probe.dir.path().to_path_buf();
        let listed = probe.attempt(Who::Nobody, "list", Target::Path(&public))?;
        if listed != "ok" {
            bail!("nobody cannot run the probe: {listed}");
        }
        Ok(probe)
    }

    fn binary(&self) -> PathBuf {
        self.dir.path().join("access_probe")
    }

    /// Runs `op` (`list`, `write`, `read`, `connect`) on `target` as
    /// `who`; returns what the probe printed: `ok` or an errno name.
    ///
    /// # Errors
    /// When the probe could not be run or gave no answer.
    pub fn attempt(&self, who: Who, op: &str, target: Target<'_>) -> anyhow::Result<String> {
        let mut command = match who {
            Who::Root => Command::new(self.binary()),
            Who::Nobody => {
                let mut command = Command::new("setpriv");
                command
                    .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                    .arg(self.binary());
                command
            }
        };
        command.arg(op);
        match target {
            Target::Path(path) => {
                command.arg(path).stdin(Stdio::null());
            }
            Target::Opened(file) => {
                command.arg("/proc/self/fd/0").stdin(Stdio::from(file));
            }
        }
        let output = command.output().context("running the probe")?;
        let answer = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        match output.status.code() {
            Some(0 | 1) if !answer.is_empty() => Ok(answer),
            _ => bail!(
                "the probe failed ({}): {answer} {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ),
        }
    }

    /// Checks that `nobody` is refused `op` on `path` with `EACCES`, both
    /// by the path and by the object itself, and that root is not.
    ///
    /// # Errors
    /// When nobody is not refused with `EACCES`, or root is refused.
    pub fn refused_to_others(&self, op: &str, path: &Path) -> anyhow::Result<()> {
        for (how, nobody) in [
            (
                "by its path",
                self.attempt(Who::Nobody, op, Target::Path(path))?,
            ),
            ("opened", self.attempt(Who::Nobody, op, open(path)?)?),
        ] {
            if nobody != "EACCES" {
                bail!(
                    "nobody's {op} of {} ({how}) gave {nobody}, not EACCES",
                    path.display()
                );
            }
        }
        let root = self.attempt(Who::Root, op, open(path)?)?;
        if root != "ok" {
            bail!(
                "root's {op} of {} gave {root}: the control failed",
                path.display()
            );
        }
        Ok(())
    }
}

/// Mode bits (`0o7777`), owner and group of `path` (not following a link).
///
/// # Errors
/// When it does not exist.
pub fn mode_owner_group(path: &Path) -> anyhow::Result<(u32, u32, u32)> {
    let meta = std::fs::symlink_metadata(path).with_context(|| format!("{}", path.display()))?;
    Ok((meta.permissions().mode() & 0o7777, meta.uid(), meta.gid()))
}

/// Every path under `dir` (itself included) that lets others in at all, or
/// whose directory lets its group write: what a guest's files must never
/// be.
#[must_use]
pub fn too_open(dir: &Path) -> Vec<(PathBuf, u32)> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o007 != 0 || (meta.is_dir() && mode & 0o020 != 0) {
            found.push((path.clone(), mode));
        }
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                pending.extend(entries.flatten().map(|entry| entry.path()));
            }
        }
    }
    found
}
