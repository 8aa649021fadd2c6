//! TREE_PUT and TREE_GET: directories as one tar stream.
//!
//! A put's FILE_DATA goes, through a bounded queue, to a blocking thread
//! that unpacks it into the destination as it arrives ([`paddock_tree::unpack`]
//! refuses every entry that would land outside it, with `unsafe_path`);
//! FILE_END's size and CRC-32 are checked against what arrived, and the
//! agent answers TREE_DONE. A stream past `max_bytes` ends with
//! `too_large`. A failed put leaves what it wrote inside the destination,
//! and nothing outside it.
//!
//! A get packs the directory on a blocking thread ([`paddock_tree::pack`],
//! symlinks never followed) into the same kind of queue, sent as FILE_DATA
//! within the host's window, then FILE_END; a stream that would pass
//! `max_bytes` ends with `too_large` instead. The tree is never held whole
//! in memory: at most the queue's chunks.

use std::path::PathBuf;

use paddock_proto::{ErrorCode, FileEnd, Message, MessageKind, TreeDone, TreeGet, TreePut};
use tokio::sync::mpsc;

use crate::Gauge;
use crate::request::{
    Flow, Handler, Input, Inputs, Interrupted, Rejection, RequestCtx, WireError, rejection,
};
use paddock_tree::{ChunkReader, ChunkWriter, Tally, TreeError};

/// Chunks queued between the session and a tree's blocking thread.
const QUEUE: usize = 4;

/// Why a tree transfer failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TreeRequestError {
    /// The path is relative.
    #[error("`{0}` is not an absolute path")]
    NotAbsolute(String),
    /// Packing or unpacking failed.
    #[error(transparent)]
    Tree(#[from] TreeError),
    /// What arrived does not match FILE_END.
    #[error(
        "Received {size} bytes with CRC-32 {crc32:#010x}, but FILE_END says {expected_size} bytes with CRC-32 {expected_crc32:#010x}"
    )]
    ChecksumMismatch {
        size: u64,
        crc32: u32,
        expected_size: u64,
        expected_crc32: u32,
    },
    /// The blocking thread panicked or was cancelled (a bug).
    #[error("The tree's worker thread failed")]
    Worker(#[source] tokio::task::JoinError),
    /// The host broke the protocol on this request.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The session ended.
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
}

impl WireError for TreeRequestError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::NotAbsolute(_) => ErrorCode::InvalidArgument,
            Self::Tree(err) => err.code(),
            Self::ChecksumMismatch { .. } => ErrorCode::ChecksumMismatch,
            Self::Worker(_) => ErrorCode::Internal,
            Self::Rejected(rejection) => rejection.code(),
            Self::Interrupted(interrupted) => interrupted.code(),
        }
    }
}

fn absolute(path: &str) -> Result<PathBuf, TreeRequestError> {
    let path = PathBuf::from(path);
    if path.is_absolute() {
        Ok(path)
    } else {
        Err(TreeRequestError::NotAbsolute(path.display().to_string()))
    }
}

/// A put: the host sends the stream, the agent only answers.
impl Handler for TreePut {
    type Error = TreeRequestError;

    fn flow(&self) -> Flow {
        Flow {
            sends: false,
            takes: true,
        }
    }

    /// Unpacks the stream and verifies it, up to TREE_DONE.
    async fn handle(self, ctx: &RequestCtx, inputs: Inputs) -> Result<Message, Self::Error> {
        do_put(ctx, self, inputs).await.map(Message::TreeDone)
    }
}

async fn do_put(
    ctx: &RequestCtx,
    put: TreePut,
    mut inputs: Inputs,
) -> Result<TreeDone, TreeRequestError> {
    let _transfer = Gauge::new(&ctx.agent().active_transfers);
    let dest = absolute(&put.path)?;
    let (queue, chunks) = mpsc::channel::<Vec<u8>>(QUEUE);
    let overwrite = put.overwrite;
    let unpacker = tokio::task::spawn_blocking(move || {
        paddock_tree::check_root(&dest, true)?;
        paddock_tree::unpack(
            ChunkReader::new(chunks),
            &dest,
            overwrite,
            &Tally::default(),
        )
    });
    let received = receive(ctx, &mut inputs, queue, put.max_bytes).await;
    // The queue is closed: the unpacker sees the end of the stream (or has
    // stopped on an error of its own, which is the real cause).
    let unpacked = unpacker.await.map_err(TreeRequestError::Worker)?;
    let (size, crc32, end) = match received {
        Ok(received) => received,
        Err(Received::QueueClosed) => {
            return Err(unpacked.err().map_or_else(
                || TreeError::Malformed("the stream went on after the tar ended").into(),
                TreeRequestError::from,
            ));
        }
        Err(Received::Failed(err)) => return Err(err),
    };
    if (size, crc32) != (end.size, end.crc32) {
        return Err(TreeRequestError::ChecksumMismatch {
            size,
            crc32,
            expected_size: end.size,
            expected_crc32: end.crc32,
        });
    }
    Ok(unpacked?)
}

/// Why receiving a put's stream stopped early.
enum Received {
    /// The unpacker stopped reading: its result says why.
    QueueClosed,
    /// The request failed here.
    Failed(TreeRequestError),
}

/// Feeds FILE_DATA to the unpacker until FILE_END; returns the size and
/// CRC-32 of what arrived, and the FILE_END.
async fn receive(
    ctx: &RequestCtx,
    inputs: &mut Inputs,
    queue: mpsc::Sender<Vec<u8>>,
    max_bytes: u64,
) -> Result<(u64, u32, FileEnd), Received> {
    let failed = |err: TreeRequestError| Received::Failed(err);
    let mut crc = crc32fast::Hasher::new();
    let mut size = 0u64;
    loop {
        let input = tokio::select! {
            input = inputs.recv() => input,
            () = ctx.ended() => return Err(failed(Interrupted::SessionEnded.into())),
        };
        match input {
            Input::Frame(Message::FileData(data)) => {
                let len = data.len();
                size += len as u64;
                if size > max_bytes {
                    return Err(failed(TreeError::TooLarge { max_bytes }.into()));
                }
                crc.update(&data);
                if queue.send(data).await.is_err() {
                    return Err(Received::QueueClosed);
                }
                ctx.consumed(len).await.map_err(|err| failed(err.into()))?;
            }
            Input::Frame(Message::FileEnd(end)) => return Ok((size, crc.finalize(), end)),
            Input::Frame(message) => {
                return Err(failed(Rejection::Unexpected(message.kind()).into()));
            }
            Input::Reject(report) => return Err(failed(Rejection::Report(report).into())),
        }
    }
}

/// A get: the agent sends the stream, the host only returns credit.
impl Handler for TreeGet {
    type Error = TreeRequestError;

    fn flow(&self) -> Flow {
        Flow {
            sends: true,
            takes: false,
        }
    }

    /// Packs and sends the tree, up to FILE_END; any frame of the host but
    /// credit ends it.
    async fn handle(self, ctx: &RequestCtx, mut inputs: Inputs) -> Result<Message, Self::Error> {
        let outcome = tokio::select! {
            outcome = do_get(ctx, self) => outcome,
            rejection = rejection(&mut inputs) => Err(rejection.into()),
        };
        outcome.map(Message::FileEnd)
    }
}

async fn do_get(ctx: &RequestCtx, get: TreeGet) -> Result<FileEnd, TreeRequestError> {
    let _transfer = Gauge::new(&ctx.agent().active_transfers);
    let root = absolute(&get.path)?;
    let (queue, mut chunks) = mpsc::channel::<Vec<u8>>(QUEUE);
    let chunk = ctx.chunk();
    let packer = tokio::task::spawn_blocking(move || {
        let writer = ChunkWriter::new(queue, chunk);
        paddock_tree::pack(&root, writer, get.max_bytes, &Tally::default())
    });
    let mut crc = crc32fast::Hasher::new();
    let mut size = 0u64;
    while let Some(data) = chunks.recv().await {
        crc.update(&data);
        size += data.len() as u64;
        // On failure the queue's receiver is dropped on return, which stops
        // the packer at its next chunk.
        ctx.send_data(MessageKind::FileData, &data).await?;
    }
    packer.await.map_err(TreeRequestError::Worker)??;
    Ok(FileEnd {
        size,
        crc32: crc.finalize(),
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::test_host::{TestHost, error_code};

    fn sample(root: &Path) {
        std::fs::create_dir_all(root.join("a/b")).expect("mkdir");
        std::fs::write(root.join("a/b/file"), vec![3u8; 50_000]).expect("write");
        std::fs::create_dir(root.join("empty")).expect("mkdir");
        std::os::unix::fs::symlink("/etc", root.join("out")).expect("symlink");
    }

    fn tar_of(root: &Path) -> (Vec<u8>, TreeDone) {
        let mut stream = Vec::new();
        let done =
            paddock_tree::pack(root, &mut stream, u64::MAX, &Tally::default()).expect("pack");
        (stream, done)
    }

    /// Sends `stream` as a put into `dest` and returns the agent's last frame.
    async fn put(
        host: &mut TestHost,
        id: u64,
        dest: &Path,
        stream: &[u8],
        max_bytes: u64,
    ) -> (u64, Message) {
        let put = TreePut {
            path: dest.display().to_string(),
            max_bytes,
            overwrite: false,
        };
        host.send(id, &Message::TreePut(put)).await;
        host.send_within_window(id, MessageKind::FileData, stream, 16_384)
            .await;
        let end = FileEnd {
            size: stream.len() as u64,
            crc32: crc32fast::hash(stream),
        };
        host.send(id, &Message::FileEnd(end)).await;
        loop {
            match host.recv().await {
                (got, Message::WindowUpdate(_)) if got == id => {}
                other => return other,
            }
        }
    }

    /// Gets `root` and returns the stream, or the ERROR's code.
    async fn get(
        host: &mut TestHost,
        id: u64,
        root: &Path,
        max_bytes: u64,
    ) -> Result<Vec<u8>, ErrorCode> {
        let get = TreeGet {
            path: root.display().to_string(),
            max_bytes,
        };
        host.send(id, &Message::TreeGet(get)).await;
        let mut stream = Vec::new();
        loop {
            match host.recv().await {
                (got, Message::FileData(data)) if got == id => {
                    host.grant(id, data.len()).await;
                    stream.extend(data);
                }
                (got, Message::FileEnd(end)) if got == id => {
                    assert_eq!(end.size, stream.len() as u64);
                    assert_eq!(end.crc32, crc32fast::hash(&stream));
                    return Ok(stream);
                }
                other => return Err(error_code(other).1),
            }
        }
    }

    #[tokio::test]
    async fn a_tree_put_then_got_round_trips() {
        let mut host = TestHost::ready().await;
        let from = tempfile::tempdir().expect("tempdir");
        sample(from.path());
        let (stream, packed) = tar_of(from.path());
        let into = tempfile::tempdir().expect("tempdir");
        let dest = into.path().join("new/dest");
        let done = put(&mut host, 1, &dest, &stream, 1 << 20).await;
        assert_eq!(done, (1, Message::TreeDone(packed)));
        assert_eq!(packed.files, 1);
        assert_eq!(
            std::fs::read_link(dest.join("out")).expect("a link"),
            Path::new("/etc")
        );

        let back = get(&mut host, 2, &dest, 1 << 20).await.expect("get");
        let again = tempfile::tempdir().expect("tempdir");
        let unpacked =
            paddock_tree::unpack(back.as_slice(), again.path(), false, &Tally::default())
                .expect("unpack");
        assert_eq!(unpacked, packed);
        assert_eq!(
            std::fs::read(again.path().join("a/b/file")).expect("read"),
            vec![3u8; 50_000]
        );
        assert!(again.path().join("empty").is_dir());
    }

    #[tokio::test]
    async fn unsafe_entries_and_oversized_streams_are_refused() {
        let mut host = TestHost::ready().await;
        let base = tempfile::tempdir().expect("tempdir");
        let outside = base.path().join("outside");
        std::fs::create_dir(&outside).expect("mkdir");
        // A link the stream makes, then a file through it.
        let mut stream = Vec::new();
        {
            let mut builder = tar::Builder::new(&mut stream);
            let mut link = tar::Header::new_gnu();
            link.set_entry_type(tar::EntryType::Symlink);
            link.set_size(0);
            link.set_mode(0o777);
            link.set_mtime(0);
            builder
                .append_link(&mut link, "link", &outside)
                .expect("link");
            let mut file = tar::Header::new_gnu();
            file.set_size(4);
            file.set_mode(0o644);
            file.set_mtime(0);
            builder
                .append_data(&mut file, "link/passwd", &b"root"[..])
                .expect("file");
            builder.finish().expect("finish");
        }
        let dest = base.path().join("dest");
        let (id, code) = error_code(put(&mut host, 1, &dest, &stream, 1 << 20).await);
        assert_eq!((id, code), (1, ErrorCode::UnsafePath));
        assert_eq!(std::fs::read_dir(&outside).expect("read").count(), 0);

        let from = tempfile::tempdir().expect("tempdir");
        sample(from.path());
        let (stream, _) = tar_of(from.path());
        let small = stream.len() as u64 - 1;
        let (_, code) =
            error_code(put(&mut host, 2, &base.path().join("d2"), &stream, small).await);
        assert_eq!(code, ErrorCode::TooLarge);
        assert_eq!(
            get(&mut host, 3, from.path(), small).await,
            Err(ErrorCode::TooLarge)
        );
        assert_eq!(
            get(&mut host, 4, &from.path().join("out"), 1 << 20).await,
            Err(ErrorCode::InvalidArgument)
        );
        assert_eq!(
            get(&mut host, 5, &from.path().join("missing"), 1 << 20).await,
            Err(ErrorCode::NotFound)
        );
    }
}
