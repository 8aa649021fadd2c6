//! Who may touch the host files a guest's QEMU uses: the host gives a
//! guest, and any other local user, nothing to grab.
//!
//! QEMU runs as libvirt's `user` and `group` (`qemu.conf`; on Debian
//! `libvirt-qemu:libvirt-qemu`, [`DEFAULT_QEMU_GROUP`]). libvirtd and
//! virtlogd run as root and do what needs more: libvirt binds the agent's
//! virtio-serial socket itself and hands QEMU the descriptor, reads saved
//! memory images and passes their contents to QEMU, and relabels disks to
//! QEMU's user while a domain runs (DAC `dynamic_ownership`); virtlogd
//! writes the console log. So QEMU needs to *reach* its files, never to
//! create one in Paddock's directories:
//!
//! | what | owner:group | mode |
//! |---|---|---|
//! | the state root, a pool's directory, a sandbox's, slot's or golden's directory | root:QEMU's group | `2750` ([`DIR_MODE`]): QEMU may pass through and list, nobody else; set-group-ID, so what root makes inside belongs to QEMU's group |
//! | agent socket (bound by libvirt, owned by QEMU), hybrid-vsock sockets | QEMU or root:QEMU's group | `0660` ([`SOCKET_MODE`]) |
//! | qcow2 overlays and blank bases (`qemu-img`) | root:QEMU's group, QEMU's user while a domain runs | `0640` (`paddock_libvirt`'s `DISK_MODE`) |
//! | memory images: the golden's saved image and each slot's copy | root:QEMU's group | `0600` ([`MEMORY_IMAGE_MODE`]): only libvirtd (root) reads them |
//! | console log (virtlogd) | root:QEMU's group | `0600` (virtlogd's own) |
//!
//! libvirt's relabelling gives a running domain's overlay to QEMU's user
//! and gives it back to its owner when the domain stops; a backing file
//! (a golden's frozen disk, a blank base) stays QEMU's user's after its
//! first domain, with the mode Paddock gave it. Modes are never widened by
//! libvirt. An unprivileged local user can therefore neither list a
//! sandbox's directory, nor read a memory image or a disk, nor connect to an
//! agent socket; `tests/tests/vm_host_files.rs` tries each on real VMs.

use std::ffi::CString;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use super::VmError;

/// The group QEMU runs as under Debian's libvirt (`qemu.conf`'s default).
pub const DEFAULT_QEMU_GROUP: &str = "libvirt-qemu";

/// The mode of every directory Paddock makes for a guest's files:
/// owner (root) everything, QEMU's group in and list, others nothing; the
/// set-group-ID bit gives what is made inside to QEMU's group.
pub const DIR_MODE: u32 = 0o2750;

/// The mode of the Unix sockets in a guest's directory.
pub const SOCKET_MODE: u32 = 0o660;

/// The mode of the memory images Paddock writes (each slot's copy of the
/// golden's saved memory) and checks on the golden's.
pub const MEMORY_IMAGE_MODE: u32 = 0o600;

/// The sockets a guest's directory may hold: the agent's (virtio-serial,
/// or the hybrid-vsock backend's host side) and the vhost-user one.
/// The floor probes' port socket ([`super::SandboxConfig::probe_port`]).
pub(crate) const PROBE_SOCKET: &str = "probe.sock";

const SOCKETS: [&str; 3] = ["agent.sock", "vhost-user.sock", PROBE_SOCKET];

/// QEMU's group, resolved by name on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuGroup {
    name: String,
    gid: u32,
}

impl QemuGroup {
    /// Looks `name` up in the host's group database.
    ///
    /// # Errors
    /// [`VmError::NoQemuGroup`] when there is no such group (or the lookup
    /// fails).
    pub fn resolve(name: &str) -> Result<Self, VmError> {
        let missing = || VmError::NoQemuGroup {
            group: name.to_owned(),
        };
        match lookup_gid(name) {
            Ok(Some(gid)) => Ok(Self {
                name: name.to_owned(),
                gid,
            }),
            Ok(None) => Err(missing()),
            Err(err) => {
                tracing::warn!(group = name, error = %err, "the group lookup failed");
                Err(missing())
            }
        }
    }

    /// The group's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The group's id on this host.
    #[must_use]
    pub fn gid(&self) -> u32 {
        self.gid
    }
}

/// `getgrnam_r`: the gid of group `name`, `None` if there is none.
fn lookup_gid(name: &str) -> std::io::Result<Option<u32>> {
    let name = CString::new(name).map_err(std::io::Error::other)?;
    let mut buffer: Vec<libc::c_char> = vec![0; 1024];
    loop {
        let mut group = std::mem::MaybeUninit::<libc::group>::uninit();
        let mut found: *mut libc::group = std::ptr::null_mut();
        // SAFETY: `name` is NUL-terminated, `group` and `found` are valid for
        // writes, and `buffer` is valid for `buffer.len()` bytes; all outlive
        // the call, which keeps no pointer to them after it returns.
        let rc = unsafe {
            libc::getgrnam_r(
                name.as_ptr(),
                group.as_mut_ptr(),
                buffer.as_mut_ptr(),
                buffer.len(),
                &raw mut found,
            )
        };
        if rc == libc::ERANGE && buffer.len() < 1 << 20 {
            buffer.resize(buffer.len() * 2, 0);
            continue;
        }
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        if found.is_null() {
            return Ok(None);
        }
        // SAFETY: a non-null `found` points to `group`, which getgrnam_r
        // filled in.
        return Ok(Some(unsafe { (*found).gr_gid }));
    }
}

/// Creates `dir`, and each of its ancestors that does not exist yet, as a
/// directory of QEMU's files: group `group`, mode [`DIR_MODE`]. An existing
/// `dir` gets that group and mode too; ancestors that exist are left alone.
///
/// # Errors
/// [`VmError::Io`] when a directory cannot be created or its group or mode
/// set (setting the group takes root, or membership of the group).
pub fn create_qemu_dir(dir: &Path, group: &QemuGroup) -> Result<(), VmError> {
    let mut missing = Vec::new();
    let mut at = dir;
    while !at.exists() {
        missing.push(at.to_path_buf());
        match at.parent() {
            Some(parent) => at = parent,
            None => break,
        }
    }
    if missing.is_empty() {
        return restrict_dir(dir, group);
    }
    for path in missing.iter().rev() {
        match std::fs::create_dir(path) {
            Ok(()) => {}
            // Made meanwhile by someone else (another pool's creation):
            // still ours to restrict.
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(VmError::io("create", path)(err)),
        }
        restrict_dir(path, group)?;
    }
    Ok(())
}

/// Gives `dir` QEMU's group and [`DIR_MODE`].
fn restrict_dir(dir: &Path, group: &QemuGroup) -> Result<(), VmError> {
    std::os::unix::fs::chown(dir, None, Some(group.gid))
        .map_err(VmError::io("set the group of", dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))
        .map_err(VmError::io("set the permissions of", dir))
}

/// Sets [`SOCKET_MODE`] on the sockets in a guest's directory that exist.
/// libvirt binds the agent's socket with mode 0775 (its umask, then
/// `ug+rw`): the directory already keeps others out, and this keeps the
/// socket itself from relying on that.
pub(crate) fn restrict_sockets(dir: &Path) -> Result<(), VmError> {
    use std::os::unix::fs::FileTypeExt as _;
    for name in SOCKETS {
        let path = dir.join(name);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_socket() => {
                if meta.permissions().mode() & 0o7777 != SOCKET_MODE {
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(SOCKET_MODE))
                        .map_err(VmError::io("set the permissions of", &path))?;
                }
            }
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(VmError::io("look at", &path)(err)),
        }
    }
    Ok(())
}

/// Sets [`MEMORY_IMAGE_MODE`] on a memory image libvirt wrote (it writes
/// 0600 today; this keeps it so whatever libvirt's settings).
pub(crate) fn restrict_memory_image(path: &Path) -> Result<(), VmError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(MEMORY_IMAGE_MODE))
        .map_err(VmError::io("set the permissions of", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_a_group_of_every_host() {
        let root = QemuGroup::resolve("root").expect("group root");
        assert_eq!(root.gid(), 0);
        assert_eq!(root.name(), "root");
    }

    #[test]
    fn a_missing_group_is_a_typed_error() {
        let err = QemuGroup::resolve("paddock-no-such-group").expect_err("no such group");
        assert!(
            matches!(&err, VmError::NoQemuGroup { group } if group == "paddock-no-such-group"),
            "{err:?}"
        );
        assert!(err.to_string().contains("paddock-no-such-group"), "{err}");
        assert!(matches!(
            QemuGroup::resolve("nul\0inside"),
            Err(VmError::NoQemuGroup { .. })
        ));
    }

    #[test]
    fn qemu_dirs_and_their_missing_parents_are_closed_to_others() {
        let scratch = tempfile::tempdir().expect("tempdir");
        // The process's own group: a non-root test can set it too.
        let group = own_group();
        let dir = scratch.path().join("root/pool/slot-0");
        create_qemu_dir(&dir, &group).expect("create");
        for path in [
            scratch.path().join("root"),
            scratch.path().join("root/pool"),
            dir.clone(),
        ] {
            let meta = std::fs::metadata(&path).expect("made");
            assert_eq!(meta.permissions().mode() & 0o7777, DIR_MODE, "{path:?}");
            assert_eq!(
                std::os::unix::fs::MetadataExt::gid(&meta),
                group.gid(),
                "{path:?}"
            );
        }
        // The existing ancestor is left as it was.
        let before = std::fs::metadata(scratch.path()).expect("scratch");
        assert_ne!(before.permissions().mode() & 0o7777, DIR_MODE);
        // An existing directory that is too open is closed again.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        create_qemu_dir(&dir, &group).expect("again");
        let meta = std::fs::metadata(&dir).expect("dir");
        assert_eq!(meta.permissions().mode() & 0o7777, DIR_MODE);
    }

    #[test]
    fn sockets_are_restricted_and_other_files_left_alone() {
        let scratch = tempfile::tempdir().expect("tempdir");
        let socket = scratch.path().join("agent.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let other = scratch.path().join("vhost-user.sock");
        std::fs::write(&other, b"not a socket").expect("write");
        std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        restrict_sockets(scratch.path()).expect("restrict");
        let mode = |path: &Path| {
            std::fs::symlink_metadata(path)
                .expect("exists")
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode(&socket), SOCKET_MODE);
        assert_eq!(mode(&other), 0o644);
    }

    fn own_group() -> QemuGroup {
        // SAFETY: getegid has no preconditions and cannot fail.
        let gid = unsafe { libc::getegid() };
        QemuGroup {
            name: "(own)".into(),
            gid,
        }
    }
}
