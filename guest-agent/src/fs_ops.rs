//! FS_REQUEST: file system operations in the guest.
//!
//! Each request does one operation on the blocking pool and ends with
//! FS_RESULT, or ERROR with the code its `errno` maps to ([`errno_code`]).
//!
//! Work per request is bounded in memory: `read_dir` scans the directory
//! once per page, keeping only the page's names (a heap of at most `limit`
//! names that sort after the cursor), so a directory of any size costs one
//! page of memory; the page is cut further to fit one frame of the host's
//! `max_payload`. A recursive `remove` is std's `remove_dir_all`, which
//! opens each directory relative to its parent without following symbolic
//! links (`openat` with `O_NOFOLLOW`) and unlinks links as links, so nothing
//! outside the tree is touched.

use std::collections::BinaryHeap;
use std::fs::{self, DirBuilder, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use paddock_proto::{
    DEFAULT_DIR_MODE, DEFAULT_READ_DIR_LIMIT, DirEntry, ErrorCode, FileType, FsRequest, FsResult,
    MAX_READ_DIR_LIMIT, Message, Metadata,
};
use tokio::task::JoinError;

use crate::request::{Flow, Handler, Inputs, Rejection, RequestCtx, WireError, rejection};

/// Permission bits `create_dir` and `set_mode` may set.
const MODE_MASK: u32 = 0o7777;

/// Bytes of a `read_dir` result besides its entries and `next`'s name:
/// `{"op":"read_dir","entries":[],"next":""}` with room to spare.
const PAGE_OVERHEAD: usize = 64;

/// Why a file system operation failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FsError {
    /// A path is relative.
    #[error("`{0}` is not an absolute path")]
    NotAbsolute(String),
    /// A mode has bits above `0o7777`.
    #[error("Mode {0:#o} has bits above 0o7777")]
    Mode(u32),
    /// The operation failed in the file system.
    #[error("Could not {action} `{path}`")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A directory entry could not be encoded (a bug).
    #[error("Could not encode a directory entry")]
    Encode(#[source] serde_json::Error),
    /// The blocking task panicked or was cancelled.
    #[error("The file system task failed")]
    Join(#[source] JoinError),
    /// The host broke the protocol on this request.
    #[error(transparent)]
    Rejected(#[from] Rejection),
}

impl WireError for FsError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::NotAbsolute(_) | Self::Mode(_) => ErrorCode::InvalidArgument,
            Self::Io { source, .. } => errno_code(source),
            Self::Encode(_) | Self::Join(_) => ErrorCode::Internal,
            Self::Rejected(rejection) => rejection.code(),
        }
    }
}

/// The wire code of a failed system call, from its `errno`.
pub(crate) fn errno_code(err: &io::Error) -> ErrorCode {
    match err.raw_os_error() {
        Some(libc::ENOENT) => ErrorCode::NotFound,
        Some(libc::EEXIST) => ErrorCode::AlreadyExists,
        Some(libc::ENOTDIR) => ErrorCode::NotADirectory,
        Some(libc::EISDIR) => ErrorCode::IsADirectory,
        Some(libc::ENOTEMPTY) => ErrorCode::DirectoryNotEmpty,
        Some(libc::EACCES | libc::EPERM) => ErrorCode::PermissionDenied,
        Some(libc::ENOSPC | libc::EDQUOT) => ErrorCode::NoSpace,
        Some(libc::EINVAL | libc::ENAMETOOLONG) => ErrorCode::InvalidArgument,
        Some(_) => ErrorCode::Io,
        // std's own checks: a NUL byte in a path.
        None if err.kind() == io::ErrorKind::InvalidInput => ErrorCode::InvalidArgument,
        None => ErrorCode::Io,
    }
}

/// Maps an I/O error on `path` to [`FsError::Io`].
fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> FsError {
    let path = path.to_owned();
    move |source| FsError::Io {
        action,
        path,
        source,
    }
}

fn absolute(path: &str) -> Result<&Path, FsError> {
    let path = Path::new(path);
    if path.is_absolute() {
        Ok(path)
    } else {
        Err(FsError::NotAbsolute(path.display().to_string()))
    }
}

fn checked_mode(mode: u32) -> Result<u32, FsError> {
    if mode & !MODE_MASK == 0 {
        Ok(mode)
    } else {
        Err(FsError::Mode(mode))
    }
}

impl Handler for FsRequest {
    type Error = FsError;

    fn flow(&self) -> Flow {
        Flow {
            sends: false,
            takes: false,
        }
    }

    /// Does the operation on the blocking pool, up to FS_RESULT; any frame
    /// of the host ends the request.
    async fn handle(self, ctx: &RequestCtx, mut inputs: Inputs) -> Result<Message, FsError> {
        let max_payload = ctx.host_max_payload();
        let work = tokio::task::spawn_blocking(move || run(self, max_payload));
        tokio::select! {
            joined = work => joined.map_err(FsError::Join)?.map(Message::FsResult),
            rejection = rejection(&mut inputs) => Err(rejection.into()),
        }
    }
}

/// Does `request`, answering with at most `max_payload` bytes.
fn run(request: FsRequest, max_payload: usize) -> Result<FsResult, FsError> {
    match request {
        FsRequest::ReadDir {
            path,
            cursor,
            limit,
        } => read_dir(absolute(&path)?, cursor.as_deref(), limit, max_payload),
        FsRequest::Metadata {
            path,
            follow_symlinks,
        } => {
            let path = absolute(&path)?;
            let found = if follow_symlinks {
                fs::metadata(path)
            } else {
                fs::symlink_metadata(path)
            };
            let metadata = found.map_err(io_error("read the metadata of", path))?;
            Ok(FsResult::Metadata {
                metadata: describe(&metadata),
            })
        }
        FsRequest::CreateDir {
            path,
            parents,
            mode,
        } => {
            let path = absolute(&path)?;
            let mode = checked_mode(mode.unwrap_or(DEFAULT_DIR_MODE))?;
            DirBuilder::new()
                .recursive(parents)
                .mode(mode)
                .create(path)
                .map_err(io_error("create the directory", path))?;
            Ok(FsResult::CreateDir {})
        }
        FsRequest::Remove {
            path,
            recursive,
            dir,
        } => {
            let path = absolute(&path)?;
            remove(path, recursive, dir)?;
            Ok(FsResult::Remove {})
        }
        FsRequest::Rename { from, to } => {
            let from = absolute(&from)?;
            let to = absolute(&to)?;
            fs::rename(from, to).map_err(io_error("rename", from))?;
            Ok(FsResult::Rename {})
        }
        FsRequest::SetMode { path, mode } => {
            let path = absolute(&path)?;
            let mode = checked_mode(mode)?;
            fs::set_permissions(path, Permissions::from_mode(mode))
                .map_err(io_error("set the mode of", path))?;
            Ok(FsResult::SetMode {})
        }
        FsRequest::ReadLink { path } => {
            let path = absolute(&path)?;
            let target = fs::read_link(path).map_err(io_error("read the link", path))?;
            Ok(FsResult::ReadLink {
                target: target.to_string_lossy().into_owned(),
            })
        }
        FsRequest::Exists {
            path,
            follow_symlinks,
        } => {
            let path = absolute(&path)?;
            let found = if follow_symlinks {
                fs::metadata(path)
            } else {
                fs::symlink_metadata(path)
            };
            let exists = match found {
                Ok(_) => true,
                Err(err) if matches!(err.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                    false
                }
                Err(err) => return Err(io_error("look for", path)(err)),
            };
            Ok(FsResult::Exists { exists })
        }
    }
}

/// Removes `path` itself (a link as a link); a directory's contents only
/// when `recursive`; only a directory, or only something else, as `dir`
/// says.
fn remove(path: &Path, recursive: bool, dir: Option<bool>) -> Result<(), FsError> {
    let removed = match dir {
        // unlink(2) and rmdir(2) check the type themselves (EISDIR,
        // ENOTDIR), with no window between a check and the removal.
        Some(false) => fs::remove_file(path),
        Some(true) if !recursive => fs::remove_dir(path),
        _ => remove_any(path, recursive, dir),
    };
    removed.map_err(io_error("remove", path))
}

/// A removal that looks at the type first: a recursive one, or one of
/// anything.
fn remove_any(path: &Path, recursive: bool, dir: Option<bool>) -> io::Result<()> {
    let metadata = fs::symlink_metadata(path)?;
    if dir == Some(true) && !metadata.is_dir() {
        return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
    }
    if !metadata.is_dir() {
        fs::remove_file(path)
    } else if recursive {
        // Does not follow symbolic links, at the top or inside (see the
        // module documentation).
        fs::remove_dir_all(path)
    } else {
        fs::remove_dir(path)
    }
}

/// The wire metadata of `metadata`.
fn describe(metadata: &fs::Metadata) -> Metadata {
    let kind = metadata.file_type();
    let file_type = if kind.is_symlink() {
        FileType::Symlink
    } else if kind.is_dir() {
        FileType::Dir
    } else if kind.is_file() {
        FileType::File
    } else {
        FileType::Other
    };
    let ms = |secs: i64, nanos: i64| secs.saturating_mul(1000).saturating_add(nanos / 1_000_000);
    Metadata {
        file_type,
        size: metadata.size(),
        mode: metadata.mode() & MODE_MASK,
        uid: metadata.uid(),
        gid: metadata.gid(),
        mtime_ms: ms(metadata.mtime(), metadata.mtime_nsec()),
        atime_ms: ms(metadata.atime(), metadata.atime_nsec()),
        ctime_ms: ms(metadata.ctime(), metadata.ctime_nsec()),
    }
}

/// One page of `dir`: the first `limit` names after `cursor`, in order,
/// as many as fit in `max_payload` bytes.
fn read_dir(
    dir: &Path,
    cursor: Option<&str>,
    limit: Option<u32>,
    max_payload: usize,
) -> Result<FsResult, FsError> {
    let limit = match limit {
        None | Some(0) => DEFAULT_READ_DIR_LIMIT,
        Some(asked) => asked.min(MAX_READ_DIR_LIMIT),
    };
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    // The `limit` smallest names after the cursor: a max-heap whose top is
    // the name to drop when a smaller one comes.
    let mut page: BinaryHeap<String> = BinaryHeap::with_capacity(limit.min(1024) + 1);
    let mut more = false;
    for entry in fs::read_dir(dir).map_err(io_error("list", dir))? {
        let entry = entry.map_err(io_error("list", dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if cursor.is_some_and(|cursor| *name <= *cursor) {
            continue;
        }
        if page.len() < limit {
            page.push(name.into_owned());
        } else {
            more = true;
            if page.peek().is_some_and(|largest| *name < **largest) {
                page.pop();
                page.push(name.into_owned());
            }
        }
    }
    let mut entries = Vec::with_capacity(page.len());
    let mut used = PAGE_OVERHEAD;
    for name in page.into_sorted_vec() {
        let metadata = match fs::symlink_metadata(dir.join(&name)) {
            Ok(metadata) => metadata,
            // Removed since it was listed.
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(io_error("read the metadata of", &dir.join(&name))(err)),
        };
        let entry = DirEntry {
            name,
            metadata: describe(&metadata),
        };
        // The entry, a comma, and its name again should it end up as `next`.
        let cost = serde_json::to_vec(&entry).map_err(FsError::Encode)?.len()
            + 1
            + serde_json::to_vec(&entry.name)
                .map_err(FsError::Encode)?
                .len();
        if used + cost > max_payload && !entries.is_empty() {
            more = true;
            break;
        }
        used += cost;
        entries.push(entry);
    }
    let next = more
        .then(|| entries.last().map(|entry| entry.name.clone()))
        .flatten();
    Ok(FsResult::ReadDir { entries, next })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use paddock_proto::encode_message;

    use super::*;

    fn names(result: &FsResult) -> (Vec<String>, Option<String>) {
        match result {
            FsResult::ReadDir { entries, next } => (
                entries.iter().map(|entry| entry.name.clone()).collect(),
                next.clone(),
            ),
            other => panic!("not a page: {other:?}"),
        }
    }

    #[test]
    fn pages_are_sorted_bounded_and_complete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut expected: Vec<String> = (0..250)
            .map(|n| format!("f{:03}", (n * 37) % 250))
            .collect();
        for name in &expected {
            fs::write(dir.path().join(name), b"").expect("write");
        }
        expected.sort();
        let mut seen = Vec::new();
        let mut cursor = None;
        let mut pages = 0;
        loop {
            let page = read_dir(dir.path(), cursor.as_deref(), Some(64), 1 << 20).expect("page");
            let (names, next) = names(&page);
            assert!(names.len() <= 64);
            seen.extend(names);
            pages += 1;
            match next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, expected);
        assert_eq!(pages, 4);
    }

    #[test]
    fn a_page_fits_the_hosts_payload() {
        let dir = tempfile::tempdir().expect("tempdir");
        for n in 0..200 {
            fs::write(dir.path().join(format!("{n:03}-{}", "x".repeat(200))), b"").expect("write");
        }
        let page = read_dir(dir.path(), None, Some(MAX_READ_DIR_LIMIT), 4096).expect("page");
        let (names, next) = names(&page);
        assert!(!names.is_empty() && names.len() < 200, "{}", names.len());
        assert_eq!(next.as_ref(), names.last());
        let mut frame = Vec::new();
        encode_message(&mut frame, 1, &Message::FsResult(page)).expect("encode");
        assert!(frame.len() - paddock_proto::HEADER_LEN <= 4096);
    }

    #[test]
    fn errno_maps_to_codes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("file");
        fs::write(&file, b"x").expect("write");
        let code = |request: FsRequest| match run(request, 1 << 20) {
            Err(err) => err.code(),
            Ok(result) => panic!("succeeded: {result:?}"),
        };
        let path = |p: &Path| p.to_string_lossy().into_owned();
        assert_eq!(
            code(FsRequest::ReadLink { path: "rel".into() }),
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            code(FsRequest::Metadata {
                path: path(&dir.path().join("missing")),
                follow_symlinks: false
            }),
            ErrorCode::NotFound
        );
        assert_eq!(
            code(FsRequest::CreateDir {
                path: path(&file),
                parents: false,
                mode: None
            }),
            ErrorCode::AlreadyExists
        );
        assert_eq!(
            code(FsRequest::ReadDir {
                path: path(&file),
                cursor: None,
                limit: None
            }),
            ErrorCode::NotADirectory
        );
        assert_eq!(
            code(FsRequest::SetMode {
                path: path(&file),
                mode: 0o10000
            }),
            ErrorCode::InvalidArgument
        );
        fs::create_dir(dir.path().join("full")).expect("mkdir");
        fs::write(dir.path().join("full/a"), b"").expect("write");
        assert_eq!(
            code(FsRequest::Remove {
                path: path(&dir.path().join("full")),
                recursive: false,
                dir: None
            }),
            ErrorCode::DirectoryNotEmpty
        );
        assert_eq!(
            code(FsRequest::Rename {
                from: path(&dir.path().join("full")),
                to: path(&file)
            }),
            ErrorCode::NotADirectory
        );
        assert_eq!(
            code(FsRequest::Rename {
                from: path(&file),
                to: path(&dir.path().join("full"))
            }),
            ErrorCode::IsADirectory
        );
    }

    #[test]
    fn recursive_remove_does_not_follow_links_out_of_the_tree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).expect("mkdir");
        fs::write(outside.join("keep"), b"keep").expect("write");
        let tree = dir.path().join("tree");
        fs::create_dir_all(tree.join("sub")).expect("mkdir");
        symlink(&outside, tree.join("sub/link")).expect("symlink");
        remove(&tree, true, None).expect("remove");
        assert!(!tree.exists());
        assert_eq!(fs::read(outside.join("keep")).expect("read"), b"keep");
    }
}
