//! What the host reports to the detector.

use std::time::Duration;

/// One thing that happened in a scope. Timestamps are passed next to it, to
/// [`Detector::observe`](crate::Detector::observe).
///
/// Durations are [`Duration`]s, so they cannot be negative; zero is a valid
/// value (an exec that returned at once).
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    /// An exec in the guest ended (exit, signal or timeout).
    ExecFinished {
        /// Wall time from start to end, as the host measured it.
        duration: Duration,
        /// Bytes of stdout plus stderr the exec produced.
        output_bytes: u64,
        /// The exec hit its timeout and was killed.
        timed_out: bool,
    },
    /// A slot's reset to its golden snapshot ended.
    ResetFinished {
        /// How long the reset took.
        duration: Duration,
        /// Whether the slot came back usable.
        ok: bool,
    },
    /// A lease request waited this long for a slot.
    AcquireWait {
        /// Time from request to lease.
        wait: Duration,
    },
    /// The guest agent sent a frame the host could not accept.
    ProtocolError {
        /// What was wrong with it.
        kind: ProtocolErrorKind,
    },
    /// A CPU utilization sample for a slot.
    CpuSample {
        /// The fraction of the slot's total vCPU time used over the sample
        /// interval: 0.0 idle, 1.0 every vCPU busy all the time. Values
        /// below 0 count as 0 and above 1 as 1 (accounting jitter); NaN and
        /// infinities are dropped (see the `cpu_pinned` rule).
        utilization: f64,
    },
    /// The network filter refused a packet or connection from the guest,
    /// where the host can see it.
    EgressDenied,
}

/// The kinds of agent protocol error, as a small label set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolErrorKind {
    /// A frame whose CRC did not match.
    Crc,
    /// The decoder lost frame sync and had to resynchronize.
    Resync,
    /// A frame of a kind the host does not know.
    UnknownKind,
    /// The guest sent more data than the flow-control window allowed.
    WindowOverrun,
    /// Anything else.
    Other,
}

impl ProtocolErrorKind {
    /// Every kind, in a stable order.
    pub const ALL: [Self; 5] = [
        Self::Crc,
        Self::Resync,
        Self::UnknownKind,
        Self::WindowOverrun,
        Self::Other,
    ];

    /// A stable snake_case label (Prometheus label values, audit fields).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Crc => "crc",
            Self::Resync => "resync",
            Self::UnknownKind => "unknown_kind",
            Self::WindowOverrun => "window_overrun",
            Self::Other => "other",
        }
    }
}
