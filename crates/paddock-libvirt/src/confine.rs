//! Confining a domain's QEMU with the limits libvirt does not set: the
//! memory hard limit and the thread limit of its [`Tuning`].
//!
//! libvirt 9.0 has no pids tunable, and its `<memtune><hard_limit>` also
//! raises QEMU's `RLIMIT_MEMLOCK`, which needs `CAP_SYS_RESOURCE` (refused
//! in a container). So [`crate::Vm::confine`] writes both into the domain's
//! cgroups itself, after each QEMU start (a boot, a restore, a revert that
//! starts a new QEMU):
//!
//! - memory: the domain's own memory cgroup, the one libvirt made for it
//!   (`.../qemu-<id>-<name>.libvirt-qemu` without systemd,
//!   `.../machine-qemu...scope/libvirt` with it): `memory.limit_in_bytes`
//!   and, where swap is accounted, `memory.memsw.limit_in_bytes` on cgroup
//!   v1; `memory.max` on v2.
//! - threads: on cgroup v1, where libvirt leaves QEMU in its own pids
//!   cgroup (the root here), a cgroup of Paddock's,
//!   `<that cgroup>/paddock/<domain>`, with `pids.max`, which QEMU is moved
//!   into; it is removed with the domain ([`crate::Vm::discard`]), and an
//!   empty one whose domain is gone is removed by the next confinement.
//!   On v2, `pids.max` of the domain's own cgroup.
//!
//! A cgroup is only ever limited when it is the domain's own: a QEMU that
//! shares one (libvirt told not to use the memory controller, say) is an
//! error, not a limit on its neighbours. Only a local `qemu:///system`
//! driver has a QEMU here to confine; the test driver runs no process, so
//! there is nothing to do there.
//!
//! The cgroups are found from `/proc/self/mountinfo` and
//! `/proc/<qemu pid>/cgroup`; the QEMU pid from libvirt's pid file, checked
//! against the process's command line.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use paddock_spec::Tuning;

/// Where libvirt's system QEMU driver writes `<domain>.pid`.
pub const QEMU_RUN_DIR: &str = "/run/libvirt/qemu";

/// The directory, in the pids hierarchy, holding Paddock's per-domain
/// pids cgroups (cgroup v1).
pub const PIDS_PARENT: &str = "paddock";

/// How often a pids cgroup is made and joined again when a sweep by
/// another confinement removed it in between.
const JOIN_ATTEMPTS: u32 = 3;

/// Why a domain's QEMU could not be confined.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// The connection is not to a local system QEMU driver, whose QEMU
    /// processes and cgroups are on this host.
    #[error("Cgroup limits need libvirt's local qemu:///system driver, not {uri}")]
    NotLocal {
        /// The connection's URI.
        uri: String,
    },
    /// libvirt's pid file of the domain could not be read.
    #[error("Cannot read the QEMU pid file {}", path.display())]
    PidFile {
        /// The pid file.
        path: PathBuf,
        /// The read's error.
        #[source]
        source: std::io::Error,
    },
    /// The pid file does not name a live QEMU of the domain.
    #[error("The pid file of {domain} names {found:?}, not a QEMU of that domain")]
    NotQemu {
        /// The domain.
        domain: String,
        /// What the pid file held.
        found: String,
    },
    /// A `/proc` or cgroup file could not be read.
    #[error("Cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The read's error.
        #[source]
        source: std::io::Error,
    },
    /// No hierarchy has the controller, or QEMU is in none of its cgroups.
    #[error("No {controller} cgroup holds process {pid}")]
    NoController {
        /// The controller, e.g. `memory`.
        controller: &'static str,
        /// The QEMU process.
        pid: u32,
    },
    /// QEMU's cgroup of a controller is not one libvirt made for the
    /// domain: limiting it would limit other processes too.
    #[error("The {controller} cgroup {} is not the domain's own", path.display())]
    SharedCgroup {
        /// The controller.
        controller: &'static str,
        /// The cgroup.
        path: PathBuf,
    },
    /// The domain's name cannot name a directory.
    #[error("The domain name {0:?} cannot name a cgroup")]
    BadName(String),
    /// A cgroup could not be made, written or joined.
    #[error("Cannot write {value} to {}", path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// What was written (`mkdir` for a directory).
        value: String,
        /// The write's error.
        #[source]
        source: std::io::Error,
    },
    /// The blocking-pool task doing the work panicked or was cancelled.
    #[error("The worker confining {domain} failed")]
    Worker {
        /// The domain.
        domain: String,
        /// Why the task ended.
        #[source]
        source: tokio::task::JoinError,
    },
}

/// What [`crate::Vm::confine`] applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Confinement {
    /// The QEMU process; `None` when there is none to confine (the test
    /// driver).
    pub pid: Option<u32>,
    /// The memory cgroup given the hard limit.
    pub memory_cgroup: Option<PathBuf>,
    /// The pids cgroup given the thread limit.
    pub pids_cgroup: Option<PathBuf>,
    /// Whether the pids cgroup is Paddock's own (cgroup v1), to be removed
    /// with the domain.
    pub pids_cgroup_owned: bool,
}

/// What a connection URI says about confining its domains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Driver {
    /// libvirt's system QEMU driver on this host.
    LocalQemu,
    /// The test driver: no processes.
    Test,
    /// Anything else: another host, a session daemon, another hypervisor.
    Other,
}

impl Driver {
    pub(crate) fn of_uri(uri: &str) -> Self {
        let base = uri.split('?').next().unwrap_or(uri);
        if base.starts_with("test:") || base.starts_with("test+") {
            Self::Test
        } else if base == "qemu:///system" || base == "qemu+unix:///system" {
            Self::LocalQemu
        } else {
            Self::Other
        }
    }
}

/// The pid in libvirt's pid file of `domain`, checked to be a QEMU of it.
pub(crate) fn qemu_pid(run_dir: &Path, domain: &str) -> Result<u32, ConfineError> {
    let path = run_dir.join(format!("{domain}.pid"));
    let text = std::fs::read_to_string(&path).map_err(|source| ConfineError::PidFile {
        path: path.clone(),
        source,
    })?;
    let not_qemu = || ConfineError::NotQemu {
        domain: domain.to_owned(),
        found: text.trim().to_owned(),
    };
    let pid: u32 = text.trim().parse().map_err(|_| not_qemu())?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).map_err(|_| not_qemu())?;
    // libvirt passes `-name guest=<name>,debug-threads=on`, commas doubled.
    let wanted = format!("guest={},", domain.replace(',', ",,"));
    let ours = cmdline
        .split(|&b| b == 0)
        .any(|arg| arg.starts_with(wanted.as_bytes()));
    if ours { Ok(pid) } else { Err(not_qemu()) }
}

/// A mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hierarchy {
    /// v1: the controllers (`memory`, `cpu`, `name=systemd`...); empty for v2.
    controllers: Vec<String>,
    /// The cgroup the mount shows at its mount point.
    root: String,
    /// Where it is mounted.
    mount_point: PathBuf,
}

impl Hierarchy {
    fn is_v2(&self) -> bool {
        self.controllers.is_empty()
    }
}

/// The cgroup hierarchies in `/proc/self/mountinfo` text.
fn hierarchies(mountinfo: &str) -> Vec<Hierarchy> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (mount, fs) = line.split_once(" - ")?;
            let mount: Vec<&str> = mount.split(' ').collect();
            let fs: Vec<&str> = fs.split(' ').collect();
            let (root, mount_point) = (mount.get(3)?, mount.get(4)?);
            let controllers = match *fs.first()? {
                "cgroup2" => Vec::new(),
                "cgroup" => fs
                    .get(2)?
                    .split(',')
                    .filter(|option| !matches!(*option, "rw" | "ro"))
                    .map(str::to_owned)
                    .collect(),
                _ => return None,
            };
            Some(Hierarchy {
                controllers,
                root: unescape_mount_field(root),
                mount_point: PathBuf::from(unescape_mount_field(mount_point)),
            })
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape_mount_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|digits| bytes[i] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d)))
            .and_then(|digits| u8::from_str_radix(std::str::from_utf8(digits).ok()?, 8).ok());
        if let Some(byte) = octal {
            out.push(byte);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where a process is for one controller: the hierarchy and the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Placement {
    v2: bool,
    /// The process's cgroup as `/proc/<pid>/cgroup` names it.
    cgroup: String,
    /// Its directory under the hierarchy's mount point.
    dir: PathBuf,
}

/// Where the process whose `/proc/<pid>/cgroup` is `proc_cgroup` is for
/// `controller`: a v1 hierarchy with the controller, or else the v2 one.
fn placement(hierarchies: &[Hierarchy], proc_cgroup: &str, controller: &str) -> Option<Placement> {
    let lines: Vec<(&str, &str)> = proc_cgroup
        .lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ':');
            let _id = fields.next()?;
            Some((fields.next()?, fields.next()?))
        })
        .collect();
    let v1 = hierarchies
        .iter()
        .find(|h| h.controllers.iter().any(|c| c == controller));
    let (hierarchy, cgroup) = match v1 {
        Some(hierarchy) => {
            let cgroup = lines
                .iter()
                .find(|(controllers, _)| controllers.split(',').any(|c| c == controller))?
                .1;
            (hierarchy, cgroup)
        }
        None => {
            let hierarchy = hierarchies.iter().find(|h| h.is_v2())?;
            let cgroup = lines
                .iter()
                .find(|(controllers, _)| controllers.is_empty())?
                .1;
            (hierarchy, cgroup)
        }
    };
    let relative = if hierarchy.root == "/" {
        cgroup
    } else {
        cgroup.strip_prefix(hierarchy.root.as_str())?
    };
    let relative = relative.trim_start_matches('/');
    if relative.split('/').any(|part| part == "..") {
        return None;
    }
    Some(Placement {
        v2: hierarchy.is_v2(),
        cgroup: cgroup.to_owned(),
        dir: hierarchy.mount_point.join(relative),
    })
}

/// The domain's own cgroup holding `dir`: `dir` less libvirt's per-thread
/// `emulator` leaf, if that is a cgroup libvirt made for one domain.
fn domain_cgroup(dir: &Path) -> Option<PathBuf> {
    let dir = if dir.file_name().is_some_and(|leaf| leaf == "emulator") {
        dir.parent()?
    } else {
        dir
    };
    let name = dir.file_name()?.to_str()?;
    let parent_is_scope = || {
        dir.parent()
            .and_then(Path::file_name)
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("machine-qemu") && n.ends_with(".scope"))
    };
    let ours = (name.starts_with("qemu-") && name.ends_with(".libvirt-qemu"))
        || (name.starts_with("machine-qemu") && name.ends_with(".scope"))
        || (name == "libvirt" && parent_is_scope());
    ours.then(|| dir.to_path_buf())
}

fn write(path: &Path, value: &str) -> Result<(), ConfineError> {
    std::fs::write(path, value).map_err(|source| ConfineError::Write {
        path: path.to_path_buf(),
        value: value.to_owned(),
        source,
    })
}

fn read(path: &Path) -> Result<String, ConfineError> {
    std::fs::read_to_string(path).map_err(|source| ConfineError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Applies `tuning`'s cgroup limits to the QEMU process `pid` of `domain`,
/// given the host's `mountinfo` (blocking; cgroup writes may reclaim).
pub(crate) fn apply(
    domain: &str,
    pid: u32,
    tuning: &Tuning,
    mountinfo: &str,
) -> Result<Confinement, ConfineError> {
    if domain.is_empty() || domain.contains('/') || domain.starts_with('.') {
        return Err(ConfineError::BadName(domain.to_owned()));
    }
    let hierarchies = hierarchies(mountinfo);
    let proc_cgroup = read(Path::new(&format!("/proc/{pid}/cgroup")))?;
    let mut done = Confinement {
        pid: Some(pid),
        ..Confinement::default()
    };
    if let Some(mib) = tuning.memory_hard_limit_mib {
        let place =
            placement(&hierarchies, &proc_cgroup, "memory").ok_or(ConfineError::NoController {
                controller: "memory",
                pid,
            })?;
        let dir = domain_cgroup(&place.dir).ok_or_else(|| ConfineError::SharedCgroup {
            controller: "memory",
            path: place.dir.clone(),
        })?;
        limit_memory(&dir, place.v2, mib.saturating_mul(1 << 20))?;
        done.memory_cgroup = Some(dir);
    }
    if let Some(max) = tuning.pids_max {
        let place =
            placement(&hierarchies, &proc_cgroup, "pids").ok_or(ConfineError::NoController {
                controller: "pids",
                pid,
            })?;
        let (dir, owned) = limit_threads(&place, domain, pid, max)?;
        done.pids_cgroup = Some(dir);
        done.pids_cgroup_owned = owned;
    }
    Ok(done)
}

/// Sets the memory hard limit of the domain's cgroup `dir` to `bytes`.
fn limit_memory(dir: &Path, v2: bool, bytes: u64) -> Result<(), ConfineError> {
    let bytes = bytes.to_string();
    if v2 {
        return write(&dir.join("memory.max"), &bytes);
    }
    let memory = dir.join("memory.limit_in_bytes");
    let memsw = dir.join("memory.memsw.limit_in_bytes");
    if !memsw.exists() {
        return write(&memory, &bytes);
    }
    // memory + swap may never be below memory alone: raise it first, lower
    // it last.
    let current: u64 = read(&memory)?.trim().parse().unwrap_or(u64::MAX);
    if bytes.parse::<u64>().unwrap_or(u64::MAX) >= current {
        write(&memsw, &bytes)?;
        write(&memory, &bytes)
    } else {
        write(&memory, &bytes)?;
        write(&memsw, &bytes)
    }
}

/// Limits the threads of QEMU `pid`: in the domain's own pids cgroup where
/// it has one, else in a cgroup of Paddock's (v1) that it is moved into.
/// Returns the cgroup and whether it is Paddock's.
fn limit_threads(
    place: &Placement,
    domain: &str,
    pid: u32,
    max: u32,
) -> Result<(PathBuf, bool), ConfineError> {
    let max = max.to_string();
    if let Some(own) = domain_cgroup(&place.dir) {
        write(&own.join("pids.max"), &max)?;
        return Ok((own, false));
    }
    if place.v2 {
        // libvirt makes a cgroup per domain on v2; QEMU outside one is not
        // moved behind libvirt's back.
        return Err(ConfineError::SharedCgroup {
            controller: "pids",
            path: place.dir.clone(),
        });
    }
    let ours = Path::new(PIDS_PARENT).join(domain);
    // Confining the same QEMU again: it is in its cgroup already.
    let (parent, group) = if place.cgroup.ends_with(&format!("/{}", ours.display())) {
        let parent = place.dir.parent().map(Path::to_path_buf);
        (
            parent.unwrap_or_else(|| place.dir.clone()),
            place.dir.clone(),
        )
    } else {
        (place.dir.join(PIDS_PARENT), place.dir.join(&ours))
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let joined = std::fs::create_dir_all(&group)
            .map_err(|source| ConfineError::Write {
                path: group.clone(),
                value: "mkdir".into(),
                source,
            })
            .and_then(|()| write(&group.join("pids.max"), &max))
            .and_then(|()| write(&group.join("cgroup.procs"), &pid.to_string()));
        match joined {
            Ok(()) => break,
            // Removed between the mkdir and the join by another domain's
            // confinement (a sweep) or removal (the parent).
            Err(ConfineError::Write { ref source, .. })
                if source.kind() == ErrorKind::NotFound && attempt < JOIN_ATTEMPTS => {}
            Err(err) => return Err(err),
        }
    }
    sweep_empty(&parent, &group);
    Ok((group, true))
}

/// Removes the empty pids cgroups under `parent` other than `keep`: those
/// of domains that ended without [`release`] (a crashed process, a domain
/// destroyed by hand). The kernel refuses to remove one with a process in
/// it, so a live domain's cgroup stays.
fn sweep_empty(parent: &Path, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path != keep && entry.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = std::fs::remove_dir(&path);
        }
    }
}

/// Removes Paddock's pids cgroup `group` of a domain that is gone, and
/// their parent once no other domain's is in it. One already removed is
/// fine; one still holding a process stays.
pub(crate) fn release(group: &Path) {
    match std::fs::remove_dir(group) {
        Err(err) if err.kind() != ErrorKind::NotFound => {
            tracing::debug!(group = %group.display(), error = %err, "a pids cgroup was left for the next sweep");
        }
        _ => {
            // Refused while another domain's cgroup is in it; a confinement
            // racing with this makes it again (see `limit_threads`).
            if let Some(parent) = group.parent() {
                let _ = std::fs::remove_dir(parent);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST_MOUNTINFO: &str = "\
1001 1000 0:45 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs rw,mode=755
1002 1001 0:46 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
1003 1001 0:47 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
1004 1001 0:48 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
1005 1001 0:49 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
1006 1001 0:50 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
1007 1001 0:51 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
1008 1000 8:1 / /var/lib ro shared:1 - ext4 /dev/sda1 rw
";

    /// `/proc/<qemu>/cgroup` on this project's hosts (cgroup v1, no systemd).
    const QEMU_V1: &str = "\
9:name=systemd:/
8:pids:/
4:memory:/machine/qemu-10-web-1.libvirt-qemu
1:cpu:/machine/qemu-10-web-1.libvirt-qemu/emulator
0::/machine/qemu-10-web-1.libvirt-qemu/emulator
";

    #[test]
    fn uris_say_whether_there_is_a_local_qemu() {
        assert_eq!(Driver::of_uri("qemu:///system"), Driver::LocalQemu);
        assert_eq!(
            Driver::of_uri("qemu+unix:///system?socket=/run/x"),
            Driver::LocalQemu
        );
        assert_eq!(Driver::of_uri("test:///default"), Driver::Test);
        assert_eq!(Driver::of_uri("test:///tmp/a.xml"), Driver::Test);
        assert_eq!(Driver::of_uri("qemu:///session"), Driver::Other);
        assert_eq!(Driver::of_uri("qemu+ssh://host/system"), Driver::Other);
    }

    #[test]
    fn hierarchies_are_read_from_mountinfo() {
        let found = hierarchies(HOST_MOUNTINFO);
        assert_eq!(found.len(), 6, "{found:?}");
        assert_eq!(found[2].controllers, ["memory"]);
        assert_eq!(found[2].mount_point, Path::new("/sys/fs/cgroup/memory"));
        assert_eq!(found[4].controllers, ["name=systemd"]);
        assert!(found[5].is_v2());
        let spaced = "1 0 0:1 /a\\040b /mnt/c\\040g rw - cgroup cgroup rw,cpu,cpuacct\n";
        let one = &hierarchies(spaced)[0];
        assert_eq!(one.controllers, ["cpu", "cpuacct"]);
        assert_eq!(one.root, "/a b");
        assert_eq!(one.mount_point, Path::new("/mnt/c g"));
        assert!(hierarchies("garbage\n1 2 3\n - \n").is_empty());
    }

    #[test]
    fn controllers_are_placed_by_hierarchy() {
        let h = hierarchies(HOST_MOUNTINFO);
        let memory = placement(&h, QEMU_V1, "memory").expect("memory");
        assert!(!memory.v2);
        assert_eq!(
            memory.dir,
            Path::new("/sys/fs/cgroup/memory/machine/qemu-10-web-1.libvirt-qemu")
        );
        let pids = placement(&h, QEMU_V1, "pids").expect("pids");
        assert_eq!(pids.dir, Path::new("/sys/fs/cgroup/pids"));
        let cpu = placement(&h, QEMU_V1, "cpu").expect("cpu");
        assert_eq!(
            domain_cgroup(&cpu.dir).expect("the domain's"),
            Path::new("/sys/fs/cgroup/cpu/machine/qemu-10-web-1.libvirt-qemu")
        );
        // Not in any v1 hierarchy: the v2 one.
        let io = placement(&h, QEMU_V1, "io").expect("v2");
        assert!(io.v2);
        assert_eq!(
            io.dir,
            Path::new("/sys/fs/cgroup/unified/machine/qemu-10-web-1.libvirt-qemu/emulator")
        );
        // A mount that shows a sub-tree (a container's namespace).
        let nested = "1 0 0:1 /lxc/c1 /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        let in_nested = "4:memory:/lxc/c1/machine/qemu-1-a.libvirt-qemu\n";
        assert_eq!(
            placement(&hierarchies(nested), in_nested, "memory")
                .expect("memory")
                .dir,
            Path::new("/sys/fs/cgroup/memory/machine/qemu-1-a.libvirt-qemu")
        );
        assert!(placement(&hierarchies(nested), "4:memory:/elsewhere\n", "memory").is_none());
        assert!(placement(&h, "4:memory:/../../etc\n", "memory").is_none());
        assert!(placement(&[], QEMU_V1, "memory").is_none());
    }

    #[test]
    fn only_a_domains_own_cgroup_is_limited() {
        for own in [
            "/m/machine/qemu-3-a.libvirt-qemu",
            "/m/machine/qemu-3-a.libvirt-qemu/emulator",
            "/m/machine.slice/machine-qemu\\x2d3\\x2da.scope",
            "/m/machine.slice/machine-qemu\\x2d3\\x2da.scope/libvirt/emulator",
        ] {
            assert!(domain_cgroup(Path::new(own)).is_some(), "{own}");
        }
        for shared in [
            "/m",
            "/m/machine",
            "/m/system.slice/libvirtd.service",
            "/m/emulator",
            "/m/other/libvirt",
        ] {
            assert!(domain_cgroup(Path::new(shared)).is_none(), "{shared}");
        }
    }

    /// A fake cgroup v1 tree under a temporary directory, with this host's
    /// layout, and its mountinfo.
    fn fake_v1(root: &Path, memsw: bool) -> (String, PathBuf) {
        let memory = root.join("memory/machine/qemu-10-web-1.libvirt-qemu");
        std::fs::create_dir_all(&memory).expect("memory");
        std::fs::write(
            memory.join("memory.limit_in_bytes"),
            "9223372036854771712\n",
        )
        .expect("limit");
        if memsw {
            std::fs::write(
                memory.join("memory.memsw.limit_in_bytes"),
                "9223372036854771712\n",
            )
            .expect("memsw");
        }
        std::fs::create_dir_all(root.join("pids")).expect("pids");
        let mountinfo = format!(
            "1 0 0:1 / {m} rw - cgroup cgroup rw,memory\n2 0 0:2 / {p} rw - cgroup cgroup rw,pids\n",
            m = root.join("memory").display(),
            p = root.join("pids").display(),
        );
        (mountinfo, memory)
    }

    #[test]
    fn memory_limits_keep_memsw_at_or_above_memory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, memory) = fake_v1(dir.path(), true);
        limit_memory(&memory, false, 640 << 20).expect("lowered");
        let read = |f: &str| std::fs::read_to_string(memory.join(f)).expect("read");
        assert_eq!(read("memory.limit_in_bytes"), (640u64 << 20).to_string());
        assert_eq!(
            read("memory.memsw.limit_in_bytes"),
            (640u64 << 20).to_string()
        );
        limit_memory(&memory, false, 700 << 20).expect("raised");
        assert_eq!(
            read("memory.memsw.limit_in_bytes"),
            (700u64 << 20).to_string()
        );
        let bare = tempfile::tempdir().expect("tempdir");
        let (_, memory) = fake_v1(bare.path(), false);
        limit_memory(&memory, false, 1 << 30).expect("no memsw");
        assert!(!memory.join("memory.memsw.limit_in_bytes").exists());
        let v2 = tempfile::tempdir().expect("tempdir");
        limit_memory(v2.path(), true, 1 << 30).expect("v2");
        assert_eq!(
            std::fs::read_to_string(v2.path().join("memory.max")).expect("max"),
            (1u64 << 30).to_string()
        );
    }

    #[test]
    fn threads_get_a_cgroup_of_paddocks_where_libvirt_made_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mountinfo, _) = fake_v1(dir.path(), false);
        let h = hierarchies(&mountinfo);
        let place = placement(&h, QEMU_V1, "pids").expect("pids");
        let stale = dir.path().join("pids/paddock/gone-domain");
        std::fs::create_dir_all(&stale).expect("stale");
        let (group, owned) = limit_threads(&place, "web-1", 4242, 130).expect("limited");
        assert!(owned);
        assert_eq!(group, dir.path().join("pids/paddock/web-1"));
        let read = |f: &str| std::fs::read_to_string(group.join(f)).expect("read");
        assert_eq!(read("pids.max"), "130");
        assert_eq!(read("cgroup.procs"), "4242");
        assert!(!stale.exists(), "an empty cgroup of a gone domain is swept");
        // The same QEMU confined again stays in its cgroup, not a nested one.
        let again = Placement {
            v2: false,
            cgroup: "/paddock/web-1".into(),
            dir: group.clone(),
        };
        let (same, _) = limit_threads(&again, "web-1", 4242, 131).expect("again");
        assert_eq!(same, group);
        assert_eq!(read("pids.max"), "131");
        // A domain's own pids cgroup (v1 with systemd, or v2) is limited in place.
        let scope = dir
            .path()
            .join("pids/machine.slice/machine-qemu\\x2d1\\x2dweb.scope");
        std::fs::create_dir_all(&scope).expect("scope");
        let own = Placement {
            v2: true,
            cgroup: "/machine.slice/machine-qemu\\x2d1\\x2dweb.scope".into(),
            dir: scope.clone(),
        };
        assert_eq!(
            limit_threads(&own, "web", 1, 99).expect("own"),
            (scope.clone(), false)
        );
        assert_eq!(
            std::fs::read_to_string(scope.join("pids.max")).expect("max"),
            "99"
        );
        let shared_v2 = Placement {
            v2: true,
            cgroup: "/system.slice/libvirtd.service".into(),
            dir: dir.path().join("pids"),
        };
        assert!(matches!(
            limit_threads(&shared_v2, "web", 1, 99),
            Err(ConfineError::SharedCgroup { .. })
        ));
        // On cgroupfs a cgroup without processes is removed with its
        // interface files; here an empty directory stands for one.
        let ended = dir.path().join("pids/paddock/ended");
        std::fs::create_dir_all(&ended).expect("ended");
        release(&ended);
        assert!(!ended.exists());
        release(&ended);
    }

    #[test]
    fn bad_names_and_missing_processes_are_errors() {
        let tuning = Tuning {
            pids_max: Some(10),
            ..Tuning::default()
        };
        for name in ["", "a/b", ".hidden"] {
            assert!(matches!(
                apply(name, 1, &tuning, HOST_MOUNTINFO),
                Err(ConfineError::BadName(_))
            ));
        }
        assert!(matches!(
            apply("web", u32::MAX, &tuning, HOST_MOUNTINFO),
            Err(ConfineError::Read { .. })
        ));
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            qemu_pid(dir.path(), "web"),
            Err(ConfineError::PidFile { .. })
        ));
        std::fs::write(dir.path().join("web.pid"), "not a pid").expect("write");
        assert!(matches!(
            qemu_pid(dir.path(), "web"),
            Err(ConfineError::NotQemu { .. })
        ));
        // This test process is no QEMU of `web`.
        std::fs::write(dir.path().join("web.pid"), std::process::id().to_string()).expect("write");
        assert!(matches!(
            qemu_pid(dir.path(), "web"),
            Err(ConfineError::NotQemu { .. })
        ));
    }
}
