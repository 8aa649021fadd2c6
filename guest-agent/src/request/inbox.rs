//! A request's inbox: the host's frames on their way from the reader to the
//! request's task, bounded whatever the host sends.
//!
//! The reader must never wait for one request (that would stall every other
//! request of the connection), and must never queue without bound. So:
//!
//! - Data (STDIN, FILE_DATA) is bounded in bytes by the request's window,
//!   which the reader checked. Consecutive data frames are merged into
//!   buffers of up to [`DEFAULT_CHUNK`] bytes, so many small frames cost no
//!   more than a few large ones, and empty ones are dropped.
//! - A SIGNAL, STOP or STDIN_CLOSE identical to one still waiting is merged
//!   with it, as the kernel merges a pending signal sent twice: a flood of
//!   them holds one entry.
//! - Other control frames count against [`MAX_QUEUED_CONTROL`]; past it the
//!   inbox refuses the frame, and the reader ends the request with ERROR
//!   `flow_control`.
//! - A rejection (the request must end with an ERROR) waits beside the
//!   queue, not in it, and comes out first; only the first one is kept.
//!
//! Once the task stops reading (its [`Inputs`] are dropped), what waits is
//! freed and later frames are dropped.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use paddock_proto::{DEFAULT_CHUNK, ErrorReport, MAX_QUEUED_CONTROL, Message};
use tokio::sync::Notify;

use crate::lock;

/// What a request's task receives.
#[derive(Debug)]
pub(crate) enum Input {
    /// A frame for the request, already accounted for flow control.
    Frame(Message),
    /// The request must end with this error.
    Reject(ErrorReport),
}

/// The inbox refused a control frame: [`MAX_QUEUED_CONTROL`] already wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("More than {MAX_QUEUED_CONTROL} control frames wait for this request")]
pub(crate) struct InboxFull;

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Message>,
    /// Control frames in `queue`.
    controls: usize,
    rejection: Option<ErrorReport>,
    /// The task no longer reads.
    closed: bool,
}

/// Whether `data` may be appended to `queued`: merged chunks stay within
/// [`DEFAULT_CHUNK`], so a consumer gets them in pieces of a usual size.
fn fits(queued: &[u8], data: &[u8]) -> bool {
    queued.len() + data.len() <= DEFAULT_CHUNK
}

/// The shared inbox of one request.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    state: Mutex<State>,
    arrived: Notify,
}

impl Inbox {
    /// A new inbox and the task's end of it.
    pub(crate) fn new() -> (Arc<Self>, Inputs) {
        let inbox = Arc::new(Self::default());
        let inputs = Inputs(Arc::clone(&inbox));
        (inbox, inputs)
    }

    /// Hands a frame to the request (see the module documentation).
    ///
    /// # Errors
    /// [`InboxFull`] when the frame is a control frame and
    /// [`MAX_QUEUED_CONTROL`] of them already wait.
    pub(crate) fn push(&self, message: Message) -> Result<(), InboxFull> {
        let mut state = lock(&self.state);
        if state.closed || state.rejection.is_some() {
            return Ok(());
        }
        match message {
            Message::Stdin(data) | Message::FileData(data) if data.is_empty() => return Ok(()),
            Message::Stdin(data) => match state.queue.back_mut() {
                Some(Message::Stdin(queued)) if fits(queued, &data) => {
                    queued.extend_from_slice(&data);
                }
                _ => state.queue.push_back(Message::Stdin(data)),
            },
            Message::FileData(data) => match state.queue.back_mut() {
                Some(Message::FileData(queued)) if fits(queued, &data) => {
                    queued.extend_from_slice(&data);
                }
                _ => state.queue.push_back(Message::FileData(data)),
            },
            Message::Resize(size) => {
                // Only the last window size matters: a queued RESIZE takes
                // the new one instead of queueing another.
                let full = state.controls >= MAX_QUEUED_CONTROL;
                let queued = state
                    .queue
                    .iter_mut()
                    .rev()
                    .find_map(|queued| match queued {
                        Message::Resize(queued) => Some(queued),
                        _ => None,
                    });
                match queued {
                    Some(queued) => *queued = size,
                    None if full => return Err(InboxFull),
                    None => {
                        state.controls += 1;
                        state.queue.push_back(Message::Resize(size));
                    }
                }
            }
            control => {
                let mergeable = matches!(
                    control,
                    Message::Signal(_) | Message::Stop(_) | Message::StdinClose
                );
                if mergeable && state.queue.contains(&control) {
                    return Ok(());
                }
                if state.controls >= MAX_QUEUED_CONTROL {
                    return Err(InboxFull);
                }
                state.controls += 1;
                state.queue.push_back(control);
            }
        }
        drop(state);
        self.arrived.notify_one();
        Ok(())
    }

    /// Ends the request with `report`, ahead of what waits; a request
    /// already rejected keeps its first rejection.
    pub(crate) fn reject(&self, report: ErrorReport) {
        let mut state = lock(&self.state);
        if state.closed || state.rejection.is_some() {
            return;
        }
        state.rejection = Some(report);
        drop(state);
        self.arrived.notify_one();
    }

    /// Frames waiting and whether a rejection waits, for tests.
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> (usize, bool) {
        let state = lock(&self.state);
        (state.queue.len(), state.rejection.is_some())
    }
}

/// The task's end of a request's inbox. Dropping it frees what waits.
#[derive(Debug)]
pub(crate) struct Inputs(Arc<Inbox>);

impl Inputs {
    /// The next input: a waiting rejection first, then frames in order.
    /// Pending until one arrives.
    pub(crate) async fn recv(&mut self) -> Input {
        loop {
            // `notify_one` leaves a permit when nobody waits, so an input
            // pushed between the check and the wait is not missed.
            let arrived = self.0.arrived.notified();
            {
                let mut state = lock(&self.0.state);
                if let Some(report) = state.rejection.take() {
                    return Input::Reject(report);
                }
                if let Some(message) = state.queue.pop_front() {
                    if !matches!(message, Message::Stdin(_) | Message::FileData(_)) {
                        state.controls -= 1;
                    }
                    return Input::Frame(message);
                }
            }
            arrived.await;
        }
    }
}

impl Drop for Inputs {
    fn drop(&mut self) {
        let mut state = lock(&self.0.state);
        state.closed = true;
        state.queue = VecDeque::new();
        state.controls = 0;
    }
}

#[cfg(test)]
mod tests {
    use paddock_proto::{ErrorCode, SignalRequest, Stop, StopScope};

    use super::*;

    fn signal(signal: i32) -> Message {
        Message::Signal(SignalRequest { signal })
    }

    #[tokio::test]
    async fn data_is_merged_and_keeps_its_place_among_control_frames() {
        let (inbox, mut inputs) = Inbox::new();
        for byte in 0..100u8 {
            inbox.push(Message::Stdin(vec![byte])).expect("data");
        }
        inbox.push(Message::Stdin(Vec::new())).expect("empty");
        inbox.push(Message::StdinClose).expect("close");
        inbox.push(Message::Stdin(vec![1, 2])).expect("data");
        assert_eq!(inbox.waiting(), (3, false));
        match inputs.recv().await {
            Input::Frame(Message::Stdin(data)) => assert_eq!(data, (0..100).collect::<Vec<u8>>()),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            inputs.recv().await,
            Input::Frame(Message::StdinClose)
        ));
        assert!(matches!(inputs.recv().await, Input::Frame(Message::Stdin(d)) if d == [1, 2]));
    }

    #[tokio::test]
    async fn identical_signals_and_stops_merge_while_they_wait() {
        let (inbox, mut inputs) = Inbox::new();
        let stop = Message::Stop(Stop {
            scope: StopScope::Execution,
        });
        for _ in 0..1_000_000 {
            inbox.push(signal(28)).expect("merged");
            inbox.push(stop.clone()).expect("merged");
        }
        inbox.push(signal(10)).expect("another signal");
        assert_eq!(inbox.waiting(), (3, false));
        assert!(matches!(inputs.recv().await, Input::Frame(m) if m == signal(28)));
        // Once acted on, the same signal may wait again.
        inbox.push(signal(28)).expect("again");
        assert_eq!(inbox.waiting(), (3, false));
    }

    #[tokio::test]
    async fn too_many_control_frames_are_refused_and_a_rejection_comes_first() {
        let (inbox, mut inputs) = Inbox::new();
        for size in 0..MAX_QUEUED_CONTROL as u64 {
            let end = paddock_proto::FileEnd { size, crc32: 0 };
            inbox.push(Message::FileEnd(end)).expect("room");
        }
        let end = paddock_proto::FileEnd { size: 0, crc32: 1 };
        assert_eq!(inbox.push(Message::FileEnd(end)), Err(InboxFull));
        inbox.reject(ErrorReport::new(ErrorCode::FlowControl, "first"));
        inbox.reject(ErrorReport::new(ErrorCode::BadPayload, "second"));
        match inputs.recv().await {
            Input::Reject(report) => assert_eq!(report.code, ErrorCode::FlowControl),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            inputs.recv().await,
            Input::Frame(Message::FileEnd(_))
        ));
    }

    #[test]
    fn a_closed_inbox_frees_what_waits_and_takes_nothing_more() {
        let (inbox, inputs) = Inbox::new();
        inbox.push(Message::FileData(vec![0; 4096])).expect("data");
        drop(inputs);
        assert_eq!(inbox.waiting(), (0, false));
        inbox
            .push(Message::FileData(vec![0; 4096]))
            .expect("dropped");
        inbox.reject(ErrorReport::new(ErrorCode::FlowControl, "late"));
        assert_eq!(inbox.waiting(), (0, false));
    }
}
