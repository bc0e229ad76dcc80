//! Frames captured from a live 6.18 kernel (see `fixtures/captured/`, made
//! by `capture_golden_frames` in crates/fuse-dev/tests/kernel_conformance.rs)
//! parse to the operation their file is named after, with the values the
//! client syscall put there. Values that change from run to run (unique,
//! pid, lock owner) are not compared.

use std::path::Path;

use fuse_proto::{Opcode, Operation, Request};

fn frame(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/captured")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
    let hex: String = text
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .flat_map(|line| line.chars().filter(|c| !c.is_whitespace()))
        .collect();
    assert!(
        hex.len().is_multiple_of(2),
        "{name}: odd number of hex digits"
    );
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex digit"))
        .collect()
}

#[test]
fn every_captured_frame_parses_to_its_opcode() {
    let cases = [
        ("init.hex", Opcode::INIT),
        ("open.hex", Opcode::OPEN),
        ("getattr.hex", Opcode::GETATTR),
        ("statx.hex", Opcode::STATX),
        ("read.hex", Opcode::READ),
        ("write.hex", Opcode::WRITE),
        ("flush.hex", Opcode::FLUSH),
        ("release.hex", Opcode::RELEASE),
        ("getxattr.hex", Opcode::GETXATTR),
        ("interrupt.hex", Opcode::INTERRUPT),
    ];
    for (name, opcode) in cases {
        let bytes = frame(name);
        let request = Request::parse(&bytes).unwrap_or_else(|err| panic!("{name}: {err}"));
        assert_eq!(request.op.opcode(), opcode, "{name}");
        assert_eq!(request.header.len as usize, bytes.len(), "{name}");
    }
}

#[test]
fn captured_init_is_the_618_offer() {
    let bytes = frame("init.hex");
    let request = Request::parse(&bytes).unwrap();
    let Operation::Init(init) = request.op else {
        panic!("not INIT: {:?}", request.op)
    };
    assert_eq!((init.major, init.minor), (7, 45));
    assert_eq!(init.max_readahead, 131072);
    assert_eq!(bytes.len(), 104);
    assert_eq!(request.header.nodeid, 0);
}

#[test]
fn captured_write_carries_its_payload_after_80_bytes() {
    let bytes = frame("write.hex");
    let request = Request::parse(&bytes).unwrap();
    let Operation::Write { arg, data } = request.op else {
        panic!("not WRITE: {:?}", request.op)
    };
    assert_eq!(arg.offset, 8192);
    assert_eq!(arg.size, 4096);
    assert_eq!(data.len(), 4096);
    // The client wrote i % 251.
    assert!(data.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
    assert_eq!(bytes.len(), fuse_proto::WRITE_HEADER_LEN + 4096);
}

#[test]
fn captured_getxattr_carries_the_name_the_client_asked_for() {
    let bytes = frame("getxattr.hex");
    let request = Request::parse(&bytes).unwrap();
    let Operation::Getxattr { name, .. } = request.op else {
        panic!("not GETXATTR")
    };
    // The capture called getxattr(2) for "user.fuse-export".
    assert_eq!(name, b"user.fuse-export");
}

#[test]
fn captured_interrupt_targets_an_even_unique() {
    let bytes = frame("interrupt.hex");
    let request = Request::parse(&bytes).unwrap();
    let Operation::Interrupt(interrupt) = request.op else {
        panic!("not INTERRUPT")
    };
    assert!(interrupt.unique.is_multiple_of(2));
    assert_eq!(request.header.unique, interrupt.unique | 1);
    assert_eq!(bytes.len(), 48);
}
