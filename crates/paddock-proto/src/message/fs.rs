//! File system operations: FS_REQUEST and FS_RESULT.
//!
//! One FS_REQUEST opens a request that does one operation on the guest's
//! file system (list a directory, read metadata, make a directory, remove,
//! rename, change a mode, read a link, test for existence); one FS_RESULT
//! (or an ERROR) ends it. Both bodies are JSON objects tagged by `op`.
//!
//! Listing a directory is paginated: a page holds at most `limit` entries
//! ([`DEFAULT_READ_DIR_LIMIT`] when absent, never more than
//! [`MAX_READ_DIR_LIMIT`]) and never more than fits in one frame of the
//! host's `max_payload`; entries come sorted by name, and `next` names the
//! cursor of the following page, so no directory, however large, is held or
//! sent whole.

use serde::{Deserialize, Serialize};

use super::nullable::or_default;

/// Entries of a `read_dir` page when the request gives no `limit`.
pub const DEFAULT_READ_DIR_LIMIT: u32 = 1000;

/// The most entries of one `read_dir` page; a larger `limit` is clamped.
pub const MAX_READ_DIR_LIMIT: u32 = 4096;

/// The mode of a `create_dir` that names none: `0o755` (less the agent's
/// umask).
pub const DEFAULT_DIR_MODE: u32 = 0o755;

/// One file system operation (host -> agent). Every path is absolute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum FsRequest {
    /// One page of a directory's entries, sorted by name.
    ReadDir {
        /// The directory (symbolic links to a directory are followed).
        path: String,
        /// Only entries whose name sorts after this one: the `next` of the
        /// previous page; absent for the first page.
        #[serde(default, deserialize_with = "or_default")]
        cursor: Option<String>,
        /// At most this many entries ([`DEFAULT_READ_DIR_LIMIT`] when
        /// absent or 0; clamped to [`MAX_READ_DIR_LIMIT`]).
        #[serde(default, deserialize_with = "or_default")]
        limit: Option<u32>,
    },
    /// The metadata of one path.
    Metadata {
        /// The path.
        path: String,
        /// Follow a final symbolic link (`stat`) rather than describe the
        /// link itself (`lstat`, the default).
        #[serde(default, deserialize_with = "or_default")]
        follow_symlinks: bool,
    },
    /// Makes a directory.
    CreateDir {
        /// The directory.
        path: String,
        /// Make missing parents too, and succeed if the directory exists
        /// (`mkdir -p`).
        #[serde(default, deserialize_with = "or_default")]
        parents: bool,
        /// Permission bits (`0o7777` at most, less the agent's umask);
        /// [`DEFAULT_DIR_MODE`] when absent.
        #[serde(default, deserialize_with = "or_default")]
        mode: Option<u32>,
    },
    /// Removes a file, a symbolic link or an empty directory; a directory
    /// and everything in it only with `recursive`.
    Remove {
        /// What to remove. A symbolic link is removed itself, never what it
        /// points to.
        path: String,
        /// Remove a directory's contents first. Symbolic links inside are
        /// removed as links: nothing outside the tree is touched.
        #[serde(default, deserialize_with = "or_default")]
        recursive: bool,
        /// What `path` must be: `true` a directory (`rmdir`; a file is
        /// `not_a_directory`), `false` anything but one (`unlink`; a
        /// directory is `is_a_directory`); absent, either.
        #[serde(default, deserialize_with = "or_default")]
        dir: Option<bool>,
    },
    /// Renames (moves) `from` to `to`, replacing `to` as `rename(2)` does.
    Rename {
        /// The existing path.
        from: String,
        /// The new path.
        to: String,
    },
    /// Sets the permission bits of a path (following a symbolic link).
    SetMode {
        /// The path.
        path: String,
        /// Permission bits, `0o7777` at most.
        mode: u32,
    },
    /// The target of a symbolic link, as stored.
    ReadLink {
        /// The link.
        path: String,
    },
    /// Whether a path exists.
    Exists {
        /// The path.
        path: String,
        /// Follow a final symbolic link: a dangling link does not exist.
        /// Without (the default), the link itself counts.
        #[serde(default, deserialize_with = "or_default")]
        follow_symlinks: bool,
    },
}

impl FsRequest {
    /// The operation's name as `op` writes it (`read_dir`, `metadata`...).
    #[must_use]
    pub const fn op(&self) -> &'static str {
        match self {
            Self::ReadDir { .. } => "read_dir",
            Self::Metadata { .. } => "metadata",
            Self::CreateDir { .. } => "create_dir",
            Self::Remove { .. } => "remove",
            Self::Rename { .. } => "rename",
            Self::SetMode { .. } => "set_mode",
            Self::ReadLink { .. } => "read_link",
            Self::Exists { .. } => "exists",
        }
    }

    /// Whether the operation changes the guest's file system.
    #[must_use]
    pub const fn mutates(&self) -> bool {
        matches!(
            self,
            Self::CreateDir { .. }
                | Self::Remove { .. }
                | Self::Rename { .. }
                | Self::SetMode { .. }
        )
    }

    /// The paths the operation names: one, or two for a rename.
    #[must_use]
    pub fn paths(&self) -> Vec<&str> {
        match self {
            Self::ReadDir { path, .. }
            | Self::Metadata { path, .. }
            | Self::CreateDir { path, .. }
            | Self::Remove { path, .. }
            | Self::SetMode { path, .. }
            | Self::ReadLink { path }
            | Self::Exists { path, .. } => vec![path],
            Self::Rename { from, to } => vec![from, to],
        }
    }
}

/// What kind of file an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileType {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (described itself, not its target).
    Symlink,
    /// A FIFO, socket or device; also any type a newer peer names.
    #[serde(other)]
    Other,
}

/// The metadata of one path, as `stat(2)` gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// What kind of file.
    #[serde(rename = "type")]
    pub file_type: FileType,
    /// Size in bytes (a symbolic link: the length of its target).
    #[serde(default, deserialize_with = "or_default")]
    pub size: u64,
    /// Permission bits (`0o7777` at most).
    #[serde(default, deserialize_with = "or_default")]
    pub mode: u32,
    /// Owner's user id.
    #[serde(default, deserialize_with = "or_default")]
    pub uid: u32,
    /// Owner's group id.
    #[serde(default, deserialize_with = "or_default")]
    pub gid: u32,
    /// Last modification, milliseconds since the Unix epoch (negative
    /// before it).
    #[serde(default, deserialize_with = "or_default")]
    pub mtime_ms: i64,
    /// Last access, milliseconds since the Unix epoch.
    #[serde(default, deserialize_with = "or_default")]
    pub atime_ms: i64,
    /// Last status change, milliseconds since the Unix epoch.
    #[serde(default, deserialize_with = "or_default")]
    pub ctime_ms: i64,
}

/// One entry of a directory page: its name and its own metadata (`lstat`:
/// a symbolic link is described as a link).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    /// The entry's name in its directory (bytes that are not UTF-8 are
    /// replaced by U+FFFD).
    pub name: String,
    /// Its metadata.
    #[serde(flatten)]
    pub metadata: Metadata,
}

/// How a file system operation ended (agent -> host); the `op` is the
/// request's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum FsResult {
    /// A page of a directory.
    ReadDir {
        /// Entries, sorted by name (byte order).
        #[serde(default, deserialize_with = "or_default")]
        entries: Vec<DirEntry>,
        /// The cursor of the next page; absent when this page is the last.
        #[serde(default, deserialize_with = "or_default")]
        next: Option<String>,
    },
    /// The metadata asked for.
    Metadata {
        /// The path's metadata.
        metadata: Metadata,
    },
    /// The directory exists.
    CreateDir {},
    /// The path is gone.
    Remove {},
    /// The path was renamed.
    Rename {},
    /// The mode was set.
    SetMode {},
    /// A symbolic link's target.
    ReadLink {
        /// The target, as stored (not resolved).
        target: String,
    },
    /// Whether the path exists.
    Exists {
        /// It does.
        exists: bool,
    },
}

impl FsResult {
    /// The operation's name as `op` writes it.
    #[must_use]
    pub const fn op(&self) -> &'static str {
        match self {
            Self::ReadDir { .. } => "read_dir",
            Self::Metadata { .. } => "metadata",
            Self::CreateDir {} => "create_dir",
            Self::Remove {} => "remove",
            Self::Rename {} => "rename",
            Self::SetMode {} => "set_mode",
            Self::ReadLink { .. } => "read_link",
            Self::Exists { .. } => "exists",
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::frame::{DEFAULT_MAX_PAYLOAD, Frame, decode_frame};
    use crate::{Message, MessageKind, decode_message, encode_message};

    fn round_trip(message: &Message) -> Message {
        let mut out = Vec::new();
        encode_message(&mut out, 7, message).expect("encode");
        let (frame, used) = decode_frame(&out, DEFAULT_MAX_PAYLOAD).expect("frame");
        assert_eq!(used, out.len());
        assert_eq!(frame.kind, message.kind());
        decode_message(frame).expect("message")
    }

    fn file_type() -> impl Strategy<Value = FileType> {
        proptest::sample::select(vec![
            FileType::File,
            FileType::Dir,
            FileType::Symlink,
            FileType::Other,
        ])
    }

    fn metadata() -> impl Strategy<Value = Metadata> {
        (
            file_type(),
            any::<u64>(),
            0u32..0o10000,
            any::<(u32, u32)>(),
            any::<(i64, i64, i64)>(),
        )
            .prop_map(
                |(file_type, size, mode, (uid, gid), (mtime_ms, atime_ms, ctime_ms))| Metadata {
                    file_type,
                    size,
                    mode,
                    uid,
                    gid,
                    mtime_ms,
                    atime_ms,
                    ctime_ms,
                },
            )
    }

    fn request() -> impl Strategy<Value = FsRequest> {
        let path = || ".*";
        prop_oneof![
            (
                path(),
                proptest::option::of(".*"),
                proptest::option::of(any::<u32>())
            )
                .prop_map(|(path, cursor, limit)| FsRequest::ReadDir {
                    path,
                    cursor,
                    limit
                }),
            (path(), any::<bool>()).prop_map(|(path, follow_symlinks)| FsRequest::Metadata {
                path,
                follow_symlinks
            }),
            (path(), any::<bool>(), proptest::option::of(any::<u32>())).prop_map(
                |(path, parents, mode)| FsRequest::CreateDir {
                    path,
                    parents,
                    mode
                }
            ),
            (path(), any::<bool>(), proptest::option::of(any::<bool>())).prop_map(
                |(path, recursive, dir)| FsRequest::Remove {
                    path,
                    recursive,
                    dir
                }
            ),
            (path(), path()).prop_map(|(from, to)| FsRequest::Rename { from, to }),
            (path(), any::<u32>()).prop_map(|(path, mode)| FsRequest::SetMode { path, mode }),
            path().prop_map(|path| FsRequest::ReadLink { path }),
            (path(), any::<bool>()).prop_map(|(path, follow_symlinks)| FsRequest::Exists {
                path,
                follow_symlinks
            }),
        ]
    }

    fn result() -> impl Strategy<Value = FsResult> {
        prop_oneof![
            (
                proptest::collection::vec(
                    (".*", metadata()).prop_map(|(name, metadata)| DirEntry { name, metadata }),
                    0..8
                ),
                proptest::option::of(".*")
            )
                .prop_map(|(entries, next)| FsResult::ReadDir { entries, next }),
            metadata().prop_map(|metadata| FsResult::Metadata { metadata }),
            Just(FsResult::CreateDir {}),
            Just(FsResult::Remove {}),
            Just(FsResult::Rename {}),
            Just(FsResult::SetMode {}),
            ".*".prop_map(|target| FsResult::ReadLink { target }),
            any::<bool>().prop_map(|exists| FsResult::Exists { exists }),
        ]
    }

    #[test]
    fn requests_are_tagged_by_op() {
        let request: FsRequest =
            serde_json::from_str(r#"{"op":"read_dir","path":"/w","cursor":null,"limit":null}"#)
                .expect("parse");
        assert_eq!(
            request,
            FsRequest::ReadDir {
                path: "/w".into(),
                cursor: None,
                limit: None
            }
        );
        assert_eq!(request.op(), "read_dir");
        assert!(serde_json::from_str::<FsRequest>(r#"{"op":"format_disk","path":"/"}"#).is_err());
        assert!(serde_json::from_str::<FsRequest>(r#"{"path":"/"}"#).is_err());
        let rename = FsRequest::Rename {
            from: "/a".into(),
            to: "/b".into(),
        };
        assert_eq!(rename.paths(), ["/a", "/b"]);
        assert!(rename.mutates());
        assert!(!FsRequest::ReadLink { path: "/a".into() }.mutates());
    }

    #[test]
    fn unknown_file_types_read_as_other() {
        let metadata: Metadata =
            serde_json::from_str(r#"{"type":"door","size":1}"#).expect("parse");
        assert_eq!(metadata.file_type, FileType::Other);
    }

    proptest! {
        #[test]
        fn fs_requests_round_trip(request in request()) {
            let message = Message::FsRequest(request);
            prop_assert_eq!(round_trip(&message), message);
        }

        #[test]
        fn fs_results_round_trip(result in result()) {
            let op = result.op();
            let message = Message::FsResult(result);
            let back = round_trip(&message);
            prop_assert_eq!(&back, &message);
            if let Message::FsResult(back) = back {
                prop_assert_eq!(back.op(), op);
            }
        }

        #[test]
        fn arbitrary_fs_payloads_never_panic(
            kind in proptest::sample::select(vec![MessageKind::FsRequest, MessageKind::FsResult]),
            payload in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let frame = Frame { version: 1, kind, flags: 0, request_id: 1, payload };
            let _ = decode_message(frame);
        }

        #[test]
        fn json_shaped_fs_payloads_never_panic(
            op in "(read_dir|metadata|create_dir|remove|rename|set_mode|read_link|exists|x)",
            fields in proptest::collection::btree_map(
                "(path|from|to|cursor|limit|mode|parents|recursive|dir|follow_symlinks|entries|next|metadata|target|exists)",
                prop_oneof![
                    Just(serde_json::Value::Null),
                    any::<bool>().prop_map(serde_json::Value::from),
                    any::<i64>().prop_map(serde_json::Value::from),
                    ".{0,8}".prop_map(serde_json::Value::from),
                ],
                0..6,
            ),
        ) {
            let mut object = serde_json::Map::new();
            object.insert("op".into(), op.into());
            object.extend(fields);
            let payload = serde_json::Value::Object(object).to_string().into_bytes();
            for kind in [MessageKind::FsRequest, MessageKind::FsResult] {
                let frame = Frame { version: 1, kind, flags: 0, request_id: 1, payload: payload.clone() };
                if let Ok(message) = decode_message(frame) {
                    prop_assert_eq!(round_trip(&message), message);
                }
            }
        }
    }
}
