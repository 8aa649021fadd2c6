//! Running commands with their exit status checked and echoed.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

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

/// How long coreutils' `timeout` waits after its SIGTERM before it sends
/// SIGKILL.
const KILL_AFTER: &str = "10s";

/// `timeout`'s exit status when the limit expired (SIGTERM sufficed).
const TIMED_OUT: i32 = 124;

/// `timeout`'s exit status when the command had to be killed (128 + SIGKILL).
const KILLED: i32 = 137;

/// A command that is echoed before it runs and fails loudly.
#[derive(Debug)]
pub struct Cmd {
    command: Command,
    /// Run under coreutils' `timeout` with this limit.
    limit: Option<Duration>,
}

impl Cmd {
    /// `program`, run in the current directory.
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Self {
            command: Command::new(program),
            limit: None,
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

    /// Ends the command (its whole process group: SIGTERM, then SIGKILL)
    /// when it runs longer than `limit`; the run then fails with "timed out".
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Runs the command; fails unless it exits 0.
    pub fn run(self) -> anyhow::Result<()> {
        let (mut command, shown) = self.prepare();
        eprintln!("xtask: $ {shown}");
        let status = command
            .status()
            .with_context(|| format!("could not run {shown}"))?;
        check_status(status, self.limit, &shown)
    }

    /// Runs the command without echoing it and returns its standard output
    /// (its standard error passes through); fails unless it exits 0. For
    /// queries, whose output is the point.
    pub fn read(self) -> anyhow::Result<String> {
        let shown = format!("{:?}", self.command).replace('"', "");
        String::from_utf8(self.read_bytes()?)
            .with_context(|| format!("{shown} printed non-UTF-8 output"))
    }

    /// [`Cmd::read`] for binary output.
    pub fn read_bytes(self) -> anyhow::Result<Vec<u8>> {
        let (mut command, shown) = self.prepare();
        let output = command
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("could not run {shown}"))?;
        check_status(output.status, self.limit, &shown)?;
        Ok(output.stdout)
    }

    /// The command to spawn (wrapped in `timeout` when limited) and how to
    /// show it.
    fn prepare(&self) -> (Command, String) {
        let shown = format!("{:?}", self.command).replace('"', "");
        let Some(limit) = self.limit else {
            return (
                rebuild(&self.command, Command::new(self.command.get_program())),
                shown,
            );
        };
        let mut wrapped = Command::new("timeout");
        wrapped
            // `timeout` runs the command in a process group of its own, which
            // would stop on reading the terminal: a prompt gets EOF instead.
            .stdin(Stdio::null())
            .arg(format!("--kill-after={KILL_AFTER}"))
            .arg(format!("{}s", limit.as_secs().max(1)))
            .arg(self.command.get_program());
        (rebuild(&self.command, wrapped), shown)
    }
}

/// `into` with the arguments, environment and directory of `from` added.
fn rebuild(from: &Command, mut into: Command) -> Command {
    into.args(from.get_args());
    for (key, value) in from.get_envs() {
        match value {
            Some(value) => into.env(key, value),
            None => into.env_remove(key),
        };
    }
    if let Some(dir) = from.get_current_dir() {
        into.current_dir(dir);
    }
    into
}

/// Fails unless `status` is a success, naming a timeout as such.
fn check_status(
    status: std::process::ExitStatus,
    limit: Option<Duration>,
    shown: &str,
) -> anyhow::Result<()> {
    match (status.code(), limit) {
        _ if status.success() => Ok(()),
        (Some(TIMED_OUT | KILLED), Some(limit)) => bail!("{shown} timed out after {limit:?}"),
        _ => bail!("{shown} failed with {status}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_past_its_limit_fails_as_timed_out() {
        let err = Cmd::new("sleep")
            .arg("30")
            .timeout(Duration::from_secs(1))
            .run()
            .err()
            .map(|err| err.to_string())
            .unwrap_or_default();
        assert!(err.contains("timed out after 1s"), "{err}");
    }

    #[test]
    fn read_returns_stdout_and_keeps_the_environment() -> anyhow::Result<()> {
        let out = Cmd::new("sh")
            .args(["-c", "echo \"$XTASK_TEST_VALUE\""])
            .env("XTASK_TEST_VALUE", "hello")
            .timeout(Duration::from_secs(10))
            .read()?;
        assert_eq!(out, "hello\n");
        let failed = Cmd::new("false").read();
        assert!(failed.is_err());
        Ok(())
    }
}
