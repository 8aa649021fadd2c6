//! What a denial names: the rule that refused a request.

use std::sync::Arc;

/// A rule of a policy. Its name ([`Rule::as_str`]) is bounded, fit for a
/// metrics label and an audit record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    /// The policy has no `[exec]` table: no execution is allowed.
    Exec,
    /// The program is not in `exec.programs`.
    ExecProgram,
    /// A shell command line, or a program that runs another one from its
    /// arguments, without `exec.shell = true`.
    ExecShell,
    /// An environment variable whose name is not in `exec.env`.
    ExecEnv,
    /// A working directory outside `exec.cwd`.
    ExecCwd,
    /// A timeout above `exec.max_timeout_ms`.
    ExecTimeout,
    /// An output cap above `exec.max_output_bytes`.
    ExecOutputCap,
    /// Stdin without `exec.stdin = true`.
    ExecStdin,
    /// More executions at once than `exec.max_concurrent`.
    ExecConcurrency,
    /// A terminal (`tty`) without `exec.tty = true`.
    ExecTty,
    /// The policy has no `[put]` table: no upload is allowed.
    Put,
    /// An upload to a path outside `put.paths`.
    PutPath,
    /// An upload larger than `put.max_bytes`.
    PutSize,
    /// The policy has no `[get]` table: no download is allowed.
    Get,
    /// A download of a path outside `get.paths`.
    GetPath,
    /// A download larger than `get.max_bytes`.
    GetSize,
    /// A status request without `status = true`.
    Status,
    /// A directory upload without `put.trees = true`.
    PutTree,
    /// A directory download without `get.trees = true`.
    GetTree,
    /// A signal not in `signals`.
    Signal,
    /// Stopping the agent: never allowed under a policy.
    StopAgent,
    /// The policy has no `[fs]` table: no file system operation is allowed.
    Fs,
    /// A file system operation that reads a path outside `fs.read_paths`
    /// and `fs.write_paths`.
    FsReadPath,
    /// A file system operation that changes a path outside
    /// `fs.write_paths`.
    FsWritePath,
}

impl Rule {
    /// Every rule, for tables and label sets.
    pub const ALL: [Self; 24] = [
        Self::Exec,
        Self::ExecProgram,
        Self::ExecShell,
        Self::ExecEnv,
        Self::ExecCwd,
        Self::ExecTimeout,
        Self::ExecOutputCap,
        Self::ExecStdin,
        Self::ExecConcurrency,
        Self::Put,
        Self::PutPath,
        Self::PutSize,
        Self::Get,
        Self::GetPath,
        Self::GetSize,
        Self::Status,
        Self::Signal,
        Self::StopAgent,
        Self::PutTree,
        Self::GetTree,
        Self::ExecTty,
        Self::Fs,
        Self::FsReadPath,
        Self::FsWritePath,
    ];

    /// The rule's name: the policy file's key it enforces (`exec.program`,
    /// `put.size`...).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Exec => "exec",
            Self::ExecProgram => "exec.program",
            Self::ExecShell => "exec.shell",
            Self::ExecEnv => "exec.env",
            Self::ExecCwd => "exec.cwd",
            Self::ExecTimeout => "exec.timeout",
            Self::ExecOutputCap => "exec.output_cap",
            Self::ExecStdin => "exec.stdin",
            Self::ExecConcurrency => "exec.concurrency",
            Self::Put => "put",
            Self::PutPath => "put.path",
            Self::PutSize => "put.size",
            Self::Get => "get",
            Self::GetPath => "get.path",
            Self::GetSize => "get.size",
            Self::Status => "status",
            Self::Signal => "signal",
            Self::StopAgent => "stop_agent",
            Self::Fs => "fs",
            Self::FsReadPath => "fs.read_path",
            Self::FsWritePath => "fs.write_path",
            Self::PutTree => "put.trees",
            Self::GetTree => "get.trees",
            Self::ExecTty => "exec.tty",
        }
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request a policy refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Denied by rule {rule} of policy {policy}: {detail}")]
pub struct Denial {
    /// The policy's name.
    pub policy: Arc<str>,
    /// The rule that refused it.
    pub rule: Rule,
    /// What in the request broke the rule (`program /bin/rm`), for people:
    /// not bounded, never a metrics label.
    pub detail: String,
}
