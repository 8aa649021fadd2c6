//! Running commands with their exit status checked and echoed.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

/// The workspace root (the parent of `crates/xtask`).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .nth(2)
        .unwrap_or(manifest)
        .to_path_buf()
}

/// Whether `name` is on `PATH` (or is a cargo subcommand binary).
pub fn have_command(name: &str) -> bool {
    let in_path = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()));
    in_path || home_cargo_bin().is_some_and(|dir| dir.join(name).is_file())
}

fn home_cargo_bin() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .map(|dir| dir.join("bin"))
}

/// A command that is echoed before it runs and fails loudly.
#[derive(Debug)]
pub struct Cmd {
    command: Command,
}

impl Cmd {
    /// `program`, run in the current directory.
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Self {
            command: Command::new(program),
        }
    }

    /// `cargo <args>`, run from the workspace root.
    pub fn cargo<I, S>(args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        Self::new(cargo).args(args).dir(&workspace_root())
    }

    /// Adds one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.command.arg(arg);
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command.args(args);
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Self {
        self.command.env(key, value);
        self
    }

    /// Runs in `dir`.
    pub fn dir(mut self, dir: &Path) -> Self {
        self.command.current_dir(dir);
        self
    }

    /// Runs the command; fails unless it exits 0.
    pub fn run(mut self) -> anyhow::Result<()> {
        let shown = format!("{:?}", self.command).replace('"', "");
        eprintln!("xtask: $ {shown}");
        let status = self
            .command
            .status()
            .with_context(|| format!("could not run {shown}"))?;
        if !status.success() {
            bail!("{shown} failed with {status}");
        }
        Ok(())
    }
}
