//! Histogram buckets, in seconds. Each list is in the crate doc's bucket
//! table, and a test holds the two together.

/// `paddock_acquire_wait_seconds`: 50 µs to 60 s. The SLO is a 1 ms p99,
/// so the bottom is fine-grained.
pub const ACQUIRE_WAIT: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0, 60.0,
];

/// `paddock_reset_duration_seconds` and `paddock_reset_phase_duration_seconds`:
/// 1 ms to 60 s (a snapshot revert is milliseconds; a reboot is seconds).
pub const RESET: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// `paddock_slot_creation_duration_seconds` and
/// `paddock_golden_build_duration_seconds`: 100 ms to 10 min (a boot).
pub const BOOT: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// `paddock_exec_duration_seconds`: 1 ms to 1 h.
pub const EXEC: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// `paddock_file_transfer_duration_seconds`: 1 ms to 10 min.
pub const FILE_TRANSFER: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
];

/// `paddock_agent_round_trip_seconds`: 100 µs to 10 s; a healthy PING over
/// vsock is well under a millisecond.
pub const AGENT_ROUND_TRIP: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// `paddock_lease_held_seconds`: 10 ms to 1 day.
pub const LEASE_HELD: &[f64] = &[
    0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0,
    86400.0,
];
