//! The connection to libvirt: domains by spec or name, restore from a saved
//! image, bulk statistics, and applying networks and filters. The
//! connection heals itself when libvirtd restarts ([`crate::link`]).

use std::path::Path;
use std::sync::{Arc, Once};
use std::time::Instant;

use paddock_spec::saved_image::derive_saved_image;
use paddock_spec::{DomainSpec, PaddockMetadata, parse_metadata, render_domain};
use virt::connect::Connect;

use crate::domain::Vm;
use crate::error::{LibvirtError, blocking};
use crate::link::{ConnectionHealth, Link, ReconnectPolicy, Repeat};
use crate::network::{self, Applied, ApplyError, FilterDefinition, NetworkSpec, render_network};
use crate::stats::{self, DomainStats};

/// What state a restored domain is left in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RestoreMode {
    /// The state it was saved in (the test driver accepts only this).
    #[default]
    AsSaved,
    /// Running.
    Running,
    /// Paused, e.g. to be resumed when a sandbox is handed out.
    Paused,
}

/// A connection to libvirt (`qemu:///system`, or `test:///<file>.xml` in
/// tests). Cheap to clone; every call runs on tokio's blocking pool. It
/// survives libvirtd restarts: see [`crate::link`].
#[derive(Debug, Clone)]
pub struct Libvirt {
    link: Arc<Link>,
}

impl Libvirt {
    /// Connects to `uri` with the default [`ReconnectPolicy`].
    ///
    /// The first call also stops libvirt from printing every error to stderr
    /// (errors are returned, not printed) and starts a thread running
    /// libvirt's event loop, which keepalive needs: on a daemon connection,
    /// libvirt probes every [`crate::KEEPALIVE_INTERVAL_S`] seconds and
    /// closes the connection after [`crate::KEEPALIVE_COUNT`] unanswered
    /// probes, so no call waits for a hung libvirtd much longer than that.
    /// A watchdog task on the current runtime then reconnects.
    ///
    /// # Errors
    /// libvirt cannot connect (daemon not running, bad URI...).
    pub async fn open(uri: &str) -> Result<Self, LibvirtError> {
        Self::open_with(uri, ReconnectPolicy::default()).await
    }

    /// [`Libvirt::open`] with a given reconnect policy.
    ///
    /// # Errors
    /// As [`Libvirt::open`].
    pub async fn open_with(uri: &str, policy: ReconnectPolicy) -> Result<Self, LibvirtError> {
        static INIT: Once = Once::new();
        INIT.call_once(|| {
            virt::error::clear_error_callback();
            if virt::event::event_register_default_impl().is_ok() {
                // Without the loop there is no keepalive; nothing else fails.
                let _ = std::thread::Builder::new()
                    .name("libvirt-events".into())
                    .spawn(|| while virt::event::event_run_default_impl().is_ok() {});
            }
        });
        Ok(Self {
            link: Link::open(uri, policy).await?,
        })
    }

    /// The URI this connection was opened with.
    #[must_use]
    pub fn uri(&self) -> &str {
        self.link.uri()
    }

    /// How this connection watches and heals itself.
    #[must_use]
    pub fn policy(&self) -> ReconnectPolicy {
        self.link.policy()
    }

    /// Whether libvirtd is reachable now, or since when it is not.
    #[must_use]
    pub fn health(&self) -> ConnectionHealth {
        self.link.health()
    }

    /// A receiver that sees every change of [`Libvirt::health`] (lost,
    /// reconnecting, connected again); it ends when the connection is
    /// dropped.
    #[must_use]
    pub fn health_changes(&self) -> tokio::sync::watch::Receiver<ConnectionHealth> {
        self.link.health_changes()
    }

    /// Waits up to `timeout` for a connection.
    ///
    /// # Errors
    /// [`LibvirtError::Unreachable`] when there is none by then.
    pub async fn wait_connected(&self, timeout: std::time::Duration) -> Result<(), LibvirtError> {
        let (_, generation) = self.link.current();
        if self.link.health().is_connected() {
            return Ok(());
        }
        self.link
            .wait_newer(generation, Instant::now() + timeout)
            .await
    }

    /// Runs `f` with the connection on the blocking pool. When it fails as
    /// a dead connection does, the link is told; a [`Repeat::Safe`] call
    /// then waits for the new connection and runs again on it.
    pub(crate) async fn run<T, F>(
        &self,
        op: &'static str,
        object: String,
        repeat: Repeat,
        f: F,
    ) -> Result<T, LibvirtError>
    where
        T: Send + 'static,
        F: Fn(&Connect) -> Result<T, virt::error::Error> + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let deadline = Instant::now() + self.link.policy().call_wait;
        loop {
            let (conn, generation) = self.link.current();
            let call = Arc::clone(&f);
            match blocking(op, object.clone(), move || call(&conn)).await {
                Err(err) if err.should_reconnect() => {
                    self.link.report_dead(generation, &err);
                    if repeat == Repeat::Never {
                        return Err(err);
                    }
                    self.link.wait_newer(generation, deadline).await?;
                }
                other => return other,
            }
        }
    }

    /// The connection now and its generation, for [`Vm`]s.
    pub(crate) fn current(&self) -> (Arc<Connect>, u64) {
        self.link.current()
    }

    /// A call on connection `generation` saw it dead.
    pub(crate) fn report_dead(&self, generation: u64, error: &LibvirtError) {
        self.link.report_dead(generation, error);
    }

    /// Waits for a connection newer than `generation`, until `deadline`.
    pub(crate) async fn wait_newer(
        &self,
        generation: u64,
        deadline: Instant,
    ) -> Result<(), LibvirtError> {
        self.link.wait_newer(generation, deadline).await
    }

    /// How long a call that is safe to repeat waits for a lost connection.
    pub(crate) fn call_wait(&self) -> std::time::Duration {
        self.link.policy().call_wait
    }

    /// Defines (persistently) the domain `spec` describes, or redefines it if
    /// one with the same name and UUID exists.
    ///
    /// # Errors
    /// The spec cannot be rendered, or libvirt refuses the XML.
    pub async fn define(&self, spec: &DomainSpec) -> Result<Vm, LibvirtError> {
        let object = format!("domain {}", spec.name);
        let xml = render_domain(spec).map_err(|source| LibvirtError::Xml {
            op: "define",
            object: object.clone(),
            source,
        })?;
        let dom = self
            .run("define", object, Repeat::Safe, move |c| {
                c.define_domain_xml(&xml)
            })
            .await?;
        Ok(Vm::new(self, &spec.name, dom))
    }

    /// The domain called `name`.
    ///
    /// # Errors
    /// No such domain ([`LibvirtError::is_not_found`]).
    pub async fn lookup(&self, name: &str) -> Result<Vm, LibvirtError> {
        let owned = name.to_owned();
        let dom = self
            .run(
                "look up",
                format!("domain {name}"),
                Repeat::Safe,
                move |c| c.lookup_domain_by_name(&owned),
            )
            .await?;
        Ok(Vm::new(self, name, dom))
    }

    /// Every domain, running or not, that carries Paddock metadata, with that
    /// metadata: what a restarted Paddock finds of its previous life.
    /// Domains that vanish while the list is read are left out.
    ///
    /// # Errors
    /// libvirt refuses, or a domain's Paddock metadata is malformed.
    pub async fn paddock_domains(&self) -> Result<Vec<(Vm, PaddockMetadata)>, LibvirtError> {
        let op = "list the domains of";
        let found = self
            .run(
                op,
                format!("connection {}", self.uri()),
                Repeat::Safe,
                |c| {
                    let mut found = Vec::new();
                    for dom in c.list_all_domains(0)? {
                        // A domain that goes away between the listing and the
                        // read (destroyed meanwhile) is not there: skip it.
                        let read = dom.name().and_then(|name| Ok((name, dom.xml_desc(0)?)));
                        match read {
                            Ok((name, xml)) => found.push((name, xml, dom)),
                            Err(err)
                                if err.code()
                                    == virt::enumutil::Enum::Known(
                                        virt::error::ErrorNumber::NoDomain,
                                    ) => {}
                            Err(err) => return Err(err),
                        }
                    }
                    Ok(found)
                },
            )
            .await?;
        let mut ours = Vec::new();
        for (name, xml, dom) in found {
            let metadata = parse_metadata(&xml).map_err(|source| LibvirtError::Xml {
                op: "read the metadata of",
                object: format!("domain {name}"),
                source,
            })?;
            if let Some(metadata) = metadata {
                ours.push((Vm::new(self, &name, dom), metadata));
            }
        }
        Ok(ours)
    }

    /// Restores a domain saved with [`Vm::save`]. With `dxml`, the domain
    /// comes back under that XML instead of the saved one.
    ///
    /// libvirt (9.0) checks `dxml` against the saved XML for guest ABI
    /// stability, and that includes the domain's name, its UUID and its
    /// interfaces' MAC addresses: only host-side details may change, such as
    /// the disk overlay, socket and console paths, and the metadata. A
    /// different name, UUID or MAC is refused with `VIR_ERR_CONFIG_UNSUPPORTED`;
    /// [`Libvirt::restore_derived`] restores one saved image as many domains.
    ///
    /// # Errors
    /// libvirt refuses (a domain of that name runs, the XML is not compatible,
    /// the test driver was given `dxml` or a mode...).
    pub async fn restore(
        &self,
        file: &Path,
        dxml: Option<String>,
        mode: RestoreMode,
    ) -> Result<(), LibvirtError> {
        let object = format!("saved image {}", file.display());
        let Some(path) = file.to_str().map(str::to_owned) else {
            return Err(LibvirtError::NonUtf8Path {
                op: "restore",
                path: file.to_path_buf(),
            });
        };
        let flags = match mode {
            RestoreMode::AsSaved => 0,
            RestoreMode::Running => virt::sys::VIR_DOMAIN_SAVE_RUNNING,
            RestoreMode::Paused => virt::sys::VIR_DOMAIN_SAVE_PAUSED,
        };
        self.run("restore", object, Repeat::Never, move |c| {
            c.restore_domain_flags(&path, dxml.as_deref(), flags)
        })
        .await
    }

    /// Restores the saved image `file` as the domain `spec` describes (same
    /// name, UUID and MACs as the saved domain; see [`Libvirt::restore`]).
    ///
    /// # Errors
    /// As [`Libvirt::restore`], or the spec cannot be rendered.
    pub async fn restore_as(
        &self,
        file: &Path,
        spec: &DomainSpec,
        mode: RestoreMode,
    ) -> Result<Vm, LibvirtError> {
        let xml = render_for_restore(spec)?;
        self.restore(file, Some(xml), mode).await?;
        self.lookup(&spec.name).await
    }

    /// Restores the saved image `golden` as a new domain that `spec`
    /// describes, with its own name, UUID, sockets and disk paths: writes
    /// `derived`, a copy of `golden` carrying `spec`'s XML (see
    /// [`crate::saved_image`]), then restores that. `derived` stays, so the
    /// same domain can be restored from it again without another copy:
    /// [`Libvirt::restore`] with no `dxml` does that.
    ///
    /// # Errors
    /// [`LibvirtError::SavedImage`] when `golden` cannot be derived from,
    /// otherwise as [`Libvirt::restore`].
    pub async fn restore_derived(
        &self,
        golden: &Path,
        spec: &DomainSpec,
        derived: &Path,
        mode: RestoreMode,
    ) -> Result<Vm, LibvirtError> {
        let xml = render_for_restore(spec)?;
        let (from, to) = (golden.to_owned(), derived.to_owned());
        let copied = tokio::task::spawn_blocking(move || derive_saved_image(&from, &xml, &to))
            .await
            .map_err(|source| LibvirtError::Worker {
                op: "derive a saved image",
                object: format!("domain {}", spec.name),
                source,
            })?;
        copied.map_err(|source| LibvirtError::SavedImage {
            object: format!("domain {}", spec.name),
            source,
        })?;
        self.restore(derived, None, mode).await?;
        self.lookup(&spec.name).await
    }

    /// CPU time, memory, block and interface I/O of every domain, in one call.
    ///
    /// # Errors
    /// libvirt refuses.
    pub async fn all_domain_stats(&self) -> Result<Vec<DomainStats>, LibvirtError> {
        self.run(
            "get statistics of",
            format!("connection {}", self.uri()),
            Repeat::Safe,
            stats::all_domain_stats,
        )
        .await
    }

    /// Makes libvirt hold `spec` as a running network; see [`crate::network`].
    ///
    /// # Errors
    /// The spec cannot be rendered, or libvirt refuses.
    pub async fn apply_network(&self, spec: &NetworkSpec) -> Result<Applied, ApplyError> {
        let xml = render_network(spec).map_err(|source| ApplyError::Xml {
            object: format!("network {}", spec.name),
            source,
        })?;
        let name = spec.name.clone();
        self.apply("network", name, move |conn, name| {
            network::apply_network(conn, name, &xml)
        })
        .await
    }

    /// The names of the network filters libvirt holds.
    ///
    /// # Errors
    /// libvirt cannot list them.
    pub async fn nwfilter_names(&self) -> Result<Vec<String>, LibvirtError> {
        self.run(
            "list the network filters of",
            format!("connection {}", self.uri()),
            Repeat::Safe,
            |c| c.list_nw_filters(),
        )
        .await
    }

    /// Makes libvirt hold `filter`; see [`crate::network`].
    ///
    /// # Errors
    /// libvirt refuses (unknown referenced filter, nwfilter driver missing...).
    pub async fn apply_filter(&self, filter: &FilterDefinition) -> Result<Applied, ApplyError> {
        let xml = filter.xml.clone();
        let name = filter.name.clone();
        self.apply("nwfilter", name, move |conn, name| {
            network::apply_filter(conn, name, &xml)
        })
        .await
    }

    async fn apply<F>(&self, kind: &str, name: String, f: F) -> Result<Applied, ApplyError>
    where
        F: FnOnce(&Connect, &str) -> Result<Applied, ApplyError> + Send + 'static,
    {
        // Applying is idempotent by design; a connection that died under it
        // shows in the next call.
        let (conn, _) = self.link.current();
        let object = format!("{kind} {name}");
        tokio::task::spawn_blocking(move || f(&conn, &name))
            .await
            .map_err(|source| LibvirtError::Worker {
                op: "apply",
                object,
                source,
            })?
    }
}

/// The domain XML a restore brings `spec` back under.
fn render_for_restore(spec: &DomainSpec) -> Result<String, LibvirtError> {
    render_domain(spec).map_err(|source| LibvirtError::Xml {
        op: "restore",
        object: format!("domain {}", spec.name),
        source,
    })
}
