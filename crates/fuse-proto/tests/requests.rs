//! Request parsing for every opcode, and every error the parser reports.
//!
//! Frames are assembled from little pieces of native-endian bytes rather
//! than from the crate's structs, so that a wrong struct definition cannot
//! hide behind a matching wrong encoder.

use fuse_proto::abi::{EXT_GROUPS, ForgetOne, RemovemappingOne};
use fuse_proto::flags::InitFlags;
use fuse_proto::{Opcode, Operation, ParseError, ParseOptions, Request};

fn u32b(value: u32) -> Vec<u8> {
    value.to_ne_bytes().to_vec()
}

fn u64b(value: u64) -> Vec<u8> {
    value.to_ne_bytes().to_vec()
}

/// `fuse_in_header` (len computed) followed by `parts`.
fn frame_with_ext(opcode: Opcode, total_extlen: u16, parts: &[&[u8]]) -> Vec<u8> {
    let body: Vec<u8> = parts.concat();
    let len = u32::try_from(40 + body.len()).expect("test frames are small");
    let mut frame = Vec::new();
    frame.extend(u32b(len));
    frame.extend(u32b(opcode.0));
    frame.extend(u64b(42)); // unique
    frame.extend(u64b(1)); // nodeid
    frame.extend(u32b(1000)); // uid
    frame.extend(u32b(1000)); // gid
    frame.extend(u32b(4242)); // pid
    frame.extend(total_extlen.to_ne_bytes());
    frame.extend([0, 0]); // padding
    frame.extend(body);
    frame
}

fn frame(opcode: Opcode, parts: &[&[u8]]) -> Vec<u8> {
    frame_with_ext(opcode, 0, parts)
}

fn parse(frame: &[u8]) -> Operation<'_> {
    match Request::parse(frame) {
        Ok(request) => {
            assert_eq!(request.op.opcode(), request.opcode());
            request.op
        }
        Err(err) => panic!("frame does not parse: {err}"),
    }
}

fn zeros(len: usize) -> Vec<u8> {
    vec![0; len]
}

#[test]
fn name_only_requests() {
    for (opcode, expected) in [
        (Opcode::LOOKUP, "Lookup"),
        (Opcode::UNLINK, "Unlink"),
        (Opcode::RMDIR, "Rmdir"),
        (Opcode::REMOVEXATTR, "Removexattr"),
    ] {
        let bytes = frame(opcode, &[b"disk.raw\0"]);
        let op = parse(&bytes);
        let name = match op {
            Operation::Lookup { name }
            | Operation::Unlink { name }
            | Operation::Rmdir { name }
            | Operation::Removexattr { name } => name,
            other => panic!("{expected}: got {other:?}"),
        };
        assert_eq!(name, b"disk.raw");
        let unterminated = frame(opcode, &[b"disk.raw"]);
        assert_eq!(
            Request::parse(&unterminated),
            Err(ParseError::MissingNul { opcode })
        );
    }
}

#[test]
fn requests_without_arguments() {
    assert_eq!(parse(&frame(Opcode::READLINK, &[])), Operation::Readlink);
    assert_eq!(parse(&frame(Opcode::STATFS, &[])), Operation::Statfs);
    assert_eq!(parse(&frame(Opcode::DESTROY, &[])), Operation::Destroy);
}

#[test]
fn fixed_size_requests_read_every_field() {
    let forget = frame(Opcode::FORGET, &[&u64b(3)]);
    let Operation::Forget(arg) = parse(&forget) else {
        panic!("not FORGET")
    };
    assert_eq!(arg.nlookup, 3);

    let lk = [
        u64b(1),
        u64b(2),
        u64b(10),
        u64b(20),
        u32b(1),
        u32b(77),
        u32b(1),
        u32b(0),
    ]
    .concat();
    for opcode in [Opcode::GETLK, Opcode::SETLK, Opcode::SETLKW] {
        let bytes = frame(opcode, &[&lk]);
        let arg = match parse(&bytes) {
            Operation::Getlk(arg) | Operation::Setlk(arg) | Operation::Setlkw(arg) => arg,
            other => panic!("{opcode}: {other:?}"),
        };
        assert_eq!((arg.fh, arg.owner, arg.lk_flags), (1, 2, 1));
        assert_eq!(
            (arg.lk.start, arg.lk.end, arg.lk.lock_type, arg.lk.pid),
            (10, 20, 1, 77)
        );
    }

    let access = frame(Opcode::ACCESS, &[&u32b(4), &u32b(0)]);
    let Operation::Access(arg) = parse(&access) else {
        panic!("not ACCESS")
    };
    assert_eq!(arg.mask, 4);

    let bmap = frame(Opcode::BMAP, &[&u64b(9), &u32b(4096), &u32b(0)]);
    let Operation::Bmap(arg) = parse(&bmap) else {
        panic!("not BMAP")
    };
    assert_eq!((arg.block, arg.blocksize), (9, 4096));

    let poll = frame(
        Opcode::POLL,
        &[&u64b(1), &u64b(0xabc), &u32b(1), &u32b(0x41)],
    );
    let Operation::Poll(arg) = parse(&poll) else {
        panic!("not POLL")
    };
    assert_eq!((arg.fh, arg.kh, arg.flags, arg.events), (1, 0xabc, 1, 0x41));

    let copy: Vec<u8> = (1..=7u64).flat_map(u64::to_ne_bytes).collect();
    for opcode in [Opcode::COPY_FILE_RANGE, Opcode::COPY_FILE_RANGE_64] {
        let bytes = frame(opcode, &[&copy]);
        let arg = match parse(&bytes) {
            Operation::CopyFileRange(arg) | Operation::CopyFileRange64(arg) => arg,
            other => panic!("{opcode}: {other:?}"),
        };
        assert_eq!(
            (
                arg.fh_in,
                arg.off_in,
                arg.nodeid_out,
                arg.fh_out,
                arg.off_out,
                arg.len,
                arg.flags
            ),
            (1, 2, 3, 4, 5, 6, 7)
        );
    }

    let mapping: Vec<u8> = (1..=5u64).flat_map(u64::to_ne_bytes).collect();
    let Operation::Setupmapping(arg) = parse(&frame(Opcode::SETUPMAPPING, &[&mapping])) else {
        panic!("not SETUPMAPPING")
    };
    assert_eq!(
        (arg.fh, arg.foffset, arg.len, arg.flags, arg.moffset),
        (1, 2, 3, 4, 5)
    );

    let Operation::Syncfs(_) = parse(&frame(Opcode::SYNCFS, &[&u64b(0)])) else {
        panic!("not SYNCFS")
    };

    let cuse = [u32b(7), u32b(45), u32b(0), u32b(1)].concat();
    let Operation::CuseInit(arg) = parse(&frame(Opcode::CUSE_INIT, &[&cuse])) else {
        panic!("not CUSE_INIT")
    };
    assert_eq!((arg.major, arg.minor, arg.flags), (7, 45, 1));

    let read = [
        u64b(5),
        u64b(24),
        u32b(4096),
        u32b(0),
        u64b(0),
        u32b(0),
        u32b(0),
    ]
    .concat();
    for opcode in [Opcode::READDIR, Opcode::READDIRPLUS] {
        let bytes = frame(opcode, &[&read]);
        let arg = match parse(&bytes) {
            Operation::Readdir(arg) | Operation::Readdirplus(arg) => arg,
            other => panic!("{opcode}: {other:?}"),
        };
        assert_eq!((arg.fh, arg.offset, arg.size), (5, 24, 4096));
    }
    let Operation::Opendir(_) = parse(&frame(Opcode::OPENDIR, &[&zeros(8)])) else {
        panic!("not OPENDIR")
    };
    let Operation::Releasedir(_) = parse(&frame(Opcode::RELEASEDIR, &[&zeros(24)])) else {
        panic!("not RELEASEDIR")
    };
    let Operation::Fsyncdir(_) = parse(&frame(Opcode::FSYNCDIR, &[&zeros(16)])) else {
        panic!("not FSYNCDIR")
    };
    let Operation::Listxattr(arg) = parse(&frame(Opcode::LISTXATTR, &[&u32b(64), &u32b(0)])) else {
        panic!("not LISTXATTR")
    };
    assert_eq!(arg.size, 64);
}

#[test]
fn creation_requests_with_names() {
    let mknod = frame(
        Opcode::MKNOD,
        &[
            &u32b(0o20644),
            &u32b(0x0801),
            &u32b(0o022),
            &u32b(0),
            b"dev\0",
        ],
    );
    let Operation::Mknod {
        arg,
        name,
        extensions,
    } = parse(&mknod)
    else {
        panic!("not MKNOD")
    };
    assert_eq!((arg.mode, arg.rdev, arg.umask), (0o20644, 0x0801, 0o022));
    assert_eq!(name, b"dev");
    assert!(extensions.is_empty());

    let mkdir = frame(Opcode::MKDIR, &[&u32b(0o755), &u32b(0o022), b"dir\0"]);
    let Operation::Mkdir { arg, name, .. } = parse(&mkdir) else {
        panic!("not MKDIR")
    };
    assert_eq!((arg.mode, name), (0o755, &b"dir"[..]));

    let symlink = frame(Opcode::SYMLINK, &[b"link\0", b"../target\0"]);
    let Operation::Symlink { name, target, .. } = parse(&symlink) else {
        panic!("not SYMLINK")
    };
    assert_eq!((name, target), (&b"link"[..], &b"../target"[..]));

    let create = [u32b(0o100002), u32b(0o644), u32b(0o022), u32b(1)].concat();
    for opcode in [Opcode::CREATE, Opcode::TMPFILE] {
        let bytes = frame(opcode, &[&create, b"new\0"]);
        let (arg, name) = match parse(&bytes) {
            Operation::Create { arg, name, .. } | Operation::Tmpfile { arg, name, .. } => {
                (arg, name)
            }
            other => panic!("{opcode}: {other:?}"),
        };
        assert_eq!((arg.flags, arg.mode, arg.open_flags), (0o100002, 0o644, 1));
        assert_eq!(name, b"new");
    }

    let link = frame(Opcode::LINK, &[&u64b(7), b"alias\0"]);
    let Operation::Link { arg, name } = parse(&link) else {
        panic!("not LINK")
    };
    assert_eq!((arg.oldnodeid, name), (7, &b"alias"[..]));
}

#[test]
fn renames_carry_two_names() {
    let rename = frame(Opcode::RENAME, &[&u64b(9), b"old\0new\0"]);
    let Operation::Rename {
        arg,
        old_name,
        new_name,
    } = parse(&rename)
    else {
        panic!("not RENAME")
    };
    assert_eq!(
        (arg.newdir, old_name, new_name),
        (9, &b"old"[..], &b"new"[..])
    );

    let rename2 = frame(Opcode::RENAME2, &[&u64b(9), &u32b(2), &u32b(0), b"a\0b\0"]);
    let Operation::Rename2 {
        arg,
        old_name,
        new_name,
    } = parse(&rename2)
    else {
        panic!("not RENAME2")
    };
    assert_eq!((arg.flags, old_name, new_name), (2, &b"a"[..], &b"b"[..]));

    let second_unterminated = frame(Opcode::RENAME, &[&u64b(9), b"old\0new"]);
    assert_eq!(
        Request::parse(&second_unterminated),
        Err(ParseError::MissingNul {
            opcode: Opcode::RENAME
        })
    );
}

#[test]
fn creation_extensions_are_split_off_and_checked() {
    // A supplementary-groups extension: header (size 16, type 32), nr_groups 1, group 100.
    let groups = [u32b(16), u32b(EXT_GROUPS), u32b(1), u32b(100)].concat();
    let mkdir = frame_with_ext(
        Opcode::MKDIR,
        2,
        &[&u32b(0o755), &u32b(0o022), b"dir\0", &zeros(4), &groups],
    );
    let Operation::Mkdir {
        name, extensions, ..
    } = parse(&mkdir)
    else {
        panic!("not MKDIR")
    };
    assert_eq!(name, b"dir");
    let all: Vec<_> = extensions.iter().collect();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].ext_type, EXT_GROUPS);
    let ids: Vec<u32> = all[0]
        .supplementary_groups()
        .expect("groups")
        .iter()
        .collect();
    assert_eq!(ids, [100]);

    let bad_size = [u32b(12), u32b(EXT_GROUPS), u32b(0), u32b(0)].concat();
    let bytes = frame_with_ext(Opcode::MKDIR, 2, &[&zeros(8), b"d\0", &bad_size]);
    assert_eq!(
        Request::parse(&bytes),
        Err(ParseError::MalformedExtension { offset: 0 })
    );

    let too_long = frame_with_ext(Opcode::MKDIR, 100, &[&zeros(8), b"d\0"]);
    assert_eq!(
        Request::parse(&too_long),
        Err(ParseError::ExtensionsTooLong {
            total_extlen: 100,
            available: 10
        })
    );
}

#[test]
fn setxattr_layout_depends_on_negotiation() {
    let compat = frame(Opcode::SETXATTR, &[&u32b(3), &u32b(1), b"user.x\0", b"abc"]);
    let Operation::Setxattr { arg, name, value } = parse(&compat) else {
        panic!("not SETXATTR")
    };
    assert_eq!((arg.size, arg.flags, arg.setxattr_flags), (3, 1, 0));
    assert_eq!((name, value), (&b"user.x"[..], &b"abc"[..]));

    let extended = frame(
        Opcode::SETXATTR,
        &[&u32b(3), &u32b(1), &u32b(1), &u32b(0), b"user.x\0", b"abc"],
    );
    let options = ParseOptions::negotiated(InitFlags::SETXATTR_EXT | InitFlags::ASYNC_READ);
    assert!(options.setxattr_ext);
    let request =
        Request::parse_prefix_with(&extended, extended.len(), options).expect("extended parses");
    let Operation::Setxattr { arg, name, value } = request.op else {
        panic!("not SETXATTR")
    };
    assert_eq!((arg.size, arg.setxattr_flags), (3, 1));
    assert_eq!((name, value), (&b"user.x"[..], &b"abc"[..]));

    let short_value = frame(Opcode::SETXATTR, &[&u32b(4), &u32b(0), b"user.x\0", b"abc"]);
    assert_eq!(
        Request::parse(&short_value),
        Err(ParseError::DataSizeMismatch {
            opcode: Opcode::SETXATTR,
            declared: 4,
            received: 3
        })
    );
}

#[test]
fn ioctl_and_notify_reply_carry_sized_data() {
    let ioctl = [u64b(1), u32b(0), u32b(0x5401), u64b(0), u32b(4), u32b(8)].concat();
    let bytes = frame(Opcode::IOCTL, &[&ioctl, b"wxyz"]);
    let Operation::Ioctl { arg, data } = parse(&bytes) else {
        panic!("not IOCTL")
    };
    assert_eq!(
        (arg.cmd, arg.in_size, arg.out_size, data),
        (0x5401, 4, 8, &b"wxyz"[..])
    );
    let wrong = frame(Opcode::IOCTL, &[&ioctl, b"wx"]);
    assert!(matches!(
        Request::parse(&wrong),
        Err(ParseError::DataSizeMismatch {
            declared: 4,
            received: 2,
            ..
        })
    ));

    let retrieve = [u64b(0), u64b(4096), u32b(5), u32b(0), u64b(0), u64b(0)].concat();
    let bytes = frame(Opcode::NOTIFY_REPLY, &[&retrieve, b"hello"]);
    let Operation::NotifyReply { arg, data } = parse(&bytes) else {
        panic!("not NOTIFY_REPLY")
    };
    assert_eq!((arg.offset, arg.size, data), (4096, 5, &b"hello"[..]));
    assert!(Opcode::NOTIFY_REPLY.is_no_reply());
}

#[test]
fn record_arrays_are_counted_exactly() {
    let entries = [u64b(5), u64b(1), u64b(6), u64b(2)].concat();
    let bytes = frame(Opcode::BATCH_FORGET, &[&u32b(2), &u32b(0), &entries]);
    let Operation::BatchForget { arg, entries } = parse(&bytes) else {
        panic!("not BATCH_FORGET")
    };
    assert_eq!(arg.count, 2);
    assert_eq!(entries.len(), 2);
    let all: Vec<ForgetOne> = entries.iter().collect();
    assert_eq!((all[0].nodeid, all[0].nlookup, all[1].nodeid), (5, 1, 6));
    assert_eq!(entries.get(1), Some(all[1]));
    assert_eq!(entries.get(2), None);

    let miscounted = frame(Opcode::BATCH_FORGET, &[&u32b(3), &u32b(0), &zeros(32)]);
    assert_eq!(
        Request::parse(&miscounted),
        Err(ParseError::DataSizeMismatch {
            opcode: Opcode::BATCH_FORGET,
            declared: 48,
            received: 32
        })
    );

    // REMOVEMAPPING's entries start at offset 4 of the body: not 8-aligned.
    let one = [u64b(0x1000), u64b(0x2000)].concat();
    let bytes = frame(Opcode::REMOVEMAPPING, &[&u32b(1), &one]);
    let Operation::Removemapping { arg, entries } = parse(&bytes) else {
        panic!("not REMOVEMAPPING")
    };
    assert_eq!(arg.count, 1);
    let all: Vec<RemovemappingOne> = entries.iter().collect();
    assert_eq!((all[0].moffset, all[0].len), (0x1000, 0x2000));
}

#[test]
fn unknown_and_reserved_opcodes_are_kept_not_rejected() {
    for code in [
        0,
        7,
        19,
        54,
        4095,
        4097,
        Opcode::INIT_BSWAP_RESERVED.0,
        u32::MAX,
    ] {
        let bytes = frame(Opcode(code), &[b"anything"]);
        match parse(&bytes) {
            Operation::Other { opcode, body } => {
                assert_eq!(opcode, Opcode(code));
                assert_eq!(body, b"anything");
            }
            other => panic!("opcode {code}: {other:?}"),
        }
    }
}

#[test]
fn header_errors() {
    assert_eq!(
        Request::parse(&[0; 39]),
        Err(ParseError::ShortHeader { len: 39 })
    );
    let mut bytes = frame(Opcode::GETATTR, &[&zeros(16)]);
    bytes.push(0);
    assert_eq!(
        Request::parse(&bytes),
        Err(ParseError::LengthMismatch {
            declared: 56,
            received: 57
        })
    );
    // A head longer than the declared total is a mismatch too.
    let bytes = frame(Opcode::GETATTR, &[&zeros(16)]);
    assert_eq!(
        Request::parse_prefix(&bytes, 50),
        Err(ParseError::LengthMismatch {
            declared: 56,
            received: 50
        })
    );
}

#[test]
fn truncated_arguments_say_what_is_missing() {
    let bytes = frame(Opcode::SETATTR, &[&zeros(87)]);
    assert_eq!(
        Request::parse(&bytes),
        Err(ParseError::Truncated {
            opcode: Opcode::SETATTR,
            needed: 88,
            available: 87
        })
    );
    let bytes = frame(Opcode::INIT, &[&zeros(15)]);
    assert_eq!(
        Request::parse(&bytes),
        Err(ParseError::Truncated {
            opcode: Opcode::INIT,
            needed: 16,
            available: 15
        })
    );
    // A name that continues past the first buffer cannot be parsed.
    let bytes = frame(Opcode::GETXATTR, &[&zeros(8), b"security.capability\0"]);
    assert_eq!(
        Request::parse_prefix(&bytes[..50], bytes.len()),
        Err(ParseError::Truncated {
            opcode: Opcode::GETXATTR,
            needed: 28,
            available: 10
        })
    );
}

#[test]
fn write_size_must_match_the_data() {
    let write_in = [
        u64b(1),
        u64b(0),
        u32b(5),
        u32b(0),
        u64b(0),
        u32b(0),
        u32b(0),
    ]
    .concat();
    let bytes = frame(Opcode::WRITE, &[&write_in, b"abcd"]);
    assert_eq!(
        Request::parse(&bytes),
        Err(ParseError::WriteSizeMismatch {
            declared: 5,
            received: 4
        })
    );
    // Split across buffers: only the present part is returned.
    let bytes = frame(Opcode::WRITE, &[&write_in, b"abcde"]);
    let request = Request::parse_prefix(&bytes[..82], bytes.len()).expect("split WRITE");
    let Operation::Write { data, .. } = request.op else {
        panic!("not WRITE")
    };
    assert_eq!(data, b"ab");
}

#[test]
fn errors_display_their_facts() {
    let message = ParseError::DataSizeMismatch {
        opcode: Opcode::IOCTL,
        declared: 4,
        received: 2,
    }
    .to_string();
    assert_eq!(message, "IOCTL declares 4 bytes of data but carries 2");
    let message = ParseError::ExtensionsTooLong {
        total_extlen: 2,
        available: 8,
    }
    .to_string();
    assert!(message.contains("16 bytes"), "{message}");
}

/// No opcode of 7.45 falls through to `Operation::Other`: each parses to
/// its own variant for some small zero-filled body (a zero body is a valid
/// struct, empty names, zero sizes and counts).
#[test]
fn every_opcode_has_its_own_variant() {
    let reserved = [
        Opcode::CUSE_INIT_BSWAP_RESERVED,
        Opcode::INIT_BSWAP_RESERVED,
    ];
    for &opcode in Opcode::ALL {
        let parsed = (0..=128).find_map(|len| {
            let bytes = frame(opcode, &[&zeros(len)]);
            Request::parse(&bytes)
                .ok()
                .map(|request| request.op.opcode())
        });
        assert_eq!(parsed, Some(opcode), "{opcode}");
        let fell_through = (0..=128).any(|len| {
            let bytes = frame(opcode, &[&zeros(len)]);
            matches!(
                Request::parse(&bytes),
                Ok(Request {
                    op: Operation::Other { .. },
                    ..
                })
            )
        });
        assert_eq!(fell_through, reserved.contains(&opcode), "{opcode}");
    }
}
