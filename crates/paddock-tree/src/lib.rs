//! Tar streams of directory trees: packing a directory without following a
//! symlink, and unpacking a stream without letting any entry land outside
//! its destination (`paddock-proto`'s PROTOCOL.md, "Directory transfers",
//! is the contract).
//!
//! One crate for both sides: the guest agent unpacks puts and packs gets,
//! the host (`paddock-agent-client`) the other way round, and both judge a
//! hostile stream with this same code. Everything here
//! blocks: callers run it on a blocking thread, and move the bytes through
//! a [`ChunkWriter`] or a [`ChunkReader`].

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{
    DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use filetime::FileTime;
use paddock_proto::{
    ErrorCode, MAX_TREE_ENTRIES, MAX_TREE_PATH_LEN, MAX_TREE_PAX_LEN, TREE_MODE_MASK, TreeDone,
    entry_components,
};
use tar::{EntryType, Header};

/// Why packing or unpacking a tree failed.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// An entry would land outside the destination, or its path cannot be
    /// judged.
    #[error("Entry `{entry}` {reason}")]
    UnsafePath {
        /// The entry's path, as the stream has it (cut to 256 bytes).
        entry: String,
        /// Why it is refused.
        reason: String,
    },
    /// A file or symlink already exists at an entry's path, and the put
    /// does not overwrite; or a directory is where a file would go.
    #[error("Entry `{entry}` exists as {what}")]
    Exists {
        /// The entry's path.
        entry: String,
        /// What is there.
        what: &'static str,
    },
    /// An entry of a kind trees do not carry (hard link, device, FIFO,
    /// sparse file...).
    #[error("Entry `{entry}` is a {kind}, which a tree does not carry")]
    Unsupported {
        /// The entry's path.
        entry: String,
        /// Its kind.
        kind: &'static str,
    },
    /// The stream is larger than the transfer's `max_bytes`.
    #[error("The tree's stream is larger than {max_bytes} bytes")]
    TooLarge {
        /// The limit.
        max_bytes: u64,
    },
    /// More entries than [`MAX_TREE_ENTRIES`].
    #[error("The tree has more than {MAX_TREE_ENTRIES} entries")]
    TooManyEntries,
    /// The stream is not a tar this side reads.
    #[error("The tar stream is malformed: {0}")]
    Malformed(&'static str),
    /// A header field does not parse.
    #[error("A tar header is malformed")]
    BadHeader(#[source] io::Error),
    /// The stream could not be read or written (a truncated tar, or the
    /// other side went away).
    #[error("Could not move the tar stream")]
    Stream(#[source] io::Error),
    /// The tree's root is a symlink.
    #[error("`{0}` is a symlink")]
    RootIsSymlink(PathBuf),
    /// The tree's root, or an entry's parent, is not a directory.
    #[error("`{0}` is not a directory")]
    NotDirectory(PathBuf),
    /// A file system operation failed.
    #[error("Could not {action} `{path}`")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl TreeError {
    /// The wire code of this error.
    #[must_use]
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::UnsafePath { .. } => ErrorCode::UnsafePath,
            Self::TooLarge { .. } | Self::TooManyEntries => ErrorCode::TooLarge,
            Self::Exists { .. }
            | Self::Unsupported { .. }
            | Self::Malformed(_)
            | Self::BadHeader(_)
            | Self::RootIsSymlink(_)
            | Self::NotDirectory(_) => ErrorCode::InvalidArgument,
            Self::Stream(_) => ErrorCode::Io,
            Self::Io { source, .. } => match source.kind() {
                io::ErrorKind::NotFound => ErrorCode::NotFound,
                io::ErrorKind::PermissionDenied => ErrorCode::PermissionDenied,
                io::ErrorKind::StorageFull => ErrorCode::NoSpace,
                io::ErrorKind::InvalidInput => ErrorCode::InvalidArgument,
                _ => ErrorCode::Io,
            },
        }
    }
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> TreeError {
    let path = path.to_owned();
    move |source| TreeError::Io {
        action,
        path,
        source,
    }
}

/// An entry's path for messages: lossy UTF-8, cut to 256 bytes.
fn shown(path: &[u8]) -> String {
    let mut shown = String::from_utf8_lossy(&path[..path.len().min(256)]).into_owned();
    if path.len() > 256 {
        shown.push_str("...");
    }
    shown
}

/// Checks that `root` is a directory and not a symlink (it is never
/// followed); with `create`, makes it and its missing parents first.
///
/// # Errors
/// [`TreeError::RootIsSymlink`], [`TreeError::NotDirectory`], or the I/O
/// error.
pub fn check_root(root: &Path, create: bool) -> Result<(), TreeError> {
    if create {
        fs::create_dir_all(root).map_err(io_error("create the directory", root))?;
    }
    let metadata = fs::symlink_metadata(root).map_err(io_error("stat", root))?;
    if metadata.file_type().is_symlink() {
        return Err(TreeError::RootIsSymlink(root.to_owned()));
    }
    if !metadata.is_dir() {
        return Err(TreeError::NotDirectory(root.to_owned()));
    }
    Ok(())
}

/// How far a transfer has come, shared with the task that reports it.
#[derive(Debug, Default)]
pub struct Tally {
    /// Regular files packed or unpacked so far.
    pub files: AtomicU64,
}

impl Tally {
    fn file_done(&self) {
        self.files.fetch_add(1, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------- packing

/// A writer that refuses to go past `max_bytes`.
struct Bounded<W> {
    inner: W,
    written: u64,
    max_bytes: u64,
    over: bool,
}

impl<W: Write> Write for Bounded<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written + buf.len() as u64 > self.max_bytes {
            self.over = true;
            return Err(io::Error::other("the tree is larger than its max_bytes"));
        }
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reads exactly `left` bytes of a file, failing if it ends sooner (it
/// shrank while it was packed): a short entry would corrupt the stream.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = usize::try_from(self.left)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file shrank while it was packed",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn header(kind: EntryType, metadata: &fs::Metadata, size: u64) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(metadata.permissions().mode() & TREE_MODE_MASK);
    header.set_mtime(u64::try_from(metadata.mtime()).unwrap_or(0));
    header.set_uid(0);
    header.set_gid(0);
    header
}

/// Packs the directory `root` as a tar stream into `out`: regular files,
/// directories and symlinks (never followed), each with its permission
/// bits (`0o777` at most) and mtime; sockets, FIFOs and devices are
/// skipped. The root itself is not an entry. Stops with
/// [`TreeError::TooLarge`] before the stream passes `max_bytes`.
///
/// # Errors
/// [`TreeError`].
pub fn pack(
    root: &Path,
    out: impl Write,
    max_bytes: u64,
    tally: &Tally,
) -> Result<TreeDone, TreeError> {
    check_root(root, false)?;
    let mut builder = tar::Builder::new(Bounded {
        inner: out,
        written: 0,
        max_bytes,
        over: false,
    });
    let packed = pack_entries(root, &mut builder, tally).and_then(|done| {
        builder.finish().map_err(TreeError::Stream)?;
        builder.get_mut().flush().map_err(TreeError::Stream)?;
        Ok(done)
    });
    match packed {
        Err(_) if builder.get_ref().over => Err(TreeError::TooLarge { max_bytes }),
        other => other,
    }
}

fn pack_entries<W: Write>(
    root: &Path,
    builder: &mut tar::Builder<W>,
    tally: &Tally,
) -> Result<TreeDone, TreeError> {
    let mut done = TreeDone::default();
    let mut entries = 0u64;
    // Depth first, each directory's entries in name order.
    let mut stack: Vec<PathBuf> = vec![PathBuf::new()];
    while let Some(dir) = stack.pop() {
        let local = root.join(&dir);
        let mut names: Vec<_> = fs::read_dir(&local)
            .map_err(io_error("read the directory", &local))?
            .map(|entry| entry.map(|entry| entry.file_name()))
            .collect::<Result<_, _>>()
            .map_err(io_error("read the directory", &local))?;
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            let relative = dir.join(&name);
            let local = root.join(&relative);
            if relative.as_os_str().len() > MAX_TREE_PATH_LEN {
                return Err(TreeError::UnsafePath {
                    entry: shown(relative.as_os_str().as_bytes()),
                    reason: format!("is longer than {MAX_TREE_PATH_LEN} bytes"),
                });
            }
            let metadata = fs::symlink_metadata(&local).map_err(io_error("stat", &local))?;
            let kind = metadata.file_type();
            let appended = if kind.is_dir() {
                done.dirs += 1;
                subdirs.push(relative.clone());
                let mut header = header(EntryType::Directory, &metadata, 0);
                builder.append_data(&mut header, &relative, io::empty())
            } else if kind.is_symlink() {
                let target = fs::read_link(&local).map_err(io_error("read the link", &local))?;
                done.symlinks += 1;
                let mut header = header(EntryType::Symlink, &metadata, 0);
                header.set_mode(0o777);
                builder.append_link(&mut header, &relative, &target)
            } else if kind.is_file() {
                // O_NOFOLLOW | O_NONBLOCK: what is there now may no longer
                // be the file just seen (a symlink, a FIFO).
                let file = fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                    .open(&local)
                    .map_err(io_error("open", &local))?;
                let metadata = file.metadata().map_err(io_error("stat", &local))?;
                if !metadata.is_file() {
                    continue;
                }
                let size = metadata.len();
                done.files += 1;
                done.bytes += size;
                let mut header = header(EntryType::Regular, &metadata, size);
                let appended = builder.append_data(
                    &mut header,
                    &relative,
                    Exact {
                        inner: file,
                        left: size,
                    },
                );
                tally.file_done();
                appended
            } else {
                // Sockets, FIFOs and devices carry no content.
                continue;
            };
            appended.map_err(|source| match source.kind() {
                io::ErrorKind::UnexpectedEof => TreeError::Io {
                    action: "read",
                    path: local.clone(),
                    source,
                },
                _ => TreeError::Stream(source),
            })?;
            entries += 1;
            if entries > MAX_TREE_ENTRIES {
                return Err(TreeError::TooManyEntries);
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(done)
}

// -------------------------------------------------------------- unpacking

/// What an entry's path and link come from, besides its header: the GNU
/// long name and long link entries, and PAX `path` and `linkpath`, that
/// precede it.
#[derive(Default)]
struct Pending {
    name: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
}

/// A directory to give its mode and mtime once everything inside it is
/// written (writing inside changes its mtime; a read-only mode would stop
/// the writes).
struct DirTimes {
    path: PathBuf,
    depth: usize,
    mode: u32,
    mtime: u64,
}

/// Unpacks the tar stream `stream` into the directory `dest` (which
/// [`check_root`] has checked), refusing with [`TreeError::UnsafePath`] any
/// entry that would land outside it. With `overwrite`, files and symlinks
/// at an entry's path are replaced (never written through); without, they
/// end the unpacking. Reads `stream` to its end when it succeeds.
///
/// # Errors
/// [`TreeError`]; what was written before stays (see the protocol).
pub fn unpack(
    stream: impl Read,
    dest: &Path,
    overwrite: bool,
    tally: &Tally,
) -> Result<TreeDone, TreeError> {
    let mut archive = tar::Archive::new(stream);
    let done = unpack_entries(&mut archive, dest, overwrite, tally)?;
    // What follows the tar's end is read and dropped, so the sender is
    // never left waiting on a reader that stopped. (On an error the reader
    // is dropped instead, which stops the sender at once.)
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(TreeError::Stream)?;
    Ok(done)
}

fn unpack_entries<R: Read>(
    archive: &mut tar::Archive<R>,
    dest: &Path,
    overwrite: bool,
    tally: &Tally,
) -> Result<TreeDone, TreeError> {
    let mut done = TreeDone::default();
    let mut dirs: Vec<DirTimes> = Vec::new();
    let mut pending = Pending::default();
    let mut entries = 0u64;
    let mut temp_seq = 0u64;
    for entry in archive.entries().map_err(TreeError::Stream)?.raw(true) {
        let mut entry = entry.map_err(TreeError::Stream)?;
        entries += 1;
        if entries > MAX_TREE_ENTRIES {
            return Err(TreeError::TooManyEntries);
        }
        let kind = entry.header().entry_type();
        let size = entry.header().size().map_err(TreeError::BadHeader)?;
        match kind {
            EntryType::GNULongName | EntryType::GNULongLink => {
                // The name and its NUL.
                if size > MAX_TREE_PATH_LEN as u64 + 1 {
                    return Err(TreeError::UnsafePath {
                        entry: "(GNU long name)".into(),
                        reason: format!("is longer than {MAX_TREE_PATH_LEN} bytes"),
                    });
                }
                let mut name = read_small(&mut entry, size)?;
                while name.last() == Some(&0) {
                    name.pop();
                }
                if kind == EntryType::GNULongName {
                    pending.name = Some(name);
                } else {
                    pending.link = Some(name);
                }
                continue;
            }
            EntryType::XHeader => {
                if size > MAX_TREE_PAX_LEN {
                    return Err(TreeError::Malformed("a PAX header is too large"));
                }
                let records = read_small(&mut entry, size)?;
                apply_pax(&records, &mut pending)?;
                continue;
            }
            EntryType::XGlobalHeader => continue,
            _ => {}
        }
        let pending = std::mem::take(&mut pending);
        let name = pending
            .name
            .unwrap_or_else(|| entry.header().path_bytes().into_owned());
        let components = entry_components(&name).map_err(|err| TreeError::UnsafePath {
            entry: shown(&name),
            reason: err.to_string(),
        })?;
        let mode = entry.header().mode().map_err(TreeError::BadHeader)? & TREE_MODE_MASK;
        let mtime = entry.header().mtime().map_err(TreeError::BadHeader)?;
        let unsupported = |kind| TreeError::Unsupported {
            entry: shown(&name),
            kind,
        };
        let kind = match kind {
            EntryType::Regular | EntryType::Continuous => Kind::File,
            EntryType::Directory => Kind::Dir,
            EntryType::Symlink => Kind::Symlink,
            EntryType::Link => return Err(unsupported("hard link")),
            EntryType::Char | EntryType::Block => return Err(unsupported("device")),
            EntryType::Fifo => return Err(unsupported("FIFO")),
            EntryType::GNUSparse => return Err(unsupported("sparse file")),
            _ => return Err(unsupported("entry of an unknown kind")),
        };
        let Some((last, parents)) = components.split_last() else {
            // The root itself: only a directory may stand for it.
            if kind != Kind::Dir {
                return Err(TreeError::UnsafePath {
                    entry: shown(&name),
                    reason: "names the destination itself".into(),
                });
            }
            dirs.push(DirTimes {
                path: dest.to_owned(),
                depth: 0,
                mode,
                mtime,
            });
            continue;
        };
        let parent = safe_parent(dest, parents, &name)?;
        let path = parent.join(OsStr::from_bytes(last));
        let existing = match fs::symlink_metadata(&path) {
            Ok(metadata) => Some(metadata.file_type()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => None,
            Err(err) => return Err(io_error("stat", &path)(err)),
        };
        let exists = |what| TreeError::Exists {
            entry: shown(&name),
            what,
        };
        match (kind, existing) {
            (Kind::Dir, Some(existing)) if existing.is_dir() => {}
            (Kind::Dir, Some(_)) if overwrite => {
                fs::remove_file(&path).map_err(io_error("remove", &path))?;
                make_dir(&path)?;
            }
            (Kind::Dir, None) => make_dir(&path)?,
            (_, Some(existing)) if existing.is_dir() => return Err(exists("a directory")),
            (_, Some(existing)) if !overwrite => {
                return Err(exists(if existing.is_symlink() {
                    "a symlink"
                } else {
                    "a file"
                }));
            }
            _ => {}
        }
        temp_seq += 1;
        let temp = parent.join(format!(".paddock-tree-{}-{temp_seq}", std::process::id()));
        match kind {
            Kind::Dir => {
                done.dirs += 1;
                dirs.push(DirTimes {
                    path,
                    depth: components.len(),
                    mode,
                    mtime,
                });
            }
            Kind::File => {
                let written = write_file(&mut entry, &temp, size, mode, mtime)
                    .and_then(|()| fs::rename(&temp, &path).map_err(io_error("rename", &path)));
                if written.is_err() {
                    let _ = fs::remove_file(&temp);
                }
                written?;
                done.files += 1;
                done.bytes += size;
                tally.file_done();
            }
            Kind::Symlink => {
                let target = pending
                    .link
                    .or_else(|| entry.header().link_name_bytes().map(|t| t.into_owned()))
                    .unwrap_or_default();
                if target.len() > MAX_TREE_PATH_LEN || target.contains(&0) || target.is_empty() {
                    return Err(TreeError::UnsafePath {
                        entry: shown(&name),
                        reason: "has an empty, too long or NUL-holding link target".into(),
                    });
                }
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &temp)
                    .map_err(io_error("create the symlink", &temp))?;
                let time = FileTime::from_unix_time(i64::try_from(mtime).unwrap_or(0), 0);
                let made = filetime::set_symlink_file_times(&temp, time, time)
                    .map_err(io_error("set the mtime of", &temp))
                    .and_then(|()| fs::rename(&temp, &path).map_err(io_error("rename", &path)));
                if made.is_err() {
                    let _ = fs::remove_file(&temp);
                }
                made?;
                done.symlinks += 1;
            }
        }
    }
    // Deepest first: a parent's mtime is set after its children's.
    dirs.sort_by_key(|dir| std::cmp::Reverse(dir.depth));
    for dir in dirs {
        fs::set_permissions(&dir.path, fs::Permissions::from_mode(dir.mode))
            .map_err(io_error("set the mode of", &dir.path))?;
        let time = FileTime::from_unix_time(i64::try_from(dir.mtime).unwrap_or(0), 0);
        filetime::set_file_mtime(&dir.path, time)
            .map_err(io_error("set the mtime of", &dir.path))?;
    }
    Ok(done)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
}

fn read_small(entry: &mut impl Read, size: u64) -> Result<Vec<u8>, TreeError> {
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    entry
        .take(size)
        .read_to_end(&mut bytes)
        .map_err(TreeError::Stream)?;
    Ok(bytes)
}

/// Applies the `path` and `linkpath` records of a PAX header; a `size`
/// record (for files past 8 GiB) is refused, as raw reading would not
/// honour it.
fn apply_pax(mut records: &[u8], pending: &mut Pending) -> Result<(), TreeError> {
    let malformed = || TreeError::Malformed("a PAX record is invalid");
    while !records.is_empty() {
        let space = records
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(malformed)?;
        let len: usize = std::str::from_utf8(&records[..space])
            .ok()
            .and_then(|len| len.parse().ok())
            .filter(|&len| len > space + 1 && len <= records.len())
            .ok_or_else(malformed)?;
        let record = &records[space + 1..len];
        let record = record.strip_suffix(b"\n").ok_or_else(malformed)?;
        let equals = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(malformed)?;
        let (key, value) = (&record[..equals], &record[equals + 1..]);
        match key {
            b"path" => pending.name = Some(value.to_vec()),
            b"linkpath" => pending.link = Some(value.to_vec()),
            b"size" | b"GNU.sparse.size" | b"GNU.sparse.map" => {
                return Err(TreeError::Malformed("PAX sizes are not supported"));
            }
            _ => {}
        }
        records = &records[len..];
    }
    Ok(())
}

/// The directory `dest/parents...`, each component checked without
/// following it: a missing one is made, a symlink is refused as unsafe
/// (it may point anywhere), anything else that is not a directory ends the
/// unpacking.
fn safe_parent(dest: &Path, parents: &[&[u8]], name: &[u8]) -> Result<PathBuf, TreeError> {
    let mut path = dest.to_owned();
    for component in parents {
        path.push(OsStr::from_bytes(component));
        match fs::symlink_metadata(&path) {
            Ok(metadata) if metadata.file_type().is_symlink() => {
                return Err(TreeError::UnsafePath {
                    entry: shown(name),
                    reason: format!(
                        "goes through the symlink `{}`",
                        path.strip_prefix(dest).unwrap_or(&path).display()
                    ),
                });
            }
            Ok(metadata) if metadata.is_dir() => {}
            Ok(_) => return Err(TreeError::NotDirectory(path)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => make_dir(&path)?,
            Err(err) => return Err(io_error("stat", &path)(err)),
        }
    }
    Ok(path)
}

/// Makes a directory the unpacking can write into; its own mode comes at
/// the end.
fn make_dir(path: &Path) -> Result<(), TreeError> {
    fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .map_err(io_error("create the directory", path))
}

fn write_file(
    entry: &mut impl Read,
    temp: &Path,
    size: u64,
    mode: u32,
    mtime: u64,
) -> Result<(), TreeError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(temp)
        .map_err(io_error("create", temp))?;
    let copied = io::copy(&mut entry.take(size), &mut file).map_err(TreeError::Stream)?;
    if copied != size {
        return Err(TreeError::Stream(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the stream ended inside a file",
        )));
    }
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_error("set the mode of", temp))?;
    let time = FileTime::from_unix_time(i64::try_from(mtime).unwrap_or(0), 0);
    filetime::set_file_handle_times(&file, None, Some(time))
        .map_err(io_error("set the mtime of", temp))?;
    Ok(())
}

// ------------------------------------------------- bytes between threads

/// A writer for a blocking packer that hands the stream to an async task
/// in chunks of `chunk` bytes, through a bounded queue.
#[derive(Debug)]
pub struct ChunkWriter {
    buffer: Vec<u8>,
    chunk: usize,
    queue: tokio::sync::mpsc::Sender<Vec<u8>>,
}

impl ChunkWriter {
    /// A writer feeding `queue` with chunks of `chunk` bytes.
    #[must_use]
    pub fn new(queue: tokio::sync::mpsc::Sender<Vec<u8>>, chunk: usize) -> Self {
        Self {
            buffer: Vec::with_capacity(chunk),
            chunk: chunk.max(1),
            queue,
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buffer, Vec::with_capacity(self.chunk));
        self.queue
            .blocking_send(chunk)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the transfer ended"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(self.chunk - self.buffer.len());
        self.buffer.extend_from_slice(&buf[..n]);
        if self.buffer.len() >= self.chunk {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// A reader for a blocking unpacker over the chunks an async task
/// receives; the end of the queue is the end of the stream.
#[derive(Debug)]
pub struct ChunkReader {
    chunk: Vec<u8>,
    at: usize,
    queue: tokio::sync::mpsc::Receiver<Vec<u8>>,
}

impl ChunkReader {
    /// A reader of what arrives on `queue`.
    #[must_use]
    pub fn new(queue: tokio::sync::mpsc::Receiver<Vec<u8>>) -> Self {
        Self {
            chunk: Vec::new(),
            at: 0,
            queue,
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.queue.blocking_recv() {
                Some(chunk) => {
                    self.chunk = chunk;
                    self.at = 0;
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::os::unix::fs::symlink;

    use super::*;

    /// What a tree holds, entry by entry: kind, mode, mtime, and content or
    /// target.
    fn listing(root: &Path) -> BTreeMap<PathBuf, (char, u32, i64, Vec<u8>)> {
        let mut out = BTreeMap::new();
        let mut stack = vec![root.to_owned()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).expect("read dir") {
                let path = entry.expect("entry").path();
                let metadata = fs::symlink_metadata(&path).expect("stat");
                let mode = metadata.permissions().mode() & 0o7777;
                let (kind, body) = if metadata.file_type().is_symlink() {
                    let target = fs::read_link(&path).expect("link");
                    ('l', target.as_os_str().as_bytes().to_vec())
                } else if metadata.is_dir() {
                    stack.push(path.clone());
                    ('d', Vec::new())
                } else {
                    ('f', fs::read(&path).expect("read"))
                };
                let mode = if kind == 'l' { 0 } else { mode };
                let relative = path.strip_prefix(root).expect("inside").to_owned();
                out.insert(relative, (kind, mode, metadata.mtime(), body));
            }
        }
        out
    }

    fn sample_tree(root: &Path) {
        let deep = root.join("a/b");
        fs::create_dir_all(&deep).expect("mkdir");
        fs::write(deep.join("c.txt"), b"hello").expect("write");
        fs::set_permissions(deep.join("c.txt"), fs::Permissions::from_mode(0o640)).expect("chmod");
        fs::write(root.join("tool"), b"#!/bin/sh\n").expect("write");
        fs::set_permissions(root.join("tool"), fs::Permissions::from_mode(0o755)).expect("chmod");
        fs::create_dir(root.join("empty")).expect("mkdir");
        fs::set_permissions(root.join("empty"), fs::Permissions::from_mode(0o750)).expect("chmod");
        symlink("a/b/c.txt", root.join("inside")).expect("symlink");
        symlink("/etc", root.join("outside")).expect("symlink");
        let long = "n".repeat(150);
        fs::write(deep.join(&long), vec![7u8; 70_000]).expect("write");
        let old = FileTime::from_unix_time(1_600_000_000, 0);
        filetime::set_file_mtime(deep.join("c.txt"), old).expect("mtime");
        filetime::set_file_mtime(root.join("empty"), old).expect("mtime");
    }

    fn packed(root: &Path, max_bytes: u64) -> Result<(Vec<u8>, TreeDone), TreeError> {
        let mut stream = Vec::new();
        let done = pack(root, &mut stream, max_bytes, &Tally::default())?;
        Ok((stream, done))
    }

    #[test]
    fn a_packed_tree_unpacks_equal() {
        let from = tempfile::tempdir().expect("tempdir");
        sample_tree(from.path());
        let (stream, sent) = packed(from.path(), u64::MAX).expect("pack");
        assert_eq!((sent.files, sent.dirs, sent.symlinks), (3, 3, 2));
        assert_eq!(sent.bytes, 5 + 10 + 70_000);
        let to = tempfile::tempdir().expect("tempdir");
        let tally = Tally::default();
        let got = unpack(stream.as_slice(), to.path(), false, &tally).expect("unpack");
        assert_eq!(got, sent);
        assert_eq!(tally.files.load(Ordering::Relaxed), 3);
        assert_eq!(listing(to.path()), listing(from.path()));
        // The links are links, not what they point at.
        assert!(
            fs::symlink_metadata(to.path().join("outside"))
                .expect("stat")
                .file_type()
                .is_symlink()
        );
    }

    #[test]
    fn set_id_bits_never_cross() {
        let from = tempfile::tempdir().expect("tempdir");
        fs::write(from.path().join("suid"), b"x").expect("write");
        fs::set_permissions(from.path().join("suid"), fs::Permissions::from_mode(0o4755))
            .expect("chmod");
        let (stream, _) = packed(from.path(), u64::MAX).expect("pack");
        let mut crafted = Vec::new();
        raw_entry(&mut crafted, b"sgid", EntryType::Regular, b"", b"y", 0o2775);
        end(&mut crafted);
        let to = tempfile::tempdir().expect("tempdir");
        unpack(stream.as_slice(), to.path(), false, &Tally::default()).expect("unpack");
        unpack(crafted.as_slice(), to.path(), false, &Tally::default()).expect("unpack");
        let mode = |name: &str| {
            fs::metadata(to.path().join(name))
                .expect("stat")
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!((mode("suid"), mode("sgid")), (0o755, 0o775));
    }

    /// An entry's raw name, kind and link target.
    type RawEntry<'a> = (&'a [u8], EntryType, &'a [u8]);

    /// Appends one entry with a raw name (no checks) to `out`.
    fn raw_entry(
        out: &mut Vec<u8>,
        name: &[u8],
        kind: EntryType,
        link: &[u8],
        data: &[u8],
        mode: u32,
    ) {
        let mut header = Header::new_gnu();
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_mtime(1_700_000_000);
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }

    fn end(out: &mut Vec<u8>) {
        out.extend_from_slice(&[0u8; 1024]);
    }

    fn unpack_raw(dest: &Path, entries: &[RawEntry<'_>]) -> Result<TreeDone, TreeError> {
        let mut stream = Vec::new();
        for (name, kind, link) in entries {
            raw_entry(
                &mut stream,
                name,
                *kind,
                link,
                if *kind == EntryType::Regular {
                    b"owned"
                } else {
                    b""
                },
                0o644,
            );
        }
        end(&mut stream);
        unpack(stream.as_slice(), dest, false, &Tally::default())
    }

    #[test]
    fn entries_that_would_land_outside_are_refused_and_touch_nothing_outside() {
        let base = tempfile::tempdir().expect("tempdir");
        let outside = base.path().join("outside");
        let dest = base.path().join("dest");
        fs::create_dir(&outside).expect("mkdir");
        fs::create_dir(&dest).expect("mkdir");
        let outside_link = outside.as_os_str().as_bytes();
        let cases: [&[RawEntry<'_>]; 6] = [
            &[(b"/tmp/abs", EntryType::Regular, b"")],
            &[(b"../escape", EntryType::Regular, b"")],
            &[(b"a/../../escape", EntryType::Regular, b"")],
            // A link the stream makes, then a file through it.
            &[
                (b"link", EntryType::Symlink, outside_link),
                (b"link/escape", EntryType::Regular, b""),
            ],
            // The same, through a directory entry.
            &[
                (b"dlink", EntryType::Symlink, outside_link),
                (b"dlink/sub/", EntryType::Directory, b""),
            ],
            // And a link as the parent of a link.
            &[
                (b"l2", EntryType::Symlink, outside_link),
                (b"l2/x", EntryType::Symlink, b"/"),
            ],
        ];
        for entries in cases {
            let err = unpack_raw(&dest, entries).expect_err("refused");
            assert!(
                matches!(err, TreeError::UnsafePath { .. }),
                "{entries:?}: {err:?}"
            );
            assert_eq!(err.code(), ErrorCode::UnsafePath);
            assert!(err.to_string().contains("Entry `"), "{err}");
        }
        // A symlink already in the destination that points out.
        symlink(&outside, dest.join("existing")).expect("symlink");
        let err = unpack_raw(&dest, &[(b"existing/escape", EntryType::Regular, b"")])
            .expect_err("refused");
        assert!(err.to_string().contains("existing/escape"), "{err}");
        assert_eq!(err.code(), ErrorCode::UnsafePath);
        assert_eq!(
            fs::read_dir(&outside).expect("read").count(),
            0,
            "something landed outside"
        );
    }

    #[test]
    fn a_link_at_an_entry_s_own_path_is_replaced_not_written_through() {
        let base = tempfile::tempdir().expect("tempdir");
        let outside = base.path().join("victim");
        fs::write(&outside, b"untouched").expect("write");
        let dest = base.path().join("dest");
        fs::create_dir(&dest).expect("mkdir");
        symlink(&outside, dest.join("file")).expect("symlink");
        let err = unpack_raw(&dest, &[(b"file", EntryType::Regular, b"")]).expect_err("exists");
        assert!(matches!(err, TreeError::Exists { .. }), "{err:?}");
        let mut stream = Vec::new();
        raw_entry(
            &mut stream,
            b"file",
            EntryType::Regular,
            b"",
            b"owned",
            0o600,
        );
        end(&mut stream);
        unpack(stream.as_slice(), &dest, true, &Tally::default()).expect("overwrite");
        assert_eq!(fs::read(&outside).expect("read"), b"untouched");
        assert_eq!(fs::read(dest.join("file")).expect("read"), b"owned");
        assert!(
            !fs::symlink_metadata(dest.join("file"))
                .expect("stat")
                .file_type()
                .is_symlink()
        );
    }

    #[test]
    fn kinds_a_tree_does_not_carry_are_refused() {
        let dest = tempfile::tempdir().expect("tempdir");
        for (kind, name) in [
            (EntryType::Link, "hard link"),
            (EntryType::Fifo, "FIFO"),
            (EntryType::Char, "device"),
            (EntryType::Block, "device"),
        ] {
            let err = unpack_raw(dest.path(), &[(b"x", kind, b"target")]).expect_err("refused");
            assert!(
                matches!(err, TreeError::Unsupported { kind, .. } if kind == name),
                "{err:?}"
            );
        }
        assert_eq!(fs::read_dir(dest.path()).expect("read").count(), 0);
    }

    #[test]
    fn long_names_are_bounded() {
        let dest = tempfile::tempdir().expect("tempdir");
        let mut stream = Vec::new();
        let long = vec![b'a'; MAX_TREE_PATH_LEN + 10];
        raw_entry(
            &mut stream,
            b"././@LongLink",
            EntryType::GNULongName,
            b"",
            &long,
            0o644,
        );
        raw_entry(&mut stream, b"short", EntryType::Regular, b"", b"", 0o644);
        end(&mut stream);
        let err =
            unpack(stream.as_slice(), dest.path(), false, &Tally::default()).expect_err("long");
        assert_eq!(err.code(), ErrorCode::UnsafePath);
        // A PAX path is honoured, and judged.
        let mut stream = Vec::new();
        let record = b"19 path=../../evil\n";
        raw_entry(&mut stream, b"pax", EntryType::XHeader, b"", record, 0o644);
        raw_entry(
            &mut stream,
            b"harmless",
            EntryType::Regular,
            b"",
            b"",
            0o644,
        );
        end(&mut stream);
        let err =
            unpack(stream.as_slice(), dest.path(), false, &Tally::default()).expect_err("pax");
        assert!(err.to_string().contains("../../evil"), "{err}");
        assert_eq!(fs::read_dir(dest.path()).expect("read").count(), 0);
    }

    #[test]
    fn packing_stops_at_max_bytes() {
        let from = tempfile::tempdir().expect("tempdir");
        sample_tree(from.path());
        let (whole, _) = packed(from.path(), u64::MAX).expect("pack");
        let size = whole.len() as u64;
        assert!(packed(from.path(), size).is_ok());
        let err = packed(from.path(), size - 1).expect_err("too large");
        assert!(
            matches!(err, TreeError::TooLarge { max_bytes } if max_bytes == size - 1),
            "{err:?}"
        );
        assert_eq!(err.code(), ErrorCode::TooLarge);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Whatever a stream holds (entries of any kind whose paths go
        /// through links, `..` and absolute parts, links pointing out, or
        /// bytes that are no tar at all), unpacking it never panics and
        /// never writes outside the destination.
        #[test]
        fn no_stream_writes_outside_the_destination(
            entries in proptest::collection::vec(
                (
                    proptest::sample::select(vec![
                        "link", "link/f", "link/d/f", "a", "a/link", "a/link/f", "..", "../f",
                        "/abs", "./a/../../f", "a/./b", "b/",
                    ]),
                    proptest::sample::select(vec![
                        EntryType::Regular,
                        EntryType::Directory,
                        EntryType::Symlink,
                        EntryType::Symlink,
                        EntryType::Link,
                        EntryType::GNULongName,
                        EntryType::XHeader,
                    ]),
                    proptest::sample::select(vec!["OUT", "OUT", "..", "../..", "/", "a"]),
                    proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
                ),
                0..8,
            ),
            garbage in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048),
            overwrite in proptest::prelude::any::<bool>(),
        ) {
            let base = tempfile::tempdir().expect("tempdir");
            let outside = base.path().join("outside");
            let dest = base.path().join("dest");
            fs::create_dir(&outside).expect("mkdir");
            fs::create_dir(&dest).expect("mkdir");
            let out = outside.as_os_str().as_bytes().to_vec();
            let mut stream = Vec::new();
            for (name, kind, link, data) in &entries {
                let name = name.as_bytes();
                let link: &[u8] = if *link == "OUT" { &out } else { link.as_bytes() };
                let link = &link[..link.len().min(100)];
                let data: &[u8] = if *kind == EntryType::Regular
                    || *kind == EntryType::GNULongName
                    || *kind == EntryType::XHeader
                {
                    data
                } else {
                    b""
                };
                raw_entry(&mut stream, name, *kind, link, data, 0o755);
            }
            if entries.is_empty() {
                stream = garbage;
            } else {
                end(&mut stream);
            }
            let _ = unpack(stream.as_slice(), &dest, overwrite, &Tally::default());
            let left: Vec<_> = fs::read_dir(&outside).expect("read").collect();
            proptest::prop_assert!(left.is_empty(), "written outside: {left:?}");
            let mut names: Vec<_> = fs::read_dir(base.path())
                .expect("read")
                .map(|e| e.expect("entry").file_name())
                .collect();
            names.sort();
            proptest::prop_assert_eq!(names, vec!["dest", "outside"]);
        }
    }

    #[test]
    fn a_symlinked_root_is_refused() {
        let base = tempfile::tempdir().expect("tempdir");
        symlink("/etc", base.path().join("root")).expect("symlink");
        let err = packed(&base.path().join("root"), u64::MAX).expect_err("refused");
        assert!(matches!(err, TreeError::RootIsSymlink(_)), "{err:?}");
        let err = check_root(&base.path().join("root"), true).expect_err("refused");
        assert!(matches!(err, TreeError::RootIsSymlink(_)), "{err:?}");
    }
}
