//! The policy file: TOML, schema 1. Unknown keys are errors; every error
//! names the key, and a syntax error its line.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::glob::Patterns;
use crate::path::normalize;
use crate::policy::{ExecRules, FsRules, Policy, TransferRules};
use crate::signal::signal_number;

/// The schema version this build reads (the file's `schema` key).
pub const SCHEMA_VERSION: u32 = 1;

/// The longest policy name.
const MAX_NAME: usize = 64;

/// Why a policy was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("Could not read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the read said.
        #[source]
        source: std::io::Error,
    },
    /// A policy file was refused.
    #[error("Policy {} refused", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<PolicyError>,
    },
    /// Not valid TOML, or a key unknown, missing or of the wrong type; the
    /// message names the line, column and key.
    #[error("{message}")]
    Parse {
        /// toml's message.
        message: String,
    },
    /// A schema version this build does not read.
    #[error("Schema {found} is not supported (this build reads schema {SCHEMA_VERSION})")]
    Schema {
        /// The file's `schema`.
        found: i64,
    },
    /// A value is out of range or malformed.
    #[error("{key}: {problem}")]
    Invalid {
        /// The key, with an index for a list item (`exec.programs[2]`).
        key: String,
        /// What is wrong with it.
        problem: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[allow(dead_code, reason = "read before the strict parse")]
    schema: i64,
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    status: bool,
    #[serde(default)]
    signals: Vec<SignalSpec>,
    exec: Option<ExecTable>,
    put: Option<TransferTable>,
    get: Option<TransferTable>,
    fs: Option<FsTable>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SignalSpec {
    Number(i64),
    Name(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecTable {
    #[serde(default)]
    programs: Vec<String>,
    #[serde(default)]
    shell: bool,
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    cwd: Vec<String>,
    #[serde(default)]
    stdin: bool,
    #[serde(default)]
    tty: bool,
    max_timeout_ms: Option<u64>,
    max_output_bytes: Option<u64>,
    max_concurrent: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferTable {
    paths: Vec<String>,
    max_bytes: Option<u64>,
    #[serde(default)]
    trees: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FsTable {
    #[serde(default)]
    read_paths: Vec<String>,
    #[serde(default)]
    write_paths: Vec<String>,
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> PolicyError {
    PolicyError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

impl Policy {
    /// Reads and checks the policy file at `path`.
    ///
    /// # Errors
    /// [`PolicyError::Read`], or [`PolicyError::File`] with why it was
    /// refused.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, PolicyError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|source| PolicyError::File {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// Checks the policy written in `text`.
    ///
    /// # Errors
    /// [`PolicyError::Parse`], [`PolicyError::Schema`] or
    /// [`PolicyError::Invalid`].
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        let parse = |err: toml::de::Error| PolicyError::Parse {
            message: err.to_string().trim_end().to_owned(),
        };
        // The version first: a file of another schema may have keys this
        // one does not know, and should be refused for its version.
        let table: toml::Table = toml::from_str(text).map_err(parse)?;
        match table.get("schema") {
            None => return Err(invalid("schema", "missing (this build reads 1)")),
            Some(toml::Value::Integer(found)) if *found != i64::from(SCHEMA_VERSION) => {
                return Err(PolicyError::Schema { found: *found });
            }
            Some(toml::Value::Integer(_)) => {}
            Some(_) => return Err(invalid("schema", "not an integer")),
        }
        let file: PolicyFile = toml::from_str(text).map_err(parse)?;
        check_name(&file.name)?;
        let mut signals = 0u128;
        for (index, spec) in file.signals.iter().enumerate() {
            let number = match spec {
                SignalSpec::Number(number) => i32::try_from(*number)
                    .ok()
                    .and_then(|n| signal_number(&n.to_string())),
                SignalSpec::Name(name) => signal_number(name),
            };
            let number = number.ok_or_else(|| {
                invalid(format!("signals[{index}]"), "not a signal name or number")
            })?;
            signals |= 1u128 << number;
        }
        let exec = file.exec.map(exec_rules).transpose()?;
        let put = file
            .put
            .map(|table| transfer_rules("put", table))
            .transpose()?;
        let get = file
            .get
            .map(|table| transfer_rules("get", table))
            .transpose()?;
        let fs = file.fs.map(fs_rules).transpose()?;
        Ok(Self {
            name: file.name.into(),
            description: file.description,
            exec,
            put,
            get,
            fs,
            status: file.status,
            signals,
        })
    }
}

fn check_name(name: &str) -> Result<(), PolicyError> {
    let good_start = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let good_rest = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !good_start || !good_rest || name.len() > MAX_NAME {
        return Err(invalid(
            "name",
            format!(
                "{name:?} is not 1 to {MAX_NAME} of a-z, 0-9, '-' and '_', starting with a letter or digit"
            ),
        ));
    }
    Ok(())
}

fn prefixes(key: &str, list: &[String]) -> Result<Vec<String>, PolicyError> {
    list.iter()
        .enumerate()
        .map(|(index, path)| {
            normalize(path)
                .map_err(|err| invalid(format!("{key}[{index}]"), format!("{path:?} {err}")))
        })
        .collect()
}

fn positive(key: &str, value: Option<u64>) -> Result<Option<u64>, PolicyError> {
    match value {
        Some(0) => Err(invalid(key, "must be at least 1")),
        other => Ok(other),
    }
}

fn exec_rules(table: ExecTable) -> Result<ExecRules, PolicyError> {
    let (paths, names): (Vec<String>, Vec<String>) = table
        .programs
        .iter()
        .cloned()
        .partition(|p| p.contains('/'));
    for (index, program) in table.programs.iter().enumerate() {
        if program.contains('/') && !program.starts_with('/') {
            return Err(invalid(
                format!("exec.programs[{index}]"),
                format!("{program:?}: a pattern with a '/' must be an absolute path"),
            ));
        }
    }
    // Report a bad pattern by its index in the list as written.
    let compile = |list: &[String]| {
        Patterns::new(list).map_err(|(index, err)| {
            let pattern = &list[index];
            let at = table
                .programs
                .iter()
                .position(|p| p == pattern)
                .unwrap_or(index);
            invalid(
                format!("exec.programs[{at}]"),
                format!("{pattern:?}: {err}"),
            )
        })
    };
    let program_paths = compile(&paths)?;
    let program_names = compile(&names)?;
    let env = Patterns::new(&table.env).map_err(|(index, err)| {
        invalid(
            format!("exec.env[{index}]"),
            format!("{:?}: {err}", table.env[index]),
        )
    })?;
    let max_concurrent = match table.max_concurrent {
        Some(0) => return Err(invalid("exec.max_concurrent", "must be at least 1")),
        other => other.and_then(|n| usize::try_from(n).ok()),
    };
    Ok(ExecRules {
        program_paths,
        program_names,
        shell: table.shell,
        env,
        cwd: prefixes("exec.cwd", &table.cwd)?,
        stdin: table.stdin,
        tty: table.tty,
        max_timeout_ms: positive("exec.max_timeout_ms", table.max_timeout_ms)?,
        max_output_bytes: table.max_output_bytes,
        max_concurrent,
    })
}

fn transfer_rules(key: &str, table: TransferTable) -> Result<TransferRules, PolicyError> {
    if table.paths.is_empty() {
        return Err(invalid(
            format!("{key}.paths"),
            format!("is empty; leave [{key}] out to allow none"),
        ));
    }
    Ok(TransferRules {
        paths: prefixes(&format!("{key}.paths"), &table.paths)?,
        max_bytes: table.max_bytes,
        trees: table.trees,
    })
}

fn fs_rules(table: FsTable) -> Result<FsRules, PolicyError> {
    if table.read_paths.is_empty() && table.write_paths.is_empty() {
        return Err(invalid(
            "fs",
            "has neither read_paths nor write_paths; leave [fs] out to allow none",
        ));
    }
    Ok(FsRules {
        read_paths: prefixes("fs.read_paths", &table.read_paths)?,
        write_paths: prefixes("fs.write_paths", &table.write_paths)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> String {
        match Policy::from_toml(text) {
            Ok(policy) => panic!("accepted: {policy:?}"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn the_smallest_policy_is_a_schema_and_a_name() -> Result<(), PolicyError> {
        let policy = Policy::from_toml("schema = 1\nname = \"nothing\"\n")?;
        assert_eq!(policy.name(), "nothing");
        assert!(policy.exec().is_none());
        assert!(!policy.status());
        assert!(policy.signals().is_empty());
        Ok(())
    }

    #[test]
    fn status_and_signals_read_back_as_written() -> Result<(), PolicyError> {
        let policy = Policy::from_toml(
            "schema = 1\nname = \"s\"\nstatus = true\nsignals = [\"TERM\", 2, \"SIGKILL\", 64]\n",
        )?;
        assert!(policy.status());
        assert_eq!(policy.signals(), vec![2, 9, 15, 64]);
        Ok(())
    }

    #[test]
    fn bad_files_are_refused_naming_the_key() {
        let cases = [
            ("name = \"a\"\n", "schema: missing"),
            (
                "schema = 2\nname = \"a\"\nfuture = 1\n",
                "Schema 2 is not supported",
            ),
            ("schema = \"1\"\nname = \"a\"\n", "schema: not an integer"),
            ("schema = 1\nname = \"A b\"\n", "name: \"A b\" is not"),
            (
                "schema = 1\nname = \"a\"\nstatuz = true\n",
                "unknown field `statuz`",
            ),
            (
                "schema = 1\nname = \"a\"\n[exec]\nprogram = []\n",
                "unknown field `program`",
            ),
            (
                "schema = 1\nname = \"a\"\n[exec]\nprograms = [\"/bin/*\", \"/usr/[\"]\n",
                "exec.programs[1]: \"/usr/[\"",
            ),
            (
                "schema = 1\nname = \"a\"\n[exec]\nprograms = [\"bin/ls\"]\n",
                "exec.programs[0]: \"bin/ls\": a pattern with a '/' must be an absolute path",
            ),
            (
                "schema = 1\nname = \"a\"\n[exec]\ncwd = [\"/work/../etc\"]\n",
                "exec.cwd[0]: \"/work/../etc\" has a `..` component",
            ),
            (
                "schema = 1\nname = \"a\"\n[exec]\nmax_concurrent = 0\n",
                "exec.max_concurrent: must be at least 1",
            ),
            (
                "schema = 1\nname = \"a\"\n[exec]\nmax_timeout_ms = 0\n",
                "exec.max_timeout_ms: must be at least 1",
            ),
            (
                "schema = 1\nname = \"a\"\n[put]\npaths = []\n",
                "put.paths: is empty",
            ),
            (
                "schema = 1\nname = \"a\"\n[get]\npaths = [\"tmp\"]\n",
                "get.paths[0]: \"tmp\" is not absolute",
            ),
            (
                "schema = 1\nname = \"a\"\nsignals = [\"TERM\", \"NOPE\"]\n",
                "signals[1]: not a signal",
            ),
            (
                "schema = 1\nname = \"a\"\nsignals = [99]\n",
                "signals[0]: not a signal",
            ),
            ("schema = 1\nname = \"a\"\n[put]\n", "missing field `paths`"),
            ("schema = 1\nname = \"a\"\n[fs]\n", "fs: has neither"),
            (
                "schema = 1\nname = \"a\"\n[fs]\nwrite_paths = [\"/w\", \"w\"]\n",
                "fs.write_paths[1]: \"w\" is not absolute",
            ),
            (
                "schema = 1\nname = \"a\"\n[fs]\nread_path = [\"/\"]\n",
                "unknown field `read_path`",
            ),
        ];
        for (text, expected) in cases {
            let message = refused(text);
            assert!(
                message.contains(expected),
                "{text:?}: {message:?} should contain {expected:?}"
            );
        }
    }

    #[test]
    fn a_syntax_error_names_its_line() {
        let message = refused("schema = 1\nname = \"a\"\n[exec\n");
        assert!(message.contains("line 3"), "{message}");
    }

    #[test]
    fn a_file_error_names_the_file() {
        let dir = std::env::temp_dir().join(format!("paddock-policy-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("bad.toml");
        std::fs::write(&path, "schema = 1\n").expect("write");
        let err = Policy::load(&path).expect_err("no name");
        assert!(err.to_string().contains("bad.toml"), "{err}");
        assert!(
            std::error::Error::source(&err)
                .is_some_and(|source| source.to_string().contains("missing field `name`")),
            "{err:?}"
        );
        let missing = Policy::load(dir.join("absent.toml")).expect_err("absent");
        assert!(matches!(missing, PolicyError::Read { .. }));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
