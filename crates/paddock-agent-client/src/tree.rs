//! Directory transfers: TREE_PUT and TREE_GET, one tar stream each way,
//! carried as FILE_DATA within the windows and verified with FILE_END's
//! CRC-32, as files are.
//!
//! The host packs a put without following a symlink, and unpacks a get as
//! strictly as the agent unpacks a put (the same `paddock-tree` code): an entry
//! from the guest that would land outside the local directory (absolute,
//! `..`, through a symlink) ends the get with [`TreeError::UnsafePath`],
//! and names, entries and bytes are bounded before they are buffered. The
//! tar work runs on a blocking thread, fed through a bounded queue: a tree
//! is never held whole in memory.
//!
//! Progress goes to a [`tokio::sync::watch`] channel the caller hands in
//! ([`TreeOptions::progress`]): it always holds the latest
//! [`TreeProgress`] (bytes of stream moved, regular files packed or
//! unpacked), each value at least the one before, and the last equal to
//! the transfer's totals. A watch never blocks the transfer, however slowly
//! the caller looks.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use paddock_proto::{FileEnd, Message, MessageKind, TreeDone, TreeGet, TreePut, capability};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::{mpsc, watch};

use crate::connection::{Connection, Pacing, Request, SendCredit};
use crate::error::ClientError;
use crate::files::{final_error, next_event, unexpected};
use crate::gate::{GateRequest, Gatekeeper, Size};
use paddock_tree::{ChunkReader, ChunkWriter, Tally, TreeError};

/// Chunks queued between the session and a tree's blocking thread.
const QUEUE: usize = 4;

/// How a directory transfer runs.
#[derive(Debug, Clone)]
pub struct TreeOptions {
    /// The most bytes of tar stream (headers included) to move; a larger
    /// tree ends with `too_large` (the agent's, or [`TreeError::TooLarge`]
    /// on the host) instead of being cut. 1 GiB by default.
    pub max_bytes: u64,
    /// The longest the whole transfer may take; past it the transfer ends
    /// with [`ClientError::Timeout`] (and the agent is told to drop it).
    /// 10 minutes by default.
    pub timeout: Duration,
    /// Replace files and symlinks already at an entry's path (never
    /// writing through them); without, such an entry ends the transfer.
    pub overwrite: bool,
    /// Where progress goes, if anywhere (see the module documentation).
    pub progress: Option<watch::Sender<TreeProgress>>,
}

impl Default for TreeOptions {
    fn default() -> Self {
        Self {
            max_bytes: 1 << 30,
            timeout: Duration::from_secs(600),
            overwrite: false,
            progress: None,
        }
    }
}

/// How far a directory transfer has come.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeProgress {
    /// Bytes of tar stream sent or received so far.
    pub bytes: u64,
    /// Regular files packed (a put) or unpacked (a get) so far.
    pub files: u64,
}

/// What a finished directory transfer moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeTransfer {
    /// Regular files, directories (the root not counted), symlinks and
    /// bytes of file content: for a put, as the agent reports them in
    /// TREE_DONE; for a get, as the host unpacked them.
    pub done: TreeDone,
    /// Bytes of tar stream.
    pub stream_bytes: u64,
    /// CRC-32/IEEE of the stream (verified against the other side's).
    pub crc32: u32,
}

fn tree_error(err: TreeError) -> ClientError {
    ClientError::Tree(err)
}

fn worker_failed(err: tokio::task::JoinError) -> ClientError {
    ClientError::Tree(TreeError::Stream(std::io::Error::other(err)))
}

fn report(progress: Option<&watch::Sender<TreeProgress>>, bytes: u64, tally: &Tally) {
    if let Some(progress) = progress {
        progress.send_replace(TreeProgress {
            bytes,
            files: tally.files.load(Ordering::Relaxed),
        });
    }
}

/// Runs `work` on `request` within `timeout`; on expiry, `cancel` tells the
/// agent to drop the request.
async fn within<T>(
    timeout: Duration,
    cancel: impl FnOnce(),
    work: impl Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    match tokio::time::timeout(timeout, work).await {
        Ok(outcome) => outcome,
        Err(_) => {
            cancel();
            Err(ClientError::Timeout {
                what: "the directory transfer",
                after: timeout,
            })
        }
    }
}

/// Ends a put the agent must not complete: a FILE_END whose CRC-32 cannot
/// match (the agent answers `checksum_mismatch`, or the error it had).
fn abort_put(conn: &Connection, id: u64, size: u64, crc: &crc32fast::Hasher) {
    let crc32 = !crc.clone().finalize();
    let _ = conn.send(id, &Message::FileEnd(FileEnd { size, crc32 }));
}

/// Ends a get early: any frame but credit ends it in the agent.
fn abort_get(conn: &Connection, id: u64) {
    let _ = conn.send(id, &Message::FileEnd(FileEnd { size: 0, crc32: 0 }));
}

/// What every step of one transfer works with.
pub(crate) struct Transfer<'a> {
    /// The session.
    pub(crate) conn: &'a Arc<Connection>,
    /// The guest directory, as the caller gave it.
    pub(crate) remote: &'a str,
    /// The caller's options.
    pub(crate) options: &'a TreeOptions,
    /// The longest wait for one frame or for credit.
    pub(crate) io_timeout: Duration,
    /// The gate, which sees the stream's size as it grows.
    pub(crate) keeper: Option<&'a Gatekeeper>,
    /// The gate's pacing of what a put sends (a lease's byte rate), as an
    /// upload from a reader is paced; what a get receives is paced where
    /// its credit goes back, as any download's.
    pub(crate) pacing: Option<&'a Pacing>,
}

/// Where a put's stream comes from.
enum Source<'r, R> {
    /// The packer thread of a local directory.
    Packer(mpsc::Receiver<Vec<u8>>),
    /// A caller's tar stream (the daemon's request body).
    Reader(&'r mut R, Vec<u8>),
}

impl<R: AsyncRead + Unpin> Source<'_, R> {
    async fn next(&mut self) -> Result<Option<Vec<u8>>, ClientError> {
        match self {
            Self::Packer(chunks) => Ok(chunks.recv().await),
            Self::Reader(reader, buf) => {
                let n = reader
                    .read(buf)
                    .await
                    .map_err(|source| ClientError::LocalIo {
                        path: "<tree source>".into(),
                        source,
                    })?;
                Ok((n > 0).then(|| buf[..n].to_vec()))
            }
        }
    }
}

/// An agent that does not announce `trees` would answer `unknown_kind`:
/// refuse before anything is sent, as for the other optional features.
fn require_trees(transfer: &Transfer<'_>) -> Result<(), ClientError> {
    if transfer
        .conn
        .session
        .capabilities
        .iter()
        .any(|c| c == capability::TREES)
    {
        Ok(())
    } else {
        Err(ClientError::Unsupported {
            capability: capability::TREES,
        })
    }
}

/// Opens a put of `transfer.remote`.
fn open_put(transfer: &Transfer<'_>) -> Result<Request, ClientError> {
    crate::files::check_remote_path(transfer.remote)?;
    require_trees(transfer)?;
    let request = transfer.conn.open(false)?;
    let put = TreePut {
        path: transfer.remote.to_owned(),
        max_bytes: transfer.options.max_bytes,
        overwrite: transfer.options.overwrite,
    };
    transfer.conn.send(request.id, &Message::TreePut(put))?;
    Ok(request)
}

/// Packs the local directory `local` and unpacks it into the guest
/// directory `transfer.remote`.
pub(crate) async fn put(
    transfer: &Transfer<'_>,
    local: &Path,
) -> Result<TreeTransfer, ClientError> {
    let root = local.to_owned();
    tokio::task::spawn_blocking(move || paddock_tree::check_root(&root, false))
        .await
        .map_err(worker_failed)?
        .map_err(tree_error)?;
    let mut request = open_put(transfer)?;
    let id = request.id;
    let conn = transfer.conn;
    let work = async {
        let (queue, chunks) = mpsc::channel::<Vec<u8>>(QUEUE);
        let tally = Arc::new(Tally::default());
        let packer = {
            let local = local.to_owned();
            let tally = Arc::clone(&tally);
            let writer = ChunkWriter::new(queue, conn.chunk);
            let max_bytes = transfer.options.max_bytes;
            tokio::task::spawn_blocking(move || {
                paddock_tree::pack(&local, writer, max_bytes, &tally)
            })
        };
        let mut source = Source::<tokio::io::Empty>::Packer(chunks);
        let (size, crc) = send_stream(transfer, &mut request, &mut source, &tally).await?;
        if let Err(err) = packer.await.map_err(worker_failed)? {
            abort_put(conn, id, size, &crc);
            return Err(tree_error(err));
        }
        finish_put(transfer, &mut request, size, crc, &tally).await
    };
    let cancel = || abort_put(conn, id, u64::MAX, &crc32fast::Hasher::new());
    within(transfer.options.timeout, cancel, work).await
}

/// Sends the tar stream `reader` yields into the guest directory
/// `transfer.remote`; the agent judges its entries.
pub(crate) async fn put_reader<R: AsyncRead + Unpin>(
    transfer: &Transfer<'_>,
    reader: &mut R,
) -> Result<TreeTransfer, ClientError> {
    let mut request = open_put(transfer)?;
    let id = request.id;
    let conn = transfer.conn;
    let work = async {
        let tally = Tally::default();
        let mut source = Source::Reader(reader, vec![0u8; conn.chunk]);
        let (size, crc) = send_stream(transfer, &mut request, &mut source, &tally).await?;
        finish_put(transfer, &mut request, size, crc, &tally).await
    };
    let cancel = || abort_put(conn, id, u64::MAX, &crc32fast::Hasher::new());
    within(transfer.options.timeout, cancel, work).await
}

/// Sends what `source` yields as FILE_DATA within the agent's window;
/// returns its size and CRC-32. On a failure the put is aborted.
async fn send_stream<R: AsyncRead + Unpin>(
    transfer: &Transfer<'_>,
    request: &mut Request,
    source: &mut Source<'_, R>,
    tally: &Tally,
) -> Result<(u64, crc32fast::Hasher), ClientError> {
    let conn = transfer.conn;
    let max_bytes = transfer.options.max_bytes;
    let mut crc = crc32fast::Hasher::new();
    let mut size = 0u64;
    loop {
        let chunk = match source.next().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return Ok((size, crc)),
            Err(err) => {
                abort_put(conn, request.id, size, &crc);
                return Err(err);
            }
        };
        let n = chunk.len() as u64;
        if size + n > max_bytes {
            abort_put(conn, request.id, size, &crc);
            return Err(tree_error(TreeError::TooLarge { max_bytes }));
        }
        if let Some(keeper) = transfer.keeper {
            let admitted = keeper.admit(&mut GateRequest::PutTree {
                path: transfer.remote,
                size: Size::AtLeast(size + n),
            });
            if let Err(err) = admitted {
                abort_put(conn, request.id, size, &crc);
                return Err(err);
            }
        }
        if let Some(pacing) = transfer.pacing {
            while let Some(hold) = pacing.hold(crate::Flow::Sent, n) {
                tokio::time::sleep(hold).await;
            }
        }
        crc.update(&chunk);
        size += n;
        let mut data = chunk.as_slice();
        while !data.is_empty() {
            let granted = match request.send.acquire(data.len(), transfer.io_timeout).await {
                Ok(granted) => granted,
                // The agent ended the request early: report its reason.
                Err(ClientError::ConnectionLost { .. }) if !conn.is_closed() => {
                    return Err(final_error(request, transfer.io_timeout).await);
                }
                Err(err) => return Err(err),
            };
            let (now, rest) = data.split_at(granted);
            conn.send_data(request.id, MessageKind::FileData, now)?;
            data = rest;
        }
        report(transfer.options.progress.as_ref(), size, tally);
    }
}

/// Ends a put's stream with FILE_END and waits for TREE_DONE.
async fn finish_put(
    transfer: &Transfer<'_>,
    request: &mut Request,
    size: u64,
    crc: crc32fast::Hasher,
    tally: &Tally,
) -> Result<TreeTransfer, ClientError> {
    let crc32 = crc.finalize();
    transfer
        .conn
        .send(request.id, &Message::FileEnd(FileEnd { size, crc32 }))?;
    report(transfer.options.progress.as_ref(), size, tally);
    match next_event(request, transfer.io_timeout, "TREE_DONE").await? {
        Message::TreeDone(done) => Ok(TreeTransfer {
            done,
            stream_bytes: size,
            crc32,
        }),
        other => Err(unexpected(other)),
    }
}

/// Where a get's stream goes.
enum Sink<'w, W> {
    /// The unpacker thread of a local directory.
    Unpacker(mpsc::Sender<Vec<u8>>),
    /// A caller's writer (the daemon's answer), which gets the bytes as
    /// they are: whoever unpacks them must judge them.
    Writer(&'w mut W),
}

/// Opens a get of `transfer.remote`.
fn open_get(transfer: &Transfer<'_>) -> Result<Request, ClientError> {
    crate::files::check_remote_path(transfer.remote)?;
    require_trees(transfer)?;
    let request = transfer.conn.open(false)?;
    transfer.conn.accept_data(&request);
    let get = TreeGet {
        path: transfer.remote.to_owned(),
        max_bytes: transfer.options.max_bytes,
    };
    transfer.conn.send(request.id, &Message::TreeGet(get))?;
    Ok(request)
}

/// Runs a get's `work` within its timeout; a get that ends here, not by
/// the agent, is ended in the agent too.
async fn run_get<T>(
    transfer: &Transfer<'_>,
    (id, ended): (u64, Arc<SendCredit>),
    work: impl Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    let outcome = within(transfer.options.timeout, || {}, work).await;
    // The request's credit is closed once the agent's last frame arrived.
    if outcome.is_err() && !ended.is_closed() {
        abort_get(transfer.conn, id);
    }
    outcome
}

/// Packs the guest directory `transfer.remote` and unpacks it into the
/// local directory `local` (made if missing), as strictly as the agent
/// unpacks a put.
pub(crate) async fn get(
    transfer: &Transfer<'_>,
    local: &Path,
) -> Result<TreeTransfer, ClientError> {
    // Before the local directory is made: a refused get leaves nothing.
    require_trees(transfer)?;
    let root = local.to_owned();
    tokio::task::spawn_blocking(move || paddock_tree::check_root(&root, true))
        .await
        .map_err(worker_failed)?
        .map_err(tree_error)?;
    let mut request = open_get(transfer)?;
    let ended = (request.id, Arc::clone(&request.send));
    let work = async {
        let (queue, chunks) = mpsc::channel::<Vec<u8>>(QUEUE);
        let tally = Arc::new(Tally::default());
        let unpacker = {
            let local = local.to_owned();
            let tally = Arc::clone(&tally);
            let overwrite = transfer.options.overwrite;
            tokio::task::spawn_blocking(move || {
                paddock_tree::unpack(ChunkReader::new(chunks), &local, overwrite, &tally)
            })
        };
        let mut sink = Sink::<tokio::io::Sink>::Unpacker(queue);
        let received = receive_stream(transfer, &mut request, &mut sink, &tally).await;
        drop(sink);
        let unpacked = unpacker.await.map_err(worker_failed)?;
        let Some((size, crc32)) = received? else {
            return Err(tree_error(unpacked.err().unwrap_or(TreeError::Malformed(
                "the stream went on after the tar ended",
            ))));
        };
        let done = unpacked.map_err(tree_error)?;
        report(transfer.options.progress.as_ref(), size, &tally);
        Ok(TreeTransfer {
            done,
            stream_bytes: size,
            crc32,
        })
    };
    run_get(transfer, ended, work).await
}

/// Receives the guest directory `transfer.remote` as a tar stream into
/// `writer`, unchecked (the caller's reader must judge its entries); the
/// returned counts are zero.
pub(crate) async fn get_writer<W: AsyncWrite + Unpin>(
    transfer: &Transfer<'_>,
    writer: &mut W,
) -> Result<TreeTransfer, ClientError> {
    let mut request = open_get(transfer)?;
    let ended = (request.id, Arc::clone(&request.send));
    let work = async {
        let tally = Tally::default();
        let mut sink = Sink::Writer(writer);
        let received = receive_stream(transfer, &mut request, &mut sink, &tally).await?;
        let Some((size, crc32)) = received else {
            return Err(ClientError::Unexpected {
                kind: MessageKind::FileData,
            });
        };
        Ok(TreeTransfer {
            done: TreeDone::default(),
            stream_bytes: size,
            crc32,
        })
    };
    run_get(transfer, ended, work).await
}

/// Feeds the agent's FILE_DATA to `sink` until FILE_END, checked against
/// `max_bytes` and the gate as it arrives; returns the stream's size and
/// CRC-32 once FILE_END matched them, or `None` if the unpacker stopped
/// taking data (its own error says why).
async fn receive_stream<W: AsyncWrite + Unpin>(
    transfer: &Transfer<'_>,
    request: &mut Request,
    sink: &mut Sink<'_, W>,
    tally: &Tally,
) -> Result<Option<(u64, u32)>, ClientError> {
    let max_bytes = transfer.options.max_bytes;
    let mut crc = crc32fast::Hasher::new();
    let mut size = 0u64;
    let end = loop {
        match next_event(request, transfer.io_timeout, "tree data").await? {
            Message::FileData(data) => {
                let len = data.len();
                size += len as u64;
                if size > max_bytes {
                    request.recv.consumed(len);
                    return Err(tree_error(TreeError::TooLarge { max_bytes }));
                }
                if let Some(keeper) = transfer.keeper {
                    let admitted = keeper.admit(&mut GateRequest::GetTree {
                        path: transfer.remote,
                        size: Size::AtLeast(size),
                    });
                    if let Err(err) = admitted {
                        request.recv.consumed(len);
                        return Err(err);
                    }
                }
                crc.update(&data);
                let delivered = match sink {
                    Sink::Unpacker(queue) => queue.send(data).await.is_ok(),
                    Sink::Writer(writer) => {
                        let written = writer.write_all(&data).await;
                        request.recv.consumed(len);
                        written.map_err(|source| ClientError::LocalIo {
                            path: "<tree sink>".into(),
                            source,
                        })?;
                        true
                    }
                };
                if matches!(sink, Sink::Unpacker(_)) {
                    request.recv.consumed(len);
                }
                if !delivered {
                    return Ok(None);
                }
                report(transfer.options.progress.as_ref(), size, tally);
            }
            Message::FileEnd(end) => break end,
            other => return Err(unexpected(other)),
        }
    };
    if let Sink::Writer(writer) = sink {
        writer
            .flush()
            .await
            .map_err(|source| ClientError::LocalIo {
                path: "<tree sink>".into(),
                source,
            })?;
    }
    let crc32 = crc.finalize();
    if (end.size, end.crc32) != (size, crc32) {
        return Err(ClientError::ChecksumMismatch {
            expected_size: end.size,
            expected_crc: end.crc32,
            size,
            crc: crc32,
        });
    }
    Ok(Some((size, crc32)))
}
