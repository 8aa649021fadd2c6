//! Paddock's daemon, `paddock serve`: it runs the pools a TOML file
//! declares ([`config`]) and serves them over an HTTP API ([`http`],
//! contract in `API.md`): the operator on a Unix socket, tenants on TCP
//! with bearer tokens ([`auth`]). The daemon's state, and how a lease is
//! ended without a request ever reaching a slot after it, is in
//! [`daemon`]. [`wire`] holds the JSON bodies, which the `paddock` command
//! shares; [`terminal`] carries a terminal over a WebSocket.

pub mod auth;
pub mod config;
pub mod daemon;
pub mod error;
pub mod fs;
pub mod http;
pub mod serve;
pub mod terminal;
pub mod wire;

pub use config::{Config, ConfigError};
pub use error::ApiError;
pub use serve::{Ready, ServeError, run, run_until};
