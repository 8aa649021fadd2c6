//! Blocking adapters from [`std::io::Read`] / [`std::io::Write`] to frames.
//!
//! For tools, tests and fuzzing: the async host and agent drive
//! [`FrameDecoder`] from their own sockets instead.

use std::io::{self, Read, Write};

use crate::frame::{FRAME_READ_CHUNK, Frame, FrameDecoder, FrameError};

/// Why a frame could not be read from a stream.
#[derive(Debug, thiserror::Error)]
pub enum ReadFrameError {
    /// The stream failed.
    #[error("Could not read from the stream")]
    Io(#[source] io::Error),
    /// The stream ended; `buffered` bytes of an incomplete frame were left.
    #[error("Stream ended with {buffered} bytes of an incomplete frame")]
    Eof {
        /// Bytes of a partial frame lost at the end of the stream.
        buffered: usize,
    },
    /// The bytes were not a valid frame.
    #[error("Invalid frame")]
    Frame(#[source] FrameError),
}

/// Reads the next frame from `reader`, using `decoder` to keep bytes that
/// belong to later frames. Reads at most [`FRAME_READ_CHUNK`] bytes at a time.
///
/// # Errors
/// [`ReadFrameError`] on I/O failure, end of stream or a corrupt frame.
pub fn read_frame<R: Read + ?Sized>(
    reader: &mut R,
    decoder: &mut FrameDecoder,
) -> Result<Frame, ReadFrameError> {
    loop {
        if let Some(frame) = decoder.next_frame().map_err(ReadFrameError::Frame)? {
            return Ok(frame);
        }
        match reader.read(decoder.spare(FRAME_READ_CHUNK)) {
            Ok(0) => {
                return Err(ReadFrameError::Eof {
                    buffered: decoder.buffered(),
                });
            }
            Ok(n) => decoder.commit(n),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(ReadFrameError::Io(err)),
        }
    }
}

/// Writes `bytes` (one or more encoded frames) to `writer` and flushes.
///
/// # Errors
/// The writer's I/O error.
pub fn write_frame<W: Write + ?Sized>(writer: &mut W, bytes: &[u8]) -> io::Result<()> {
    writer.write_all(bytes)?;
    writer.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Message, decode_message, encode_message};

    #[test]
    fn reads_frames_from_a_byte_stream() {
        let mut bytes = Vec::new();
        encode_message(&mut bytes, 1, &Message::Ping).expect("encode");
        encode_message(&mut bytes, 2, &Message::Stdout(vec![7; 100_000])).expect("encode");
        let mut wire = Vec::new();
        write_frame(&mut wire, &bytes).expect("write");
        let mut reader = io::Cursor::new(wire);
        let mut decoder = FrameDecoder::default();
        let first = read_frame(&mut reader, &mut decoder).expect("first");
        assert_eq!(decode_message(first).expect("ping"), Message::Ping);
        let second = read_frame(&mut reader, &mut decoder).expect("second");
        assert_eq!(second.payload.len(), 100_000);
        assert!(matches!(
            read_frame(&mut reader, &mut decoder),
            Err(ReadFrameError::Eof { buffered: 0 })
        ));
    }

    #[test]
    fn eof_inside_a_frame_reports_lost_bytes() {
        let mut bytes = Vec::new();
        encode_message(&mut bytes, 1, &Message::Stdout(vec![1; 50])).expect("encode");
        bytes.truncate(40);
        let mut decoder = FrameDecoder::default();
        assert!(matches!(
            read_frame(&mut io::Cursor::new(bytes), &mut decoder),
            Err(ReadFrameError::Eof { buffered: 40 })
        ));
    }
}
