//! What a guest costs the host in memory, next to what the guest itself
//! uses: [`Guest::memory`] reads its QEMU's `smaps_rollup` (USS, PSS, RSS,
//! huge pages: [`ProcessMemory`]) and the guest's `/proc/meminfo` through
//! the agent ([`GuestMemory`]).
//!
//! The goal this measures: a slot's unique memory (USS) within a small
//! multiple of what its guest uses. RSS alone overstates a slot's cost as
//! soon as slots share pages (KSM merging the pages slots of one golden
//! hold alike), and understates what stays apart in huge pages.

use paddock_agent_client::{ClientError, Execute};
use paddock_libvirt::{HostMemoryError, ProcessMemory};

use super::Guest;

/// Why a guest's memory could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Its QEMU's figures could not be read.
    #[error("Cannot read the memory of the guest's QEMU")]
    Host(#[source] HostMemoryError),
    /// The agent could not run `cat /proc/meminfo`.
    #[error("Cannot ask the guest for its memory")]
    Agent(#[source] ClientError),
    /// The guest's `/proc/meminfo` did not read as one (the guest is the
    /// peer here: anything may come back).
    #[error("The guest's /proc/meminfo has no valid {0} field")]
    Meminfo(&'static str),
}

/// The guest's own view of its memory, in KiB, from its `/proc/meminfo`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuestMemory {
    /// `MemTotal`: what the guest kernel manages.
    pub total_kib: u64,
    /// `MemFree`: pages no one uses.
    pub free_kib: u64,
    /// `MemAvailable`: what could be had without swapping.
    pub available_kib: u64,
    /// `Buffers` + `Cached` + `SReclaimable`: the page cache and
    /// reclaimable slabs (`free`'s "buff/cache"; in this initramfs guest,
    /// the root file system is part of it).
    pub cache_kib: u64,
}

impl GuestMemory {
    /// Memory in use as `free` counts it: total minus free minus
    /// buff/cache.
    #[must_use]
    pub fn used_kib(&self) -> u64 {
        self.total_kib
            .saturating_sub(self.free_kib)
            .saturating_sub(self.cache_kib)
    }

    /// Memory holding anything, cache included (total minus free): the
    /// most of its RAM the guest has written since its last boot or reset
    /// that it still holds.
    #[must_use]
    pub fn in_use_with_cache_kib(&self) -> u64 {
        self.total_kib.saturating_sub(self.free_kib)
    }
}

/// Parses the text of a `/proc/meminfo`.
///
/// # Errors
/// [`MemoryError::Meminfo`] when `MemTotal`, `MemFree`, `MemAvailable`,
/// `Buffers` or `Cached` is missing or not a number, or free memory exceeds
/// the total (`SReclaimable` reads as 0 when missing).
pub fn parse_meminfo(text: &str) -> Result<GuestMemory, MemoryError> {
    let field = |name: &'static str| -> Option<u64> {
        text.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(':')?;
            let mut words = rest.split_whitespace();
            let value = words.next()?.parse().ok()?;
            (words.next() == Some("kB")).then_some(value)
        })
    };
    let required = |name: &'static str| field(name).ok_or(MemoryError::Meminfo(name));
    let memory = GuestMemory {
        total_kib: required("MemTotal")?,
        free_kib: required("MemFree")?,
        available_kib: required("MemAvailable")?,
        cache_kib: required("Buffers")?
            .saturating_add(required("Cached")?)
            .saturating_add(field("SReclaimable").unwrap_or(0)),
    };
    if memory.free_kib > memory.total_kib {
        return Err(MemoryError::Meminfo("MemFree"));
    }
    Ok(memory)
}

/// A guest's memory as the host pays for it and as the guest uses it,
/// read at (nearly) the same moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotMemory {
    /// The guest's QEMU process.
    pub host: ProcessMemory,
    /// The guest's own view.
    pub guest: GuestMemory,
}

/// The most of `/proc/meminfo` read back: a few KiB on Linux 6.x.
const MEMINFO_MAX_BYTES: u64 = 64 * 1024;

/// How long reading `/proc/meminfo` may take in the guest.
const MEMINFO_TIMEOUT_MS: u64 = 10_000;

impl Guest {
    /// What the guest's QEMU holds of the host's memory and what the guest
    /// uses. The host figures are read off the async workers; the guest's
    /// through the agent (`cat /proc/meminfo`), so a pool's slot must be
    /// leased and its policy must allow that command.
    ///
    /// # Errors
    /// [`MemoryError`]: no local QEMU (another libvirt connection), the
    /// agent failed, or the guest's answer did not parse.
    pub async fn memory(&self) -> Result<SlotMemory, MemoryError> {
        let host = self.vm().qemu_memory().await.map_err(MemoryError::Host)?;
        let guest = self.guest_memory().await?;
        Ok(SlotMemory { host, guest })
    }

    /// The guest's own view of its memory (`/proc/meminfo`, through the
    /// agent).
    ///
    /// # Errors
    /// As [`Guest::memory`], for the guest's half.
    pub async fn guest_memory(&self) -> Result<GuestMemory, MemoryError> {
        let mut request = Execute::argv(["cat", "/proc/meminfo"]);
        request.stdout_cap = Some(MEMINFO_MAX_BYTES);
        request.timeout_ms = Some(MEMINFO_TIMEOUT_MS);
        let out = self
            .client()
            .exec_collect(request)
            .await
            .map_err(MemoryError::Agent)?;
        let text = String::from_utf8_lossy(&out.stdout);
        parse_meminfo(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The guest's `/proc/meminfo` (6.1 cloud kernel, 256 MiB, idle).
    const MEMINFO: &str = "\
MemTotal:         233916 kB
MemFree:          180228 kB
MemAvailable:     197100 kB
Buffers:               0 kB
Cached:            16572 kB
SwapCached:            0 kB
Active:             3052 kB
SReclaimable:       3216 kB
SUnreclaim:         9868 kB
";

    #[test]
    fn meminfo_gives_used_and_cache_like_free() {
        let m = parse_meminfo(MEMINFO).expect("parses");
        assert_eq!(
            m,
            GuestMemory {
                total_kib: 233_916,
                free_kib: 180_228,
                available_kib: 197_100,
                cache_kib: 19_788,
            }
        );
        assert_eq!(m.used_kib(), 233_916 - 180_228 - 19_788);
        assert_eq!(m.in_use_with_cache_kib(), 233_916 - 180_228);
    }

    #[test]
    fn a_hostile_meminfo_is_an_error_not_a_figure() {
        for (from, to, field) in [
            ("MemTotal:         233916 kB", "", "MemTotal"),
            ("MemFree:          180228 kB", "MemFree: -1 kB", "MemFree"),
            (
                "Cached:            16572 kB",
                "Cached: 99999999999999999999999 kB",
                "Cached",
            ),
            (
                "MemFree:          180228 kB",
                "MemFree: 999999 kB",
                "MemFree",
            ),
        ] {
            let text = MEMINFO.replace(from, to);
            match parse_meminfo(&text) {
                Err(MemoryError::Meminfo(found)) => assert_eq!(found, field),
                other => panic!("{field}: {other:?}"),
            }
        }
        assert!(parse_meminfo("\u{0}\u{ff}garbage").is_err());
        // `SwapCached` is not `Cached`, and prefixes do not match.
        let text = MEMINFO.replace("Cached:            16572 kB\n", "");
        assert!(matches!(
            parse_meminfo(&text),
            Err(MemoryError::Meminfo("Cached"))
        ));
    }
}
