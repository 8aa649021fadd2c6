//! The host side of Paddock's guest-agent protocol.
//!
//! [`AgentClient`] connects to a `paddock-agent` over one of the
//! [`Transport`]s, negotiates a session (see `paddock-proto` for the wire
//! contract), and runs many executions, file transfers and file system
//! operations (module `fs`: `read_dir`, `metadata`, `create_dir`...) at
//! once on it, matched by request id.
//!
//! ```no_run
//! # async fn demo() -> Result<(), paddock_agent_client::ClientError> {
//! use paddock_agent_client::{AgentClient, ClientConfig, Execute, Transport};
//!
//! let transport = Transport::Unix { path: "/run/paddock/agent.sock".into() };
//! let client = AgentClient::connect(transport, ClientConfig::default()).await?;
//! let mut request = Execute::shell("echo hello; exit 3");
//! request.timeout_ms = Some(5_000);
//! let output = client.exec_collect(request).await?;
//! assert_eq!(output.stdout, b"hello\n");
//! assert_eq!(output.result.exit_code, Some(3));
//! # Ok(()) }
//! ```
//!
//! Guarantees:
//! - Every call has a timeout ([`ClientConfig`]); every execution carries one
//!   to the agent too.
//! - Memory is bounded: output is flow-controlled per request, so a process
//!   that prints without end is slowed down, not buffered.
//! - Errors are typed and classified: [`ClientError::should_reconnect`] and
//!   [`ClientError::is_retryable`]. A lost session is re-established on the
//!   next call; [`AgentClient::session`] tells whether the guest behind it is
//!   the same boot, a restored snapshot, or a new boot.
//! - Dropping an [`Execution`] before its result stops it in the guest.
//! - Whole directories move as one tar stream ([`AgentClient::put_tree`],
//!   [`AgentClient::get_tree`]), with progress on a watch channel. What
//!   the guest sends is unpacked as strictly as the agent unpacks what the
//!   host sends: no entry lands outside the destination, no symlink is
//!   followed, and names, entries and bytes are bounded.
//! - [`AgentClient::terminal`] runs a command on a pseudo-terminal in the
//!   guest (a [`Terminal`]: typed input, output, resize, exit status), only
//!   with an agent that announces the `tty` capability.
//! - Everything the agent sends is untrusted: frames are bounded before
//!   they are buffered, a frame that breaks the protocol ends the session
//!   with a typed error, and nothing the agent sends makes the client queue
//!   without bound. The `fuzzing` feature (for `fuzz/`, not an API) drives
//!   a real client against a scripted hostile agent; the crate's proptests
//!   do the same.

mod client;
mod connection;
mod error;
mod exec;
mod files;
mod fs;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod gate;
mod terminal;
mod transport;
mod tree;

pub use client::{AgentClient, ClientConfig, Continuity};
pub use error::ClientError;
pub use exec::{ExecOutput, Execution, MAX_COLLECTED_BYTES, OutputStream, StdinWriter};
pub use files::Download;
pub use fs::{DirPage, FsErrorKind};
pub use gate::{Denial, Flow, GateRequest, PolicyGate, Refusal, RequestGate, Size};
pub use paddock_proto::TreeDone;
pub use paddock_proto::{
    Command, DirEntry, ErrorCode, ExecResult, Execute, FileDone, FileType, HelloAck, Metadata,
    StatusReport, Tty,
};
pub use paddock_tree::{
    Tally as TreeTally, TreeError, check_root as check_tree_root, pack as pack_tree,
    unpack as unpack_tree,
};
pub use terminal::{Terminal, TerminalResizer};
pub use transport::{Transport, connect_hybrid_vsock};
pub use tree::{TreeOptions, TreeProgress, TreeTransfer};
