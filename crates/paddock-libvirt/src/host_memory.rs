//! What a domain's QEMU costs the host: its memory as the kernel accounts
//! it (`/proc/<pid>/smaps_rollup`) and the CPU time its threads used
//! (`/proc/<pid>/task/*/schedstat`).
//!
//! Resident memory (RSS) alone counts every page a QEMU maps, also those it
//! shares with other processes (the same libraries, pages KSM merged
//! between slots of one golden). What a slot keeps apart from every other
//! process is its unique set (USS: `Private_Clean` + `Private_Dirty`), and
//! its fair share of the host is the proportional set (PSS: each shared
//! page divided among its sharers), so `USS <= PSS <= RSS`. Transparent
//! huge pages (`AnonHugePages`) are reported apart: one 2 MiB page stays
//! whole for a single 4 KiB the guest touched.
//!
//! The figures are read from `/proc` on this host, so only a local
//! `qemu:///system` connection has them ([`crate::Vm::qemu_memory`],
//! [`crate::Vm::qemu_cpu_time`]); the parsers are pure and tested on text.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a QEMU's memory or CPU time could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HostMemoryError {
    /// No QEMU of the domain on this host (another connection, or it is
    /// not running).
    #[error("No QEMU process of {domain} on this host")]
    NoProcess {
        /// The domain.
        domain: String,
        /// Why its pid is unknown.
        #[source]
        source: crate::ConfineError,
    },
    /// A `/proc` file could not be read (the process ended, say).
    #[error("Cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The read's error.
        #[source]
        source: std::io::Error,
    },
    /// A `/proc` file lacks a field or has one that is not a number.
    #[error("{} has no valid {field} field", path.display())]
    Field {
        /// The file.
        path: PathBuf,
        /// The field, e.g. `Pss`.
        field: &'static str,
    },
    /// The blocking-pool task doing the reads panicked or was cancelled.
    #[error("The worker reading the QEMU of {domain} failed")]
    Worker {
        /// The domain.
        domain: String,
        /// Why the task ended.
        #[source]
        source: tokio::task::JoinError,
    },
}

/// One process's memory, in KiB, from `/proc/<pid>/smaps_rollup`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessMemory {
    /// Resident set (`Rss`): every page mapped and present, shared or not.
    pub rss_kib: u64,
    /// Proportional set (`Pss`): each resident page divided by the number
    /// of processes mapping it.
    pub pss_kib: u64,
    /// Unique set (USS, `Private_Clean` + `Private_Dirty`): resident pages
    /// no other process maps; what the host gets back when the process
    /// ends.
    pub uss_kib: u64,
    /// Resident pages mapped by other processes too (`Shared_Clean` +
    /// `Shared_Dirty`), KSM's merged pages among them.
    pub shared_kib: u64,
    /// Anonymous memory in transparent huge pages (`AnonHugePages`).
    pub anon_huge_pages_kib: u64,
    /// Anonymous memory in total (`Anonymous`).
    pub anonymous_kib: u64,
    /// Memory swapped out (`Swap`).
    pub swap_kib: u64,
}

impl ProcessMemory {
    /// `kib` in MiB, rounded to one decimal (for reports).
    #[must_use]
    pub fn mib(kib: u64) -> f64 {
        // KiB counts of real processes are far below 2^52: exact in f64.
        #[allow(clippy::cast_precision_loss)]
        let mib = kib as f64 / 1024.0;
        (mib * 10.0).round() / 10.0
    }
}

/// Parses `/proc/<pid>/smaps_rollup`; `path` names it in errors.
///
/// # Errors
/// [`HostMemoryError::Field`] when `Rss`, `Pss`, `Private_Clean`,
/// `Private_Dirty`, `Shared_Clean`, `Shared_Dirty` or `Anonymous` is
/// missing or not a number (`AnonHugePages` and `Swap` read as 0 when the
/// kernel does not report them).
pub fn parse_smaps_rollup(text: &str, path: &Path) -> Result<ProcessMemory, HostMemoryError> {
    let field = |name: &'static str| -> Option<u64> {
        text.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(':')?;
            let mut words = rest.split_whitespace();
            let value = words.next()?.parse().ok()?;
            (words.next() == Some("kB")).then_some(value)
        })
    };
    let required = |name: &'static str| {
        field(name).ok_or_else(|| HostMemoryError::Field {
            path: path.to_path_buf(),
            field: name,
        })
    };
    Ok(ProcessMemory {
        rss_kib: required("Rss")?,
        pss_kib: required("Pss")?,
        uss_kib: required("Private_Clean")?.saturating_add(required("Private_Dirty")?),
        shared_kib: required("Shared_Clean")?.saturating_add(required("Shared_Dirty")?),
        anon_huge_pages_kib: field("AnonHugePages").unwrap_or(0),
        anonymous_kib: required("Anonymous")?,
        swap_kib: field("Swap").unwrap_or(0),
    })
}

/// Reads the memory of process `pid` (blocking).
///
/// # Errors
/// The file cannot be read or parsed.
pub fn read_process_memory(pid: u32) -> Result<ProcessMemory, HostMemoryError> {
    let path = PathBuf::from(format!("/proc/{pid}/smaps_rollup"));
    let text = std::fs::read_to_string(&path).map_err(|source| HostMemoryError::Read {
        path: path.clone(),
        source,
    })?;
    parse_smaps_rollup(&text, &path)
}

/// The time on a CPU from one `/proc/<pid>/task/<tid>/schedstat` (its
/// first field, nanoseconds); `path` names it in errors.
///
/// # Errors
/// [`HostMemoryError::Field`] when the first field is not a number.
pub fn parse_schedstat(text: &str, path: &Path) -> Result<Duration, HostMemoryError> {
    text.split_whitespace()
        .next()
        .and_then(|ns| ns.parse().ok())
        .map(Duration::from_nanos)
        .ok_or_else(|| HostMemoryError::Field {
            path: path.to_path_buf(),
            field: "run time",
        })
}

/// The CPU time all threads of process `pid` used so far (blocking): the
/// sum of their schedstat run times, in nanoseconds, so short intervals of
/// an idle process measure without the 10 ms ticks of `/proc/<pid>/stat`.
/// A thread that ends between the listing and its read is left out.
///
/// # Errors
/// The task directory cannot be listed, or a schedstat has no number.
pub fn read_process_cpu_time(pid: u32) -> Result<Duration, HostMemoryError> {
    let tasks = PathBuf::from(format!("/proc/{pid}/task"));
    let entries = std::fs::read_dir(&tasks).map_err(|source| HostMemoryError::Read {
        path: tasks.clone(),
        source,
    })?;
    let mut total = Duration::ZERO;
    for entry in entries.flatten() {
        let path = entry.path().join("schedstat");
        // A thread may end between the listing and its read.
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        total = total.saturating_add(parse_schedstat(&text, &path)?);
    }
    Ok(total)
}

/// Where the kernel exposes KSM (kernel samepage merging).
pub const KSM_SYSFS: &str = "/sys/kernel/mm/ksm";

/// The host's KSM state: whether it runs and what it merged, from
/// [`KSM_SYSFS`].
///
/// KSM is a host-wide operator setting, not Paddock's: it merges identical
/// pages of every process that marked them mergeable, and QEMU marks all
/// guest RAM mergeable unless the domain says `<nosharepages/>`. The
/// slots of one golden hold nearly the same memory, so KSM gives most of it
/// back; the price is ksmd's CPU and a side channel between guests (a
/// guest can time a write to tell whether another guest holds a page), so
/// whether guests of different tenants may share pages is the operator's
/// call. This reads the state for a check or a metric.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KsmStatus {
    /// `run`: 0 stopped, 1 running, 2 stopped with everything unmerged.
    pub run: u64,
    /// `pages_shared`: merged pages in use (each stands for many).
    pub pages_shared: u64,
    /// `pages_sharing`: mappings of those pages, i.e. pages saved.
    pub pages_sharing: u64,
    /// `full_scans`: passes over all mergeable memory so far.
    pub full_scans: u64,
    /// `pages_to_scan`: pages scanned per wake-up.
    pub pages_to_scan: u64,
    /// `sleep_millisecs`: the pause between wake-ups.
    pub sleep_millisecs: u64,
}

impl KsmStatus {
    /// Reads the state from the KSM directory `dir` (normally
    /// [`KSM_SYSFS`]), blocking.
    ///
    /// # Errors
    /// A file cannot be read (no KSM in this kernel) or holds no number.
    pub fn read_from(dir: &Path) -> Result<Self, HostMemoryError> {
        let read = |field: &'static str| -> Result<u64, HostMemoryError> {
            let path = dir.join(field);
            let text = std::fs::read_to_string(&path).map_err(|source| HostMemoryError::Read {
                path: path.clone(),
                source,
            })?;
            text.trim()
                .parse()
                .map_err(|_| HostMemoryError::Field { path, field })
        };
        Ok(Self {
            run: read("run")?,
            pages_shared: read("pages_shared")?,
            pages_sharing: read("pages_sharing")?,
            full_scans: read("full_scans")?,
            pages_to_scan: read("pages_to_scan")?,
            sleep_millisecs: read("sleep_millisecs")?,
        })
    }

    /// Whether ksmd is merging pages now.
    #[must_use]
    pub fn running(&self) -> bool {
        self.run == 1
    }
}

impl crate::Vm {
    /// The memory of the domain's running QEMU (USS, PSS, RSS, huge pages),
    /// read off the async workers.
    ///
    /// # Errors
    /// [`HostMemoryError::NoProcess`] without a local QEMU of the domain;
    /// its `/proc` files cannot be read.
    pub async fn qemu_memory(&self) -> Result<ProcessMemory, HostMemoryError> {
        self.read_qemu(read_process_memory).await
    }

    /// The CPU time all threads of the domain's running QEMU used since it
    /// started, read off the async workers.
    ///
    /// # Errors
    /// As [`crate::Vm::qemu_memory`].
    pub async fn qemu_cpu_time(&self) -> Result<Duration, HostMemoryError> {
        self.read_qemu(read_process_cpu_time).await
    }

    async fn read_qemu<T: Send + 'static>(
        &self,
        read: fn(u32) -> Result<T, HostMemoryError>,
    ) -> Result<T, HostMemoryError> {
        let vm = self.clone();
        tokio::task::spawn_blocking(move || {
            let pid = vm.qemu_pid().map_err(|source| HostMemoryError::NoProcess {
                domain: vm.name().to_owned(),
                source,
            })?;
            read(pid)
        })
        .await
        .map_err(|source| HostMemoryError::Worker {
            domain: self.name().to_owned(),
            source,
        })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A QEMU's rollup as Linux 6.x prints it (a slot here, in kB).
    const ROLLUP: &str = "\
55d7c6a4e000-7ffd2b9f1000 ---p 00000000 00:00 0                          [rollup]
Rss:              153600 kB
Pss:              137216 kB
Pss_Dirty:        130000 kB
Pss_Anon:         128000 kB
Pss_File:           9216 kB
Pss_Shmem:             0 kB
Shared_Clean:      20480 kB
Shared_Dirty:       2048 kB
Private_Clean:      1024 kB
Private_Dirty:    130048 kB
Referenced:       153600 kB
Anonymous:        131072 kB
KSM:                   0 kB
LazyFree:              0 kB
AnonHugePages:    100352 kB
ShmemPmdMapped:        0 kB
FilePmdMapped:         0 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
Swap:                512 kB
SwapPss:             512 kB
Locked:                0 kB
";

    #[test]
    fn a_rollup_gives_rss_pss_uss_and_huge_pages() {
        let m = parse_smaps_rollup(ROLLUP, Path::new("rollup")).expect("parses");
        assert_eq!(
            m,
            ProcessMemory {
                rss_kib: 153_600,
                pss_kib: 137_216,
                uss_kib: 131_072,
                shared_kib: 22_528,
                anon_huge_pages_kib: 100_352,
                anonymous_kib: 131_072,
                swap_kib: 512,
            }
        );
        // `Pss_Dirty` and friends do not stand in for `Pss`.
        let only_pss_dirty = ROLLUP.replace("Pss: ", "Xss: ");
        assert!(matches!(
            parse_smaps_rollup(&only_pss_dirty, Path::new("r")),
            Err(HostMemoryError::Field { field: "Pss", .. })
        ));
    }

    #[test]
    fn a_rollup_without_a_field_or_with_garbage_is_an_error() {
        for (from, to, field) in [
            ("Rss:              153600 kB", "", "Rss"),
            (
                "Private_Dirty:    130048 kB",
                "Private_Dirty: lots kB",
                "Private_Dirty",
            ),
            (
                "Anonymous:        131072 kB",
                "Anonymous: 12 MB",
                "Anonymous",
            ),
        ] {
            let text = ROLLUP.replace(from, to);
            match parse_smaps_rollup(&text, Path::new("r")) {
                Err(HostMemoryError::Field { field: found, .. }) => assert_eq!(found, field),
                other => panic!("{field}: {other:?}"),
            }
        }
        // Optional fields read as zero.
        let text = ROLLUP
            .replace("AnonHugePages:    100352 kB", "")
            .replace("Swap:                512 kB", "");
        let m = parse_smaps_rollup(&text, Path::new("r")).expect("parses");
        assert_eq!((m.anon_huge_pages_kib, m.swap_kib), (0, 0));
        assert!(parse_smaps_rollup("", Path::new("r")).is_err());
    }

    #[test]
    fn schedstat_gives_the_run_time() {
        let t = parse_schedstat("123456789 2000 31\n", Path::new("s")).expect("parses");
        assert_eq!(t, Duration::from_nanos(123_456_789));
        assert!(parse_schedstat("", Path::new("s")).is_err());
        assert!(parse_schedstat("-5 1 1", Path::new("s")).is_err());
    }

    #[test]
    fn this_process_has_memory_and_cpu_time() {
        let pid = std::process::id();
        let m = read_process_memory(pid).expect("reads");
        assert!(m.uss_kib <= m.pss_kib && m.pss_kib <= m.rss_kib, "{m:?}");
        assert!(m.rss_kib > 0);
        // Spin a little so the run time cannot be zero.
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(5) {}
        assert!(read_process_cpu_time(pid).expect("reads") > Duration::ZERO);
        assert!(matches!(
            read_process_memory(u32::MAX),
            Err(HostMemoryError::Read { .. })
        ));
    }

    #[test]
    fn ksm_status_reads_its_files_and_refuses_garbage() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (field, value) in [
            ("run", "1\n"),
            ("pages_shared", "2000\n"),
            ("pages_sharing", "50000\n"),
            ("full_scans", "7\n"),
            ("pages_to_scan", "100\n"),
            ("sleep_millisecs", "20\n"),
        ] {
            std::fs::write(dir.path().join(field), value).expect("write");
        }
        let status = KsmStatus::read_from(dir.path()).expect("reads");
        assert_eq!(
            status,
            KsmStatus {
                run: 1,
                pages_shared: 2000,
                pages_sharing: 50_000,
                full_scans: 7,
                pages_to_scan: 100,
                sleep_millisecs: 20,
            }
        );
        assert!(status.running());
        std::fs::write(dir.path().join("full_scans"), "many").expect("write");
        assert!(matches!(
            KsmStatus::read_from(dir.path()),
            Err(HostMemoryError::Field {
                field: "full_scans",
                ..
            })
        ));
        std::fs::remove_file(dir.path().join("run")).expect("remove");
        assert!(matches!(
            KsmStatus::read_from(dir.path()),
            Err(HostMemoryError::Read { .. })
        ));
    }

    #[test]
    fn mib_rounds_to_a_tenth() {
        assert!((ProcessMemory::mib(153_600) - 150.0).abs() < f64::EPSILON);
        assert!((ProcessMemory::mib(1_100) - 1.1).abs() < f64::EPSILON);
    }
}
