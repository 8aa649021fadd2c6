//! Flow-control credit of one request, in both directions.
//!
//! [`RecvCredit`] is what this side grants the agent for the request's
//! incoming data: the reader checks every data frame against it, and the
//! consumer returns it (WINDOW_UPDATE) as it takes the data. [`SendCredit`] is
//! what the agent granted this side for outgoing data (STDIN, FILE_DATA).
//!
//! A [`Pacing`] gate may hold returned credit back for a while: the agent
//! then sends no more of that request's data until it comes, which is how a
//! received-bytes rate limit slows a flow down without failing it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use paddock_events::{Emitter, EventKind};
use paddock_proto::{Message, RecvWindow, SendWindow};
use tokio::sync::{Notify, mpsc};

use super::{lock, send_frame};
use crate::error::ClientError;

/// The gate that paces received bytes, and where its holds are reported.
#[derive(Debug, Clone)]
pub(crate) struct Pacing {
    pub(crate) gate: Arc<dyn crate::RequestGate>,
    pub(crate) events: Emitter,
}

impl Pacing {
    /// `None` once the gate let `bytes` of `flow` through (and charged
    /// them), else how long to wait before asking again (reported as a
    /// hold).
    pub(crate) fn hold(&self, flow: crate::Flow, bytes: u64) -> Option<Duration> {
        let (limit, delay) = self.gate.pace(&self.events.source(), flow, bytes)?;
        let delay = delay.max(MIN_HOLD);
        self.events.emit(|| EventKind::Throttled { limit, delay });
        Some(delay)
    }
}

/// The shortest hold: a gate that answers "wait 0" is asked again a little
/// later, not in a busy loop.
const MIN_HOLD: Duration = Duration::from_millis(1);

/// Credit this side grants the agent for one request's incoming data.
#[derive(Debug)]
pub(crate) struct RecvCredit {
    window: Mutex<RecvWindow>,
    request_id: u64,
    writer: mpsc::UnboundedSender<Vec<u8>>,
    buffered: Arc<AtomicU64>,
    pacing: Option<Pacing>,
}

impl RecvCredit {
    /// A window of `initial` bytes for request `request_id`; credit goes back
    /// through `writer` (when `pacing` lets it), and `buffered` counts data
    /// not yet consumed.
    pub(super) fn new(
        initial: u32,
        request_id: u64,
        writer: mpsc::UnboundedSender<Vec<u8>>,
        buffered: Arc<AtomicU64>,
        pacing: Option<Pacing>,
    ) -> Self {
        Self {
            window: Mutex::new(RecvWindow::new(initial)),
            request_id,
            writer,
            buffered,
            pacing,
        }
    }

    /// Counts `len` bytes of incoming data against the window.
    pub(super) fn receive(&self, len: usize) -> Result<(), ClientError> {
        lock(&self.window)
            .receive(len)
            .map_err(ClientError::FlowControl)?;
        self.buffered.fetch_add(len as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Returns credit for `len` bytes the consumer took (or discarded).
    pub(crate) fn consumed(&self, len: usize) {
        self.buffered.fetch_sub(len as u64, Ordering::Relaxed);
        let Some(increment) = lock(&self.window).consume(len) else {
            return;
        };
        let update = Message::WindowUpdate(increment);
        let first_hold = self
            .pacing
            .as_ref()
            .and_then(|pacing| pacing.hold(crate::Flow::Received, u64::from(increment)));
        // Outside a runtime there is no timer to wait on: return it now.
        let handle = tokio::runtime::Handle::try_current().ok();
        match (first_hold, &self.pacing, handle) {
            (Some(mut delay), Some(pacing), Some(handle)) => {
                let (writer, id, pacing) = (self.writer.clone(), self.request_id, pacing.clone());
                handle.spawn(async move {
                    // The gate charges the bytes only once it lets them
                    // through, so ask again after each hold.
                    loop {
                        tokio::time::sleep(delay).await;
                        match pacing.hold(crate::Flow::Received, u64::from(increment)) {
                            Some(next) => delay = next,
                            None => break,
                        }
                    }
                    // A closed writer means the connection is gone.
                    let _ = send_frame(&writer, id, &update);
                });
            }
            // A closed writer means the connection is gone; nothing to return.
            _ => {
                let _ = send_frame(&self.writer, self.request_id, &update);
            }
        }
    }
}

/// Credit the agent granted this side for one request's outgoing data.
#[derive(Debug)]
pub(crate) struct SendCredit {
    window: Mutex<SendWindow>,
    notify: Notify,
    closed: AtomicBool,
}

impl SendCredit {
    pub(super) fn new(initial: u32) -> Self {
        Self {
            window: Mutex::new(SendWindow::new(initial)),
            notify: Notify::new(),
            closed: AtomicBool::new(false),
        }
    }

    /// Waits until at least one byte may be sent; returns how many (<= want).
    /// Fails when the request ended (answered, or its connection failed).
    pub(crate) async fn acquire(
        &self,
        want: usize,
        timeout: Duration,
    ) -> Result<usize, ClientError> {
        let wait = async {
            loop {
                let notified = self.notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.closed.load(Ordering::Acquire) {
                    return None;
                }
                let granted = lock(&self.window).take(want);
                if granted > 0 {
                    return Some(granted);
                }
                notified.await;
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(Some(granted)) => Ok(granted),
            Ok(None) => Err(ClientError::lost(None)),
            Err(_) => Err(ClientError::Timeout {
                what: "flow-control credit",
                after: timeout,
            }),
        }
    }

    /// Adds the agent's WINDOW_UPDATE to the window.
    pub(super) fn grant(&self, increment: u32) -> Result<(), ClientError> {
        lock(&self.window)
            .grant(increment)
            .map_err(ClientError::FlowControl)?;
        self.notify.notify_waiters();
        Ok(())
    }

    /// Marks the request ended: senders waiting for credit give up.
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// Whether the request this credit belongs to has ended.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}
