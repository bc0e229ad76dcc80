//! Fuzzes request parsing (and, on the side, reply checking).
//!
//! The first input byte picks how the rest is used, so that the fuzzer
//! does not have to guess a consistent `len` before it can reach the
//! per-opcode code:
//!
//! * bit 0: `ParseOptions::setxattr_ext`;
//! * bits 1-2: 0 = parse the bytes as they are; 1 = first make the header's
//!   `len` match the input; 2 = like 1, then also parse every split into a
//!   first buffer and the rest; 3 = check the bytes as a reply.
//!
//! Beyond "never panics" it asserts what an accepted request promises.
#![no_main]

use fuse_proto::reply::ReplyView;
use fuse_proto::{ParseOptions, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, message)) = data.split_first() else {
        return;
    };
    let options = ParseOptions {
        setxattr_ext: mode & 1 != 0,
    };
    match (mode >> 1) & 3 {
        0 => check(message, options, false),
        1 => check(&with_consistent_len(message), options, false),
        2 => check(&with_consistent_len(message), options, true),
        _ => {
            if let Ok(view) = ReplyView::parse(message) {
                assert_eq!(view.header.len as usize, message.len());
                assert_eq!(view.payload.len() + 16, message.len());
            }
        }
    }
});

/// The message with `in_header.len` set to its actual length.
fn with_consistent_len(message: &[u8]) -> Vec<u8> {
    let mut bytes = message.to_vec();
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    if let Some(field) = bytes.get_mut(..4) {
        field.copy_from_slice(&len.to_ne_bytes());
    }
    bytes
}

fn check(message: &[u8], options: ParseOptions, splits: bool) {
    let whole = Request::parse_prefix_with(message, message.len(), options);
    if let Ok(request) = &whole {
        assert_eq!(request.header.len as usize, message.len());
        assert_eq!(request.op.opcode(), request.opcode());
    }
    if !splits {
        return;
    }
    // Whatever parses from a first buffer must parse whole, with the same
    // header and opcode (only bulk data may be cut short).
    for cut in 0..message.len() {
        if let Ok(partial) = Request::parse_prefix_with(&message[..cut], message.len(), options) {
            let request = whole
                .as_ref()
                .expect("a request that parses split also parses whole");
            assert_eq!(partial.header, request.header);
            assert_eq!(partial.op.opcode(), request.op.opcode());
        }
    }
}
