//! HELLO: negotiating a version, starting a session, answering HELLO_ACK.
//!
//! A HELLO is checked first; one the agent refuses leaves the connection as
//! it was (or closes it, when no version is common). A HELLO that repeats
//! the token of the connection's current session is a resend (a host waiting
//! on a virtio-serial port sends HELLO until it is answered): it is answered
//! with the same HELLO_ACK and the session goes on. Any other HELLO ends the
//! connection's current session, if any, and starts a new one with the
//! limits the host announced. The agent's clock is stepped to the host's
//! time here, when the agent is allowed to (see `crate::clock`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use paddock_proto::{
    ErrorCode, Hello, HelloAck, MAX_SESSION_TOKEN_LEN, MIN_MAX_PAYLOAD, MIN_PROTOCOL_VERSION,
    Message, PROTOCOL_VERSION, capability, negotiate_version,
};
use tracing::{info, warn};

use super::{Connection, Step};
use crate::AGENT_VERSION;
use crate::request::{Session, WireError};

/// Features every agent announces in HELLO_ACK; [`capability::CONTAIN_TREE`]
/// is added when the agent contains executions in cgroups.
const CAPABILITIES: [&str; 9] = [
    capability::EXEC,
    capability::STDIN,
    capability::SIGNAL,
    capability::FILES,
    capability::STATUS,
    capability::STOP_AGENT,
    capability::FS,
    capability::TREES,
    capability::TTY,
];

/// Why a HELLO started no session.
#[derive(Debug, thiserror::Error)]
enum HelloError {
    /// HELLO offered no version the agent speaks.
    #[error(
        "No common protocol version: the host speaks {min}..={max}, the agent {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION}"
    )]
    UnsupportedVersion { min: u16, max: u16 },
    /// HELLO announced a payload limit too small for the agent's messages.
    #[error("The host's max_payload of {0} bytes is below the minimum of {MIN_MAX_PAYLOAD}")]
    HostPayloadTooSmall(u32),
    /// HELLO's token is too long to be repeated to a later host.
    #[error("The session token of {0} bytes is longer than {MAX_SESSION_TOKEN_LEN}")]
    TokenTooLong(usize),
}

impl WireError for HelloError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            Self::HostPayloadTooSmall(_) | Self::TokenTooLong(_) => ErrorCode::InvalidArgument,
        }
    }
}

impl Connection {
    /// Answers HELLO: a new session (or, for a resent HELLO, the current
    /// one) and HELLO_ACK, or ERROR. No common version closes the
    /// connection; a HELLO refused otherwise changes nothing.
    pub(super) async fn hello(&mut self, id: u64, hello: &Hello) -> Step {
        let Some(version) = negotiate_version(hello.min_version, hello.max_version) else {
            let err = HelloError::UnsupportedVersion {
                min: hello.min_version,
                max: hello.max_version,
            };
            self.send(id, &Message::Error(err.report())).await;
            return Step::Close;
        };
        let refused = if hello.max_payload < MIN_MAX_PAYLOAD {
            Some(HelloError::HostPayloadTooSmall(hello.max_payload))
        } else if hello.session_token.len() > MAX_SESSION_TOKEN_LEN {
            Some(HelloError::TokenTooLong(hello.session_token.len()))
        } else {
            None
        };
        if let Some(err) = refused {
            self.send(id, &Message::Error(err.report())).await;
            return Step::Continue;
        }
        let clock_step_ms = if self.agent.config.set_clock {
            step_clock(hello.host_time_unix_ms)
        } else {
            0
        };
        if let Some(session) = self.session.as_ref().filter(|s| s.is_resent(hello)) {
            info!("A resent HELLO: the session goes on");
            let ack = HelloAck {
                uptime_ms: self.agent.uptime_ms(),
                clock_step_ms,
                ..session.ack().clone()
            };
            self.send(id, &Message::HelloAck(ack)).await;
            return Step::Continue;
        }
        if self.end_session() {
            info!("A new HELLO ended the session");
        }
        let seq = self.agent.sessions.fetch_add(1, Ordering::Relaxed) + 1;
        self.current.store(seq, Ordering::Release);
        let (announced_seq, previous_token) = self.agent.accept_session(&hello.session_token);
        let config = &self.agent.config;
        let mut capabilities = CAPABILITIES.map(str::to_owned).to_vec();
        if self.agent.contains_trees() {
            capabilities.push(capability::CONTAIN_TREE.to_owned());
        }
        let ack = HelloAck {
            version,
            agent_version: AGENT_VERSION.to_owned(),
            capabilities,
            boot_id: self.agent.boot_id.clone(),
            session_seq: announced_seq,
            previous_token,
            uptime_ms: self.agent.uptime_ms(),
            max_payload: config.max_payload,
            initial_window: config.window,
            clock_step_ms,
        };
        self.session = Some(Arc::new(Session::new(
            &self.agent,
            seq,
            hello,
            ack.clone(),
            self.outbox.clone(),
        )));
        info!(seq, version, client = %hello.client, "Session started");
        self.send(id, &Message::HelloAck(ack)).await;
        Step::Continue
    }
}

/// Steps the clock to the host's time; returns the step taken (0 if none or
/// if the kernel refused, which is logged: the session goes on regardless).
fn step_clock(host_time_unix_ms: u64) -> i64 {
    match crate::clock::step_to(host_time_unix_ms) {
        Ok(0) => 0,
        Ok(step) => {
            info!(step_ms = step, "Stepped the clock to the host's");
            step
        }
        Err(err) => {
            warn!(error = %err, "Could not step the clock to the host's");
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use paddock_proto::{DEFAULT_MAX_PAYLOAD, PROTOCOL_VERSION, capability};

    use super::*;
    use crate::test_host::{TestHost, error_code, hello, test_config};

    #[tokio::test]
    async fn hello_negotiates_and_announces_the_agent() {
        let mut host = TestHost::start(test_config());
        let ack = host.hello(hello()).await;
        assert_eq!(ack.version, PROTOCOL_VERSION);
        assert_eq!(ack.agent_version, AGENT_VERSION);
        assert_eq!(ack.boot_id, host.agent.boot_id());
        assert_eq!(ack.boot_id.len(), 32);
        assert!(ack.boot_id.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(ack.session_seq, 1);
        assert_eq!(ack.max_payload, DEFAULT_MAX_PAYLOAD);
        assert_eq!(ack.initial_window, test_config().window);
        for feature in [capability::EXEC, capability::FILES, capability::STOP_AGENT] {
            assert!(ack.capabilities.iter().any(|c| c == feature), "{feature}");
        }
        // A second HELLO starts a new session of the same agent run.
        let again = host.hello(hello()).await;
        assert_eq!(again.session_seq, 2);
        assert_eq!(again.boot_id, ack.boot_id);
        // Sessions are counted across connections.
        let mut other = TestHost::connect_to(Arc::clone(&host.agent));
        assert_eq!(other.hello(hello()).await.session_seq, 3);
    }

    #[tokio::test]
    async fn only_an_agent_with_cgroups_claims_to_contain_trees() {
        let mut config = test_config();
        config.containment = crate::Containment::ProcessGroup;
        let mut host = TestHost::start(config);
        let ack = host.hello(hello()).await;
        assert!(!host.agent.contains_trees());
        assert!(
            !ack.capabilities
                .iter()
                .any(|c| c == capability::CONTAIN_TREE)
        );
        let mut host = TestHost::start(test_config());
        let ack = host.hello(hello()).await;
        assert_eq!(
            ack.capabilities
                .iter()
                .any(|c| c == capability::CONTAIN_TREE),
            host.agent.contains_trees()
        );
    }

    #[tokio::test]
    async fn an_agent_not_allowed_to_set_the_clock_leaves_it_alone() {
        // The test agent runs on the host: `set_clock` is off, and a host
        // time an hour off is ignored.
        let mut host = TestHost::start(test_config());
        let mut far_off = hello();
        far_off.host_time_unix_ms = paddock_proto::unix_time_ms() + 3_600_000;
        let ack = host.hello(far_off).await;
        assert_eq!(ack.clock_step_ms, 0);
        assert!(
            crate::clock::due_step(
                paddock_proto::unix_time_ms() + 3_600_000,
                paddock_proto::unix_time_ms()
            )
            .is_some()
        );
    }

    #[tokio::test]
    async fn no_common_version_is_refused_and_the_stream_closed() {
        let mut host = TestHost::start(test_config());
        let mut future = hello();
        future.min_version = PROTOCOL_VERSION + 1;
        future.max_version = PROTOCOL_VERSION + 5;
        host.send(0, &Message::Hello(future)).await;
        assert_eq!(
            error_code(host.recv().await),
            (0, ErrorCode::UnsupportedVersion)
        );
        assert!(host.try_recv().await.is_none(), "the stream must close");
    }
}
