//! Host directories shared into a single sandbox: [`SharedFolder`], its
//! checks ([`check_shared_folders`]) and the `<filesystem>` device it
//! becomes in the domain XML ([`FilesystemDevice`]).
//!
//! # What works on QEMU 7.2 / libvirt 9.0 with Debian's cloud kernel
//!
//! - **virtio-9p is not available to the guest**: the cloud kernel
//!   (`linux-image-*-cloud-amd64`, the image's kernel) is built without
//!   `CONFIG_NET_9P`, so it has neither `9p` nor `9pnet_virtio`, built in or
//!   as modules.
//! - **virtiofs is**: the kernel has `fuse` and `virtiofs` as modules (the
//!   image loads them), QEMU 7.2 ships its C `virtiofsd`
//!   (`/usr/lib/qemu/virtiofsd`), which libvirt starts itself for each
//!   `<filesystem>` with `<driver type='virtiofs'/>`, and the guest's
//!   memory must be shared and fd-backed (`<memoryBacking>` with memfd
//!   and shared access), which the renderer adds.
//! - libvirt 9.0 refuses `<readonly/>` on a virtiofs device ("virtiofs
//!   does not yet support read-only mode"), so a read-only folder is made
//!   read-only on the host instead: Paddock exports a read-only,
//!   `nosuid`, `nodev` bind mount of it (the `paddock` crate's
//!   `vm::share`, which also says what a guest can do to the host), and `virtiofsd`'s writes fail there with `EROFS`
//!   whatever the guest mounts. The guest also mounts it `ro`.
//! - virtiofs supports `accessmode='passthrough'` only: `virtiofsd` runs
//!   as root and creates files with the guest's user ids, so a guest's root
//!   would leave root's files on the host (set-user-ID ones too). Paddock
//!   exports a read-write folder through an idmapped bind mount instead, on
//!   which root stands for the folder's owner (the squash that 9p's
//!   `mapped`/`squash` modes would give), and refuses a read-write folder
//!   owned by root. See [`SharedFolder::read_only`].
//! - QEMU cannot migrate, save or snapshot a guest with a vhost-user-fs
//!   device, so a domain with shared folders is never snapshotted: pools
//!   refuse them.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Component, Path, PathBuf};

/// The longest tag: a virtio-fs device's tag field is 36 bytes.
pub const MAX_SHARE_TAG_LEN: usize = 36;

/// A host directory shared into a sandbox and mounted by the guest at
/// `guest_path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedFolder {
    /// The host directory: absolute, and an existing directory.
    pub host_path: PathBuf,
    /// The name the guest mounts it by: 1 to [`MAX_SHARE_TAG_LEN`] of
    /// `A-Z`, `a-z`, `0-9`, `-`, `_`, unique in the sandbox.
    pub tag: String,
    /// Where the guest mounts it: absolute, not `/`, without `..`, UTF-8
    /// without control characters, unique in the sandbox.
    pub guest_path: PathBuf,
    /// Whether the guest may only read. A read-write folder must not be
    /// owned by root: the guest's root writes there as the folder's owner
    /// and group (Paddock exports it through an idmapped mount), so what a
    /// hostile guest can leave there, a set-user-ID file included, is the
    /// owner's; share read-write only a directory of a user nothing else
    /// trusts, and run nothing from it.
    pub read_only: bool,
}

impl SharedFolder {
    /// A read-only folder.
    #[must_use]
    pub fn read_only(
        host_path: impl Into<PathBuf>,
        tag: impl Into<String>,
        guest_path: impl Into<PathBuf>,
    ) -> Self {
        Self {
            host_path: host_path.into(),
            tag: tag.into(),
            guest_path: guest_path.into(),
            read_only: true,
        }
    }

    /// A read-write folder (see [`SharedFolder::read_only`] for what the
    /// guest can leave on the host, and why it must not be root's).
    #[must_use]
    pub fn read_write(
        host_path: impl Into<PathBuf>,
        tag: impl Into<String>,
        guest_path: impl Into<PathBuf>,
    ) -> Self {
        Self {
            read_only: false,
            ..Self::read_only(host_path, tag, guest_path)
        }
    }

    /// Checks this folder alone (the host directory exists).
    ///
    /// # Errors
    /// The [`ShareError`] of the first rule it breaks.
    pub fn check(&self) -> Result<(), ShareError> {
        check_tag(&self.tag)?;
        check_guest_path(&self.guest_path)?;
        if !self.host_path.is_absolute() {
            return Err(ShareError::HostPathRelative {
                path: self.host_path.clone(),
            });
        }
        let metadata = std::fs::metadata(&self.host_path).map_err(|source| {
            ShareError::HostPathUnreadable {
                path: self.host_path.clone(),
                source,
            }
        })?;
        if !metadata.is_dir() {
            return Err(ShareError::HostPathNotDirectory {
                path: self.host_path.clone(),
            });
        }
        if !self.read_only && metadata.uid() == 0 {
            return Err(ShareError::ReadWriteOwnedByRoot {
                path: self.host_path.clone(),
            });
        }
        Ok(())
    }
}

/// Checks every folder ([`SharedFolder::check`]) and that no two share a
/// tag or a guest path.
///
/// # Errors
/// The [`ShareError`] of the first rule broken.
pub fn check_shared_folders(folders: &[SharedFolder]) -> Result<(), ShareError> {
    let mut tags = HashSet::new();
    let mut guest_paths = HashSet::new();
    for folder in folders {
        folder.check()?;
        if !tags.insert(folder.tag.as_str()) {
            return Err(ShareError::DuplicateTag {
                tag: folder.tag.clone(),
            });
        }
        if !guest_paths.insert(normalized(&folder.guest_path)) {
            return Err(ShareError::DuplicateGuestPath {
                path: folder.guest_path.clone(),
            });
        }
    }
    Ok(())
}

/// A virtiofs `<filesystem>` device: the host directory `virtiofsd`
/// exports and the tag the guest mounts it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilesystemDevice {
    /// The directory exported: Paddock's bind mount of the folder
    /// (read-only, or idmapped for a read-write folder).
    pub source_dir: PathBuf,
    /// The mount tag.
    pub tag: String,
}

/// Why a shared folder was refused.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    /// The host path is relative.
    #[error("Shared folder host path {path:?} is not absolute")]
    HostPathRelative {
        /// The path.
        path: PathBuf,
    },
    /// The host path cannot be looked at (it does not exist, or a parent
    /// is closed).
    #[error("Shared folder host path {path:?} cannot be read")]
    HostPathUnreadable {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The host path is not a directory.
    #[error("Shared folder host path {path:?} is not a directory")]
    HostPathNotDirectory {
        /// The path.
        path: PathBuf,
    },
    /// A read-write folder is owned by root: the guest's root writes
    /// there as the folder's owner, so it could leave set-user-ID root
    /// files on the host.
    #[error("Read-write shared folder {path:?} is owned by root; give it to another user")]
    ReadWriteOwnedByRoot {
        /// The path.
        path: PathBuf,
    },
    /// The tag is empty or longer than [`MAX_SHARE_TAG_LEN`].
    #[error("Shared folder tag {tag:?} must be 1 to {MAX_SHARE_TAG_LEN} bytes long")]
    TagLength {
        /// The tag.
        tag: String,
    },
    /// The tag has a character outside `A-Z`, `a-z`, `0-9`, `-`, `_`.
    #[error("Shared folder tag {tag:?} may hold only A-Z, a-z, 0-9, '-' and '_'")]
    TagCharset {
        /// The tag.
        tag: String,
    },
    /// The guest path is relative, `/` itself, or has a `..`.
    #[error("Shared folder guest path {path:?} must be absolute, below / and without '..'")]
    GuestPathShape {
        /// The path.
        path: PathBuf,
    },
    /// The guest path is not UTF-8 or has a control character.
    #[error("Shared folder guest path {path:?} must be UTF-8 without control characters")]
    GuestPathText {
        /// The path.
        path: PathBuf,
    },
    /// Two folders have the same tag.
    #[error("Two shared folders have the tag {tag:?}")]
    DuplicateTag {
        /// The tag.
        tag: String,
    },
    /// Two folders have the same guest path.
    #[error("Two shared folders are mounted at {path:?}")]
    DuplicateGuestPath {
        /// The path.
        path: PathBuf,
    },
}

fn check_tag(tag: &str) -> Result<(), ShareError> {
    if tag.is_empty() || tag.len() > MAX_SHARE_TAG_LEN {
        return Err(ShareError::TagLength { tag: tag.into() });
    }
    if !tag
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(ShareError::TagCharset { tag: tag.into() });
    }
    Ok(())
}

fn check_guest_path(path: &Path) -> Result<(), ShareError> {
    let Some(text) = path.to_str() else {
        return Err(ShareError::GuestPathText { path: path.into() });
    };
    if text.chars().any(char::is_control) {
        return Err(ShareError::GuestPathText { path: path.into() });
    }
    let shape = || ShareError::GuestPathShape { path: path.into() };
    if !path.is_absolute() {
        return Err(shape());
    }
    let mut below_root = false;
    for component in path.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(_) => below_root = true,
            Component::ParentDir | Component::Prefix(_) => return Err(shape()),
        }
    }
    if below_root { Ok(()) } else { Err(shape()) }
}

/// The guest path without `.` components and repeated or trailing slashes,
/// so that `/a/./b/` and `/a/b` count as the same mount point.
fn normalized(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().expect("a temporary directory")
    }

    #[test]
    fn a_valid_folder_passes() {
        let host = dir();
        let folder = SharedFolder::read_only(host.path(), "data_1-x", "/mnt/data");
        folder.check().expect("valid");
        check_shared_folders(&[folder]).expect("valid set");
    }

    #[test]
    fn host_path_must_be_an_absolute_existing_directory() {
        let host = dir();
        let relative = SharedFolder::read_only("relative/dir", "t", "/mnt");
        assert!(matches!(
            relative.check(),
            Err(ShareError::HostPathRelative { .. })
        ));
        let missing = SharedFolder::read_only(host.path().join("missing"), "t", "/mnt");
        assert!(matches!(
            missing.check(),
            Err(ShareError::HostPathUnreadable { .. })
        ));
        let file = host.path().join("file");
        std::fs::write(&file, b"x").expect("write");
        let not_dir = SharedFolder::read_only(&file, "t", "/mnt");
        assert!(matches!(
            not_dir.check(),
            Err(ShareError::HostPathNotDirectory { .. })
        ));
    }

    #[test]
    fn a_read_write_folder_of_root_is_refused() {
        use std::os::unix::fs::MetadataExt as _;
        let host = dir();
        let owner = std::fs::metadata(host.path()).expect("metadata").uid();
        let checked = SharedFolder::read_write(host.path(), "t", "/mnt").check();
        if owner == 0 {
            assert!(
                matches!(checked, Err(ShareError::ReadWriteOwnedByRoot { .. })),
                "{checked:?}"
            );
        } else {
            checked.expect("a folder of another user");
        }
        SharedFolder::read_only(host.path(), "t", "/mnt")
            .check()
            .expect("read-only folders of root are fine");
    }

    #[test]
    fn tags_are_short_and_plain() {
        let host = dir();
        let with_tag = |tag: &str| SharedFolder::read_only(host.path(), tag, "/mnt").check();
        assert!(matches!(with_tag(""), Err(ShareError::TagLength { .. })));
        assert!(matches!(
            with_tag(&"a".repeat(MAX_SHARE_TAG_LEN + 1)),
            Err(ShareError::TagLength { .. })
        ));
        with_tag(&"a".repeat(MAX_SHARE_TAG_LEN)).expect("longest tag");
        for bad in ["a b", "a/b", "a,b", "é", "a\0"] {
            assert!(
                matches!(with_tag(bad), Err(ShareError::TagCharset { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn guest_paths_are_absolute_below_root_without_parent_steps() {
        let host = dir();
        let at = |path: &str| SharedFolder::read_only(host.path(), "t", path).check();
        for bad in ["mnt", "", "/", "//", "/.", "/mnt/../etc", "/..", "./mnt"] {
            assert!(
                matches!(at(bad), Err(ShareError::GuestPathShape { .. })),
                "{bad:?}"
            );
        }
        for bad in ["/mnt/a\nb", "/mnt/\u{7f}"] {
            assert!(
                matches!(at(bad), Err(ShareError::GuestPathText { .. })),
                "{bad:?}"
            );
        }
        at("/mnt/./data/").expect("a dot is harmless");
    }

    #[test]
    fn tags_and_guest_paths_are_unique() {
        let host = dir();
        let same_tag = [
            SharedFolder::read_only(host.path(), "t", "/a"),
            SharedFolder::read_only(host.path(), "t", "/b"),
        ];
        assert!(matches!(
            check_shared_folders(&same_tag),
            Err(ShareError::DuplicateTag { .. })
        ));
        let same_path = [
            SharedFolder::read_only(host.path(), "t1", "/a/b"),
            SharedFolder::read_only(host.path(), "t2", "/a/./b/"),
        ];
        assert!(matches!(
            check_shared_folders(&same_path),
            Err(ShareError::DuplicateGuestPath { .. })
        ));
    }
}
