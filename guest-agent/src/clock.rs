//! The guest's wall clock after a restore.
//!
//! A guest restored from a saved image or a snapshot wakes with the wall
//! clock it had when the state was captured: under TCG its clock source is
//! QEMU's virtual clock, which the state carries. A pool's guests would
//! then run minutes or hours behind, and builds, TLS certificate checks and
//! logs inside them would see the wrong time. So the host sends its time in
//! every HELLO ([`Hello::host_time_unix_ms`]), and an agent started with
//! `--set-clock` steps the guest's clock to it when they differ by more
//! than [`CLOCK_TOLERANCE_MS`]. The agent run on the host in tests is never
//! given that flag.
//!
//! [`Hello::host_time_unix_ms`]: paddock_proto::Hello::host_time_unix_ms

use paddock_proto::{CLOCK_TOLERANCE_MS, unix_time_ms};

/// How far to step a clock reading `guest_ms` to `host_ms` (both in
/// milliseconds since the Unix epoch); `None` when no step is due: the host
/// gave no time (0), or the two are within [`CLOCK_TOLERANCE_MS`].
#[must_use]
pub fn due_step(host_ms: u64, guest_ms: u64) -> Option<i64> {
    if host_ms == 0 || host_ms.abs_diff(guest_ms) <= CLOCK_TOLERANCE_MS {
        return None;
    }
    let step = i128::from(host_ms) - i128::from(guest_ms);
    Some(i64::try_from(step).unwrap_or(if step > 0 { i64::MAX } else { i64::MIN }))
}

/// Steps the wall clock to `host_ms` if it is further off than the
/// tolerance. Returns the step taken in milliseconds, 0 if none.
///
/// # Errors
/// The kernel refuses (the agent is not root, or `CAP_SYS_TIME` is missing).
pub fn step_to(host_ms: u64) -> std::io::Result<i64> {
    let Some(step) = due_step(host_ms, unix_time_ms()) else {
        return Ok(0);
    };
    let spec = libc::timespec {
        tv_sec: libc::time_t::try_from(host_ms / 1000).map_err(std::io::Error::other)?,
        // Below 1e9, so it fits any `c_long`.
        tv_nsec: libc::c_long::try_from((host_ms % 1000) * 1_000_000)
            .map_err(std::io::Error::other)?,
    };
    // SAFETY: `spec` is a valid timespec that outlives the call.
    let rc = unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &raw const spec) };
    if rc == 0 {
        Ok(step)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_step_without_a_host_time_or_within_tolerance() {
        assert_eq!(due_step(0, 1_000_000), None);
        assert_eq!(due_step(1_000_000, 1_000_000), None);
        assert_eq!(due_step(1_000_000 + CLOCK_TOLERANCE_MS, 1_000_000), None);
        assert_eq!(due_step(1_000_000 - CLOCK_TOLERANCE_MS, 1_000_000), None);
    }

    #[test]
    fn a_guest_behind_or_ahead_is_stepped_by_the_difference() {
        let guest = 1_795_000_000_000;
        assert_eq!(due_step(guest + 3_600_000, guest), Some(3_600_000));
        assert_eq!(due_step(guest - 2_000, guest), Some(-2_000));
        assert_eq!(due_step(u64::MAX, 0), Some(i64::MAX));
    }
}
