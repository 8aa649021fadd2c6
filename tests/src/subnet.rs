//! Names and subnets for the libvirt networks that tests define, unique among
//! the tests that run at once on this machine.
//!
//! Tests run as separate processes (nextest) and several define NAT networks
//! at the same time. libvirt refuses a second bridge of the same name, and a
//! network whose subnet another running network already routes, so both must
//! differ between live tests: a bridge name carries the whole pid, and a
//! subnet is leased under a lock that the kernel releases when the holder's
//! process ends, however it ends.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd as _;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context as _, bail};

/// The directory of the lease files.
const LEASE_DIR: &str = "/run/lock";

/// The third octets a lease picks from: `FIRST_THIRD_OCTET..FIRST_THIRD_OCTET + THIRD_OCTETS`.
const FIRST_THIRD_OCTET: u32 = 20;
const THIRD_OCTETS: u32 = 200;

/// A tag of at most 6 characters (`[0-9a-z]`) that no other live process's
/// call returns, nor this process's previous 35 calls: the pid in base 36
/// (pids are at most 2^22, so at most 5 characters) and a per-process
/// counter. Sized for interface names (15 bytes) after a prefix of up to 9.
#[must_use]
pub fn net_tag() -> String {
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed) % 36;
    let mut tag = base36(std::process::id());
    tag.push_str(&base36(call));
    tag
}

fn base36(mut value: u32) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut reversed = Vec::new();
    loop {
        reversed.push(DIGITS[(value % 36) as usize]);
        value /= 36;
        if value == 0 {
            break;
        }
    }
    reversed.reverse();
    String::from_utf8(reversed).unwrap_or_default()
}

/// A /24 in `10.<second>.0.0/16` that no other live lease holds: its lock
/// file stays locked while the lease lives (or its process does).
#[derive(Debug)]
pub struct SubnetLease {
    subnet: Ipv4Addr,
    _lock: std::fs::File,
}

impl SubnetLease {
    /// Leases a free `10.<second>.<third>.0/24`, trying third octets from one
    /// the pid picks so that concurrent tests rarely contend.
    ///
    /// # Errors
    /// When a lease file cannot be opened, or all 200 are held.
    pub fn take(second: u8) -> anyhow::Result<Self> {
        let start = std::process::id() % THIRD_OCTETS;
        for step in 0..THIRD_OCTETS {
            let third = FIRST_THIRD_OCTET + (start + step) % THIRD_OCTETS;
            let third = u8::try_from(third).context("third octet")?;
            let path = format!("{LEASE_DIR}/paddock-test-subnet-10.{second}.{third}.lock");
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .with_context(|| format!("opening {path}"))?;
            // SAFETY: flock on a descriptor this function owns.
            let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if locked == 0 {
                return Ok(Self {
                    subnet: Ipv4Addr::new(10, second, third, 0),
                    _lock: file,
                });
            }
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(error).with_context(|| format!("locking {path}"));
            }
        }
        bail!("every /24 of 10.{second}.0.0/16 that tests use is leased")
    }

    /// The leased subnet's network address (`10.<second>.<third>.0`).
    #[must_use]
    pub fn subnet(&self) -> Ipv4Addr {
        self.subnet
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_short_and_differ_between_calls() {
        let first = net_tag();
        let second = net_tag();
        assert!(first.len() <= 6 && second.len() <= 6, "{first} {second}");
        assert_ne!(first, second);
        assert!(
            first
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        );
    }

    #[test]
    fn base36_spells_the_largest_pid_in_five_characters() {
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
        assert_eq!(base36(1 << 22).len(), 5);
    }

    #[test]
    fn two_live_leases_never_share_a_subnet() -> anyhow::Result<()> {
        if !std::path::Path::new(LEASE_DIR).is_dir() {
            return Ok(());
        }
        // Second octet 250 is used by no network test.
        let first = SubnetLease::take(250)?;
        let second = SubnetLease::take(250)?;
        assert_ne!(first.subnet(), second.subnet());
        let third_octet = first.subnet().octets()[2];
        drop(first);
        let again = SubnetLease::take(250)?;
        assert_eq!(
            again.subnet().octets()[2],
            third_octet,
            "a released lease is free again"
        );
        Ok(())
    }
}
