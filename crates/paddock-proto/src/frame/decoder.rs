//! The incremental, resynchronising frame decoder, and one-shot decoding.

use super::{CRC_OFFSET, DEFAULT_MAX_PAYLOAD, Frame, FrameError, FrameHeader, HEADER_LEN, MAGIC};
use crate::message::MessageKind;

/// Once this many consumed bytes sit at the front of the buffer, they are
/// dropped so the buffer does not grow with the stream.
const COMPACT_THRESHOLD: usize = 64 * 1024;

/// An incremental frame decoder.
///
/// Feed it byte slices of any size as they arrive with [`FrameDecoder::feed`],
/// then call [`FrameDecoder::next_frame`] until it returns `Ok(None)`. It never
/// buffers more than one maximum-size frame plus what was fed since the last
/// call, and never allocates for a payload before the whole payload arrived.
///
/// After a corruption it reports one error and skips to the next magic; bytes
/// of an ongoing run of garbage are skipped silently until a frame starts.
#[derive(Debug)]
pub struct FrameDecoder {
    /// Initialised storage; bytes `start..end` are fed and not yet decoded.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max_payload: u32,
    /// Set after an error: garbage up to the next magic is not reported again.
    discarding: bool,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_PAYLOAD)
    }
}

impl FrameDecoder {
    /// A decoder that rejects payloads larger than `max_payload` bytes.
    #[must_use]
    pub fn new(max_payload: u32) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            end: 0,
            max_payload,
            discarding: false,
        }
    }

    /// The configured payload limit.
    #[must_use]
    pub fn max_payload(&self) -> u32 {
        self.max_payload
    }

    /// Bytes fed but not yet returned as frames.
    #[must_use]
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Appends bytes received from the stream.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.spare(bytes.len())[..bytes.len()].copy_from_slice(bytes);
        self.end += bytes.len();
    }

    /// Room for at least `min` more bytes at the end of the buffer, so a
    /// reader can read straight into it (saving the copy [`Self::feed`]
    /// makes); report what was written with [`Self::commit`].
    pub fn spare(&mut self, min: usize) -> &mut [u8] {
        let consumed_enough = self.start >= COMPACT_THRESHOLD || self.start == self.end;
        if self.start > 0 && (consumed_enough || self.end + min > self.buf.len()) {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end + min > self.buf.len() {
            self.buf.resize(self.end + min, 0);
        }
        &mut self.buf[self.end..]
    }

    /// Marks `len` bytes written into [`Self::spare`] as received.
    pub fn commit(&mut self, len: usize) {
        self.end = (self.end + len).min(self.buf.len());
    }

    /// Bytes of storage the decoder holds (buffered or spare).
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Gives back storage beyond `keep` bytes or what is buffered, whichever
    /// is more: a reader that goes quiet after a burst need not hold a
    /// burst's worth of memory. Buffered bytes are kept.
    pub fn shrink_to(&mut self, keep: usize) {
        let target = keep.max(self.buffered());
        if self.buf.capacity() <= target {
            return;
        }
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        self.buf.truncate(target);
        self.buf.shrink_to(target);
    }

    /// Returns the next complete frame, `Ok(None)` when more bytes are needed,
    /// or an error describing a corrupt or unknown frame. After an error the
    /// decoder has already moved on; call again to continue.
    ///
    /// # Errors
    /// Any [`FrameError`] except [`FrameError::Truncated`].
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        loop {
            let avail = &self.buf[self.start..self.end];
            if avail.len() < MAGIC.len() {
                return Ok(None);
            }
            if avail[..MAGIC.len()] != MAGIC {
                let skipped = self.skip_to_magic(1);
                if self.discarding {
                    continue;
                }
                self.discarding = true;
                return Err(FrameError::BadMagic { skipped });
            }
            self.discarding = false;
            let Some(head) = avail.get(..HEADER_LEN) else {
                return Ok(None);
            };
            let mut head_bytes = [0u8; HEADER_LEN];
            head_bytes.copy_from_slice(head);
            let (header, _) = FrameHeader::parse(&head_bytes);
            if let Err(err) = header.validate(self.max_payload) {
                self.lose_sync();
                return Err(err);
            }
            // Lossless: payload_len <= max_payload, a u32, on a 64-bit or 32-bit target.
            let total = HEADER_LEN + header.payload_len as usize;
            if avail.len() < total {
                return Ok(None);
            }
            let payload = &avail[HEADER_LEN..total];
            let mut crc = crc32fast::Hasher::new();
            crc.update(&head_bytes[..CRC_OFFSET]);
            crc.update(payload);
            let actual = crc.finalize();
            if actual != header.crc32 {
                self.lose_sync();
                return Err(FrameError::CrcMismatch {
                    expected: header.crc32,
                    actual,
                });
            }
            let payload = payload.to_vec();
            self.start += total;
            let kind = MessageKind::try_from(header.kind).map_err(|_| FrameError::UnknownKind {
                kind: header.kind,
                request_id: header.request_id,
            })?;
            return Ok(Some(Frame {
                version: header.version,
                kind,
                flags: header.flags,
                request_id: header.request_id,
                payload,
            }));
        }
    }

    /// Steps past the current (bad) frame start and silently skips to the next
    /// magic, so the error that caused it is the only one reported.
    fn lose_sync(&mut self) {
        self.skip_to_magic(1);
        self.discarding = true;
    }

    /// Moves `start` to the next occurrence of the magic at or after
    /// `start + from`, keeping a possible partial magic at the buffer end.
    /// Returns how many bytes were skipped.
    fn skip_to_magic(&mut self, from: usize) -> usize {
        let avail = &self.buf[self.start..self.end];
        let from = from.min(avail.len());
        let skip = match find_magic(&avail[from..]) {
            Some(pos) => from + pos,
            None => {
                // Keep the longest suffix that is a prefix of the magic.
                let keep = (1..MAGIC.len())
                    .rev()
                    .find(|&n| avail.len() >= n && avail[avail.len() - n..] == MAGIC[..n])
                    .unwrap_or(0);
                avail.len() - keep.min(avail.len() - from)
            }
        };
        self.start += skip;
        skip
    }
}

fn find_magic(haystack: &[u8]) -> Option<usize> {
    haystack.windows(MAGIC.len()).position(|w| w == MAGIC)
}

/// Decodes exactly one frame from the front of `bytes` (one-shot, for tests
/// and tools). Returns the frame and the number of bytes it used.
///
/// # Errors
/// [`FrameError::Truncated`] if `bytes` ends inside the frame; any other
/// [`FrameError`] if the frame is corrupt or of an unknown kind.
pub fn decode_frame(bytes: &[u8], max_payload: u32) -> Result<(Frame, usize), FrameError> {
    if bytes.len() >= MAGIC.len() && bytes[..MAGIC.len()] != MAGIC {
        return Err(FrameError::BadMagic { skipped: 0 });
    }
    let Some(head) = bytes.get(..HEADER_LEN) else {
        return Err(FrameError::Truncated {
            needed: HEADER_LEN - bytes.len(),
        });
    };
    let mut head_bytes = [0u8; HEADER_LEN];
    head_bytes.copy_from_slice(head);
    let (header, _) = FrameHeader::parse(&head_bytes);
    header.validate(max_payload)?;
    let total = HEADER_LEN + header.payload_len as usize;
    if bytes.len() < total {
        return Err(FrameError::Truncated {
            needed: total - bytes.len(),
        });
    }
    let mut decoder = FrameDecoder::new(max_payload);
    decoder.feed(&bytes[..total]);
    match decoder.next_frame()? {
        Some(frame) => Ok((frame, total)),
        None => Err(FrameError::Truncated { needed: 0 }),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::frame::encode_frame;
    use crate::frame::tests::frame_bytes;

    #[test]
    fn crc_mismatch_is_reported_then_next_frame_decodes() {
        let mut bytes = frame_bytes(MessageKind::Stdout, 1, b"payload");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        bytes.extend(frame_bytes(MessageKind::Stderr, 2, b"ok"));
        let mut dec = FrameDecoder::default();
        dec.feed(&bytes);
        assert!(matches!(
            dec.next_frame(),
            Err(FrameError::CrcMismatch { .. })
        ));
        let frame = dec.next_frame().expect("resync").expect("frame");
        assert_eq!((frame.kind, frame.request_id), (MessageKind::Stderr, 2));
        assert_eq!(dec.next_frame(), Ok(None));
    }

    #[test]
    fn oversized_length_is_rejected_before_payload_arrives() {
        let mut bytes = frame_bytes(MessageKind::Stdout, 1, b"x");
        bytes[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut dec = FrameDecoder::new(1024);
        // Only the header: the decoder must not wait for 4 GiB.
        dec.feed(&bytes[..HEADER_LEN]);
        assert_eq!(
            dec.next_frame(),
            Err(FrameError::TooLarge {
                len: u32::MAX,
                max: 1024
            })
        );
    }

    #[test]
    fn garbage_is_reported_once_and_skipped() {
        let mut dec = FrameDecoder::default();
        dec.feed(b"garbage garbage garbage");
        assert!(matches!(dec.next_frame(), Err(FrameError::BadMagic { .. })));
        dec.feed(b"more garbage");
        assert_eq!(dec.next_frame(), Ok(None));
        dec.feed(&frame_bytes(MessageKind::Pong, 3, b""));
        let frame = dec.next_frame().expect("frame").expect("some");
        assert_eq!(frame.kind, MessageKind::Pong);
    }

    #[test]
    fn reading_in_place_matches_feeding() {
        let mut stream = frame_bytes(MessageKind::Stdout, 1, &[5; 70_000]);
        stream.extend(frame_bytes(MessageKind::Stderr, 2, b"tail"));
        let mut dec = FrameDecoder::default();
        let mut frames = Vec::new();
        for chunk in stream.chunks(33_333) {
            let spare = dec.spare(chunk.len());
            assert!(spare.len() >= chunk.len());
            spare[..chunk.len()].copy_from_slice(chunk);
            dec.commit(chunk.len());
            while let Some(frame) = dec.next_frame().expect("clean") {
                frames.push((frame.request_id, frame.payload.len()));
            }
        }
        assert_eq!(frames, vec![(1, 70_000), (2, 4)]);
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn shrinking_keeps_buffered_bytes_and_gives_back_the_rest() {
        let stream = frame_bytes(MessageKind::Stdout, 1, &[5; 10_000]);
        let mut dec = FrameDecoder::default();
        let spare = dec.spare(200_000);
        spare[..100].copy_from_slice(&stream[..100]);
        dec.commit(100);
        assert!(dec.capacity() >= 200_000);
        dec.shrink_to(1024);
        assert_eq!(dec.buffered(), 100);
        assert!(dec.capacity() < 200_000, "{}", dec.capacity());
        dec.feed(&stream[100..]);
        let frame = dec.next_frame().expect("clean").expect("whole frame");
        assert_eq!(frame.payload.len(), 10_000);
        dec.shrink_to(0);
        assert_eq!(dec.capacity(), 0);
        assert_eq!(dec.next_frame(), Ok(None));
    }

    #[test]
    fn magic_split_across_feeds_is_kept() {
        let bytes = frame_bytes(MessageKind::Ping, 9, b"");
        let mut dec = FrameDecoder::default();
        dec.feed(b"zz");
        dec.feed(&bytes[..2]);
        assert!(matches!(
            dec.next_frame(),
            Err(FrameError::BadMagic { skipped: 2 })
        ));
        dec.feed(&bytes[2..]);
        assert_eq!(dec.next_frame().expect("ok").map(|f| f.request_id), Some(9));
    }

    #[test]
    fn unknown_kind_keeps_stream_in_sync() {
        let mut bytes = frame_bytes(MessageKind::Ping, 5, b"abc");
        bytes[6..8].copy_from_slice(&999u16.to_le_bytes());
        let crc = {
            let mut h = crc32fast::Hasher::new();
            h.update(&bytes[..24]);
            h.update(b"abc");
            h.finalize()
        };
        bytes[24..28].copy_from_slice(&crc.to_le_bytes());
        bytes.extend(frame_bytes(MessageKind::Pong, 6, b""));
        let mut dec = FrameDecoder::default();
        dec.feed(&bytes);
        assert_eq!(
            dec.next_frame(),
            Err(FrameError::UnknownKind {
                kind: 999,
                request_id: 5
            })
        );
        assert_eq!(dec.next_frame().expect("ok").map(|f| f.request_id), Some(6));
    }

    #[test]
    fn truncated_frame_is_typed() {
        let bytes = frame_bytes(MessageKind::Stdout, 1, b"0123456789");
        assert_eq!(
            decode_frame(&bytes[..bytes.len() - 3], DEFAULT_MAX_PAYLOAD).map(|(f, _)| f),
            Err(FrameError::Truncated { needed: 3 })
        );
        let mut dec = FrameDecoder::default();
        dec.feed(&bytes[..bytes.len() - 3]);
        assert_eq!(dec.next_frame(), Ok(None));
    }

    fn any_kind() -> impl Strategy<Value = MessageKind> {
        proptest::sample::select(MessageKind::ALL.to_vec())
    }

    proptest! {
        #[test]
        fn frames_round_trip_through_any_split(
            frames in proptest::collection::vec(
                (any_kind(), any::<u64>(), proptest::collection::vec(any::<u8>(), 0..2048)), 1..8),
            split in 1usize..4096,
        ) {
            let mut stream = Vec::new();
            for (kind, id, payload) in &frames {
                encode_frame(&mut stream, *kind, *id, payload).expect("encode");
            }
            let mut dec = FrameDecoder::default();
            let mut out = Vec::new();
            for chunk in stream.chunks(split) {
                dec.feed(chunk);
                while let Some(frame) = dec.next_frame().expect("clean stream") {
                    out.push((frame.kind, frame.request_id, frame.payload));
                }
            }
            prop_assert_eq!(out, frames);
            prop_assert_eq!(dec.buffered(), 0);
        }

        #[test]
        fn corruption_never_panics_and_is_detected(
            payload in proptest::collection::vec(any::<u8>(), 0..512),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
            max in 0u32..1024,
        ) {
            let mut bytes = frame_bytes(MessageKind::FileData, 42, &payload);
            for (index, mask) in &flips {
                let at = index.index(bytes.len());
                bytes[at] ^= mask;
            }
            let mut dec = FrameDecoder::new(max);
            dec.feed(&bytes);
            // A corrupted frame must never come out as a frame with this payload
            // unless the flips cancelled out (then it is the original frame).
            for _ in 0..bytes.len() + 2 {
                match dec.next_frame() {
                    Ok(None) => break,
                    Ok(Some(frame)) => {
                        prop_assert_eq!(&frame.payload, &payload);
                        prop_assert_eq!(frame.request_id, 42);
                    }
                    Err(_) => {}
                }
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..4096),
            max in 0u32..8192,
        ) {
            let mut dec = FrameDecoder::new(max);
            dec.feed(&bytes);
            let mut steps = 0;
            loop {
                steps += 1;
                prop_assert!(steps <= bytes.len() + 2, "decoder made no progress");
                if let Ok(None) = dec.next_frame() { break }
            }
            prop_assert!(dec.buffered() <= bytes.len());
            let _ = decode_frame(&bytes, max);
        }

        #[test]
        fn truncation_is_never_a_frame(
            payload in proptest::collection::vec(any::<u8>(), 1..512),
            cut in any::<prop::sample::Index>(),
        ) {
            let bytes = frame_bytes(MessageKind::Stdin, 1, &payload);
            let cut = cut.index(bytes.len());
            let mut dec = FrameDecoder::default();
            dec.feed(&bytes[..cut]);
            prop_assert_eq!(dec.next_frame(), Ok(None));
            let is_truncated = matches!(
                decode_frame(&bytes[..cut], DEFAULT_MAX_PAYLOAD),
                Err(FrameError::Truncated { .. })
            );
            prop_assert!(is_truncated);
        }
    }
}
