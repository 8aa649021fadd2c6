//! The HELLO handshake that opens a session, and what sets each session
//! apart: its token and its first request id.

use std::ops::RangeInclusive;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use paddock_proto::{
    ErrorCode, FRAME_READ_CHUNK, FrameDecoder, Hello, HelloAck, MIN_PROTOCOL_VERSION, Message,
    PROTOCOL_VERSION, decode_message, encode_message, is_supported_version,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};

use crate::error::ClientError;
use crate::transport::Stream;

/// Settings a connection needs from the client configuration.
#[derive(Debug, Clone)]
pub(crate) struct SessionParams {
    pub client_name: String,
    pub max_payload: u32,
    pub window: u32,
    pub handshake_timeout: Duration,
    /// Sent in HELLO (and in every resent HELLO of this connection).
    pub session_token: String,
    /// Where the session reports protocol errors.
    pub events: paddock_events::Emitter,
    /// The gate that paces received bytes, if any.
    pub gate: Option<Arc<dyn crate::RequestGate>>,
}

/// How long to wait for HELLO_ACK before sending HELLO again.
const HELLO_RESEND: Duration = Duration::from_secs(1);

/// What a completed handshake settled.
#[derive(Debug)]
pub(super) struct Handshake {
    /// The agent's answer.
    pub(super) session: HelloAck,
    /// The first request id past every HELLO sent, free for requests.
    pub(super) next_id: u64,
}

/// Sends HELLO on a new stream until the agent answers HELLO_ACK, within
/// [`SessionParams::handshake_timeout`], and checks the version it chose.
pub(super) async fn handshake(
    reader: &mut ReadHalf<Stream>,
    writer: &mut WriteHalf<Stream>,
    decoder: &mut FrameDecoder,
    params: &SessionParams,
) -> Result<Handshake, ClientError> {
    // Request ids start at a random offset so that stale frames of an
    // earlier session on a virtio-serial stream cannot match new requests.
    let first_id = random_id_base();
    let mut hello = Hello {
        min_version: MIN_PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        client: params.client_name.clone(),
        max_payload: params.max_payload,
        initial_window: params.window,
        session_token: params.session_token.clone(),
        host_time_unix_ms: 0,
    };
    // HELLO is sent again every HELLO_RESEND until answered: on a
    // virtio-serial port a HELLO written while the guest's agent was not
    // reading (still booting, or restarting) can be lost. The stream is
    // ordered, so every HELLO reaches the agent before any request that
    // follows; answers to the extra ones find no open request.
    let mut hello_id = first_id;
    let handshake = async {
        loop {
            let mut bytes = Vec::new();
            // The time is taken per send: a restored guest's agent sets
            // its clock from it.
            hello.host_time_unix_ms = paddock_proto::unix_time_ms();
            let message = Message::Hello(hello.clone());
            encode_message(&mut bytes, hello_id, &message).map_err(|e| {
                ClientError::InvalidRequest(format!("HELLO could not be encoded: {e}"))
            })?;
            writer
                .write_all(&bytes)
                .await
                .map_err(|e| ClientError::lost(Some(e)))?;
            let answer = await_hello_ack(reader, decoder, first_id..=hello_id);
            if let Ok(result) = tokio::time::timeout(HELLO_RESEND, answer).await {
                break result;
            }
            hello_id += 1;
        }
    };
    let session = tokio::time::timeout(params.handshake_timeout, handshake)
        .await
        .map_err(|_| ClientError::Timeout {
            what: "the agent's HELLO_ACK",
            after: params.handshake_timeout,
        })??;
    if !is_supported_version(session.version) {
        return Err(ClientError::UnsupportedVersion {
            message: format!("agent chose version {}", session.version),
        });
    }
    Ok(Handshake {
        session,
        next_id: hello_id + 1,
    })
}

/// Reads frames until HELLO_ACK. Anything before it (stale output of an
/// earlier session on a virtio-serial stream, garbage) is skipped.
async fn await_hello_ack(
    reader: &mut ReadHalf<Stream>,
    decoder: &mut FrameDecoder,
    hello_ids: RangeInclusive<u64>,
) -> Result<HelloAck, ClientError> {
    loop {
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    let id = frame.request_id;
                    match decode_message(frame) {
                        Ok(Message::HelloAck(ack)) => return Ok(ack),
                        Ok(Message::Error(report))
                            if answers_hello(report.code, id, &hello_ids) =>
                        {
                            return Err(match report.code {
                                ErrorCode::UnsupportedVersion => ClientError::UnsupportedVersion {
                                    message: report.message,
                                },
                                code => ClientError::Agent {
                                    code,
                                    message: report.message,
                                },
                            });
                        }
                        Ok(other) => {
                            tracing::debug!(kind = ?other.kind(), id, "skipping frame before HELLO_ACK");
                        }
                        Err(err) => tracing::debug!(%err, "skipping bad frame before HELLO_ACK"),
                    }
                }
                Ok(None) => break,
                Err(err) => tracing::debug!(%err, "skipping garbage before HELLO_ACK"),
            }
        }
        match reader.read(decoder.spare(FRAME_READ_CHUNK)).await {
            Ok(0) => return Err(ClientError::lost(None)),
            Ok(n) => decoder.commit(n),
            Err(err) => return Err(ClientError::lost(Some(err))),
        }
    }
}

/// Whether an ERROR is the agent's answer to one of this connection's
/// HELLOs (a version or argument it refuses), or its refusal of the whole
/// connection (`too_many_connections`, on id 0). Any other ERROR before
/// HELLO_ACK is not about this handshake: a virtio-serial stream carries
/// across sessions and guest restores, so an agent may still be answering
/// frames of an earlier host (`not_negotiated` for a request that reached
/// it after its session ended, `bad_frame` for a frame cut short). It is
/// skipped like any stale frame, and the HELLO resend goes on.
fn answers_hello(code: ErrorCode, id: u64, hello_ids: &RangeInclusive<u64>) -> bool {
    match code {
        ErrorCode::UnsupportedVersion | ErrorCode::InvalidArgument => hello_ids.contains(&id),
        ErrorCode::TooManyConnections => id == 0,
        _ => false,
    }
}

/// A token for HELLO that no other connection of this process (nor, very
/// likely, of any other) uses.
pub(crate) fn new_session_token() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{:012x}-{:x}-{:x}",
        random_id_base(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A per-connection random starting request id (48 bits of entropy from the
/// std hasher's per-process random keys and the clock; ids stay below 2^63).
fn random_id_base() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (hasher.finish() >> 16).max(1)
}
