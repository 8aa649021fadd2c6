//! Request policies: what may be asked of a sandbox.
//!
//! A [`Policy`] is a TOML file (schema 1, documented in `policies/README.md`
//! at the repository's root, with shipped examples beside it) that a pool
//! names. It lists what a lease may ask of its guest: which programs it may
//! run and how (shell or not, environment variable names, working
//! directories, the largest timeout and output caps, how many executions at
//! once), which guest paths it may upload to and download from and how much,
//! which guest paths its file system operations may read and change,
//! whether it may read the agent's status, and which signals it may send.
//! Whatever the file does not allow is denied.
//!
//! The host checks a request against the policy before it is sent (the
//! guest is the untrusted party: a denied request never reaches it). The
//! check is [`Policy::check`], on a [`Request`]: the agent client's request
//! gate calls it for every request a lease makes, so the library, the daemon
//! and the command line all pass through it. A denial is a [`Denial`] that
//! names the [`Rule`] that refused the request.
//!
//! Paths are compared lexically: a path must be absolute and have no `..`
//! component, and is under a prefix when it equals it or continues it after
//! a `/`. The guest owns its file system (a symbolic link in the guest can
//! point anywhere in the guest); a path policy says what the host may ask
//! for, not what the guest's files are.
//!
//! This crate is pure: no I/O besides [`Policy::load`], no runtime.

mod file;
mod glob;
mod path;
mod policy;
mod request;
mod rule;
mod signal;

pub use file::{PolicyError, SCHEMA_VERSION};
pub use path::{PathError, normalize};
pub use policy::{ExecRules, FsRules, Policy, TransferRules};
pub use request::{FsAccess, Request, Size};
pub use rule::{Denial, Rule};
pub use signal::{signal_name, signal_number};
