//! File transfers: FILE_PUT and FILE_GET, streamed in flow-controlled chunks
//! and verified end to end with CRC-32.

use std::path::{Path, PathBuf};
use std::time::Duration;

use paddock_proto::{FileDone, FileEnd, FileGet, FilePut, Message, MessageKind};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::connection::{Connection, Event, Pacing, Request};
use crate::error::ClientError;
use crate::gate::{GateRequest, Gatekeeper, Size};

/// What a finished download received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Download {
    /// Bytes received.
    pub size: u64,
    /// CRC-32/IEEE of the bytes received (verified against the agent's).
    pub crc32: u32,
    /// Permission bits of the file in the guest.
    pub mode: u32,
}

/// Sends everything `reader` yields as the file `remote` in the guest.
pub(crate) async fn put<R: AsyncRead + Unpin>(
    conn: &std::sync::Arc<Connection>,
    reader: &mut R,
    remote: &str,
    mode: u32,
    io_timeout: Duration,
    pacing: Option<&Pacing>,
) -> Result<FileDone, ClientError> {
    check_remote_path(remote)?;
    let mut request = conn.open(false)?;
    let put = FilePut {
        path: remote.to_owned(),
        mode,
        create_parents: true,
    };
    conn.send(request.id, &Message::FilePut(put))?;
    let mut buf = vec![0u8; conn.chunk];
    let mut crc = crc32fast::Hasher::new();
    let mut size = 0u64;
    // The size of an upload from a reader is learnt as it is read: the gate
    // sees each new total before its chunk is sent.
    let keeper = pacing.map(|pacing| Gatekeeper {
        gate: std::sync::Arc::clone(&pacing.gate),
        events: pacing.events.clone(),
    });
    loop {
        let read = reader.read(&mut buf).await;
        let n = match read {
            Ok(n) => n,
            Err(source) => {
                abort_put(conn, request.id, size, &crc);
                return Err(ClientError::LocalIo {
                    path: PathBuf::from("<upload source>"),
                    source,
                });
            }
        };
        if n == 0 {
            break;
        }
        if let Some(keeper) = &keeper {
            let admitted = keeper.admit(&mut GateRequest::Put {
                path: remote,
                size: Size::AtLeast(size + n as u64),
            });
            if let Err(err) = admitted {
                abort_put(conn, request.id, size, &crc);
                return Err(err);
            }
        }
        if let Some(pacing) = pacing {
            while let Some(hold) = pacing.hold(crate::Flow::Sent, n as u64) {
                tokio::time::sleep(hold).await;
            }
        }
        crc.update(&buf[..n]);
        size += n as u64;
        let mut data = &buf[..n];
        while !data.is_empty() {
            let granted = match request.send.acquire(data.len(), io_timeout).await {
                Ok(granted) => granted,
                // The agent ended the request early: report its reason.
                Err(ClientError::ConnectionLost { .. }) if !conn.is_closed() => {
                    return Err(final_error(&mut request, io_timeout).await);
                }
                Err(err) => return Err(err),
            };
            let (now, rest) = data.split_at(granted);
            conn.send_data(request.id, MessageKind::FileData, now)?;
            data = rest;
        }
    }
    let crc32 = crc.finalize();
    conn.send(request.id, &Message::FileEnd(FileEnd { size, crc32 }))?;
    match next_event(&mut request, io_timeout, "FILE_DONE").await? {
        Message::FileDone(done) if done.size == size && done.crc32 == crc32 => Ok(done),
        Message::FileDone(done) => Err(ClientError::ChecksumMismatch {
            expected_size: size,
            expected_crc: crc32,
            size: done.size,
            crc: done.crc32,
        }),
        other => Err(unexpected(other)),
    }
}

/// Ends an upload that will not be completed so that the agent keeps
/// nothing of it: a FILE_END whose CRC-32 cannot match what arrived (the
/// agent discards an upload whose size or CRC-32 does not match). Its
/// answer, an ERROR, goes nowhere: the request is dropped.
fn abort_put(conn: &Connection, id: u64, size: u64, crc: &crc32fast::Hasher) {
    let crc32 = !crc.clone().finalize();
    let _ = conn.send(id, &Message::FileEnd(FileEnd { size, crc32 }));
}

/// Receives the guest file `remote` into `writer`. With a gate, the size
/// the agent announces, and then the bytes as they arrive, are checked
/// against it (a policy's `get.max_bytes`).
pub(crate) async fn get<W: AsyncWrite + Unpin>(
    conn: &std::sync::Arc<Connection>,
    remote: &str,
    writer: &mut W,
    io_timeout: Duration,
    keeper: Option<&Gatekeeper>,
) -> Result<Download, ClientError> {
    check_remote_path(remote)?;
    let mut request = conn.open(false)?;
    conn.send(
        request.id,
        &Message::FileGet(FileGet {
            path: remote.to_owned(),
        }),
    )?;
    let info = match next_event(&mut request, io_timeout, "FILE_INFO").await? {
        Message::FileInfo(info) => info,
        other => return Err(unexpected(other)),
    };
    let admit = |size| {
        keeper.map_or(Ok(()), |keeper| {
            keeper.admit(&mut GateRequest::Get { path: remote, size })
        })
    };
    admit(Size::Known(info.size))?;
    let mut crc = crc32fast::Hasher::new();
    let mut size = 0u64;
    loop {
        match next_event(&mut request, io_timeout, "file data").await? {
            Message::FileData(data) => {
                // A guest may send more than it announced (the file grew,
                // or it lies): the gate sees the running total too.
                if size + data.len() as u64 > info.size {
                    if let Err(err) = admit(Size::AtLeast(size + data.len() as u64)) {
                        request.recv.consumed(data.len());
                        return Err(err);
                    }
                }
                let written = writer.write_all(&data).await;
                request.recv.consumed(data.len());
                written.map_err(|source| ClientError::LocalIo {
                    path: PathBuf::from("<download sink>"),
                    source,
                })?;
                crc.update(&data);
                size += data.len() as u64;
            }
            Message::FileEnd(end) => {
                let crc32 = crc.finalize();
                if end.size != size || end.crc32 != crc32 {
                    return Err(ClientError::ChecksumMismatch {
                        expected_size: end.size,
                        expected_crc: end.crc32,
                        size,
                        crc: crc32,
                    });
                }
                writer
                    .flush()
                    .await
                    .map_err(|source| ClientError::LocalIo {
                        path: PathBuf::from("<download sink>"),
                        source,
                    })?;
                return Ok(Download {
                    size,
                    crc32,
                    mode: info.mode,
                });
            }
            other => return Err(unexpected(other)),
        }
    }
}

/// Downloads `remote` to the local `path`: written to a temporary file beside
/// it and renamed into place only once the checksum matched, so a failed
/// download never leaves a partial file under the final name. The file gets
/// the guest's permission bits, never set-ID or sticky ones.
pub(crate) async fn get_to_path(
    conn: &std::sync::Arc<Connection>,
    remote: &str,
    path: &Path,
    io_timeout: Duration,
    keeper: Option<&Gatekeeper>,
) -> Result<Download, ClientError> {
    let local_err = |source| ClientError::LocalIo {
        path: path.to_owned(),
        source,
    };
    let name = path
        .file_name()
        .ok_or_else(|| ClientError::InvalidRequest(format!("{} names no file", path.display())))?;
    let mut partial_name = std::ffi::OsString::from(".");
    partial_name.push(name);
    partial_name.push(format!(".partial-{}", std::process::id()));
    let partial = path.with_file_name(partial_name);
    let file = tokio::fs::File::create(&partial).await.map_err(local_err)?;
    let mut sink = tokio::io::BufWriter::with_capacity(256 * 1024, file);
    let outcome = get(conn, remote, &mut sink, io_timeout, keeper).await;
    let finish = async {
        let download = outcome?;
        sink.flush().await.map_err(local_err)?;
        drop(sink);
        let permissions = std::fs::Permissions::from_mode(local_mode(download.mode));
        tokio::fs::set_permissions(&partial, permissions)
            .await
            .map_err(local_err)?;
        tokio::fs::rename(&partial, path).await.map_err(local_err)?;
        Ok(download)
    };
    let result = finish.await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&partial).await;
    }
    result
}

use std::os::unix::fs::PermissionsExt as _;

/// The mode a downloaded file gets on the host: the guest's permission
/// bits, without set-user-ID, set-group-ID and sticky. The mode is the
/// guest's word: a host process running as root must not turn a file the
/// guest wrote into a set-user-ID program.
fn local_mode(guest_mode: u32) -> u32 {
    guest_mode & 0o777
}

pub(crate) fn check_remote_path(remote: &str) -> Result<(), ClientError> {
    if remote.starts_with('/') {
        Ok(())
    } else {
        Err(ClientError::InvalidRequest(format!(
            "guest path {remote:?} is not absolute"
        )))
    }
}

pub(crate) async fn next_event(
    request: &mut Request,
    timeout: Duration,
    what: &'static str,
) -> Result<Message, ClientError> {
    match tokio::time::timeout(timeout, request.events.recv()).await {
        Err(_) => Err(ClientError::Timeout {
            what,
            after: timeout,
        }),
        Ok(None) => Err(ClientError::lost(None)),
        Ok(Some(event)) => into_message(event),
    }
}

fn into_message(event: Event) -> Result<Message, ClientError> {
    match event? {
        Message::Error(report) => Err(ClientError::Agent {
            code: report.code,
            message: report.message,
        }),
        message => Ok(message),
    }
}

/// The error that ended a request early (the agent's ERROR frame).
pub(crate) async fn final_error(request: &mut Request, timeout: Duration) -> ClientError {
    loop {
        match next_event(request, timeout, "the agent's error").await {
            Err(err) => return err,
            // Counted when it arrived: give its credit back.
            Ok(Message::FileData(data)) => request.recv.consumed(data.len()),
            Ok(Message::FileDone(_) | Message::FileInfo(_)) => {}
            Ok(other) => return unexpected(other),
        }
    }
}

pub(crate) fn unexpected(message: Message) -> ClientError {
    ClientError::Unexpected {
        kind: message.kind(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guests_set_id_bits_never_reach_the_host() {
        assert_eq!(local_mode(0o4755), 0o755);
        assert_eq!(local_mode(0o2750), 0o750);
        assert_eq!(local_mode(0o1777), 0o777);
        assert_eq!(local_mode(0o7777), 0o777);
        assert_eq!(local_mode(0o640), 0o640);
        assert_eq!(local_mode(u32::MAX), 0o777);
    }
}
