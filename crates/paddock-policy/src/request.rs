//! A request as a policy (and the agent client's request gate) sees it.

use paddock_proto::Execute;

/// What is known of a transfer's size when it is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// The whole size, before the first byte moves (an upload from a file,
    /// a download once the agent said how large the file is).
    Known(u64),
    /// At least this much, counted while the bytes move (an upload from a
    /// reader of unknown length).
    AtLeast(u64),
    /// Not known yet (a download before the agent's FILE_INFO).
    Unknown,
}

/// A request about to be sent to the agent.
#[derive(Debug)]
pub enum Request<'a> {
    /// An execution. A check may fill in limits the request left out (a
    /// policy's largest output caps, its first working directory); it never
    /// loosens what the request asked for.
    Exec {
        /// The execution, as it will be sent.
        request: &'a mut Execute,
        /// Whether its timeout is the client's default rather than the
        /// caller's: a default above a policy's largest timeout is lowered
        /// to it, where a caller's is denied.
        timeout_defaulted: bool,
        /// Executions of the same client still running.
        running: usize,
    },
    /// An upload to the guest path `path`.
    Put {
        /// The guest path, as given.
        path: &'a str,
        /// How much.
        size: Size,
    },
    /// A download of the guest path `path`.
    Get {
        /// The guest path, as given.
        path: &'a str,
        /// How much, once known.
        size: Size,
    },
    /// A directory upload to the guest directory `path` (TREE_PUT).
    PutTree {
        /// The guest directory, as given.
        path: &'a str,
        /// How much tar stream, counted while it is packed and sent.
        size: Size,
    },
    /// A directory download of the guest directory `path` (TREE_GET).
    GetTree {
        /// The guest directory, as given.
        path: &'a str,
        /// How much tar stream, counted as it arrives.
        size: Size,
    },
    /// The agent's status report.
    Status,
    /// A signal to a running execution.
    Signal {
        /// Its number.
        signal: i32,
    },
    /// Stopping the agent.
    StopAgent,
    /// A file system operation in the guest (list, metadata, make, remove,
    /// rename, mode, links, existence).
    Fs {
        /// The operation's name (`read_dir`, `remove`...): bounded.
        op: &'static str,
        /// Whether it reads or changes the guest's file system.
        access: FsAccess,
        /// The guest paths it names, as given (two for a rename).
        paths: &'a [&'a str],
    },
}

/// What a file system operation does with its paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsAccess {
    /// It only looks (`read_dir`, `metadata`, `read_link`, `exists`): each
    /// path must be under `fs.read_paths` or `fs.write_paths`.
    Read,
    /// It changes the file system (`create_dir`, `remove`, `rename`,
    /// `set_mode`): each path must be under `fs.write_paths`.
    Write,
}

impl Request<'_> {
    /// The request's kind (`exec`, `put`, `get`, `tree_put`, `tree_get`,
    /// `status`, `signal`, `stop_agent`, `fs`): a bounded name.
    #[must_use]
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::Exec { .. } => "exec",
            Self::Put { .. } => "put",
            Self::Get { .. } => "get",
            Self::PutTree { .. } => "tree_put",
            Self::GetTree { .. } => "tree_get",
            Self::Status => "status",
            Self::Signal { .. } => "signal",
            Self::StopAgent => "stop_agent",
            Self::Fs { .. } => "fs",
        }
    }
}
