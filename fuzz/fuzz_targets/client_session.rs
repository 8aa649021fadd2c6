//! A real `AgentClient` against a scripted, hostile agent: the input is
//! everything the agent sends (see `paddock_agent_client::fuzzing` for its
//! layout). The client connects over a Unix socket and opens an execution,
//! a STATUS, a download, an upload and a PING at once; the agent answers
//! with the input's frames, messages and raw bytes, aimed at those
//! requests, and closes.
//!
//! `fuzzing::run` panics (a crash here) when the client panics, when a
//! call does not end once the agent closed (or waits out a timer instead),
//! when a download or upload reported as verified does not match what was
//! sent, or when received bytes stay counted as buffered.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = paddock_agent_client::fuzzing::run(data);
});
