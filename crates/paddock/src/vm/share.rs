//! Shared folders of a single [`super::Sandbox`]: host directories the
//! guest mounts over virtiofs ([`paddock_libvirt::SharedFolder`]).
//!
//! # How a folder reaches the guest
//!
//! 1. Before anything is made, the folders are checked
//!    ([`paddock_libvirt::check_shared_folders`]: absolute existing host
//!    directory, tag, guest path, no duplicates).
//! 2. The host side: each folder is exported as a `nosuid`, `nodev` bind
//!    mount of it at `<state root>/<sandbox>.shares/<tag>` (not recursive:
//!    mounts below the folder are not shared, a recursive one would keep
//!    them writable). A read-only folder's is read-only, because libvirt
//!    9.0 refuses `<readonly/>` for virtiofs: `virtiofsd` then gets
//!    `EROFS` from the host kernel for any write, whatever the guest mounts
//!    (the guest's own `ro` would not hold against a hostile guest, which
//!    can remount). A read-write folder's is idmapped (a user namespace
//!    whose `uid_map` and `gid_map` are `<owner> 0 1`): root, whom
//!    `virtiofsd` acts as for the guest's root, stands for the folder's
//!    owner and group there (see below).
//! 3. The domain gets one virtiofs `<filesystem>` per folder; libvirt
//!    starts one `virtiofsd` (QEMU's, as root, in its own mount namespace
//!    pivoted into the exported directory) for each.
//! 4. Once the agent answers, it runs busybox's `mkdir -p` and
//!    `mount -t virtiofs -o ro|rw,nosuid,nodev TAG PATH` for each folder;
//!    a mount that fails fails the boot with [`VmError::ShareMount`]
//!    (exit code and the guest's error message), and the sandbox is
//!    removed. The mount runs as an ordinary execution, so a request policy
//!    that refuses executions ([`paddock_agent_client::ClientConfig`]'s
//!    gate) refuses it too, and the boot fails with that refusal.
//! 5. When the sandbox ends, its domain (and with it `virtiofsd`) goes
//!    first, then the bind mounts are detached and their empty mount points
//!    removed (only `rmdir`: nothing below a mount point is ever deleted).
//!    A process that crashed leaves them; the next sandbox of that name
//!    detaches and removes them before making its own.
//!
//! # What the guest can do to the host
//!
//! `virtiofsd` keeps the guest inside the exported directory: it pivots
//! its own mount namespace into it, so a symbolic link the guest makes to
//! `/etc` is stored as a link (the guest's kernel resolves it, inside the
//! guest) and never followed on the host by `virtiofsd`. It drops
//! `CAP_MKNOD`: no device nodes. virtiofs has only `passthrough` access
//! (the guest's user ids, applied by a `virtiofsd` running as root), and
//! virtio-9p's `mapped` or `squash` modes are not available (the guest's
//! cloud kernel has no 9p), so the squash is done by the idmapped export:
//! what the guest's root makes in a read-write folder is stored as the
//! folder's owner and group, never root's, so a set-user-ID file it leaves
//! is the owner's; files of other host users are unmapped there, so the
//! guest gets only what "others" may do to them; guest users other than
//! root cannot own files there (`EOVERFLOW`). A read-write folder owned by
//! root is refused ([`paddock_libvirt::ShareError::ReadWriteOwnedByRoot`]):
//! root would stand for root. Share read-write only a directory of a user
//! that nothing else trusts, and run nothing from it.
//!
//! # No snapshots
//!
//! QEMU cannot save, migrate or snapshot a guest with a vhost-user-fs
//! device, so [`crate::Paddock::create_pool`] refuses a
//! [`super::VmPoolSpec`] with shared folders ([`VmError::SharesInPool`])
//! before it makes anything, and a sandbox with shared folders refuses
//! [`super::Sandbox::snapshot`], its reverts and
//! [`super::Sandbox::capture`] ([`VmError::SharesPreventSnapshot`]).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use paddock_agent_client::{AgentClient, Execute};
use paddock_libvirt::{FilesystemDevice, SharedFolder};

use super::VmError;

/// The host side of a sandbox's shared folders: the read-only bind mounts
/// made for it, detached and removed on [`ShareExports::release`] or drop.
#[derive(Debug, Default)]
pub(crate) struct ShareExports {
    /// `<state root>/<sandbox>.shares`, if it was made.
    root: Option<PathBuf>,
    /// The bind mounts made in it.
    mounts: Vec<PathBuf>,
}

impl ShareExports {
    /// Makes the host side of `folders` (checked already) for the sandbox
    /// `name`, and returns the devices its domain gets, in order.
    pub(crate) fn prepare(
        state_root: &Path,
        name: &str,
        folders: &[SharedFolder],
    ) -> Result<(Self, Vec<FilesystemDevice>), VmError> {
        let mut exports = Self::default();
        let mut devices = Vec::with_capacity(folders.len());
        if folders.is_empty() {
            return Ok((exports, devices));
        }
        let root = state_root.join(format!("{name}.shares"));
        remove_leftovers(&root)?;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&root)
            .map_err(VmError::io("create the shared folder directory", &root))?;
        exports.root = Some(root.clone());
        for folder in folders {
            let target = root.join(&folder.tag);
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&target)
                .map_err(VmError::io("create the mount point of", &target))?;
            let exported = if folder.read_only {
                bind_read_only(&folder.host_path, &target)
            } else {
                bind_as_owner(&folder.host_path, &target)
            };
            exported.map_err(|source| VmError::ShareExport {
                path: folder.host_path.clone(),
                source,
            })?;
            exports.mounts.push(target.clone());
            devices.push(FilesystemDevice {
                source_dir: target,
                tag: folder.tag.clone(),
            });
        }
        Ok((exports, devices))
    }

    /// Detaches the bind mounts and removes their (empty) mount points and
    /// directory. Idempotent.
    pub(crate) fn release(&mut self) -> Result<(), VmError> {
        let mut first_error = None;
        for target in self.mounts.drain(..) {
            if let Err(source) = detach(&target) {
                first_error.get_or_insert(VmError::Io {
                    action: "detach the shared folder mount",
                    path: target.clone(),
                    source,
                });
                continue;
            }
            if let Err(source) = std::fs::remove_dir(&target) {
                first_error.get_or_insert(VmError::Io {
                    action: "remove the mount point",
                    path: target,
                    source,
                });
            }
        }
        if first_error.is_none()
            && let Some(root) = self.root.take()
            && let Err(source) = std::fs::remove_dir(&root)
        {
            first_error = Some(VmError::Io {
                action: "remove the shared folder directory",
                path: root,
                source,
            });
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for ShareExports {
    fn drop(&mut self) {
        if let Err(err) = self.release() {
            tracing::warn!(error = %err, "a shared folder's host side was left behind");
        }
    }
}

/// Mounts each folder in the guest behind `client`, in order.
pub(crate) async fn mount_in_guest(
    client: &AgentClient,
    folders: &[SharedFolder],
) -> Result<(), VmError> {
    for folder in folders {
        let guest_path = folder.guest_path.to_string_lossy().into_owned();
        let options = if folder.read_only {
            "ro,nosuid,nodev"
        } else {
            "rw,nosuid,nodev"
        };
        let steps = [
            Execute::argv(["mkdir", "-p", guest_path.as_str()]),
            Execute::argv([
                "mount",
                "-t",
                "virtiofs",
                "-o",
                options,
                folder.tag.as_str(),
                guest_path.as_str(),
            ]),
        ];
        for step in steps {
            let out = client.exec_collect(step).await?;
            if out.result.exit_code != Some(0) {
                return Err(VmError::ShareMount {
                    tag: folder.tag.clone(),
                    guest_path: folder.guest_path.clone(),
                    exit_code: out.result.exit_code,
                    stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                });
            }
        }
    }
    Ok(())
}

/// Detaches and removes what a crashed process left in `root` (mount
/// points only: `rmdir`, never a recursive removal).
fn remove_leftovers(root: &Path) -> Result<(), VmError> {
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(VmError::io("read", root)(err)),
    };
    for entry in entries {
        let path = entry.map_err(VmError::io("read", root))?.path();
        // Not mounted (EINVAL) is fine: a mount point whose mount is gone.
        match detach(&path) {
            Ok(()) => {}
            Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {}
            Err(err) => return Err(VmError::io("detach the leftover mount", &path)(err)),
        }
        std::fs::remove_dir(&path)
            .map_err(VmError::io("remove the leftover mount point", &path))?;
    }
    std::fs::remove_dir(root).map_err(VmError::io("remove the leftover directory", root))
}

/// Bind-mounts `source` at `target` read-only, `nosuid` and `nodev` (not
/// recursively), and checks that the kernel reports it read-only.
fn bind_read_only(source: &Path, target: &Path) -> std::io::Result<()> {
    let source_c = c_path(source)?;
    let target_c = c_path(target)?;
    // SAFETY: both are NUL-terminated paths that outlive the calls; a bind
    // mount reads neither the file system type nor the data argument.
    let bound = unsafe {
        libc::mount(
            source_c.as_ptr(),
            target_c.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if bound != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let flags =
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
    // SAFETY: as above; a bind remount changes the mount's flags only.
    let remounted = unsafe {
        libc::mount(
            std::ptr::null(),
            target_c.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    if remounted != 0 {
        let err = std::io::Error::last_os_error();
        let _ = detach(target);
        return Err(err);
    }
    // SAFETY: statvfs writes only into the zeroed struct it is given.
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid out pointer.
    if unsafe { libc::statvfs(target_c.as_ptr(), &raw mut stats) } != 0 {
        let err = std::io::Error::last_os_error();
        let _ = detach(target);
        return Err(err);
    }
    if stats.f_flag & libc::ST_RDONLY == 0 {
        let _ = detach(target);
        return Err(std::io::Error::other("the bind mount is still writable"));
    }
    Ok(())
}

/// Bind-mounts `source` at `target`, `nosuid` and `nodev` (not
/// recursively), idmapped so that the host's root stands for the folder's
/// owner: what `virtiofsd` (root) creates for the guest's root is stored as
/// the folder's owner and group, files of the owner show as root's, and
/// files of every other user are unmapped, so `virtiofsd` gets no more
/// than "others" may do to them. A guest id other than root's cannot own
/// a file there (`EOVERFLOW`).
fn bind_as_owner(source: &Path, target: &Path) -> std::io::Result<()> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    use std::os::unix::fs::MetadataExt as _;

    let owner = std::fs::metadata(source)?;
    let userns = user_namespace(owner.uid(), owner.gid())?;
    let source_c = c_path(source)?;
    // SAFETY: open_tree reads the NUL-terminated path and returns a new
    // descriptor (or -1); it is owned from here on.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            source_c.as_ptr(),
            libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC,
        )
    };
    let tree = i32::try_from(tree).map_err(|_| std::io::Error::other("bad descriptor"))?;
    if tree < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor open_tree just returned, owned by nothing else.
    let tree = unsafe { OwnedFd::from_raw_fd(tree) };
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_IDMAP | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: u64::try_from(userns.as_raw_fd())
            .map_err(|_| std::io::Error::other("bad descriptor"))?,
    };
    // SAFETY: the detached tree's descriptor, an empty path with
    // AT_EMPTY_PATH, and a mount_attr of the size given, read only.
    let set = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &raw const attr,
            size_of::<libc::mount_attr>(),
        )
    };
    if set != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let target_c = c_path(target)?;
    // SAFETY: attaches the detached tree at the NUL-terminated target path.
    let moved = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target_c.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if moved != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A user namespace in which `uid` and `gid` are root's ids outside
/// (`uid_map` `<uid> 0 1`): an idmapped mount through it stores root's
/// files as `uid:gid`. Made by a short-lived child that unshares it; the
/// namespace lives on through the returned descriptor.
fn user_namespace(uid: u32, gid: u32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::unix::process::CommandExt as _;

    let mut command = std::process::Command::new("/bin/sleep");
    command
        .arg("10")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: unshare is async-signal-safe and touches no memory of the
    // parent; the child only execs afterwards.
    unsafe {
        command.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWUSER) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let mut child = command.spawn()?;
    let result = (|| {
        let proc_dir = PathBuf::from(format!("/proc/{}", child.id()));
        std::fs::write(proc_dir.join("uid_map"), format!("{uid} 0 1\n"))?;
        std::fs::write(proc_dir.join("gid_map"), format!("{gid} 0 1\n"))?;
        let ns = std::fs::File::open(proc_dir.join("ns/user"))?;
        Ok(std::os::fd::OwnedFd::from(ns))
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// Lazily unmounts `target` (`MNT_DETACH`: a `virtiofsd` still holding it
/// keeps its own copy until it exits).
fn detach(target: &Path) -> std::io::Result<()> {
    let target_c = c_path(target)?;
    // SAFETY: a NUL-terminated path that outlives the call.
    if unsafe { libc::umount2(target_c.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn c_path(path: &Path) -> std::io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path has a NUL byte"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bind mounts need root; elsewhere the test says so and passes.
    fn root() -> bool {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if !root {
            eprintln!("SKIPPED: bind mounts need root");
        }
        root
    }

    /// The owner of the test's read-write folders: not root, no one's.
    const OWNER: u32 = 4242;

    fn folders(host: &Path) -> Vec<SharedFolder> {
        std::os::unix::fs::chown(host, Some(OWNER), Some(OWNER)).expect("chown");
        vec![
            SharedFolder::read_only(host, "input", "/mnt/input"),
            SharedFolder::read_write(host, "output", "/mnt/output"),
        ]
    }

    #[test]
    fn a_read_only_folder_is_exported_read_only_and_released_without_a_trace() {
        if !root() {
            return;
        }
        let state = tempfile::tempdir().expect("state root");
        let host = tempfile::tempdir().expect("host folder");
        std::fs::write(host.path().join("kept.txt"), b"host").expect("write");
        let (mut exports, devices) =
            ShareExports::prepare(state.path(), "box", &folders(host.path())).expect("prepare");
        let exported = state.path().join("box.shares/input");
        assert_eq!(
            devices,
            vec![
                FilesystemDevice {
                    source_dir: exported.clone(),
                    tag: "input".into()
                },
                FilesystemDevice {
                    source_dir: state.path().join("box.shares/output"),
                    tag: "output".into()
                },
            ]
        );
        assert_eq!(
            std::fs::read(exported.join("kept.txt")).expect("read through the export"),
            b"host"
        );
        let write = std::fs::write(exported.join("new.txt"), b"x").expect_err("read-only");
        assert_eq!(write.raw_os_error(), Some(libc::EROFS), "{write}");
        exports.release().expect("release");
        assert!(!state.path().join("box.shares").exists());
        assert_eq!(
            std::fs::read(host.path().join("kept.txt")).expect("the host's file stays"),
            b"host"
        );
    }

    #[test]
    fn roots_files_in_a_read_write_folder_are_its_owners_on_the_host() {
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        if !root() {
            return;
        }
        let state = tempfile::tempdir().expect("state root");
        let host = tempfile::tempdir().expect("host folder");
        let foreign = host.path().join("foreign.txt");
        std::fs::write(&foreign, b"not the owner's").expect("write");
        std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let (mut exports, _) =
            ShareExports::prepare(state.path(), "box", &folders(host.path())).expect("prepare");
        let exported = state.path().join("box.shares/output");
        // What root (virtiofsd) makes there, set-user-ID bit and all.
        let made = exported.join("made.bin");
        std::fs::write(&made, b"guest").expect("create through the export");
        std::fs::set_permissions(&made, std::fs::Permissions::from_mode(0o4755))
            .expect("chmod through the export");
        let on_host = std::fs::metadata(host.path().join("made.bin")).expect("on the host");
        assert_eq!(
            (on_host.uid(), on_host.gid()),
            (OWNER, OWNER),
            "root's file is the owner's on the host"
        );
        let through = std::fs::metadata(&made).expect("through the export");
        assert_eq!(
            (through.uid(), through.gid()),
            (0, 0),
            "the owner shows as root"
        );
        // Another user's private file is out of root's reach there.
        let denied = std::fs::read(exported.join("foreign.txt")).expect_err("not the owner's");
        assert_eq!(denied.raw_os_error(), Some(libc::EACCES), "{denied}");
        exports.release().expect("release");
        assert!(!state.path().join("box.shares").exists());
    }

    #[test]
    fn what_a_crashed_process_left_is_detached_before_a_new_export() {
        if !root() {
            return;
        }
        let state = tempfile::tempdir().expect("state root");
        let host = tempfile::tempdir().expect("host folder");
        std::fs::write(host.path().join("kept.txt"), b"host").expect("write");
        let (crashed, _) =
            ShareExports::prepare(state.path(), "box", &folders(host.path())).expect("prepare");
        // A process that died: nothing released.
        std::mem::forget(crashed);
        let (mut exports, _) = ShareExports::prepare(state.path(), "box", &folders(host.path()))
            .expect("prepare over the leftovers");
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        for tag in ["input", "output"] {
            let target = state.path().join("box.shares").join(tag);
            let mounts = mountinfo
                .lines()
                .filter(|line| line.split(' ').nth(4) == target.to_str())
                .count();
            assert_eq!(mounts, 1, "the leftover mount of {tag} was not detached");
        }
        exports.release().expect("release");
        assert!(!state.path().join("box.shares").exists());
        assert!(
            host.path().join("kept.txt").exists(),
            "nothing of the host's went"
        );
    }
}
