//! One domain: lifecycle, state, saving to a file, and its Paddock metadata.
//!
//! Every call runs on tokio's blocking pool (see [`crate::error`]). Waits are
//! polls of the domain state every [`STATE_POLL`], bounded by the caller's
//! timeout as a whole, so a libvirt call that hangs cannot stretch them.

use std::ffi::CString;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use paddock_spec::{PaddockMetadata, parse_metadata};
use virt::domain::Domain;
use virt::error::Error as VirtError;

use crate::error::{LibvirtError, blocking};

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
#[derive(Debug, Clone)]
pub struct Vm {
    name: Arc<str>,
    dom: Arc<Domain>,
}

impl Vm {
    pub(crate) fn new(name: &str, dom: Domain) -> Self {
        Self {
            name: name.into(),
            dom: Arc::new(dom),
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

    /// Runs `f` on the domain on the blocking pool.
    pub(crate) async fn call<T, F>(&self, op: &'static str, f: F) -> Result<T, LibvirtError>
    where
        T: Send + 'static,
        F: FnOnce(&Domain) -> Result<T, VirtError> + Send + 'static,
    {
        let dom = Arc::clone(&self.dom);
        blocking(op, self.object(), move || f(&dom)).await
    }

    /// Starts the defined domain.
    ///
    /// # Errors
    /// libvirt refuses (already running, QEMU failed...).
    pub async fn start(&self) -> Result<(), LibvirtError> {
        self.call("start", |d| d.create().map(drop)).await
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
        if self.dom.is_active().unwrap_or(false) {
            // Undefining reports whatever made this fail.
            let _ = self.dom.destroy();
        }
        let flags = virt::sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
            | virt::sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA;
        match self.dom.undefine_flags(flags) {
            Ok(()) => Ok(()),
            Err(source) => {
                let err = LibvirtError::call("undefine", self.object(), source);
                if err.is_not_found() { Ok(()) } else { Err(err) }
            }
        }
    }

    /// [`Vm::discard_blocking`] on tokio's blocking pool: the end of a
    /// domain, running or not, persistent or transient.
    ///
    /// # Errors
    /// As [`Vm::discard_blocking`].
    pub async fn discard(&self) -> Result<(), LibvirtError> {
        let vm = self.clone();
        tokio::task::spawn_blocking(move || vm.discard_blocking())
            .await
            .map_err(|source| LibvirtError::Worker {
                op: "discard",
                object: self.object(),
                source,
            })?
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
        self.call("save", move |d| {
            let path = path?;
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
        })
        .await
    }
}
