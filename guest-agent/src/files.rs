//! FILE_PUT and FILE_GET.
//!
//! A put is written to a temporary file next to its target, checked against
//! the size and CRC-32 the host sends in FILE_END, given its mode and renamed
//! into place. On any failure, or when the session ends first, the temporary
//! file is removed and the target is untouched.
//!
//! A get sends FILE_INFO, the content as FILE_DATA within the host's window,
//! then FILE_END with the size and CRC-32 of what was sent. Only regular files
//! are read (a FIFO or a device could block or never end).

use std::fs::Permissions;
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use paddock_proto::{
    ErrorCode, FileDone, FileEnd, FileGet, FileInfo, FilePut, Message, MessageKind,
};
use tokio::fs;
use tracing::debug;

use crate::Gauge;
use crate::request::{
    Flow, Handler, Input, Inputs, Interrupted, Rejection, RequestCtx, WireError, rejection,
};

/// Permission bits a put may set.
const MODE_MASK: u32 = 0o7777;

/// Why a transfer failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FileError {
    /// The path is relative.
    #[error("`{0}` is not an absolute path")]
    NotAbsolute(String),
    /// The path has no file name (`/`, or ends in `..`).
    #[error("`{0}` does not name a file")]
    NoFileName(String),
    /// FILE_GET of a directory.
    #[error("`{0}` is a directory")]
    IsDirectory(PathBuf),
    /// FILE_GET of a FIFO, socket or device.
    #[error("`{0}` is not a regular file")]
    NotRegular(PathBuf),
    /// A file system operation failed.
    #[error("Could not {action} `{path}`")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// What was written does not match FILE_END.
    #[error(
        "Received {size} bytes with CRC-32 {crc32:#010x}, but FILE_END says {expected_size} bytes with CRC-32 {expected_crc32:#010x}"
    )]
    ChecksumMismatch {
        size: u64,
        crc32: u32,
        expected_size: u64,
        expected_crc32: u32,
    },
    /// The host broke the protocol on this request.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The session ended.
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
}

impl WireError for FileError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::NotAbsolute(_)
            | Self::NoFileName(_)
            | Self::IsDirectory(_)
            | Self::NotRegular(_) => ErrorCode::InvalidArgument,
            Self::Io { source, .. } => match source.kind() {
                io::ErrorKind::NotFound => ErrorCode::NotFound,
                io::ErrorKind::PermissionDenied => ErrorCode::PermissionDenied,
                // A NUL byte in the path.
                io::ErrorKind::InvalidInput => ErrorCode::InvalidArgument,
                _ => ErrorCode::Io,
            },
            Self::ChecksumMismatch { .. } => ErrorCode::ChecksumMismatch,
            Self::Rejected(rejection) => rejection.code(),
            Self::Interrupted(interrupted) => interrupted.code(),
        }
    }
}

/// Maps an I/O error on `path` to [`FileError::Io`].
fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> FileError {
    let path = path.to_owned();
    move |source| FileError::Io {
        action,
        path,
        source,
    }
}

fn absolute(path: &str) -> Result<PathBuf, FileError> {
    let path = PathBuf::from(path);
    if path.is_absolute() {
        Ok(path)
    } else {
        Err(FileError::NotAbsolute(path.display().to_string()))
    }
}

/// A put: the host sends the content, the agent only answers.
impl Handler for FilePut {
    type Error = FileError;

    fn flow(&self) -> Flow {
        Flow {
            sends: false,
            takes: true,
        }
    }

    /// Writes and verifies the file, up to FILE_DONE.
    async fn handle(self, ctx: &RequestCtx, inputs: Inputs) -> Result<Message, FileError> {
        do_put(ctx, &self, inputs).await.map(Message::FileDone)
    }
}

async fn do_put(
    ctx: &RequestCtx,
    put: &FilePut,
    mut inputs: Inputs,
) -> Result<FileDone, FileError> {
    let _transfer = Gauge::new(&ctx.agent().active_transfers);
    let path = absolute(&put.path)?;
    let (Some(dir), Some(_)) = (path.parent(), path.file_name()) else {
        return Err(FileError::NoFileName(put.path.clone()));
    };
    if put.create_parents {
        fs::create_dir_all(dir)
            .await
            .map_err(io_error("create the directory", dir))?;
    }
    let temp = dir.join(format!(".paddock-put-{}", ctx.unique_name()));
    let written = write_verified(ctx, put, &temp, &mut inputs).await;
    let done = match written {
        Ok(done) => fs::rename(&temp, &path)
            .await
            .map(|()| done)
            .map_err(io_error("rename the temporary file to", &path)),
        Err(err) => Err(err),
    };
    if done.is_err() {
        if let Err(err) = fs::remove_file(&temp).await {
            if err.kind() != io::ErrorKind::NotFound {
                debug!(%err, path = %temp.display(), "Could not remove the temporary file");
            }
        }
    }
    done
}

/// Chunks queued between the session and a put's writer thread: bounds the
/// memory a put holds beyond the flow-control window.
const WRITE_QUEUE: usize = 4;

/// Writes the host's FILE_DATA to `temp` until FILE_END and checks it.
///
/// The file is written by one blocking thread fed through a bounded queue:
/// writing each chunk through `tokio::fs` would cost a hand-off to the
/// blocking pool per chunk, which halved put throughput.
async fn write_verified(
    ctx: &RequestCtx,
    put: &FilePut,
    temp: &Path,
    inputs: &mut Inputs,
) -> Result<FileDone, FileError> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(temp)
        .map_err(io_error("create", temp))?;
    let (queue, mut chunks) = tokio::sync::mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
    let writer = tokio::task::spawn_blocking(move || -> io::Result<std::fs::File> {
        let mut file = file;
        let mut batch = Vec::with_capacity(WRITE_QUEUE);
        while let Some(chunk) = chunks.blocking_recv() {
            batch.push(chunk);
            while batch.len() < WRITE_QUEUE {
                match chunks.try_recv() {
                    Ok(chunk) => batch.push(chunk),
                    Err(_) => break,
                }
            }
            write_all_vectored(&mut file, &batch)?;
            batch.clear();
        }
        Ok(file)
    });
    let received = receive_chunks(ctx, inputs, &queue).await;
    drop(queue);
    let written = writer
        .await
        .map_err(|err| io_error("write", temp)(io::Error::other(err)))
        .and_then(|result| result.map_err(io_error("write", temp)));
    let (size, crc32, end) = received?;
    let file = written?;
    if (size, crc32) != (end.size, end.crc32) {
        return Err(FileError::ChecksumMismatch {
            size,
            crc32,
            expected_size: end.size,
            expected_crc32: end.crc32,
        });
    }
    file.set_permissions(Permissions::from_mode(put.mode & MODE_MASK))
        .map_err(io_error("set the mode of", temp))?;
    Ok(FileDone { size, crc32 })
}

/// Writes every chunk of `batch`, in order, in as few system calls as the
/// kernel takes: under TCG each system call costs far more than on
/// hardware (a page-table switch empties the emulated TLB).
fn write_all_vectored(file: &mut std::fs::File, batch: &[Vec<u8>]) -> io::Result<()> {
    let mut slices: Vec<io::IoSlice<'_>> = batch.iter().map(|c| io::IoSlice::new(c)).collect();
    let mut slices = &mut slices[..];
    io::IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        match file.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => io::IoSlice::advance_slices(&mut slices, n),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Feeds FILE_DATA to the writer queue until FILE_END; returns the size and
/// CRC-32 of what was received, and the FILE_END. A closed queue means the
/// writer failed: its error is reported by the caller.
async fn receive_chunks(
    ctx: &RequestCtx,
    inputs: &mut Inputs,
    queue: &tokio::sync::mpsc::Sender<Vec<u8>>,
) -> Result<(u64, u32, FileEnd), FileError> {
    let mut crc = crc32fast::Hasher::new();
    let mut size = 0u64;
    loop {
        let input = tokio::select! {
            input = inputs.recv() => input,
            () = ctx.ended() => return Err(Interrupted::SessionEnded.into()),
        };
        match input {
            Input::Frame(Message::FileData(data)) => {
                crc.update(&data);
                let len = data.len();
                size += len as u64;
                if queue.send(data).await.is_err() {
                    // The writer stopped: its I/O error is the real cause.
                    return Ok((size, crc.finalize(), FileEnd { size: 0, crc32: 0 }));
                }
                ctx.consumed(len).await?;
            }
            Input::Frame(Message::FileEnd(end)) => return Ok((size, crc.finalize(), end)),
            Input::Frame(message) => {
                return Err(Rejection::Unexpected(message.kind()).into());
            }
            Input::Reject(report) => return Err(Rejection::Report(report).into()),
        }
    }
}

/// A get: the agent sends the content, the host only returns credit.
impl Handler for FileGet {
    type Error = FileError;

    fn flow(&self) -> Flow {
        Flow {
            sends: true,
            takes: false,
        }
    }

    /// Sends the file, up to FILE_END; any frame of the host but credit ends
    /// it.
    async fn handle(self, ctx: &RequestCtx, mut inputs: Inputs) -> Result<Message, FileError> {
        let outcome = tokio::select! {
            outcome = do_get(ctx, &self) => outcome,
            rejection = rejection(&mut inputs) => Err(rejection.into()),
        };
        outcome.map(Message::FileEnd)
    }
}

async fn do_get(ctx: &RequestCtx, get: &FileGet) -> Result<FileEnd, FileError> {
    let _transfer = Gauge::new(&ctx.agent().active_transfers);
    let path = absolute(&get.path)?;
    // O_NONBLOCK: opening a FIFO must not wait for a writer.
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
        .await
        .map_err(io_error("open", &path))?;
    let metadata = file.metadata().await.map_err(io_error("stat", &path))?;
    if metadata.is_dir() {
        return Err(FileError::IsDirectory(path));
    }
    if !metadata.is_file() {
        return Err(FileError::NotRegular(path));
    }
    let info = FileInfo {
        size: metadata.len(),
        mode: metadata.permissions().mode() & MODE_MASK,
    };
    ctx.send(&Message::FileInfo(info)).await?;
    let file = file.into_std().await;
    let (mut chunks, reader) = spawn_reader(file, ctx.chunk());
    let mut crc = crc32fast::Hasher::new();
    let mut size = 0u64;
    while let Some(chunk) = chunks.recv().await {
        size += chunk.len() as u64;
        ctx.send_data_checksummed(MessageKind::FileData, &chunk, &mut crc)
            .await?;
    }
    drop(chunks);
    reader
        .await
        .map_err(|err| io_error("read", &path)(io::Error::other(err)))?
        .map_err(io_error("read", &path))?;
    Ok(FileEnd {
        size,
        crc32: crc.finalize(),
    })
}

/// Chunks a get's reader thread reads ahead of the host's credit: bounds
/// what a get holds beyond the flow-control window.
const READ_AHEAD: usize = 4;

/// Reads `file` to its end in chunks of `chunk` bytes on one blocking
/// thread, handing them over through a bounded queue. Reading each chunk
/// through `tokio::fs` would cost a hand-off to the blocking pool per chunk
/// (as for a put's writer). The thread stops at the end of the file, on an
/// error (returned by its handle), or when the receiver is dropped.
fn spawn_reader(
    file: std::fs::File,
    chunk: usize,
) -> (
    tokio::sync::mpsc::Receiver<Vec<u8>>,
    tokio::task::JoinHandle<io::Result<()>>,
) {
    let (queue, chunks) = tokio::sync::mpsc::channel::<Vec<u8>>(READ_AHEAD);
    let reader = tokio::task::spawn_blocking(move || -> io::Result<()> {
        let limit = u64::try_from(chunk).unwrap_or(u64::MAX);
        loop {
            let mut data = Vec::with_capacity(chunk);
            (&file).take(limit).read_to_end(&mut data)?;
            if data.is_empty() || queue.blocking_send(data).is_err() {
                return Ok(());
            }
        }
    });
    (chunks, reader)
}

#[cfg(test)]
mod tests {
    use paddock_proto::ErrorReport;

    use super::*;
    use crate::test_host::TestHost;

    fn put_message(path: &Path, mode: u32, create_parents: bool) -> Message {
        Message::FilePut(FilePut {
            path: path.display().to_string(),
            mode,
            create_parents,
        })
    }

    fn error(frame: (u64, Message)) -> (u64, ErrorReport) {
        match frame {
            (id, Message::Error(report)) => (id, report),
            other => panic!("expected ERROR, got {other:?}"),
        }
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("read dir")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    }

    /// Sends `data` as a put of `path` whose FILE_END claims `end`.
    async fn put(
        host: &mut TestHost,
        id: u64,
        path: &Path,
        data: &[u8],
        end: FileEnd,
    ) -> (u64, Message) {
        host.send(id, &put_message(path, 0o640, true)).await;
        host.send_within_window(id, MessageKind::FileData, data, 20_000)
            .await;
        host.send(id, &Message::FileEnd(end)).await;
        loop {
            match host.recv().await {
                (got, Message::WindowUpdate(_)) if got == id => {}
                other => return other,
            }
        }
    }

    #[tokio::test]
    async fn put_then_get_round_trips_with_checksums() {
        let mut host = TestHost::ready().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a/b/file");
        let data: Vec<u8> = (0..251u8).cycle().take(200_000).collect();
        let crc32 = crc32fast::hash(&data);
        let size = data.len() as u64;

        let done = put(&mut host, 1, &path, &data, FileEnd { size, crc32 }).await;
        assert_eq!(done, (1, Message::FileDone(FileDone { size, crc32 })));
        assert!(std::fs::read(&path).expect("written") == data);
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & MODE_MASK, 0o640);
        assert_eq!(entries(&dir.path().join("a/b")), ["file"]);

        host.send(
            2,
            &Message::FileGet(FileGet {
                path: path.display().to_string(),
            }),
        )
        .await;
        assert_eq!(
            host.recv().await,
            (2, Message::FileInfo(FileInfo { size, mode: 0o640 }))
        );
        let mut received = Vec::new();
        let end = loop {
            match host.recv().await {
                (2, Message::FileData(chunk)) => {
                    host.grant(2, chunk.len()).await;
                    received.extend(chunk);
                }
                (2, Message::FileEnd(end)) => break end,
                other => panic!("unexpected {other:?}"),
            }
        };
        assert_eq!(end, FileEnd { size, crc32 });
        assert!(received == data);
    }

    #[tokio::test]
    async fn checksum_mismatch_leaves_no_file() {
        let mut host = TestHost::ready().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("file");
        let data = vec![7u8; 100_000];
        let end = FileEnd {
            size: data.len() as u64,
            crc32: crc32fast::hash(&data) ^ 1,
        };
        let (id, report) = error(put(&mut host, 1, &path, &data, end).await);
        assert_eq!((id, report.code), (1, ErrorCode::ChecksumMismatch));
        assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));
        let short = FileEnd {
            size: 99,
            crc32: crc32fast::hash(&data),
        };
        let (_, report) = error(put(&mut host, 2, &path, &data, short).await);
        assert_eq!(report.code, ErrorCode::ChecksumMismatch);
        assert!(entries(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn bad_paths_are_refused() {
        let mut host = TestHost::ready().await;
        let dir = tempfile::tempdir().expect("tempdir");
        host.send(
            1,
            &Message::FilePut(FilePut {
                path: "relative".into(),
                mode: 0o644,
                create_parents: false,
            }),
        )
        .await;
        assert_eq!(error(host.recv().await).1.code, ErrorCode::InvalidArgument);
        host.send(
            2,
            &put_message(&dir.path().join("missing/file"), 0o644, false),
        )
        .await;
        assert_eq!(error(host.recv().await).1.code, ErrorCode::NotFound);
        let get = |path: &Path| {
            Message::FileGet(FileGet {
                path: path.display().to_string(),
            })
        };
        host.send(3, &get(dir.path())).await;
        assert_eq!(error(host.recv().await).1.code, ErrorCode::InvalidArgument);
        host.send(4, &get(&dir.path().join("missing"))).await;
        assert_eq!(error(host.recv().await).1.code, ErrorCode::NotFound);
        host.send(5, &get(Path::new("/dev/null"))).await;
        assert_eq!(error(host.recv().await).1.code, ErrorCode::InvalidArgument);
    }

    #[tokio::test]
    async fn an_unfinished_put_is_discarded_when_the_session_ends() {
        let mut host = TestHost::ready().await;
        let dir = tempfile::tempdir().expect("tempdir");
        host.send(1, &put_message(&dir.path().join("file"), 0o644, false))
            .await;
        host.send(1, &Message::FileData(vec![1; 1000])).await;
        let mut temp_created = false;
        for _ in 0..100 {
            temp_created = entries(dir.path())
                .iter()
                .any(|name| name.starts_with(".paddock-put-"));
            if temp_created {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(temp_created, "the put never started");
        host.hang_up().await;
        assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));
    }
}
