//! Frame header layout and encoding.
//!
//! The layout table lives in the crate documentation. This module knows bytes,
//! lengths and checksums; it does not look inside payloads. Decoding a stream
//! of frames is [`FrameDecoder`]'s job (the `decoder` submodule).

use crate::message::MessageKind;
use crate::{PROTOCOL_VERSION, is_supported_version};

mod decoder;

pub use decoder::{FrameDecoder, decode_frame};

/// The four bytes that open every frame: `b"PDCK"`.
pub const MAGIC: [u8; 4] = *b"PDCK";

/// Size of the fixed frame header in bytes.
pub const HEADER_LEN: usize = 28;

/// Default largest payload a decoder accepts (1 MiB).
pub const DEFAULT_MAX_PAYLOAD: u32 = 1024 * 1024;

/// Bytes a reader asks its stream for at a time (several data frames).
pub const FRAME_READ_CHUNK: usize = 256 * 1024;

/// Offset of the CRC field; the CRC covers the header bytes before it.
const CRC_OFFSET: usize = 24;

/// Why a byte stream could not be decoded into a frame.
///
/// Every variant except [`FrameError::UnknownKind`] means the decoder lost its
/// place in the stream and skipped ahead to the next magic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The bytes at the frame position are not the magic.
    #[error("Bad frame magic; skipped {skipped} bytes")]
    BadMagic {
        /// Bytes discarded before the next magic (or the end of the buffer).
        skipped: usize,
    },
    /// The frame is written in a protocol version this side does not read.
    #[error("Unsupported protocol version {version}")]
    UnsupportedVersion {
        /// The version found in the header.
        version: u16,
    },
    /// The declared payload is larger than this side accepts.
    #[error("Frame payload of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Declared payload length.
        len: u32,
        /// Configured maximum.
        max: u32,
    },
    /// The checksum does not match the header and payload.
    #[error("Frame CRC mismatch: header says {expected:#010x}, computed {actual:#010x}")]
    CrcMismatch {
        /// CRC carried in the header.
        expected: u32,
        /// CRC computed over the received bytes.
        actual: u32,
    },
    /// A well-formed frame of a kind this side does not know.
    #[error("Unknown message kind {kind}")]
    UnknownKind {
        /// The raw kind value.
        kind: u16,
        /// The request the frame belongs to, so the receiver can answer it.
        request_id: u64,
    },
    /// A buffer ended inside a frame (one-shot decoding only).
    #[error("Truncated frame: need {needed} more bytes")]
    Truncated {
        /// How many more bytes the frame needs.
        needed: usize,
    },
}

impl FrameError {
    /// Whether the stream position was lost, as opposed to one frame being
    /// rejected with the stream still in sync.
    #[must_use]
    pub fn lost_sync(&self) -> bool {
        !matches!(self, Self::UnknownKind { .. } | Self::Truncated { .. })
    }
}

/// The decoded fixed header of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Protocol version the frame is written in.
    pub version: u16,
    /// Raw message kind.
    pub kind: u16,
    /// Flag bits (none defined in version 1).
    pub flags: u16,
    /// Request the frame belongs to; 0 is the connection itself.
    pub request_id: u64,
    /// Payload length in bytes.
    pub payload_len: u32,
    /// CRC-32 of header bytes 0..24 and the payload.
    pub crc32: u32,
}

impl FrameHeader {
    /// Parses the header fields from the first [`HEADER_LEN`] bytes of `bytes`.
    /// Only the layout is read here; [`FrameHeader::validate`] checks it.
    #[must_use]
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> (Self, [u8; 4]) {
        let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
        let u32_at = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let mut id = [0u8; 8];
        id.copy_from_slice(&bytes[12..20]);
        let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
        let header = Self {
            version: u16_at(4),
            kind: u16_at(6),
            flags: u16_at(8),
            request_id: u64::from_le_bytes(id),
            payload_len: u32_at(20),
            crc32: u32_at(CRC_OFFSET),
        };
        (header, magic)
    }

    /// Syntax checks that need no payload: version and length limit.
    ///
    /// # Errors
    /// [`FrameError::UnsupportedVersion`] or [`FrameError::TooLarge`].
    pub fn validate(&self, max_payload: u32) -> Result<(), FrameError> {
        if !is_supported_version(self.version) {
            return Err(FrameError::UnsupportedVersion {
                version: self.version,
            });
        }
        if self.payload_len > max_payload {
            return Err(FrameError::TooLarge {
                len: self.payload_len,
                max: max_payload,
            });
        }
        Ok(())
    }
}

/// One decoded, checksum-verified frame of a known kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Protocol version the frame was written in.
    pub version: u16,
    /// Message kind.
    pub kind: MessageKind,
    /// Flag bits (none defined in version 1).
    pub flags: u16,
    /// Request the frame belongs to; 0 is the connection itself.
    pub request_id: u64,
    /// The payload: JSON for control messages, raw bytes for data.
    pub payload: Vec<u8>,
}

/// Writes a frame header for `payload` into `out[..HEADER_LEN]`.
///
/// `out` must be exactly [`HEADER_LEN`] bytes. The CRC is computed over the
/// header and `payload`, so the header can be written after the payload was
/// serialised in place (as [`crate::encode_message`] does).
pub fn encode_frame_header(
    out: &mut [u8; HEADER_LEN],
    kind: MessageKind,
    request_id: u64,
    payload: &[u8],
) -> Result<(), crate::EncodeError> {
    let len = u32::try_from(payload.len())
        .map_err(|_| crate::EncodeError::TooLarge { len: payload.len() })?;
    out[0..4].copy_from_slice(&MAGIC);
    out[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    out[6..8].copy_from_slice(&(kind as u16).to_le_bytes());
    out[8..10].copy_from_slice(&0u16.to_le_bytes());
    out[10..12].copy_from_slice(&0u16.to_le_bytes());
    out[12..20].copy_from_slice(&request_id.to_le_bytes());
    out[20..24].copy_from_slice(&len.to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out[..CRC_OFFSET]);
    crc.update(payload);
    out[CRC_OFFSET..HEADER_LEN].copy_from_slice(&crc.finalize().to_le_bytes());
    Ok(())
}

/// Writes a frame header into `out[..HEADER_LEN]` for a payload of
/// `payload_len` bytes whose CRC-32 is `payload_crc32`, without reading the
/// payload: the frame's CRC is the header's combined with the payload's. A
/// sender that checksums what it sends anyway (a file's CRC-32 for
/// FILE_END) so reads each byte once instead of twice, which counts in a
/// guest without hardware CRC (TCG).
///
/// # Errors
/// [`crate::EncodeError::TooLarge`] if the length does not fit the length field.
pub fn encode_frame_header_with_crc(
    out: &mut [u8; HEADER_LEN],
    kind: MessageKind,
    request_id: u64,
    payload_len: usize,
    payload_crc32: u32,
) -> Result<(), crate::EncodeError> {
    let len = u32::try_from(payload_len)
        .map_err(|_| crate::EncodeError::TooLarge { len: payload_len })?;
    out[0..4].copy_from_slice(&MAGIC);
    out[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    out[6..8].copy_from_slice(&(kind as u16).to_le_bytes());
    out[8..10].copy_from_slice(&0u16.to_le_bytes());
    out[10..12].copy_from_slice(&0u16.to_le_bytes());
    out[12..20].copy_from_slice(&request_id.to_le_bytes());
    out[20..24].copy_from_slice(&len.to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out[..CRC_OFFSET]);
    crc.combine(&crc32fast::Hasher::new_with_initial_len(
        payload_crc32,
        u64::from(len),
    ));
    out[CRC_OFFSET..HEADER_LEN].copy_from_slice(&crc.finalize().to_le_bytes());
    Ok(())
}

/// Appends one complete frame (header and `payload`) to `out`.
///
/// # Errors
/// [`crate::EncodeError::TooLarge`] if the payload does not fit the length field.
pub fn encode_frame(
    out: &mut Vec<u8>,
    kind: MessageKind,
    request_id: u64,
    payload: &[u8],
) -> Result<(), crate::EncodeError> {
    let mut header = [0u8; HEADER_LEN];
    encode_frame_header(&mut header, kind, request_id, payload)?;
    out.reserve(HEADER_LEN + payload.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One encoded frame, for the tests of this module and of the decoder.
    pub(super) fn frame_bytes(kind: MessageKind, id: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(&mut out, kind, id, payload).expect("encode");
        out
    }

    #[test]
    fn round_trip_single_frame() {
        let bytes = frame_bytes(MessageKind::Stdout, 7, b"hello");
        assert_eq!(bytes.len(), HEADER_LEN + 5);
        assert_eq!(&bytes[..4], b"PDCK");
        let (frame, used) = decode_frame(&bytes, DEFAULT_MAX_PAYLOAD).expect("decode");
        assert_eq!(used, bytes.len());
        assert_eq!(frame.kind, MessageKind::Stdout);
        assert_eq!(frame.request_id, 7);
        assert_eq!(frame.payload, b"hello");
    }

    #[test]
    fn header_layout_is_little_endian_at_documented_offsets() {
        let bytes = frame_bytes(MessageKind::Ping, 0x0102_0304_0506_0708, b"");
        assert_eq!(&bytes[4..6], &PROTOCOL_VERSION.to_le_bytes());
        assert_eq!(&bytes[6..8], &(MessageKind::Ping as u16).to_le_bytes());
        assert_eq!(&bytes[12..20], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&bytes[20..24], &[0, 0, 0, 0]);
        let crc = crc32fast::hash(&bytes[..24]);
        assert_eq!(&bytes[24..28], &crc.to_le_bytes());
    }

    #[test]
    fn a_header_from_the_payloads_crc_equals_one_from_the_payload() {
        for len in [0usize, 1, 3, 28, 4096, 65_536, 100_003] {
            let payload: Vec<u8> = (0..len)
                .map(|i| (i * 31 + i / 7).to_le_bytes()[0])
                .collect();
            let mut direct = [0u8; HEADER_LEN];
            encode_frame_header(&mut direct, MessageKind::FileData, 9, &payload).expect("encode");
            let mut combined = [0u8; HEADER_LEN];
            encode_frame_header_with_crc(
                &mut combined,
                MessageKind::FileData,
                9,
                payload.len(),
                crc32fast::hash(&payload),
            )
            .expect("encode");
            assert_eq!(direct, combined, "payload of {len} bytes");
        }
        let mut wrong = [0u8; HEADER_LEN];
        encode_frame_header_with_crc(&mut wrong, MessageKind::FileData, 9, 5, 0x1234)
            .expect("encode");
        let mut bytes = wrong.to_vec();
        bytes.extend_from_slice(b"hello");
        assert!(matches!(
            decode_frame(&bytes, DEFAULT_MAX_PAYLOAD),
            Err(FrameError::CrcMismatch { .. })
        ));
    }

    #[test]
    fn unsupported_version_is_rejected() {
        let mut bytes = frame_bytes(MessageKind::Ping, 1, b"");
        bytes[4..6].copy_from_slice(&77u16.to_le_bytes());
        assert_eq!(
            decode_frame(&bytes, DEFAULT_MAX_PAYLOAD).map(|(f, _)| f),
            Err(FrameError::UnsupportedVersion { version: 77 })
        );
    }
}
