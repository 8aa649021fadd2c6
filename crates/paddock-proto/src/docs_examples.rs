//! The protocol's documentation (`PROTOCOL.md`, this crate's front page)
//! checked against the code, so that a client written from the page alone
//! speaks what this crate speaks.
//!
//! - Every ```` ```json ```` block is the body of the kind named (in
//!   backticks) first in the paragraph before the block. It must decode as that
//!   kind; every key it has must be a field this crate writes, with the
//!   same value unless the example gives `null`; `null` must mean the same
//!   as leaving the key out; and an example described as "every field" must
//!   be exactly what this crate writes. Each kind with a JSON body has such
//!   a complete example.
//! - Every hex dump of a frame (lines starting with the magic) must decode,
//!   checksum included, and re-encode to the same bytes.
//! - The tables of kinds, error codes and limits must match the code.

use serde_json::{Map, Value};

use crate::{
    CLOCK_TOLERANCE_MS, DEFAULT_CHUNK, DEFAULT_FILE_MODE, DEFAULT_KILL_GRACE_MS,
    DEFAULT_MAX_PAYLOAD, DEFAULT_WINDOW, Direction, ErrorCode, Frame, HEADER_LEN,
    MAX_ERROR_MESSAGE_LEN, MAX_KILL_GRACE_MS, MAX_QUEUED_CONTROL, MAX_SESSION_TOKEN_LEN,
    MAX_SIGNAL, MIN_MAX_PAYLOAD, MIN_PROTOCOL_VERSION, MessageKind, PROTOCOL_VERSION, capability,
    decode_frame, decode_message, encode_frame, encode_message,
};

const DOC: &str = include_str!("../PROTOCOL.md");

/// A fenced code block of the documentation.
struct Block {
    /// The fence's info string (`json`, `text`).
    info: String,
    /// The paragraph before the fence, its lines joined by spaces.
    intro: String,
    body: String,
}

fn blocks() -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut intro = String::new();
    // The paragraph in `intro` ended with a blank line: the next line
    // starts another.
    let mut ended = true;
    let mut open: Option<Block> = None;
    for line in DOC.lines() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(info)) => {
                open = Some(Block {
                    info: info.trim().to_owned(),
                    intro: intro.clone(),
                    body: String::new(),
                });
            }
            (Some(_), Some(_)) => {
                blocks.extend(open.take());
                intro.clear();
            }
            (Some(block), None) => {
                block.body.push_str(line);
                block.body.push('\n');
            }
            (None, None) if line.trim().is_empty() => ended = true,
            (None, None) => {
                if ended {
                    intro.clear();
                    ended = false;
                } else {
                    intro.push(' ');
                }
                intro.push_str(line.trim());
            }
        }
    }
    assert!(open.is_none(), "a code block is not closed");
    blocks
}

/// The kind named first, in backticks, in `intro`.
fn kind_named_in(intro: &str) -> Option<MessageKind> {
    intro
        .split('`')
        .skip(1)
        .step_by(2)
        .find_map(|name| MessageKind::ALL.iter().copied().find(|k| k.name() == name))
}

/// Whether frames of `kind` carry a JSON body: they do not decode empty.
fn has_json_body(kind: MessageKind) -> bool {
    kind != MessageKind::WindowUpdate && decode(kind, b"").is_err()
}

fn decode(kind: MessageKind, payload: &[u8]) -> Result<crate::Message, crate::DecodeError> {
    decode_message(Frame {
        version: PROTOCOL_VERSION,
        kind,
        flags: 0,
        request_id: 1,
        payload: payload.to_vec(),
    })
}

/// What this crate writes for `message`, as JSON.
fn written(message: &crate::Message) -> Value {
    let mut bytes = Vec::new();
    encode_message(&mut bytes, 1, message).expect("encode");
    serde_json::from_slice(&bytes[HEADER_LEN..]).expect("this crate writes JSON")
}

#[test]
fn every_json_example_is_what_the_code_reads_and_writes() {
    let mut complete = Vec::new();
    let mut checked = 0;
    for block in blocks().iter().filter(|block| block.info == "json") {
        let context = format!("example after {:?}", block.intro);
        let kind = kind_named_in(&block.intro)
            .unwrap_or_else(|| panic!("{context}: no kind named in backticks"));
        let example: Map<String, Value> = serde_json::from_str(&block.body)
            .unwrap_or_else(|err| panic!("{context}: not a JSON object: {err}"));
        let message = decode(kind, block.body.as_bytes())
            .unwrap_or_else(|err| panic!("{context}: not a valid {kind:?}: {err:?}"));
        let written = written(&message);
        for (key, value) in &example {
            let ours = written
                .get(key)
                .unwrap_or_else(|| panic!("{context}: `{key}` is no field of {kind:?}"));
            assert!(
                value.is_null() || value == ours,
                "{context}: `{key}` is {value}, written back as {ours}"
            );
        }
        let without_nulls: Map<String, Value> = example
            .iter()
            .filter(|(_, value)| !value.is_null())
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        let absent = decode(kind, Value::Object(without_nulls).to_string().as_bytes())
            .unwrap_or_else(|err| panic!("{context}: invalid without its nulls: {err:?}"));
        assert_eq!(absent, message, "{context}: null does not mean absent");
        if block.intro.contains("every field") {
            assert_eq!(
                written,
                Value::Object(example),
                "{context}: not what this crate writes"
            );
            complete.push(kind);
        }
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} examples found");
    for kind in MessageKind::ALL {
        if has_json_body(kind) {
            assert!(
                complete.contains(&kind),
                "no \"every field\" example of `{}`",
                kind.name()
            );
        }
    }
}

#[test]
fn every_frame_dump_decodes_and_re_encodes() {
    let mut dumps = 0;
    for block in blocks().iter().filter(|block| block.info == "text") {
        let mut lines = block.body.lines().peekable();
        while let Some(line) = lines.next() {
            if !line.starts_with("50 44 43 4b") {
                continue;
            }
            let mut hex = line.to_owned();
            while let Some(next) = lines.peek() {
                if next
                    .split(' ')
                    .all(|pair| pair.len() == 2 && u8::from_str_radix(pair, 16).is_ok())
                {
                    hex.push(' ');
                    hex.push_str(next);
                    lines.next();
                } else {
                    break;
                }
            }
            let bytes: Vec<u8> = hex
                .split(' ')
                .map(|pair| u8::from_str_radix(pair, 16).expect("hex"))
                .collect();
            let (frame, used) = decode_frame(&bytes, DEFAULT_MAX_PAYLOAD)
                .unwrap_or_else(|err| panic!("frame dump {hex}: {err}"));
            assert_eq!(used, bytes.len(), "frame dump {hex}: trailing bytes");
            let mut again = Vec::new();
            encode_frame(&mut again, frame.kind, frame.request_id, &frame.payload).expect("encode");
            assert_eq!(again, bytes, "frame dump {hex}: not what this crate writes");
            decode_message(frame).unwrap_or_else(|err| panic!("frame dump {hex}: {err:?}"));
            dumps += 1;
        }
    }
    assert!(dumps >= 4, "only {dumps} frame dumps found");
}

#[test]
fn the_checksum_is_described_by_its_check_value() {
    assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
    assert!(DOC.contains("`0xCBF43926`"));
}

/// The cells of the table row that starts with `start`.
fn row(start: &str) -> Vec<&'static str> {
    let line = DOC
        .lines()
        .find(|line| line.starts_with(start))
        .unwrap_or_else(|| panic!("no table row starts with {start:?}"));
    line.trim_matches('|').split('|').map(str::trim).collect()
}

#[test]
fn the_table_of_kinds_is_the_code_s() {
    for kind in MessageKind::ALL {
        let cells = row(&format!("| {} | `{}` |", kind as u16, kind.name()));
        let sender = match kind.direction() {
            Direction::HostToAgent => "host",
            Direction::AgentToHost => "agent",
            Direction::Both => "either",
        };
        assert_eq!(cells[2], sender, "{kind:?}");
        let payload = cells[3];
        if kind == MessageKind::WindowUpdate {
            assert_eq!(payload, "4 bytes");
        } else if has_json_body(kind) {
            assert!(payload.starts_with("JSON"), "{kind:?}: {payload}");
        } else if kind.is_flow_controlled() {
            assert_eq!(payload, "raw", "{kind:?}");
        } else {
            assert_eq!(payload, "empty", "{kind:?}");
        }
        assert_eq!(cells[4] == "yes", kind.opens_request(), "{kind:?}");
    }
}

#[test]
fn every_error_code_is_in_the_table() {
    for code in ErrorCode::ALL {
        let name = serde_json::to_value(code).expect("encode");
        let name = name.as_str().expect("a string");
        row(&format!("| `{name}` |"));
    }
}

#[test]
fn the_table_of_limits_is_the_code_s() {
    let limits: [(&str, u64); 19] = [
        ("PROTOCOL_VERSION", PROTOCOL_VERSION.into()),
        ("MIN_PROTOCOL_VERSION", MIN_PROTOCOL_VERSION.into()),
        ("HEADER_LEN", HEADER_LEN as u64),
        ("DEFAULT_MAX_PAYLOAD", DEFAULT_MAX_PAYLOAD.into()),
        ("MIN_MAX_PAYLOAD", MIN_MAX_PAYLOAD.into()),
        ("DEFAULT_WINDOW", DEFAULT_WINDOW.into()),
        ("DEFAULT_CHUNK", DEFAULT_CHUNK as u64),
        ("DEFAULT_KILL_GRACE_MS", DEFAULT_KILL_GRACE_MS),
        ("MAX_KILL_GRACE_MS", MAX_KILL_GRACE_MS),
        ("MAX_SIGNAL", MAX_SIGNAL.unsigned_abs().into()),
        ("MAX_QUEUED_CONTROL", MAX_QUEUED_CONTROL as u64),
        ("MAX_SESSION_TOKEN_LEN", MAX_SESSION_TOKEN_LEN as u64),
        ("MAX_ERROR_MESSAGE_LEN", MAX_ERROR_MESSAGE_LEN as u64),
        ("DEFAULT_FILE_MODE", DEFAULT_FILE_MODE.into()),
        ("CLOCK_TOLERANCE_MS", CLOCK_TOLERANCE_MS),
        ("MAX_TREE_PATH_LEN", crate::MAX_TREE_PATH_LEN as u64),
        ("MAX_TREE_DEPTH", crate::MAX_TREE_DEPTH as u64),
        ("MAX_TREE_PAX_LEN", crate::MAX_TREE_PAX_LEN),
        ("MAX_TREE_ENTRIES", crate::MAX_TREE_ENTRIES),
    ];
    for (name, value) in limits {
        let cells = row(&format!("| `{name}` |"));
        assert_eq!(cells[1], value.to_string(), "{name}");
    }
}

#[test]
fn every_capability_is_named() {
    for name in [
        capability::EXEC,
        capability::STDIN,
        capability::SIGNAL,
        capability::FILES,
        capability::STATUS,
        capability::STOP_AGENT,
        capability::CONTAIN_TREE,
        capability::FS,
        capability::TREES,
        capability::TTY,
    ] {
        assert!(DOC.contains(&format!("`{name}`")), "{name}");
    }
}

#[test]
fn the_file_system_limits_are_in_the_table() {
    for (name, value) in [
        ("DEFAULT_READ_DIR_LIMIT", crate::DEFAULT_READ_DIR_LIMIT),
        ("MAX_READ_DIR_LIMIT", crate::MAX_READ_DIR_LIMIT),
        ("DEFAULT_DIR_MODE", crate::DEFAULT_DIR_MODE),
    ] {
        let cells = row(&format!("| `{name}` |"));
        assert_eq!(cells[1], value.to_string(), "{name}");
    }
    assert!(DOC.contains(&format!("`{}`", capability::FS)));
}
