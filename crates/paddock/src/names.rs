//! The names of pools and sandboxes, checked before they become anything
//! else.
//!
//! A pool's name becomes part of its directory (`<state root>/<pool>/`),
//! its domains' names (`paddock-<pool>-<n>`, `paddock-<pool>-golden-<id>`),
//! their agent sockets' paths and the `pool` attribute of their XML
//! metadata; a sandbox's name is its domain's name and its directory's. So
//! both follow one rule:
//!
//! - 1 to [`POOL_NAME_MAX`] (pools) or [`SANDBOX_NAME_MAX`] (sandboxes)
//!   bytes,
//! - of `a-z`, `0-9`, `-` and `_` only,
//! - starting with `a-z` or `0-9`.
//!
//! Nothing that could climb out of a directory (`/`, `..`), quote, escape
//! XML or a shell (`"`, `'`, `<`, `&`, spaces, control characters) or look
//! like an option (`-x`) gets through. The lengths keep every derived path
//! within a Unix socket address with the default state root
//! ([`crate::DEFAULT_STATE_ROOT`]): the longest is a golden template's
//! `<root>/<pool>/paddock-<pool>-golden-<8 hex>/agent.sock`, 107 bytes for a
//! 20-byte pool name. A longer state root is checked on its own
//! ([`crate::VmError::SocketPathTooLong`]).
//!
//! [`check_pool_name`] and [`check_sandbox_name`] say which part of the rule
//! a name broke ([`NameError`]); [`crate::Paddock::create_pool`],
//! [`crate::Sandbox::boot`], [`crate::Golden::build`] and
//! [`crate::vm::recover_pool`] refuse a bad name before anything is made
//! from it, and the daemon's configuration before a pool is declared.

/// The longest pool name, in bytes.
pub const POOL_NAME_MAX: usize = 20;

/// The longest sandbox (domain) name, in bytes: with the default state
/// root, `<root>/<name>/vhost-user.sock` still fits a socket address.
pub const SANDBOX_NAME_MAX: usize = 60;

/// What a checked name names, for the error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    /// A pool.
    Pool,
    /// A sandbox (a domain and its directory).
    Sandbox,
}

impl NameKind {
    /// The longest name of this kind.
    #[must_use]
    pub fn max_len(self) -> usize {
        match self {
            Self::Pool => POOL_NAME_MAX,
            Self::Sandbox => SANDBOX_NAME_MAX,
        }
    }
}

impl std::fmt::Display for NameKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Pool => "pool",
            Self::Sandbox => "sandbox",
        })
    }
}

/// Why a pool or sandbox name was refused; each variant names the part of
/// the rule (see the [module docs](self)) it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("A {kind} name cannot be empty: it needs 1 to {} bytes", kind.max_len())]
    Empty {
        /// What it names.
        kind: NameKind,
    },
    /// The name is longer than its kind allows.
    #[error("The {kind} name is {len} bytes long: at most {} are allowed", kind.max_len())]
    TooLong {
        /// What it names.
        kind: NameKind,
        /// Its length in bytes.
        len: usize,
    },
    /// The first character is allowed, but not first (`-`, `_`).
    #[error("The {kind} name {name:?} starts with {found:?}: a name starts with a-z or 0-9")]
    BadStart {
        /// What it names.
        kind: NameKind,
        /// The name.
        name: String,
        /// Its first character.
        found: char,
    },
    /// A character outside `a-z`, `0-9`, `-` and `_`.
    #[error(
        "The {kind} name {name:?} has {found:?} at byte {at}: only a-z, 0-9, '-' and '_' are allowed"
    )]
    BadCharacter {
        /// What it names.
        kind: NameKind,
        /// The name.
        name: String,
        /// The first character that is not allowed.
        found: char,
        /// Its byte offset.
        at: usize,
    },
}

/// Checks a pool name against the rule (see the [module docs](self)).
///
/// # Errors
/// [`NameError`], naming the part of the rule the name broke.
pub fn check_pool_name(name: &str) -> Result<(), NameError> {
    check_name(NameKind::Pool, name)
}

/// Checks a sandbox (domain) name against the rule (see the
/// [module docs](self)).
///
/// # Errors
/// [`NameError`], naming the part of the rule the name broke.
pub fn check_sandbox_name(name: &str) -> Result<(), NameError> {
    check_name(NameKind::Sandbox, name)
}

fn check_name(kind: NameKind, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if name.len() > kind.max_len() {
        return Err(NameError::TooLong {
            kind,
            len: name.len(),
        });
    }
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_';
    if let Some((at, found)) = name.char_indices().find(|&(_, c)| !allowed(c)) {
        return Err(NameError::BadCharacter {
            kind,
            name: name.to_owned(),
            found,
            at,
        });
    }
    match name.chars().next() {
        Some(found @ ('-' | '_')) => Err(NameError::BadStart {
            kind,
            name: name.to_owned(),
            found,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_names_pass() {
        for name in [
            "a",
            "0",
            "py",
            "ci-runners",
            "web_3",
            "9lives",
            "a-_-b",
            "abcdefghijklmnopqrst",
        ] {
            assert_eq!(check_pool_name(name), Ok(()), "{name}");
            assert_eq!(check_sandbox_name(name), Ok(()), "{name}");
        }
        assert_eq!(check_sandbox_name(&"s".repeat(SANDBOX_NAME_MAX)), Ok(()));
        assert_eq!(check_sandbox_name("paddock-test-123450001"), Ok(()));
    }

    /// Each bad name, and the rule it must be refused by.
    #[test]
    fn bad_names_are_refused_naming_the_rule() {
        #[derive(Debug)]
        enum Rule {
            Empty,
            TooLong,
            Start(char),
            Char(char, usize),
        }
        let cases: &[(&str, Rule)] = &[
            ("", Rule::Empty),
            ("abcdefghijklmnopqrstu", Rule::TooLong),
            ("a/b", Rule::Char('/', 1)),
            ("..", Rule::Char('.', 0)),
            ("../etc", Rule::Char('.', 0)),
            ("a..b", Rule::Char('.', 1)),
            ("a b", Rule::Char(' ', 1)),
            ("a\"b", Rule::Char('"', 1)),
            ("a'b", Rule::Char('\'', 1)),
            ("a<b", Rule::Char('<', 1)),
            ("a>b", Rule::Char('>', 1)),
            ("a&b", Rule::Char('&', 1)),
            ("Web", Rule::Char('W', 0)),
            ("a\nb", Rule::Char('\n', 1)),
            ("a\0b", Rule::Char('\0', 1)),
            ("a;b", Rule::Char(';', 1)),
            ("a$b", Rule::Char('$', 1)),
            ("aé", Rule::Char('é', 1)),
            ("-rf", Rule::Start('-')),
            ("_x", Rule::Start('_')),
        ];
        for (name, rule) in cases {
            let err = check_pool_name(name).expect_err(name);
            let matched = match (rule, &err) {
                (Rule::Empty, NameError::Empty { kind }) => *kind == NameKind::Pool,
                (Rule::TooLong, NameError::TooLong { len, .. }) => *len == name.len(),
                (Rule::Start(c), NameError::BadStart { found, .. }) => found == c,
                (
                    Rule::Char(c, at),
                    NameError::BadCharacter {
                        found,
                        at: found_at,
                        ..
                    },
                ) => found == c && found_at == at,
                _ => false,
            };
            assert!(matched, "{name:?}: expected {rule:?}, got {err:?}");
            // The message names the rule.
            let message = err.to_string();
            assert!(
                ["cannot be empty", "at most", "starts with", "only a-z"]
                    .iter()
                    .any(|rule| message.contains(rule)),
                "{message}"
            );
        }
        assert!(matches!(
            check_sandbox_name(&"s".repeat(SANDBOX_NAME_MAX + 1)),
            Err(NameError::TooLong {
                kind: NameKind::Sandbox,
                ..
            })
        ));
    }

    #[test]
    fn messages_escape_what_they_quote() {
        let err = check_pool_name("a\nb").expect_err("newline");
        assert!(!err.to_string().contains('\n'), "{err}");
    }

    #[test]
    fn the_longest_pool_name_keeps_its_sockets_within_a_socket_address() {
        let name = "p".repeat(POOL_NAME_MAX);
        let golden_socket = format!(
            "{}/{name}/paddock-{name}-golden-00000000/agent.sock",
            crate::DEFAULT_STATE_ROOT
        );
        assert!(
            golden_socket.len() <= crate::vm::SOCKET_PATH_MAX,
            "{golden_socket}"
        );
        let sandbox_socket = format!(
            "{}/{}/vhost-user.sock",
            crate::DEFAULT_STATE_ROOT,
            "s".repeat(SANDBOX_NAME_MAX)
        );
        assert!(
            sandbox_socket.len() <= crate::vm::SOCKET_PATH_MAX,
            "{sandbox_socket}"
        );
    }
}
