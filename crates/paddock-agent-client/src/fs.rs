//! File system operations in the guest: std::fs-style calls on
//! [`AgentClient`], each one FS_REQUEST answered by one FS_RESULT.
//!
//! Every call passes the request gate first (a policy's `[fs]` table: an
//! operation that only looks needs its paths readable, one that changes
//! the file system needs them writable), then needs the agent to announce
//! [`capability::FS`]: an older agent gets
//! [`ClientError::Unsupported`] and nothing is sent. Each call waits at most
//! [`crate::ClientConfig::request_timeout`], a recursive removal
//! [`crate::ClientConfig::io_timeout`]. A failure in the guest is
//! [`ClientError::Agent`]; [`ClientError::fs_kind`] says which
//! ([`FsErrorKind`]).

use paddock_policy::FsAccess;
use paddock_proto::{
    DirEntry, ErrorCode, FsRequest, FsResult, MAX_READ_DIR_LIMIT, Message, Metadata, capability,
};

use crate::client::AgentClient;
use crate::error::ClientError;
use crate::gate::GateRequest;

/// One page of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirPage {
    /// Entries, sorted by name.
    pub entries: Vec<DirEntry>,
    /// The cursor of the next page ([`AgentClient::read_dir_page`]);
    /// `None` on the last page.
    pub next: Option<String>,
}

/// Why a file system operation failed in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FsErrorKind {
    /// The path (or a directory on the way) does not exist.
    NotFound,
    /// The path exists and must not.
    AlreadyExists,
    /// A path component is not a directory.
    NotADirectory,
    /// The path is a directory and must not be.
    IsADirectory,
    /// The directory is not empty.
    DirectoryNotEmpty,
    /// The agent may not do it.
    PermissionDenied,
    /// A file system of the guest is full.
    NoSpace,
    /// A path is relative, a mode out of range, or the path is not what the
    /// operation takes (`read_link` of a file).
    InvalidArgument,
    /// Another I/O failure.
    Io,
}

impl FsErrorKind {
    /// The kind of a wire error code; `None` for codes that are not about
    /// the file system.
    #[must_use]
    pub fn from_code(code: ErrorCode) -> Option<Self> {
        Some(match code {
            ErrorCode::NotFound => Self::NotFound,
            ErrorCode::AlreadyExists => Self::AlreadyExists,
            ErrorCode::NotADirectory => Self::NotADirectory,
            ErrorCode::IsADirectory => Self::IsADirectory,
            ErrorCode::DirectoryNotEmpty => Self::DirectoryNotEmpty,
            ErrorCode::PermissionDenied => Self::PermissionDenied,
            ErrorCode::NoSpace => Self::NoSpace,
            ErrorCode::InvalidArgument => Self::InvalidArgument,
            ErrorCode::Io => Self::Io,
            _ => return None,
        })
    }

    /// Whether the same call may succeed later without the caller changing
    /// it: only when the guest's state may change on its own (space freed,
    /// a transient I/O error). A missing path, an existing one or a wrong
    /// type stays so until someone changes the file system.
    #[must_use]
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::NoSpace | Self::Io)
    }
}

impl ClientError {
    /// What kind of file system failure this is, when the agent refused a
    /// request with a file system code.
    #[must_use]
    pub fn fs_kind(&self) -> Option<FsErrorKind> {
        self.agent_code().and_then(FsErrorKind::from_code)
    }
}

impl AgentClient {
    /// Does one file system operation: the gate, the capability, the call.
    async fn fs(&self, request: FsRequest) -> Result<FsResult, ClientError> {
        {
            let paths = request.paths();
            let access = if request.mutates() {
                FsAccess::Write
            } else {
                FsAccess::Read
            };
            self.admit(&mut GateRequest::Fs {
                op: request.op(),
                access,
                paths: &paths,
            })?;
        }
        let conn = self.connection().await?;
        if !conn
            .session
            .capabilities
            .iter()
            .any(|c| c == capability::FS)
        {
            return Err(ClientError::Unsupported {
                capability: capability::FS,
            });
        }
        drop(conn);
        let config = self.config();
        let timeout = match request {
            FsRequest::Remove {
                recursive: true, ..
            } => config.io_timeout,
            _ => config.request_timeout,
        };
        let op = request.op();
        match self
            .call_within(Message::FsRequest(request), "FS_RESULT", timeout)
            .await?
        {
            Message::FsResult(result) if result.op() == op => Ok(result),
            other => Err(ClientError::Unexpected { kind: other.kind() }),
        }
    }

    /// One page of the directory `path`: the entries whose names sort after
    /// `cursor` (`None`: from the first), at most `limit` of them (`None`:
    /// the agent's default, [`paddock_proto::DEFAULT_READ_DIR_LIMIT`]).
    /// Pass the page's [`DirPage::next`] as the next call's `cursor`.
    ///
    /// # Errors
    /// [`ClientError::Agent`] (see [`ClientError::fs_kind`]),
    /// [`ClientError::Denied`], [`ClientError::Unsupported`], or a
    /// connection error.
    pub async fn read_dir_page(
        &self,
        path: &str,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<DirPage, ClientError> {
        let request = FsRequest::ReadDir {
            path: path.to_owned(),
            cursor: cursor.map(str::to_owned),
            limit,
        };
        match self.fs(request).await? {
            FsResult::ReadDir { entries, next } => Ok(DirPage { entries, next }),
            _ => Err(unexpected()),
        }
    }

    /// Every entry of the directory `path`, sorted by name, walking all
    /// pages. The whole listing is held on the host: for a directory of
    /// unknown size, walk [`AgentClient::read_dir_page`] instead.
    ///
    /// # Errors
    /// As [`AgentClient::read_dir_page`].
    pub async fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>, ClientError> {
        let mut entries = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            // The largest pages: the agent reads the whole directory for
            // each page (to keep it sorted without holding it), so fewer
            // pages make the walk about twice as fast for 10,000 entries.
            let page = self
                .read_dir_page(path, cursor.as_deref(), Some(MAX_READ_DIR_LIMIT))
                .await?;
            entries.extend(page.entries);
            match page.next {
                // A cursor that does not move on would loop for ever.
                Some(next) if cursor.as_deref() < Some(next.as_str()) => cursor = Some(next),
                Some(_) => return Err(unexpected()),
                None => return Ok(entries),
            }
        }
    }

    async fn stat(&self, path: &str, follow_symlinks: bool) -> Result<Metadata, ClientError> {
        let request = FsRequest::Metadata {
            path: path.to_owned(),
            follow_symlinks,
        };
        match self.fs(request).await? {
            FsResult::Metadata { metadata } => Ok(metadata),
            _ => Err(unexpected()),
        }
    }

    /// The metadata of `path`, following symbolic links (`stat`).
    ///
    /// # Errors
    /// As [`AgentClient::read_dir_page`].
    pub async fn metadata(&self, path: &str) -> Result<Metadata, ClientError> {
        self.stat(path, true).await
    }

    /// The metadata of `path` itself: a symbolic link is described as a
    /// link (`lstat`).
    ///
    /// # Errors
    /// As [`AgentClient::read_dir_page`].
    pub async fn symlink_metadata(&self, path: &str) -> Result<Metadata, ClientError> {
        self.stat(path, false).await
    }

    async fn mkdir(&self, path: &str, parents: bool, mode: Option<u32>) -> Result<(), ClientError> {
        let request = FsRequest::CreateDir {
            path: path.to_owned(),
            parents,
            mode,
        };
        match self.fs(request).await? {
            FsResult::CreateDir {} => Ok(()),
            _ => Err(unexpected()),
        }
    }

    /// Makes the directory `path` (mode `0o755` less the agent's umask);
    /// its parent must exist and `path` must not.
    ///
    /// # Errors
    /// As [`AgentClient::read_dir_page`]: `AlreadyExists`, `NotFound`...
    pub async fn create_dir(&self, path: &str) -> Result<(), ClientError> {
        self.mkdir(path, false, None).await
    }

    /// Makes the directory `path` with permission bits `mode` (less the
    /// agent's umask).
    ///
    /// # Errors
    /// As [`AgentClient::create_dir`].
    pub async fn create_dir_with_mode(&self, path: &str, mode: u32) -> Result<(), ClientError> {
        self.mkdir(path, false, Some(mode)).await
    }

    /// Makes the directory `path` and its missing parents; an existing
    /// directory is success.
    ///
    /// # Errors
    /// As [`AgentClient::read_dir_page`].
    pub async fn create_dir_all(&self, path: &str) -> Result<(), ClientError> {
        self.mkdir(path, true, None).await
    }

    async fn rm(&self, path: &str, recursive: bool, dir: Option<bool>) -> Result<(), ClientError> {
        let request = FsRequest::Remove {
            path: path.to_owned(),
            recursive,
            dir,
        };
        match self.fs(request).await? {
            FsResult::Remove {} => Ok(()),
            _ => Err(unexpected()),
        }
    }

    /// Removes a file, a symbolic link (not what it points to) or an empty
    /// directory.
    ///
    /// # Errors
    /// As [`AgentClient::read_dir_page`]: `DirectoryNotEmpty` for a full
    /// directory.
    pub async fn remove(&self, path: &str) -> Result<(), ClientError> {
        self.rm(path, false, None).await
    }

    /// Removes a file or a symbolic link (not what it points to), never a
    /// directory, as [`std::fs::remove_file`].
    ///
    /// # Errors
    /// As [`AgentClient::read_dir_page`]: `IsADirectory` for a directory.
    pub async fn remove_file(&self, path: &str) -> Result<(), ClientError> {
        self.rm(path, false, Some(false)).await
    }

    /// Removes an empty directory, never a file, as [`std::fs::remove_dir`].
    ///
    /// # Errors
    /// As [`AgentClient::read_dir_page`]: `NotADirectory` for a file or a
    /// link, `DirectoryNotEmpty`.
    pub async fn remove_dir(&self, path: &str) -> Result<(), ClientError> {
        self.rm(path, false, Some(true)).await
    }

    /// Removes `path` and, if it is a directory, everything under it. The
    /// agent never follows a symbolic link: links in the tree are removed
    /// as links, and nothing outside the tree is touched.
    ///
    /// # Errors
    /// As [`AgentClient::read_dir_page`].
    pub async fn remove_dir_all(&self, path: &str) -> Result<(), ClientError> {
        self.rm(path, true, None).await
    }

    /// Renames `from` to `to`, replacing `to` as `rename(2)` does.
    ///
    /// # Errors
    /// As [`AgentClient::read_dir_page`].
    pub async fn rename(&self, from: &str, to: &str) -> Result<(), ClientError> {
        let request = FsRequest::Rename {
            from: from.to_owned(),
            to: to.to_owned(),
        };
        match self.fs(request).await? {
            FsResult::Rename {} => Ok(()),
            _ => Err(unexpected()),
        }
    }

    /// Sets the permission bits of `path` (`0o7777` at most), following a
    /// symbolic link.
    ///
    /// # Errors
    /// As [`AgentClient::read_dir_page`].
    pub async fn set_permissions(&self, path: &str, mode: u32) -> Result<(), ClientError> {
        let request = FsRequest::SetMode {
            path: path.to_owned(),
            mode,
        };
        match self.fs(request).await? {
            FsResult::SetMode {} => Ok(()),
            _ => Err(unexpected()),
        }
    }

    /// The target of the symbolic link `path`, as stored.
    ///
    /// # Errors
    /// As [`AgentClient::read_dir_page`]: `InvalidArgument` if `path` is not
    /// a link.
    pub async fn read_link(&self, path: &str) -> Result<String, ClientError> {
        let request = FsRequest::ReadLink {
            path: path.to_owned(),
        };
        match self.fs(request).await? {
            FsResult::ReadLink { target } => Ok(target),
            _ => Err(unexpected()),
        }
    }

    /// Whether `path` exists, following symbolic links (a dangling link
    /// does not), as [`std::path::Path::try_exists`].
    ///
    /// # Errors
    /// As [`AgentClient::read_dir_page`]: a path that cannot be checked
    /// (`PermissionDenied`) is an error, not `false`.
    pub async fn exists(&self, path: &str) -> Result<bool, ClientError> {
        let request = FsRequest::Exists {
            path: path.to_owned(),
            follow_symlinks: true,
        };
        match self.fs(request).await? {
            FsResult::Exists { exists } => Ok(exists),
            _ => Err(unexpected()),
        }
    }
}

/// An FS_RESULT whose `op` is not the request's (checked in
/// [`AgentClient::fs`], so this is a bug if reached).
fn unexpected() -> ClientError {
    ClientError::Unexpected {
        kind: paddock_proto::MessageKind::FsResult,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_kinds_and_retry_advice() {
        for code in ErrorCode::ALL {
            let kind = FsErrorKind::from_code(code);
            let about_files = matches!(
                code,
                ErrorCode::NotFound
                    | ErrorCode::AlreadyExists
                    | ErrorCode::NotADirectory
                    | ErrorCode::IsADirectory
                    | ErrorCode::DirectoryNotEmpty
                    | ErrorCode::PermissionDenied
                    | ErrorCode::NoSpace
                    | ErrorCode::InvalidArgument
                    | ErrorCode::Io
            );
            assert_eq!(kind.is_some(), about_files, "{code:?}");
        }
        let err = ClientError::Agent {
            code: ErrorCode::DirectoryNotEmpty,
            message: String::new(),
        };
        assert_eq!(err.fs_kind(), Some(FsErrorKind::DirectoryNotEmpty));
        assert!(!FsErrorKind::NotFound.is_retryable());
        assert!(FsErrorKind::NoSpace.is_retryable());
        let unsupported = ClientError::Unsupported {
            capability: capability::FS,
        };
        assert!(!unsupported.is_retryable() && !unsupported.should_reconnect());
        assert_eq!(unsupported.fs_kind(), None);
    }
}
