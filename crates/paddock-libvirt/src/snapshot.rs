//! Internal snapshots with memory on a [`Vm`]: create, list, revert, load in
//! place, delete.
//!
//! An internal snapshot keeps the disk state and, for a running domain, the
//! memory and device state inside the domain's qcow2 disk, so the domain needs
//! one ([`crate::DomainSpec::disk`]). libvirt 9.0 cannot revert external
//! snapshots. The snapshot XML and how tags travel in its description live in
//! `paddock-spec` ([`paddock_spec::snapshot`]) and are re-exported here.

use virt::domain::Domain;

pub use paddock_spec::snapshot::{
    SnapshotInfo, SnapshotSpec, TAGS_PREFIX, parse_snapshot, render_snapshot,
};

use crate::domain::Vm;
use crate::error::LibvirtError;

impl Vm {
    /// Takes an internal snapshot (with memory if the domain runs).
    ///
    /// # Errors
    /// A bad tag, or libvirt refuses (no qcow2 disk, name taken...).
    pub async fn create_snapshot(&self, spec: &SnapshotSpec) -> Result<SnapshotInfo, LibvirtError> {
        let op = "snapshot";
        let bad_xml = |source| LibvirtError::Xml {
            op,
            object: self.object(),
            source,
        };
        let xml = render_snapshot(spec).map_err(bad_xml)?;
        let created = self
            .call_once(op, move |d| d.create_snapshot_xml(&xml, 0)?.xml_desc(0))
            .await?;
        parse_snapshot(&created).map_err(bad_xml)
    }

    /// The domain's snapshots, oldest first.
    ///
    /// # Errors
    /// libvirt refuses, or returns XML this crate cannot read.
    pub async fn snapshots(&self) -> Result<Vec<SnapshotInfo>, LibvirtError> {
        let op = "list the snapshots of";
        let xmls: Vec<String> = self
            .call(op, |d| {
                d.list_all_snapshots(0)?
                    .iter()
                    .map(|s| s.xml_desc(0))
                    .collect()
            })
            .await?;
        let mut infos = xmls
            .iter()
            .map(|xml| parse_snapshot(xml))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| LibvirtError::Xml {
                op,
                object: self.object(),
                source,
            })?;
        infos.sort_by(|a, b| (a.created_unix, &a.name).cmp(&(b.created_unix, &b.name)));
        Ok(infos)
    }

    /// Returns the domain to snapshot `name`: disks, and memory and run state
    /// if it was taken running.
    ///
    /// # Errors
    /// No such snapshot, or libvirt refuses.
    pub async fn revert_to_snapshot(&self, name: &str) -> Result<(), LibvirtError> {
        let name = name.to_owned();
        self.call("revert", move |d| {
            Domain::lookup_snapshot_by_name(d, &name, 0)?.revert(0)
        })
        .await
    }

    /// Loads internal snapshot `name` inside the running QEMU: memory,
    /// devices and disks return to the snapshot without a new QEMU process.
    ///
    /// libvirt 9.0's [`Vm::revert_to_snapshot`] of a running snapshot stops
    /// QEMU and starts a new one (about 1.1 s for a 256 MiB TCG guest here);
    /// QEMU's own `loadvm` of the same state takes about 0.2 s. This sends
    /// the HMP `loadvm` through libvirt's monitor pass-through, which marks
    /// the domain as tainted (`custom-monitor`) in its log. libvirt follows
    /// the pause and resume through QEMU's events.
    ///
    /// The domain must be running and the snapshot must have been taken
    /// running. Names are restricted to ASCII letters, digits, `-` and `_`,
    /// so they cannot carry a second monitor command.
    ///
    /// # Errors
    /// [`LibvirtError::Monitor`] when QEMU reports an error (no such
    /// snapshot, a disk without it) or the name is not allowed;
    /// [`LibvirtError::Call`] when libvirt refuses (domain not running).
    /// QEMU pauses the guest before loading and resumes it only on success,
    /// so after a QEMU error the domain is paused, and its memory may be
    /// partly loaded: discard it or load a snapshot that works.
    pub async fn load_snapshot_in_place(&self, name: &str) -> Result<(), LibvirtError> {
        let command = format!("loadvm {name}");
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(LibvirtError::Monitor {
                command,
                object: self.object(),
                message: "snapshot names here are ASCII letters, digits, '-' and '_'".into(),
            });
        }
        let hmp = command.clone();
        let reply = self
            .call("load a snapshot of", move |d| {
                d.qemu_monitor_command(&hmp, virt::sys::VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)
            })
            .await?;
        // HMP reports failure as text with a successful reply; `loadvm`
        // prints nothing when it succeeds.
        let reply = reply.trim();
        if reply.is_empty() {
            Ok(())
        } else {
            Err(LibvirtError::Monitor {
                command,
                object: self.object(),
                message: reply.to_owned(),
            })
        }
    }

    /// Deletes snapshot `name` (its data and metadata).
    ///
    /// # Errors
    /// No such snapshot, or libvirt refuses.
    pub async fn delete_snapshot(&self, name: &str) -> Result<(), LibvirtError> {
        let name = name.to_owned();
        self.call("delete a snapshot of", move |d| {
            Domain::lookup_snapshot_by_name(d, &name, 0)?.delete(0)
        })
        .await
    }
}
