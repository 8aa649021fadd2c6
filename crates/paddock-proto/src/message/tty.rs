//! Terminals: the `tty` of an EXECUTE and RESIZE of a running execution.

use serde::{Deserialize, Serialize};

use super::nullable::or_default;

/// The terminal type an agent sets as `TERM` when [`Tty::term`] is empty.
pub const DEFAULT_TERM: &str = "xterm-256color";

/// Runs an execution on a pseudo-terminal (a field of
/// [`Execute`](crate::Execute)): the process's stdin, stdout and stderr are
/// the terminal, its output comes as STDOUT, its input goes as STDIN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tty {
    /// `TERM` for the process; [`DEFAULT_TERM`] when empty.
    #[serde(default, deserialize_with = "or_default")]
    pub term: String,
    /// Rows of the window (0: unknown).
    #[serde(default, deserialize_with = "or_default")]
    pub rows: u16,
    /// Columns of the window (0: unknown).
    #[serde(default, deserialize_with = "or_default")]
    pub cols: u16,
}

impl Tty {
    /// A terminal of `term` with a window of `rows` x `cols`.
    #[must_use]
    pub fn new(term: impl Into<String>, rows: u16, cols: u16) -> Self {
        Self {
            term: term.into(),
            rows,
            cols,
        }
    }

    /// The terminal type to set: [`Tty::term`], or [`DEFAULT_TERM`].
    #[must_use]
    pub fn term_or_default(&self) -> &str {
        if self.term.is_empty() {
            DEFAULT_TERM
        } else {
            &self.term
        }
    }
}

/// Changes the window size of a running execution's terminal (host ->
/// agent); the kernel sends SIGWINCH to the terminal's foreground group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resize {
    /// Rows of the window.
    pub rows: u16,
    /// Columns of the window.
    pub cols: u16,
}
