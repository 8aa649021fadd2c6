#![doc = include_str!("../AUDIT.md")]

mod files;
mod record;
mod subscriber;
mod time;
mod verify;
mod writer;

pub use files::{file_name, parse_file_name};
pub use record::{
    Actor, ActorKind, AuditEvent, AuditRecord, CommandRecording, Digest, ExecSummary, FileSummary,
    RecordError, Request, Response, SCHEMA_V1, Stage, Target, Verb, outcome,
};
pub use subscriber::{AuditOptions, AuditSubscriber, audit_event};
pub use time::{Timestamp, TimestampError};
pub use verify::{
    BreakKind, ChainBreak, Head, TornLine, VerifyError, VerifyOptions, VerifyReport, verify,
    verify_files, verify_files_with, verify_with,
};
pub use writer::{
    AuditConfig, AuditError, AuditLog, AuditStats, AuditWriter, FsyncPolicy, OpenError,
    OverflowPolicy, WriteError,
};
