//! A checked policy and its decisions.

use std::sync::Arc;

use paddock_proto::Command;

use crate::glob::Patterns;
use crate::path::{is_under, normalize};
use crate::request::{FsAccess, Request, Size};
use crate::rule::{Denial, Rule};
use crate::signal::signal_name;

/// Programs that run a command line or another program named in their
/// arguments: allowing one by name would allow everything. They need
/// `exec.shell = true`, like a shell command line, whatever
/// `exec.programs` says.
pub(crate) const INDIRECT_PROGRAMS: [&str; 20] = [
    "sh", "bash", "dash", "ash", "zsh", "ksh", "mksh", "csh", "tcsh", "fish", "busybox", "env",
    "xargs", "nohup", "nice", "setsid", "timeout", "chroot", "su", "sudo",
];

/// What executions a policy allows (its `[exec]` table).
#[derive(Debug, Clone)]
pub struct ExecRules {
    pub(crate) program_paths: Patterns,
    pub(crate) program_names: Patterns,
    pub(crate) shell: bool,
    pub(crate) env: Patterns,
    pub(crate) cwd: Vec<String>,
    pub(crate) stdin: bool,
    pub(crate) tty: bool,
    pub(crate) max_timeout_ms: Option<u64>,
    pub(crate) max_output_bytes: Option<u64>,
    pub(crate) max_concurrent: Option<usize>,
}

impl ExecRules {
    /// The largest timeout an execution may ask for, in milliseconds.
    #[must_use]
    pub fn max_timeout_ms(&self) -> Option<u64> {
        self.max_timeout_ms
    }

    /// The largest stdout or stderr cap, in bytes.
    #[must_use]
    pub fn max_output_bytes(&self) -> Option<u64> {
        self.max_output_bytes
    }

    /// How many executions may run at once.
    #[must_use]
    pub fn max_concurrent(&self) -> Option<usize> {
        self.max_concurrent
    }

    /// Whether shell command lines may run.
    #[must_use]
    pub fn shell(&self) -> bool {
        self.shell
    }

    /// Whether an execution may run on a terminal (`exec.tty`).
    #[must_use]
    pub fn tty(&self) -> bool {
        self.tty
    }
}

/// What uploads or downloads a policy allows (its `[put]` or `[get]`
/// table).
#[derive(Debug, Clone)]
pub struct TransferRules {
    pub(crate) paths: Vec<String>,
    pub(crate) max_bytes: Option<u64>,
    pub(crate) trees: bool,
}

impl TransferRules {
    /// The guest path prefixes, normalized.
    #[must_use]
    pub fn paths(&self) -> &[String] {
        &self.paths
    }

    /// The largest transfer, in bytes (for a directory, its tar stream).
    #[must_use]
    pub fn max_bytes(&self) -> Option<u64> {
        self.max_bytes
    }

    /// Whether whole directories may move this way too (`trees = true`).
    #[must_use]
    pub fn trees(&self) -> bool {
        self.trees
    }
}

/// What file system operations a policy allows (its `[fs]` table).
#[derive(Debug, Clone)]
pub struct FsRules {
    pub(crate) read_paths: Vec<String>,
    pub(crate) write_paths: Vec<String>,
}

impl FsRules {
    /// Prefixes under which operations may read, normalized (the
    /// `write_paths` may be read too).
    #[must_use]
    pub fn read_paths(&self) -> &[String] {
        &self.read_paths
    }

    /// Prefixes under which operations may change the file system,
    /// normalized.
    #[must_use]
    pub fn write_paths(&self) -> &[String] {
        &self.write_paths
    }

    fn check(&self, access: FsAccess, op: &str, paths: &[&str]) -> Result<(), (Rule, String)> {
        let rule = match access {
            FsAccess::Read => Rule::FsReadPath,
            FsAccess::Write => Rule::FsWritePath,
        };
        for path in paths {
            let normal =
                normalize(path).map_err(|err| (rule, format!("{op} of {path:?}: path {err}")))?;
            let under = |prefixes: &[String]| prefixes.iter().any(|p| is_under(&normal, p));
            let allowed = match access {
                FsAccess::Read => under(&self.read_paths) || under(&self.write_paths),
                FsAccess::Write => under(&self.write_paths),
            };
            if !allowed {
                let listed = match access {
                    FsAccess::Read => [&self.read_paths[..], &self.write_paths[..]].concat(),
                    FsAccess::Write => self.write_paths.clone(),
                };
                return Err((rule, format!("{op} of {path:?}: outside {listed:?}")));
            }
        }
        Ok(())
    }
}

/// A request policy: what may be asked of a sandbox. Load one with
/// [`Policy::load`] or [`Policy::from_toml`]; check requests with
/// [`Policy::check`]. Cheap to clone (share it in an `Arc` anyway).
#[derive(Debug, Clone)]
pub struct Policy {
    pub(crate) name: Arc<str>,
    pub(crate) description: String,
    pub(crate) exec: Option<ExecRules>,
    pub(crate) put: Option<TransferRules>,
    pub(crate) get: Option<TransferRules>,
    pub(crate) fs: Option<FsRules>,
    pub(crate) status: bool,
    /// Bit n set: signal n may be sent.
    pub(crate) signals: u128,
}

impl Policy {
    /// A policy that allows nothing at all.
    #[must_use]
    pub fn deny_all() -> Self {
        Self {
            name: "deny-all".into(),
            description: "Allows nothing.".to_owned(),
            exec: None,
            put: None,
            get: None,
            fs: None,
            status: false,
            signals: 0,
        }
    }

    /// The policy's name (its `name` key).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the policy is for (its `description` key).
    #[must_use]
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Its `[exec]` rules; `None`: no execution is allowed.
    #[must_use]
    pub fn exec(&self) -> Option<&ExecRules> {
        self.exec.as_ref()
    }

    /// Its `[put]` rules; `None`: no upload is allowed.
    #[must_use]
    pub fn put(&self) -> Option<&TransferRules> {
        self.put.as_ref()
    }

    /// Its `[get]` rules; `None`: no download is allowed.
    #[must_use]
    pub fn get(&self) -> Option<&TransferRules> {
        self.get.as_ref()
    }

    /// Its `[fs]` rules; `None`: no file system operation is allowed.
    #[must_use]
    pub fn fs(&self) -> Option<&FsRules> {
        self.fs.as_ref()
    }

    /// Whether the agent's status report may be asked for (its `status` key).
    #[must_use]
    pub fn status(&self) -> bool {
        self.status
    }

    /// The signal numbers that may be sent to a running execution (its
    /// `signals` key), in increasing order.
    #[must_use]
    pub fn signals(&self) -> Vec<i32> {
        (1..128)
            .filter(|n| self.signals & (1u128 << n) != 0)
            .collect()
    }

    /// Whether `request` may be sent. An execution may come back with
    /// limits filled in (see [`Request::Exec`]).
    ///
    /// # Errors
    /// The [`Denial`] naming the rule that refused it.
    pub fn check(&self, request: &mut Request<'_>) -> Result<(), Denial> {
        let outcome = match request {
            Request::Exec {
                request,
                timeout_defaulted,
                running,
            } => self.check_exec(request, *timeout_defaulted, *running),
            Request::Put { path, size } => check_transfer(
                self.put.as_ref(),
                [Rule::Put, Rule::PutPath, Rule::PutSize],
                path,
                *size,
            ),
            Request::Get { path, size } => check_transfer(
                self.get.as_ref(),
                [Rule::Get, Rule::GetPath, Rule::GetSize],
                path,
                *size,
            ),
            Request::PutTree { path, size } => check_tree(
                self.put.as_ref(),
                [Rule::Put, Rule::PutPath, Rule::PutSize, Rule::PutTree],
                path,
                *size,
            ),
            Request::GetTree { path, size } => check_tree(
                self.get.as_ref(),
                [Rule::Get, Rule::GetPath, Rule::GetSize, Rule::GetTree],
                path,
                *size,
            ),
            Request::Status if self.status => Ok(()),
            Request::Status => Err((Rule::Status, "the policy allows no status request".into())),
            Request::Signal { signal } => {
                let allowed = u32::try_from(*signal)
                    .ok()
                    .filter(|&n| n < 128)
                    .is_some_and(|n| self.signals & (1u128 << n) != 0);
                if allowed {
                    Ok(())
                } else {
                    Err((Rule::Signal, format!("signal {}", signal_name(*signal))))
                }
            }
            Request::StopAgent => Err((
                Rule::StopAgent,
                "a lease under a policy may not stop the agent".into(),
            )),
            Request::Fs { op, access, paths } => match &self.fs {
                None => Err((
                    Rule::Fs,
                    format!("the policy allows no file system operation ({op})"),
                )),
                Some(rules) => rules.check(*access, op, paths),
            },
        };
        outcome.map_err(|(rule, detail)| Denial {
            policy: Arc::clone(&self.name),
            rule,
            detail,
        })
    }

    fn check_exec(
        &self,
        request: &mut paddock_proto::Execute,
        timeout_defaulted: bool,
        running: usize,
    ) -> Result<(), (Rule, String)> {
        let Some(rules) = &self.exec else {
            return Err((Rule::Exec, "the policy allows no execution".into()));
        };
        match &request.command {
            Command::Shell(_) if !rules.shell => {
                return Err((Rule::ExecShell, "a shell command line".into()));
            }
            Command::Shell(_) => {}
            Command::Argv(argv) => {
                let program = argv.first().map_or("", String::as_str);
                rules.check_program(program)?;
            }
        }
        if let Some(name) = request.env.keys().find(|name| !rules.env.is_match(name)) {
            return Err((Rule::ExecEnv, format!("environment variable {name:?}")));
        }
        match &request.cwd {
            Some(cwd) => {
                let normal = normalize(cwd)
                    .map_err(|err| (Rule::ExecCwd, format!("working directory {cwd:?} {err}")))?;
                if !rules.cwd.iter().any(|prefix| is_under(&normal, prefix)) {
                    return Err((
                        Rule::ExecCwd,
                        format!("working directory {cwd:?} is outside {:?}", rules.cwd),
                    ));
                }
            }
            // The agent's own working directory is not one the policy
            // named: start in the first one it did.
            None => request.cwd = rules.cwd.first().cloned(),
        }
        if request.stdin && !rules.stdin {
            return Err((Rule::ExecStdin, "stdin".into()));
        }
        // A terminal takes typed input whatever `stdin` says: `exec.tty`
        // allows both.
        if request.tty.is_some() && !rules.tty {
            return Err((Rule::ExecTty, "a terminal".into()));
        }
        if let Some(max) = rules.max_concurrent {
            if running >= max {
                return Err((
                    Rule::ExecConcurrency,
                    format!("{running} executions running, at most {max}"),
                ));
            }
        }
        if let Some(max) = rules.max_timeout_ms {
            match request.timeout_ms {
                Some(asked) if asked > max && !timeout_defaulted => {
                    return Err((
                        Rule::ExecTimeout,
                        format!("timeout {asked} ms, at most {max} ms"),
                    ));
                }
                Some(asked) if asked <= max => {}
                _ => request.timeout_ms = Some(max),
            }
        }
        if let Some(max) = rules.max_output_bytes {
            for (stream, cap) in [
                ("stdout", &mut request.stdout_cap),
                ("stderr", &mut request.stderr_cap),
            ] {
                match *cap {
                    Some(asked) if asked > max => {
                        return Err((
                            Rule::ExecOutputCap,
                            format!("{stream} cap {asked} bytes, at most {max}"),
                        ));
                    }
                    Some(_) => {}
                    None => *cap = Some(max),
                }
            }
        }
        Ok(())
    }
}

impl ExecRules {
    fn check_program(&self, program: &str) -> Result<(), (Rule, String)> {
        let (matched, base) = if program.contains('/') {
            let normal = normalize(program)
                .map_err(|err| (Rule::ExecProgram, format!("program {program:?} {err}")))?;
            let matched = self.program_paths.is_match(&normal);
            let base = normal.rsplit('/').next().unwrap_or_default().to_owned();
            (matched, base)
        } else {
            (self.program_names.is_match(program), program.to_owned())
        };
        if !self.shell && INDIRECT_PROGRAMS.contains(&base.as_str()) {
            return Err((
                Rule::ExecShell,
                format!("program {program:?} runs other programs"),
            ));
        }
        if !matched {
            let listed: Vec<&String> = self
                .program_paths
                .sources()
                .iter()
                .chain(self.program_names.sources())
                .collect();
            return Err((
                Rule::ExecProgram,
                format!("program {program:?} is not in {listed:?}"),
            ));
        }
        Ok(())
    }
}

/// A directory transfer: a file transfer's rules, and `trees = true`.
fn check_tree(
    rules: Option<&TransferRules>,
    [none, path_rule, size_rule, tree_rule]: [Rule; 4],
    path: &str,
    size: Size,
) -> Result<(), (Rule, String)> {
    if rules.is_some_and(|rules| !rules.trees) {
        return Err((tree_rule, format!("the policy allows no directory {none}")));
    }
    check_transfer(rules, [none, path_rule, size_rule], path, size)
}

fn check_transfer(
    rules: Option<&TransferRules>,
    [none, path_rule, size_rule]: [Rule; 3],
    path: &str,
    size: Size,
) -> Result<(), (Rule, String)> {
    let Some(rules) = rules else {
        return Err((none, format!("the policy allows no {none}")));
    };
    let normal = normalize(path).map_err(|err| (path_rule, format!("path {path:?} {err}")))?;
    if !rules.paths.iter().any(|prefix| is_under(&normal, prefix)) {
        return Err((
            path_rule,
            format!("path {path:?} is outside {:?}", rules.paths),
        ));
    }
    if let (Some(max), Size::Known(bytes) | Size::AtLeast(bytes)) = (rules.max_bytes, size) {
        if bytes > max {
            return Err((size_rule, format!("{bytes} bytes, at most {max}")));
        }
    }
    Ok(())
}
