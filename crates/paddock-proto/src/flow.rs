//! Flow-control accounting for data frames, shared by host and agent.
//!
//! A [`SendWindow`] is the sender's credit for one request; a [`RecvWindow`]
//! is the receiver's view of the same request. Both are plain arithmetic: the
//! caller decides how to wait for credit and when to send `WINDOW_UPDATE`.

/// A peer broke the flow-control contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// More data arrived than the receiver had granted.
    #[error("Peer sent {len} bytes with only {available} bytes of window left")]
    Overrun {
        /// Bytes in the offending frame.
        len: usize,
        /// Window left before it arrived.
        available: u64,
    },
    /// A credit increment would push the window past `u32::MAX` bytes.
    #[error("Window update of {increment} bytes overflows the window")]
    Overflow {
        /// The offending increment.
        increment: u32,
    },
}

/// The sender's side of one request's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendWindow {
    available: u64,
}

impl SendWindow {
    /// A window that starts with `initial` bytes of credit.
    #[must_use]
    pub fn new(initial: u32) -> Self {
        Self {
            available: u64::from(initial),
        }
    }

    /// Bytes that may be sent now.
    #[must_use]
    pub fn available(&self) -> u64 {
        self.available
    }

    /// Takes credit for up to `want` bytes; returns how many may be sent (0
    /// means wait for a `WINDOW_UPDATE`).
    pub fn take(&mut self, want: usize) -> usize {
        let granted = usize::try_from(self.available).map_or(want, |avail| want.min(avail));
        self.available -= granted as u64;
        granted
    }

    /// Applies a `WINDOW_UPDATE` from the receiver.
    ///
    /// # Errors
    /// [`WindowError::Overflow`] if the window would exceed `u32::MAX` bytes.
    pub fn grant(&mut self, increment: u32) -> Result<(), WindowError> {
        let next = self.available + u64::from(increment);
        if next > u64::from(u32::MAX) {
            return Err(WindowError::Overflow { increment });
        }
        self.available = next;
        Ok(())
    }
}

/// The receiver's side of one request's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvWindow {
    size: u32,
    /// Credit the sender still has.
    available: u64,
    /// Bytes consumed but not yet returned as credit.
    pending: u64,
}

impl RecvWindow {
    /// A window of `size` bytes, all of it granted to the sender.
    #[must_use]
    pub fn new(size: u32) -> Self {
        Self {
            size,
            available: u64::from(size),
            pending: 0,
        }
    }

    /// Accounts for a data frame of `len` bytes that just arrived.
    ///
    /// # Errors
    /// [`WindowError::Overrun`] if the sender exceeded its credit.
    pub fn receive(&mut self, len: usize) -> Result<(), WindowError> {
        let len64 = len as u64;
        if len64 > self.available {
            return Err(WindowError::Overrun {
                len,
                available: self.available,
            });
        }
        self.available -= len64;
        Ok(())
    }

    /// Accounts for `len` bytes handed to the consumer. Returns the increment
    /// to send as `WINDOW_UPDATE` once at least half the window is waiting to
    /// be returned (batching keeps update frames rare), or `None`.
    pub fn consume(&mut self, len: usize) -> Option<u32> {
        self.pending += len as u64;
        if self.pending * 2 >= u64::from(self.size) {
            let increment = u32::try_from(self.pending).unwrap_or(u32::MAX);
            self.pending -= u64::from(increment);
            self.available += u64::from(increment);
            Some(increment)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn sender_stops_at_zero_and_resumes_on_grant() {
        let mut window = SendWindow::new(10);
        assert_eq!(window.take(8), 8);
        assert_eq!(window.take(8), 2);
        assert_eq!(window.take(8), 0);
        window.grant(5).expect("grant");
        assert_eq!(window.take(8), 5);
        assert!(matches!(
            SendWindow::new(u32::MAX).grant(1),
            Err(WindowError::Overflow { .. })
        ));
    }

    #[test]
    fn receiver_detects_overrun() {
        let mut window = RecvWindow::new(10);
        window.receive(10).expect("within window");
        assert_eq!(
            window.receive(1),
            Err(WindowError::Overrun {
                len: 1,
                available: 0
            })
        );
    }

    #[test]
    fn receiver_batches_updates_at_half_window() {
        let mut window = RecvWindow::new(100);
        window.receive(100).expect("fits");
        assert_eq!(window.consume(30), None);
        assert_eq!(window.consume(30), Some(60));
        window.receive(60).expect("credit returned");
    }

    proptest! {
        /// Whatever the interleaving, a sender that follows its window never
        /// overruns a receiver that returns credit as it consumes.
        #[test]
        fn sender_and_receiver_agree(size in 1u32..10_000, chunks in proptest::collection::vec(1usize..5000, 1..64)) {
            let mut send = SendWindow::new(size);
            let mut recv = RecvWindow::new(size);
            let mut buffered = 0u64;
            for want in chunks {
                let n = send.take(want);
                if n > 0 {
                    recv.receive(n).expect("no overrun");
                    buffered += n as u64;
                }
                prop_assert!(buffered <= u64::from(size));
                // Consumer takes everything buffered.
                if let Some(increment) = recv.consume(usize::try_from(buffered).expect("small")) {
                    send.grant(increment).expect("no overflow");
                }
                buffered = 0;
            }
        }
    }
}
