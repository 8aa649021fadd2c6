//! A cgroup v2 per execution, so that its whole process tree ends with it.
//!
//! A process group does not hold a tree: `setsid`, `setpgid` and every
//! daemon's double fork leave it. A cgroup does: a process cannot leave its
//! cgroup without writing to another one's `cgroup.procs`, and
//! `cgroup.kill` (Linux 5.14) kills every member at once, those forking
//! while it runs included.
//!
//! At start the agent looks for the cgroup v2 hierarchy it runs in
//! ([`CgroupRoot::detect`]): its own cgroup, read from `/proc/self/cgroup`,
//! under the mount point of the `cgroup2` file system, read from
//! `/proc/self/mountinfo`. It makes a child cgroup there to check that it
//! may, and that the kernel has `cgroup.kill`. In the guest the image's
//! `rcS` mounts the hierarchy at `/sys/fs/cgroup`; a host that runs the
//! agent (the tests do) usually has one, often at `/sys/fs/cgroup` or
//! `/sys/fs/cgroup/unified`. Without one (not root, no cgroup2 mounted, an
//! older kernel) the agent falls back to the process group, and says so by
//! not announcing [`paddock_proto::capability::CONTAIN_TREE`].
//!
//! Each execution gets a cgroup of its own below the agent's, and no
//! process of the execution ever runs outside it: either the agent binary
//! steps into the cgroup for the length of the spawn, so the child is born
//! there and the spawn is a `posix_spawn` (vfork) rather than a fork of the
//! whole agent ([`ExecCgroup::spawn_inside`], `Config::spawn_inside_cgroup`),
//! or the child joins it between fork and exec (terminals, and agents
//! embedded in a process with other threads). When the execution ends, the agent kills the cgroup and
//! waits until it is empty. Then it keeps the empty cgroup for a later
//! execution (at most [`MAX_SPARES`] of them) instead of removing it:
//! making and removing a cgroup cost about as much as the fork and exec of
//! a small program in a one-vCPU guest under TCG (`cargo bench --bench
//! agent_rtt` measures both). A kept cgroup is handed out again only if it
//! is still empty; any other is killed and removed. A new cgroup is named
//! `paddock-exec-<unique name of the request>`; a reused one keeps the name
//! of the first request it held. The kept cgroups are removed when the
//! agent's [`CgroupRoot`] goes (the agent stops).

use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{debug, error, warn};

/// How long the agent waits for a killed cgroup to empty; the kernel
/// empties it as fast as the processes can die, well within this.
const EMPTY_TIMEOUT: Duration = Duration::from_secs(5);

/// Most empty cgroups kept for later executions.
pub(crate) const MAX_SPARES: usize = 4;

/// Why the agent cannot, or could not, contain an execution in a cgroup.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CgroupError {
    /// `/proc/self/cgroup` or `/proc/self/mountinfo` could not be read.
    #[error("Could not read {path}")]
    Proc {
        path: &'static str,
        #[source]
        source: io::Error,
    },
    /// No cgroup v2 hierarchy holds the agent.
    #[error("The agent is in no mounted cgroup v2 hierarchy")]
    NoHierarchy,
    /// The kernel has no `cgroup.kill` (before Linux 5.14).
    #[error("The kernel cannot kill a cgroup (no cgroup.kill in `{0}`)")]
    NoKill(PathBuf),
    /// The agent may not move processes into its own cgroup's children.
    #[error("The agent may not write to `{0}`")]
    NotWritable(PathBuf),
    /// A cgroup directory could not be made.
    #[error("Could not create the cgroup `{path}`")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The agent's own cgroup, under which each execution gets one.
#[derive(Debug, Clone)]
pub(crate) struct CgroupRoot {
    dir: PathBuf,
    /// `<dir>/cgroup.procs`: the agent's own cgroup.
    home: Arc<CString>,
    spares: Arc<Spares>,
}

/// Empty execution cgroups kept for reuse; removed when the last holder
/// goes.
#[derive(Debug, Default)]
struct Spares(Mutex<Vec<PathBuf>>);

impl Spares {
    fn pop(&self) -> Option<PathBuf> {
        crate::lock(&self.0).pop()
    }

    /// Keeps `dir` unless enough are kept; returns it if not kept.
    fn keep(&self, dir: PathBuf) -> Option<PathBuf> {
        let mut spares = crate::lock(&self.0);
        if spares.len() < MAX_SPARES {
            spares.push(dir);
            None
        } else {
            Some(dir)
        }
    }
}

impl Drop for Spares {
    fn drop(&mut self) {
        for dir in std::mem::take(&mut *crate::lock(&self.0)) {
            if let Err(err) = std::fs::remove_dir(&dir) {
                debug!(%err, cgroup = %dir.display(), "Could not remove a kept cgroup");
            }
        }
    }
}

impl CgroupRoot {
    /// Finds the agent's cgroup v2 directory and checks that the agent can
    /// make, kill and remove cgroups below it.
    ///
    /// # Errors
    /// [`CgroupError`] saying why not.
    pub(crate) fn detect() -> Result<Self, CgroupError> {
        let read = |path: &'static str| {
            std::fs::read_to_string(path).map_err(|source| CgroupError::Proc { path, source })
        };
        let own = own_cgroup(&read("/proc/self/cgroup")?).ok_or(CgroupError::NoHierarchy)?;
        let dir =
            cgroup2_dir(&read("/proc/self/mountinfo")?, &own).ok_or(CgroupError::NoHierarchy)?;
        let procs = dir.join("cgroup.procs");
        let procs_c = CString::new(procs.as_os_str().as_bytes())
            .map_err(|_| CgroupError::NotWritable(procs.clone()))?;
        // SAFETY: access(2) reads a NUL-terminated path valid for the call.
        if unsafe { libc::access(procs_c.as_ptr(), libc::W_OK) } != 0 {
            return Err(CgroupError::NotWritable(procs));
        }
        let root = Self {
            dir,
            home: Arc::new(procs_c),
            spares: Arc::default(),
        };
        // Unique among the agents of this process too (tests start many).
        static PROBES: AtomicU64 = AtomicU64::new(0);
        let probe = PROBES.fetch_add(1, Ordering::Relaxed);
        let probe = root.create(&format!("paddock-probe-{}-{probe}", std::process::id()))?;
        let has_kill = probe.dir.join("cgroup.kill").exists();
        let probe_dir = probe.dir.clone();
        drop(probe);
        if !has_kill {
            return Err(CgroupError::NoKill(probe_dir));
        }
        Ok(root)
    }

    /// The directory executions' cgroups are made in.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// An empty cgroup for an execution: a kept one that is still empty,
    /// or else a new one named `name` below the agent's.
    ///
    /// # Errors
    /// [`CgroupError::Create`] with mkdir's error.
    pub(crate) fn create(&self, name: &str) -> Result<ExecCgroup, CgroupError> {
        while let Some(dir) = self.spares.pop() {
            if let Ok(cgroup) = self.at(dir) {
                if cgroup.is_empty() {
                    return Ok(cgroup);
                }
                // Something joined it meanwhile: it is killed and the
                // cgroup removed once empty, on a task of its own.
                warn!(cgroup = %cgroup.dir.display(), "A kept cgroup was not empty");
                tokio::spawn(cgroup.discard());
            }
        }
        let dir = self.dir.join(name);
        std::fs::create_dir(&dir).map_err(|source| CgroupError::Create {
            path: dir.clone(),
            source,
        })?;
        self.at(dir)
    }

    /// The execution cgroup at `dir`, which exists.
    fn at(&self, dir: PathBuf) -> Result<ExecCgroup, CgroupError> {
        match CString::new(dir.join("cgroup.procs").as_os_str().as_bytes()) {
            Ok(procs) => Ok(ExecCgroup {
                dir,
                procs,
                home: Arc::clone(&self.home),
                removed: false,
                spares: Arc::clone(&self.spares),
            }),
            Err(_) => Err(CgroupError::Create {
                path: dir,
                source: io::ErrorKind::InvalidInput.into(),
            }),
        }
    }
}

/// One execution's cgroup. Dropping it kills what is left in it and
/// removes it if it is empty by then.
#[derive(Debug)]
pub(crate) struct ExecCgroup {
    dir: PathBuf,
    /// `<dir>/cgroup.procs`, ready for the child to write between fork and
    /// exec, where nothing may allocate.
    procs: CString,
    /// The agent's own cgroup's `cgroup.procs`, to go back to after
    /// [`ExecCgroup::spawn_inside`].
    home: Arc<CString>,
    removed: bool,
    /// Where the cgroup goes once it ended empty.
    spares: Arc<Spares>,
}

impl ExecCgroup {
    /// The path of `cgroup.procs`, for [`join`].
    pub(crate) fn procs(&self) -> CString {
        self.procs.clone()
    }

    /// Runs `spawn` with the whole agent inside this cgroup, so that the
    /// process it starts is born in it, then moves the agent back to its
    /// own cgroup (see [`crate::Config::spawn_inside_cgroup`] for why and
    /// when). No process of the execution ever runs outside the cgroup.
    ///
    /// # Errors
    /// The agent could not enter the cgroup (nothing was spawned), the spawn
    /// failed, or the agent could not leave the cgroup: then what was
    /// spawned is dropped, and the cgroup is abandoned, never killed or
    /// removed, since the agent is in it.
    pub(crate) fn spawn_inside<T>(
        &mut self,
        spawn: impl FnOnce() -> io::Result<T>,
    ) -> io::Result<T> {
        join(&self.procs)?;
        let spawned = spawn();
        match join(&self.home) {
            Ok(()) => spawned,
            Err(err) => {
                self.removed = true;
                error!(%err, cgroup = %self.dir.display(), "The agent could not leave an execution's cgroup; abandoning it");
                Err(err)
            }
        }
    }

    /// Kills every process in the cgroup (and those it forks meanwhile).
    pub(crate) fn kill(&self) {
        if let Err(err) = std::fs::write(self.dir.join("cgroup.kill"), b"1") {
            warn!(%err, cgroup = %self.dir.display(), "Could not kill the cgroup");
        }
    }

    /// Whether no process is left in the cgroup.
    fn is_empty(&self) -> bool {
        std::fs::read_to_string(self.dir.join("cgroup.events"))
            .is_ok_and(|events| events.lines().any(|line| line == "populated 0"))
    }

    /// Kills what is left, waits until the cgroup is empty, and keeps it
    /// for a later execution (or removes it, if enough are kept).
    pub(crate) async fn end(mut self) {
        if self.is_empty() {
            // The usual case: the supervisor killed the cgroup when the
            // leader exited, and the kernel emptied it.
            self.recycle();
            return;
        }
        if self.wait_empty().await {
            self.recycle();
        }
    }

    /// Kills what is left, waits until the cgroup is empty, and removes it.
    async fn discard(mut self) {
        if self.wait_empty().await {
            self.remove();
        }
    }

    /// Kills what is left and waits until the cgroup is empty; false if it
    /// did not empty in time.
    async fn wait_empty(&self) -> bool {
        self.kill();
        let mut pause = Duration::from_millis(1);
        let deadline = tokio::time::Instant::now() + EMPTY_TIMEOUT;
        while !self.is_empty() {
            if tokio::time::Instant::now() >= deadline {
                warn!(cgroup = %self.dir.display(), "The killed cgroup did not empty");
                return false;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
        true
    }

    /// Hands the (empty) cgroup to the spares, or removes it.
    fn recycle(&mut self) {
        match self.spares.keep(self.dir.clone()) {
            None => self.removed = true,
            Some(_) => self.remove(),
        }
    }

    fn remove(&mut self) {
        match std::fs::remove_dir(&self.dir) {
            Ok(()) => self.removed = true,
            Err(err) => debug!(%err, cgroup = %self.dir.display(), "Could not remove the cgroup"),
        }
    }
}

impl Drop for ExecCgroup {
    fn drop(&mut self) {
        if !self.removed {
            self.kill();
            self.remove();
        }
    }
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is
/// `procs`. Only async-signal-safe calls and no allocation: it runs in the
/// child between fork and exec.
///
/// # Errors
/// The error of open(2) or write(2).
pub(crate) fn join(procs: &CStr) -> io::Result<()> {
    // SAFETY: open(2) reads a NUL-terminated path valid for the call.
    let fd = unsafe { libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // "0" names the writing process.
    // SAFETY: write(2) reads one byte from a static buffer.
    let written = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
    let result = if written == 1 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    };
    // SAFETY: `fd` was opened above and is closed once.
    unsafe { libc::close(fd) };
    result
}

/// The agent's cgroup v2 path (`/` for the root) from `/proc/self/cgroup`.
fn own_cgroup(cgroup: &str) -> Option<String> {
    cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::to_owned)
}

/// The directory of cgroup `own` in a mounted cgroup v2 hierarchy, from
/// `/proc/self/mountinfo`.
fn cgroup2_dir(mountinfo: &str, own: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        if fs.split(' ').next()? != "cgroup2" {
            return None;
        }
        let mut fields = mount.split(' ');
        let root = unescape(fields.nth(3)?);
        let point = unescape(fields.next()?);
        let below = if root == "/" {
            own
        } else {
            own.strip_prefix(root.as_str())?
        };
        let below = below.trim_start_matches('/');
        Some(if below.is_empty() {
            PathBuf::from(point)
        } else {
            Path::new(&point).join(below)
        })
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let octal = bytes.get(at + 1..at + 4).filter(|_| bytes[at] == b'\\');
        match octal.and_then(|digits| u8::from_str_radix(std::str::from_utf8(digits).ok()?, 8).ok())
        {
            Some(byte) => {
                out.push(byte);
                at += 4;
            }
            None => {
                out.push(bytes[at]);
                at += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
24 31 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
33 24 0:28 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 24 0:35 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_the_agents_cgroup_in_the_v2_mount() {
        assert_eq!(own_cgroup("4:memory:/x\n0::/\n").as_deref(), Some("/"));
        assert_eq!(
            own_cgroup("0::/system.slice/a.service\n").as_deref(),
            Some("/system.slice/a.service")
        );
        assert_eq!(own_cgroup("4:memory:/x\n"), None);
        assert_eq!(
            cgroup2_dir(MOUNTINFO, "/"),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup2_dir(MOUNTINFO, "/a/b"),
            Some(PathBuf::from("/sys/fs/cgroup/unified/a/b"))
        );
        assert_eq!(
            cgroup2_dir("24 31 0:22 / /sys rw - sysfs sysfs rw\n", "/"),
            None
        );
        // A mount of a sub-tree (a cgroup namespace seen from outside).
        let sub = "40 24 0:35 /a /mnt/cg\\040x rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_dir(sub, "/a/b"), Some(PathBuf::from("/mnt/cg x/b")));
        assert_eq!(cgroup2_dir(sub, "/other"), None);
    }

    #[test]
    fn unescapes_mountinfo_fields() {
        assert_eq!(unescape("/a\\040b\\011c"), "/a b\tc");
        assert_eq!(unescape("/plain\\"), "/plain\\");
        assert_eq!(unescape("/x\\9"), "/x\\9");
    }

    #[tokio::test]
    async fn a_killed_cgroup_takes_its_escaped_processes_with_it() {
        let Ok(root) = CgroupRoot::detect() else {
            eprintln!("no usable cgroup v2 hierarchy here: nothing to test");
            return;
        };
        let cgroup = root.create("paddock-test-kill").expect("create");
        let procs = cgroup.procs();
        let mut command = std::process::Command::new("sh");
        command
            .args(["-c", "setsid sleep 1000.301 & exit 0"])
            .stdout(std::process::Stdio::null());
        // SAFETY: `join` only makes async-signal-safe calls.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, move || join(&procs));
        }
        let status = command.status().expect("spawn");
        assert!(status.success());
        assert!(
            !cgroup.is_empty(),
            "the escaped sleep should be in the cgroup"
        );
        let dir = cgroup.dir.clone();
        cgroup.end().await;
        assert!(crate::test_host::processes_with("1000.301").is_empty());
        // Kept, empty, for a later execution; removed with the root.
        assert!(dir.exists(), "the ended cgroup was not kept");
        drop(root);
        assert!(!dir.exists(), "the kept cgroup was not removed");
    }

    #[tokio::test]
    async fn only_an_empty_kept_cgroup_is_handed_out_again() {
        let Ok(root) = CgroupRoot::detect() else {
            eprintln!("no usable cgroup v2 hierarchy here: nothing to test");
            return;
        };
        let first = root.create("paddock-test-reuse-1").expect("create");
        let first_dir = first.dir.clone();
        first.end().await;
        let again = root.create("paddock-test-reuse-2").expect("create");
        assert_eq!(again.dir, first_dir, "the kept cgroup was not reused");
        assert!(!root.dir.join("paddock-test-reuse-2").exists());
        again.end().await;

        // A process joins the kept cgroup: it is not handed out, but killed
        // and removed, and a new cgroup is made.
        let procs =
            CString::new(first_dir.join("cgroup.procs").as_os_str().as_bytes()).expect("path");
        let mut command = std::process::Command::new("sh");
        command
            .args(["-c", "setsid sleep 1000.302 & exit 0"])
            .stdout(std::process::Stdio::null());
        // SAFETY: `join` only makes async-signal-safe calls.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, move || join(&procs));
        }
        assert!(command.status().expect("spawn").success());
        let fresh = root.create("paddock-test-reuse-3").expect("create");
        assert_eq!(fresh.dir, root.dir.join("paddock-test-reuse-3"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while first_dir.exists() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            !first_dir.exists(),
            "the populated kept cgroup was not removed"
        );
        assert!(crate::test_host::processes_with("1000.302").is_empty());
        let fresh_dir = fresh.dir.clone();
        drop(fresh);
        assert!(!fresh_dir.exists(), "a dropped cgroup is removed, not kept");
    }
}
