//! One domain: lifecycle, state, saving to a file, and its Paddock metadata.
//!
//! Every call runs on tokio's blocking pool (see [`crate::error`]). Waits are
//! polls of the domain state every [`STATE_POLL`], bounded by the caller's
//! timeout as a whole, so a libvirt call that hangs cannot stretch them.

use std::ffi::CString;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use paddock_spec::{PaddockMetadata, Tuning, parse_metadata};
use virt::domain::Domain;
use virt::error::Error as VirtError;

use crate::confine::{self, ConfineError, Confinement, Driver};
use crate::connection::Libvirt;
use crate::error::{LibvirtError, blocking};
use crate::link::Repeat;

/// How often [`Vm::wait_for_state`] looks at the domain.
pub const STATE_POLL: Duration = Duration::from_millis(50);

/// A domain's state (libvirt's `virDomainState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainState {
    /// No state.
    NoState,
    /// Running.
    Running,
    /// Blocked on a resource.
    Blocked,
    /// Paused by the user or by libvirt.
    Paused,
    /// Being shut down.
    ShuttingDown,
    /// Shut off (defined but not running).
    Shutoff,
    /// Crashed.
    Crashed,
    /// Suspended by guest power management.
    PmSuspended,
    /// A state this crate does not know, or none could be read.
    Unknown,
}

impl DomainState {
    /// From libvirt's raw `virDomainState`.
    pub(crate) fn from_raw(raw: i32) -> Self {
        u32::try_from(raw)
            .ok()
            .and_then(|raw| virt::domain::DomainStateEnum::from_raw(raw).known())
            .map_or(Self::Unknown, Self::from_virt)
    }

    fn from_virt(state: virt::domain::DomainState) -> Self {
        use virt::domain::DomainState as S;
        match state {
            S::NoState => Self::NoState,
            S::Running => Self::Running,
            S::Blocked => Self::Blocked,
            S::Paused => Self::Paused,
            S::Shutdown => Self::ShuttingDown,
            S::Shutoff => Self::Shutoff,
            S::Crashed => Self::Crashed,
            S::PMSuspended => Self::PmSuspended,
        }
    }
}

impl fmt::Display for DomainState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::NoState => "without state",
            Self::Running => "running",
            Self::Blocked => "blocked",
            Self::Paused => "paused",
            Self::ShuttingDown => "shutting down",
            Self::Shutoff => "shut off",
            Self::Crashed => "crashed",
            Self::PmSuspended => "suspended",
            Self::Unknown => "unknown",
        };
        f.write_str(name)
    }
}

/// A state with the reason libvirt gives for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainStatus {
    /// The state.
    pub state: DomainState,
    /// libvirt's reason, lower case: `booted`, `user`, `destroyed`,
    /// `shutdown`, `crashed`, `saved`, `from snapshot`...
    pub reason: String,
}

/// How [`Vm::shutdown`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownOutcome {
    /// The guest shut down within the timeout.
    Graceful,
    /// The guest did not (or could not be asked to); it was destroyed.
    Destroyed,
}

/// A handle on one domain. Cheap to clone.
///
/// It names the domain and keeps the libvirt handle it was last reached
/// through; after libvirtd restarts, the next call looks the domain up again
/// on the new connection ([`crate::link`]).
#[derive(Debug, Clone)]
pub struct Vm {
    libvirt: Libvirt,
    name: Arc<str>,
    /// The handle and the connection generation it belongs to.
    handle: Arc<Mutex<(u64, Arc<Domain>)>>,
    /// Paddock's pids cgroup of the domain's QEMU, if [`Vm::confine`] made
    /// one: removed with the domain.
    pids_group: Arc<Mutex<Option<std::path::PathBuf>>>,
}

impl Vm {
    /// The domain `dom`, reached through `libvirt`'s current connection.
    pub(crate) fn new(libvirt: &Libvirt, name: &str, dom: Domain) -> Self {
        let (_, generation) = libvirt.current();
        Self {
            libvirt: libvirt.clone(),
            name: name.into(),
            handle: Arc::new(Mutex::new((generation, Arc::new(dom)))),
            pids_group: Arc::new(Mutex::new(None)),
        }
    }

    /// The domain's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn object(&self) -> String {
        format!("domain {}", self.name)
    }

    fn cached(&self) -> (u64, Arc<Domain>) {
        let handle = self
            .handle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (handle.0, Arc::clone(&handle.1))
    }

    /// The handle for the current connection: the cached one, or one
    /// looked up again after a reconnect.
    async fn domain(&self) -> Result<(u64, Arc<Domain>), LibvirtError> {
        let cached = self.cached();
        let (_, generation) = self.libvirt.current();
        if cached.0 == generation {
            return Ok(cached);
        }
        let fresh = self.libvirt.lookup(&self.name).await?;
        let renewed = fresh.cached();
        *self
            .handle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = renewed.clone();
        Ok(renewed)
    }

    /// Runs `f` on the domain on the blocking pool: a call that is safe to
    /// repeat runs again on a new connection after the old one died under it.
    pub(crate) async fn call<T, F>(&self, op: &'static str, f: F) -> Result<T, LibvirtError>
    where
        T: Send + 'static,
        F: Fn(&Domain) -> Result<T, VirtError> + Send + Sync + 'static,
    {
        self.call_with(op, self.object(), Repeat::Safe, f).await
    }

    /// [`Vm::call`] for an operation that must not run twice.
    pub(crate) async fn call_once<T, F>(&self, op: &'static str, f: F) -> Result<T, LibvirtError>
    where
        T: Send + 'static,
        F: Fn(&Domain) -> Result<T, VirtError> + Send + Sync + 'static,
    {
        self.call_with(op, self.object(), Repeat::Never, f).await
    }

    /// [`Vm::call_once`], with the error naming `object` (e.g. the file a
    /// save writes) instead of the domain alone.
    pub(crate) async fn call_once_about<T, F>(
        &self,
        op: &'static str,
        object: String,
        f: F,
    ) -> Result<T, LibvirtError>
    where
        T: Send + 'static,
        F: Fn(&Domain) -> Result<T, VirtError> + Send + Sync + 'static,
    {
        self.call_with(op, object, Repeat::Never, f).await
    }

    async fn call_with<T, F>(
        &self,
        op: &'static str,
        object: String,
        repeat: Repeat,
        f: F,
    ) -> Result<T, LibvirtError>
    where
        T: Send + 'static,
        F: Fn(&Domain) -> Result<T, VirtError> + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let deadline = Instant::now() + self.libvirt.call_wait();
        loop {
            let (generation, dom) = self.domain().await?;
            let call = Arc::clone(&f);
            match blocking(op, object.clone(), move || call(&dom)).await {
                Err(err) if err.should_reconnect() => {
                    self.libvirt.report_dead(generation, &err);
                    if repeat == Repeat::Never {
                        return Err(err);
                    }
                    self.libvirt.wait_newer(generation, deadline).await?;
                }
                other => return other,
            }
        }
    }

    /// The pid of the domain's running QEMU, from libvirt's pid file,
    /// checked against the process's command line. Only a local
    /// `qemu:///system` connection has one here.
    ///
    /// # Errors
    /// [`ConfineError::NotLocal`] for another connection; the pid file is
    /// missing or names no QEMU of this domain (it is not running).
    pub fn qemu_pid(&self) -> Result<u32, ConfineError> {
        match Driver::of_uri(self.libvirt.uri()) {
            Driver::LocalQemu => confine::qemu_pid(Path::new(confine::QEMU_RUN_DIR), &self.name),
            Driver::Test | Driver::Other => Err(ConfineError::NotLocal {
                uri: self.libvirt.uri().to_owned(),
            }),
        }
    }

    /// Writes `tuning`'s memory hard limit and thread limit into the
    /// cgroups of the domain's running QEMU ([`crate::confine`]); libvirt
    /// applies the rest of it. Call it after every start of a new QEMU: a
    /// boot, a restore, a snapshot revert. On the test driver, which runs
    /// no process, it does nothing.
    ///
    /// # Errors
    /// [`ConfineError`]: no local QEMU to confine (another connection),
    /// no pid, a missing controller, a cgroup shared with other processes,
    /// or a write the kernel refused. The domain keeps running: the caller
    /// decides (Paddock destroys it).
    pub async fn confine(&self, tuning: &Tuning) -> Result<Confinement, ConfineError> {
        if !tuning.has_cgroup_limits() {
            return Ok(Confinement::default());
        }
        match Driver::of_uri(self.libvirt.uri()) {
            Driver::Test => return Ok(Confinement::default()),
            Driver::Other => {
                return Err(ConfineError::NotLocal {
                    uri: self.libvirt.uri().to_owned(),
                });
            }
            Driver::LocalQemu => {}
        }
        let (name, tuning) = (self.name.to_string(), *tuning);
        let confined = tokio::task::spawn_blocking(move || {
            let pid = confine::qemu_pid(Path::new(confine::QEMU_RUN_DIR), &name)?;
            let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(|source| {
                ConfineError::Read {
                    path: "/proc/self/mountinfo".into(),
                    source,
                }
            })?;
            confine::apply(&name, pid, &tuning, &mountinfo)
        })
        .await
        .map_err(|source| ConfineError::Worker {
            domain: self.name.to_string(),
            source,
        })??;
        if confined.pids_cgroup_owned {
            *self
                .pids_group
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = confined.pids_cgroup.clone();
        }
        Ok(confined)
    }

    /// Removes Paddock's pids cgroup of the domain, once its QEMU is gone.
    fn release_confinement(&self) {
        let group = self
            .pids_group
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(group) = group {
            confine::release(&group);
        }
    }

    /// Starts the defined domain.
    ///
    /// # Errors
    /// libvirt refuses (already running, QEMU failed...).
    pub async fn start(&self) -> Result<(), LibvirtError> {
        self.call_once("start", |d| d.create().map(drop)).await
    }

    /// Stops the domain at once, like pulling the plug.
    ///
    /// # Errors
    /// libvirt refuses (not running...).
    pub async fn destroy(&self) -> Result<(), LibvirtError> {
        self.call("destroy", Domain::destroy).await
    }

    /// Asks the guest to shut down (ACPI) and waits up to `timeout` for it;
    /// destroys the domain if it does not shut off in time or the request
    /// itself fails.
    ///
    /// # Errors
    /// The domain could not be destroyed either.
    pub async fn shutdown(&self, timeout: Duration) -> Result<ShutdownOutcome, LibvirtError> {
        if self.call("shut down", Domain::shutdown).await.is_ok() {
            match self.wait_for_state(DomainState::Shutoff, timeout).await {
                Ok(_) => return Ok(ShutdownOutcome::Graceful),
                Err(LibvirtError::Timeout { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let Err(e) = self.destroy().await else {
            return Ok(ShutdownOutcome::Destroyed);
        };
        // It may have shut off between the timeout and the destroy.
        if self.status().await?.state == DomainState::Shutoff {
            return Ok(ShutdownOutcome::Graceful);
        }
        Err(e)
    }

    /// Pauses the vCPUs.
    ///
    /// # Errors
    /// libvirt refuses (not running...).
    pub async fn pause(&self) -> Result<(), LibvirtError> {
        self.call("pause", Domain::suspend).await
    }

    /// Resumes paused vCPUs.
    ///
    /// # Errors
    /// libvirt refuses (not paused...).
    pub async fn resume(&self) -> Result<(), LibvirtError> {
        self.call("resume", Domain::resume).await
    }

    /// Removes the domain's definition with its snapshot metadata and managed
    /// save image. A running domain keeps running, as a transient one, until
    /// it is destroyed.
    ///
    /// # Errors
    /// libvirt refuses.
    pub async fn undefine(&self) -> Result<(), LibvirtError> {
        let flags = virt::sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
            | virt::sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA;
        self.call("undefine", move |d| d.undefine_flags(flags))
            .await
    }

    /// Destroys the domain if it runs and undefines it (with its snapshot
    /// metadata and managed save), on the calling thread. For paths that
    /// cannot await, such as `Drop`; never call it on an async worker thread.
    /// A domain that is already gone counts as done.
    ///
    /// # Errors
    /// libvirt refuses to undefine a domain that still exists.
    pub fn discard_blocking(&self) -> Result<(), LibvirtError> {
        let discarded = self.discard_blocking_inner();
        if discarded.is_ok() {
            self.release_confinement();
        }
        discarded
    }

    fn discard_blocking_inner(&self) -> Result<(), LibvirtError> {
        let (generation, dom) = self.cached();
        match discard_domain(&dom, &self.object()) {
            Err(err) if err.should_reconnect() => {
                self.libvirt.report_dead(generation, &err);
                // The watchdog may have reconnected already: one more try on
                // the connection there is now.
                let (conn, now) = self.libvirt.current();
                if now == generation {
                    return Err(err);
                }
                let fresh = conn
                    .lookup_domain_by_name(&self.name)
                    .map_err(|source| LibvirtError::call("look up", self.object(), source));
                match fresh {
                    Ok(dom) => discard_domain(&dom, &self.object()),
                    Err(err) if err.is_not_found() => Ok(()),
                    Err(err) => Err(err),
                }
            }
            other => other,
        }
    }

    /// The end of a domain, running or not, persistent or transient, on
    /// tokio's blocking pool. It waits for a lost connection to come back
    /// (as a call that is safe to repeat does) and looks the domain up
    /// again on it.
    ///
    /// # Errors
    /// As [`Vm::discard_blocking`], or [`LibvirtError::Unreachable`].
    pub async fn discard(&self) -> Result<(), LibvirtError> {
        let discarded = match self.call("undefine", discard_raw).await {
            Err(err) if err.is_not_found() => Ok(()),
            other => other,
        };
        if discarded.is_ok() {
            let vm = self.clone();
            // An rmdir on cgroupfs: quick, but a file system call.
            let _ = tokio::task::spawn_blocking(move || vm.release_confinement()).await;
        }
        discarded
    }

    /// The current state and its reason.
    ///
    /// # Errors
    /// libvirt could not tell (the domain is gone...).
    pub async fn status(&self) -> Result<DomainStatus, LibvirtError> {
        self.call("get the state of", |d| {
            let (state, reason) = d.state()?;
            // virt turns a failed virDomainGetState into an unknown state.
            let state = state.known().ok_or_else(VirtError::last_error)?;
            Ok(DomainStatus {
                state: DomainState::from_virt(state),
                reason: reason.to_string(),
            })
        })
        .await
    }

    /// Waits until the domain is in `wanted`, for at most `timeout`.
    ///
    /// # Errors
    /// [`LibvirtError::Timeout`], or the state could not be read.
    pub async fn wait_for_state(
        &self,
        wanted: DomainState,
        timeout: Duration,
    ) -> Result<DomainStatus, LibvirtError> {
        let mut last = DomainState::Unknown;
        let poll = async {
            loop {
                let status = self.status().await?;
                if status.state == wanted {
                    return Ok(status);
                }
                last = status.state;
                tokio::time::sleep(STATE_POLL).await;
            }
        };
        match tokio::time::timeout(timeout, poll).await {
            Ok(result) => result,
            Err(_) => Err(LibvirtError::Timeout {
                domain: self.name.to_string(),
                wanted,
                last,
                timeout,
            }),
        }
    }

    /// The domain's XML as libvirt holds it.
    ///
    /// # Errors
    /// libvirt refuses.
    pub async fn xml(&self) -> Result<String, LibvirtError> {
        self.call("get the XML of", |d| d.xml_desc(0)).await
    }

    /// Paddock's metadata from the domain's XML; `None` if it has none.
    ///
    /// # Errors
    /// libvirt refuses, or the metadata is malformed.
    pub async fn metadata(&self) -> Result<Option<PaddockMetadata>, LibvirtError> {
        let xml = self.xml().await?;
        parse_metadata(&xml).map_err(|source| LibvirtError::Xml {
            op: "read the metadata of",
            object: self.object(),
            source,
        })
    }

    /// Saves the running domain's memory and device state to `file` and
    /// stops it (`virDomainSaveFlags`, which the `virt` crate does not wrap).
    /// [`crate::Libvirt::restore`] brings it back, as this domain or another.
    ///
    /// # Errors
    /// libvirt refuses (not running, unwritable path...).
    pub async fn save(&self, file: &Path) -> Result<(), LibvirtError> {
        let path = CString::new(file.as_os_str().as_bytes());
        let target = file.display().to_string();
        self.call_once_about(
            "save",
            format!("domain {} to {target}", self.name),
            move |d| {
                let path = path.clone()?;
                // SAFETY: `d` is a live domain handle for the duration of the call,
                // `path` is a NUL-terminated string that outlives it, a null
                // `dxml` means "keep the domain's XML", and libvirt copies what
                // it keeps.
                let rc = unsafe {
                    virt::sys::virDomainSaveFlags(d.as_ptr(), path.as_ptr(), std::ptr::null(), 0)
                };
                if rc < 0 {
                    Err(VirtError::last_error())
                } else {
                    Ok(())
                }
            },
        )
        .await
    }
}

/// Destroys `dom` if it runs and undefines it, with its snapshot metadata
/// and managed save (blocking). A domain already gone counts as done.
fn discard_domain(dom: &Domain, object: &str) -> Result<(), LibvirtError> {
    match discard_raw(dom) {
        Ok(()) => Ok(()),
        Err(source) => {
            let err = LibvirtError::call("undefine", object.to_owned(), source);
            if err.is_not_found() { Ok(()) } else { Err(err) }
        }
    }
}

/// [`discard_domain`]'s libvirt calls.
fn discard_raw(dom: &Domain) -> Result<(), VirtError> {
    if dom.is_active().unwrap_or(false) {
        // Undefining reports whatever made this fail.
        let _ = dom.destroy();
    }
    let flags = virt::sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
        | virt::sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA;
    dom.undefine_flags(flags)
}
