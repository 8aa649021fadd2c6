//! Feeds arbitrary bytes, cut at arbitrary points, into a [`FrameDecoder`].
//!
//! Input layout:
//!
//! | byte | meaning                                                                  |
//! |-----:|--------------------------------------------------------------------------|
//! | 0    | payload limit: `0xFF` = `u32::MAX`, `0xFE` = 1 MiB, otherwise `n * 8`     |
//! | 1    | bit 0: fix up CRCs (see below); bits 1..8: split parameter `s`           |
//! | 2..  | the byte stream                                                          |
//!
//! With `s == 0` the stream is fed in one piece; otherwise it is cut into
//! chunks of `1..=s` bytes chosen by a small PRNG seeded from the input, and
//! the decoder is drained after every chunk, as a reader would.
//!
//! Random bytes almost never carry a valid CRC, so with bit 0 set every frame
//! found in the stream (a magic at a position whose header and payload fit in
//! the stream) gets its CRC field rewritten to the right value first. The
//! decoder still sees arbitrary headers and payloads; only the checksum is
//! made to match, so the paths past the CRC check are reached.
//!
//! Checked for every result of `next_frame`:
//! - the decoder makes progress: a frame or an error consumes at least one
//!   buffered byte, `Ok(None)` consumes nothing it should not, and what stays
//!   buffered after `Ok(None)` is less than one maximum-size frame;
//! - errors are consistent: never `Truncated`, `TooLarge` only past the limit,
//!   `CrcMismatch` only with differing CRCs, `UnknownKind` only for unknown
//!   kinds, and garbage after a lost-sync error is not reported again;
//! - a frame respects the limit and version, re-encodes with `encode_frame`
//!   to bytes that decode to the same frame (flags excepted: senders always
//!   write 0), and `decode_message` on it does not panic;
//! - the sequence of frames and errors (ignoring the `skipped` count of
//!   `BadMagic`, which depends on what was buffered) is the same whether the
//!   stream is fed at once or in chunks, with `shrink_to` called between
//!   chunks as an idle reader does.

#![no_main]

use libfuzzer_sys::{Corpus, fuzz_target};
use paddock_proto::{
    DEFAULT_MAX_PAYLOAD, Frame, FrameDecoder, FrameError, HEADER_LEN, MAGIC, MessageKind,
    PROTOCOL_VERSION, decode_frame, decode_message, encode_frame, is_supported_version,
};

/// What one `next_frame` call produced, normalised for comparison.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    Frame(Frame),
    Error(FrameError),
}

fuzz_target!(|data: &[u8]| -> Corpus {
    let [max_sel, mode, stream @ ..] = data else {
        return Corpus::Reject;
    };
    let max = match *max_sel {
        0xFF => u32::MAX,
        0xFE => DEFAULT_MAX_PAYLOAD,
        n => u32::from(n) * 8,
    };
    let mut stream = stream.to_vec();
    if mode & 1 == 1 {
        fix_crcs(&mut stream);
    }
    let split = usize::from(mode >> 1);

    let whole = run(&stream, max, &[stream.len()]);
    if split != 0 {
        let chunks = chunk_lengths(&stream, split);
        let chunked = run(&stream, max, &chunks);
        // The bytes left buffered may differ: fewer than 4 bytes of garbage at
        // the end are not looked at until more arrive.
        assert_eq!(whole, chunked, "result depends on how the stream was cut");
    }
    Corpus::Keep
});

/// Feeds `stream` in pieces of the given lengths, draining after each piece.
fn run(stream: &[u8], max: u32, chunks: &[usize]) -> Vec<Event> {
    let mut dec = FrameDecoder::new(max);
    let mut events = Vec::new();
    let mut last_lost_sync = false;
    let mut at = 0;
    for &len in chunks {
        let end = (at + len).min(stream.len());
        dec.feed(&stream[at..end]);
        at = end;
        loop {
            let before = dec.buffered();
            let result = dec.next_frame();
            let after = dec.buffered();
            match result {
                Ok(None) => {
                    assert!(after <= before, "Ok(None) grew the buffer");
                    // What is left is a partial magic, header or frame.
                    let bound = HEADER_LEN as u64 + u64::from(max);
                    assert!((after as u64) < bound.max(MAGIC.len() as u64));
                    // A reader gives storage back between reads: that must
                    // keep every buffered byte (the results are compared
                    // with the stream fed at once, which never shrinks).
                    dec.shrink_to(len % 64);
                    assert_eq!(dec.buffered(), after, "shrinking lost bytes");
                    assert!(dec.capacity() >= after);
                    break;
                }
                Ok(Some(frame)) => {
                    assert!(
                        after + HEADER_LEN + frame.payload.len() <= before,
                        "frame consumed fewer bytes than it holds"
                    );
                    check_frame(&frame, max);
                    last_lost_sync = false;
                    events.push(Event::Frame(frame));
                }
                Err(err) => {
                    assert!(after < before, "error without progress: {err:?}");
                    check_error(&err, max, before - after);
                    if matches!(err, FrameError::BadMagic { .. }) {
                        assert!(
                            !last_lost_sync,
                            "garbage reported twice: {events:?} {err:?}"
                        );
                    }
                    last_lost_sync = err.lost_sync();
                    let normalised = match err {
                        FrameError::BadMagic { .. } => FrameError::BadMagic { skipped: 0 },
                        other => other,
                    };
                    events.push(Event::Error(normalised));
                }
            }
        }
    }
    events
}

fn check_frame(frame: &Frame, max: u32) {
    assert!(is_supported_version(frame.version));
    assert!(frame.payload.len() as u64 <= u64::from(max));

    let mut bytes = Vec::new();
    encode_frame(&mut bytes, frame.kind, frame.request_id, &frame.payload)
        .expect("a decoded payload fits a frame");
    let (again, used) = decode_frame(&bytes, max).expect("a re-encoded frame decodes");
    assert_eq!(used, bytes.len());
    let expected = Frame {
        version: PROTOCOL_VERSION,
        flags: 0,
        ..frame.clone()
    };
    assert_eq!(again, expected);

    let _ = decode_message(frame.clone());
}

fn check_error(err: &FrameError, max: u32, consumed: usize) {
    match *err {
        FrameError::BadMagic { skipped } => {
            assert!(
                skipped >= 1 && skipped <= consumed,
                "skipped {skipped} of {consumed}"
            );
        }
        FrameError::UnsupportedVersion { version } => assert!(!is_supported_version(version)),
        FrameError::TooLarge { len, max: limit } => {
            assert_eq!(limit, max);
            assert!(len > max);
        }
        FrameError::CrcMismatch { expected, actual } => assert_ne!(expected, actual),
        FrameError::UnknownKind { kind, .. } => assert!(MessageKind::try_from(kind).is_err()),
        FrameError::Truncated { .. } => panic!("the incremental decoder returned Truncated"),
    }
}

/// Rewrites the CRC field of every frame that fits in `stream`, left to right,
/// skipping over each fixed frame so a later fix does not change its payload.
fn fix_crcs(stream: &mut [u8]) {
    let mut at = 0;
    while at + HEADER_LEN <= stream.len() {
        if stream[at..at + MAGIC.len()] != MAGIC {
            at += 1;
            continue;
        }
        let len_bytes = [
            stream[at + 20],
            stream[at + 21],
            stream[at + 22],
            stream[at + 23],
        ];
        let total = HEADER_LEN as u64 + u64::from(u32::from_le_bytes(len_bytes));
        if (at as u64) + total > stream.len() as u64 {
            at += 1;
            continue;
        }
        let total = usize::try_from(total).expect("fits: bounded by the stream length");
        let mut crc = crc32(&stream[at..at + 24], 0);
        crc = crc32(&stream[at + HEADER_LEN..at + total], crc);
        stream[at + 24..at + HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
        at += total;
    }
}

/// CRC-32/IEEE, continued from `crc` (0 to start). Bitwise: speed does not
/// matter here and the target should not depend on the crate's CRC code.
fn crc32(bytes: &[u8], crc: u32) -> u32 {
    let mut crc = !crc;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Chunk lengths in `1..=split` covering `stream`, from a xorshift PRNG
/// seeded with the stream's length and first bytes.
fn chunk_lengths(stream: &[u8], split: usize) -> Vec<usize> {
    let mut seed = [0u8; 8];
    for (slot, byte) in seed.iter_mut().zip(stream) {
        *slot = *byte;
    }
    let mut state = u64::from_le_bytes(seed) ^ (stream.len() as u64) ^ 0x9E37_79B9_7F4A_7C15;
    let mut chunks = Vec::new();
    let mut covered = 0;
    while covered < stream.len() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let len = 1 + usize::try_from(state % split as u64).expect("less than split");
        chunks.push(len);
        covered += len;
    }
    chunks
}
