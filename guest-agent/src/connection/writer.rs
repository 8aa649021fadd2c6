//! The writer task: the only one that writes to a connection's stream.
//!
//! It takes encoded frames from a bounded channel (so a host that does not
//! read slows the agent down instead of growing a queue), writes them in
//! order, and drops frames of a session that is no longer current. It
//! closes each request just before it writes the request's last frame.

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tracing::{debug, warn};

use crate::request::Outgoing;

/// Encoded frames the writer channel holds before senders wait.
const OUTBOX_FRAMES: usize = 64;

/// How long a closing connection waits for its writer to flush.
const WRITER_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// A running writer task.
#[derive(Debug)]
pub(super) struct Writer {
    task: JoinHandle<()>,
}

impl Writer {
    /// Starts writing to `stream` whatever is sent to the returned outbox;
    /// `current` holds the sequence number of the session whose frames are
    /// still wanted.
    pub(super) fn spawn<W>(stream: W, current: Arc<AtomicU64>) -> (Self, mpsc::Sender<Outgoing>)
    where
        W: AsyncWrite + Send + 'static,
    {
        let (outbox, frames) = mpsc::channel(OUTBOX_FRAMES);
        let task = tokio::spawn(write_frames(stream, frames, current));
        (Self { task }, outbox)
    }

    /// Waits for the writer to write what is queued and close the stream,
    /// once every outbox is dropped; gives up after [`WRITER_FLUSH_TIMEOUT`]
    /// if the host does not read.
    pub(super) async fn finish(mut self) {
        if timeout(WRITER_FLUSH_TIMEOUT, &mut self.task).await.is_err() {
            warn!("The host does not read; dropping unsent frames");
            self.task.abort();
        }
    }
}

/// Writes queued frames until every sender is gone or a write fails.
async fn write_frames<W: AsyncWrite>(
    writer: W,
    mut frames: mpsc::Receiver<Outgoing>,
    current: Arc<AtomicU64>,
) {
    let mut writer = pin!(writer);
    while let Some(Outgoing {
        session,
        frame,
        closes,
    }) = frames.recv().await
    {
        // A request's last frame closes the request before the host can
        // see the frame, so nothing the host sends after it finds the
        // request open.
        drop(closes);
        if session != 0 && session != current.load(Ordering::Acquire) {
            continue;
        }
        let mut written = writer.write_all(&frame).await;
        if written.is_ok() && frames.is_empty() {
            written = writer.flush().await;
        }
        if let Err(err) = written {
            debug!(%err, "Could not write to the host");
            return;
        }
    }
    if let Err(err) = writer.shutdown().await {
        debug!(%err, "Could not close the stream");
    }
}
