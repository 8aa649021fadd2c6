//! Decodes an arbitrary payload as an arbitrary message kind.
//!
//! Input layout: byte 0 is an index into `MessageKind::ALL` (inputs with an
//! index past the end are rejected), the rest is the payload.
//!
//! `decode_message` must never panic. When it accepts the payload, the message
//! must survive `encode_message` -> `decode_frame` -> `decode_message` equal
//! to itself, with the same kind and request id, and encoding it again must
//! give the same bytes (the encoding of a decoded message is canonical).

#![no_main]

use libfuzzer_sys::{Corpus, fuzz_target};
use paddock_proto::{
    Frame, MessageKind, PROTOCOL_VERSION, decode_frame, decode_message, encode_message,
};

const REQUEST_ID: u64 = 0x0102_0304_0506_0708;

fuzz_target!(|data: &[u8]| -> Corpus {
    let Some((&index, payload)) = data.split_first() else {
        return Corpus::Reject;
    };
    let Some(&kind) = MessageKind::ALL.get(usize::from(index)) else {
        return Corpus::Reject;
    };
    let frame = Frame {
        version: PROTOCOL_VERSION,
        kind,
        flags: 0,
        request_id: REQUEST_ID,
        payload: payload.to_vec(),
    };
    let Ok(message) = decode_message(frame) else {
        // Rejected payloads still exercise the JSON error paths: keep them.
        return Corpus::Keep;
    };
    assert_eq!(message.kind(), kind);

    let mut first = Vec::new();
    encode_message(&mut first, REQUEST_ID, &message).expect("a decoded message re-encodes");
    let (frame, used) = decode_frame(&first, u32::MAX).expect("a re-encoded frame decodes");
    assert_eq!(used, first.len());
    assert_eq!(frame.kind, kind);
    assert_eq!(frame.request_id, REQUEST_ID);
    let again = decode_message(frame).expect("a re-encoded message decodes");
    assert_eq!(again, message, "message changed in a round trip");

    let mut second = Vec::new();
    encode_message(&mut second, REQUEST_ID, &again).expect("encodes again");
    assert_eq!(first, second, "encoding is not stable");
    Corpus::Keep
});
