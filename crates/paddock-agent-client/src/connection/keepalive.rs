//! The session's keepalive: while requests are open, the client asks the
//! agent for its STATUS now and then, so that a request whose agent died
//! in the guest ends at once instead of at its own timeout.
//!
//! On virtio-serial the host's socket belongs to QEMU, not to the agent: an
//! agent killed inside the guest (and started again by init) closes
//! nothing the host can see. Its executions' frames never come. The new
//! agent knows no session (it answers `not_negotiated`) and has a new boot
//! id; an agent that answers nothing is hung. Any of the three fails every
//! open request with [`ClientError::ConnectionLost`], and the next call
//! opens a new session. A STATUS costs the agent a read of a few `/proc`
//! files; none is sent while no request is open.

use std::sync::{Arc, Weak};
use std::time::Duration;

use paddock_proto::{ErrorCode, Message};

use super::{Shared, lock, send_frame};
use crate::error::ClientError;

/// When and how long the keepalive asks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Keepalive {
    /// Between two STATUS requests while requests are open; `None`: never.
    pub interval: Option<Duration>,
    /// How long the agent may take to answer one.
    pub timeout: Duration,
}

/// Runs the keepalive of a session whose agent has boot id `boot_id`.
pub(crate) async fn keepalive_loop(shared: Weak<Shared>, boot_id: String, keepalive: Keepalive) {
    let Some(interval) = keepalive.interval else {
        return;
    };
    loop {
        tokio::time::sleep(interval).await;
        let Some(strong) = shared.upgrade() else {
            return;
        };
        let idle = {
            let state = lock(&strong.state);
            if state.failure.is_some() {
                return;
            }
            state.slots.is_empty()
        };
        if idle {
            continue;
        }
        if let Some(failure) = probe(&strong, &boot_id, keepalive.timeout).await {
            tracing::warn!(error = %failure, "the agent's session is gone; failing its requests");
            strong.fail_all(&failure);
            return;
        }
    }
}

/// One STATUS request: `None` while the agent is the one the session began
/// with, else why the session is gone.
async fn probe(shared: &Arc<Shared>, boot_id: &str, timeout: Duration) -> Option<ClientError> {
    let (id, mut events) = shared.open_internal();
    if send_frame(&shared.writer, id, &Message::StatusRequest).is_err() {
        return None;
    }
    let gone = |why: &str| ClientError::lost(Some(std::io::Error::other(why.to_owned())));
    match tokio::time::timeout(timeout, events.recv()).await {
        Ok(Some(Ok(Message::StatusReport(report)))) if report.boot_id != boot_id => {
            Some(gone("the agent restarted: its boot id changed"))
        }
        Ok(Some(Ok(Message::Error(report)))) if report.code == ErrorCode::NotNegotiated => {
            Some(gone("the agent restarted: it knows no session"))
        }
        Err(_) => {
            shared.forget(id);
            Some(gone(&format!(
                "the agent did not answer a keepalive within {timeout:?}"
            )))
        }
        // An answer from the same agent, a refusal it may give a busy
        // session (too many requests), or the session failing anyway.
        Ok(_) => None,
    }
}
