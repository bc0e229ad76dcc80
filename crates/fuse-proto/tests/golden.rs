//! Golden byte vectors (`tests/fixtures/*.hex`): requests as the 6.18
//! kernel sends them parse to the expected values; replies and
//! notifications encode to the expected bytes.
//!
//! The fixtures are constructed, not captured: `make_fixtures.py` packs
//! them field by field (with Python's `struct`, independently of this
//! crate) from the live observations recorded in the research report. Each
//! file's header says where its values come from. They are little-endian,
//! the byte order of the x86-64 host they describe, so this test only runs
//! on little-endian targets.
#![cfg(target_endian = "little")]

use fuse_proto::abi::{
    Attr, AttrOut, InitOut, Kstatfs, LseekOut, OpenOut, StatfsOut, Statx, StatxOut, SxTime,
    WriteOut,
};
use fuse_proto::flags::{
    FallocateMode, FopenFlags, FsyncFlags, InitFlags, InvalEntryFlags, ReadFlags, SetattrValid,
    WriteFlags,
};
use fuse_proto::notify::{Notification, NotifyCode};
use fuse_proto::reply::{Errno, Reply, ReplyView};
use fuse_proto::{Opcode, Operation, Request};

const O_RDWR_LARGEFILE: u32 = 0o100002;
const O_RDWR_DIRECT_LARGEFILE: u32 = 0o140002;
const LOCK_OWNER: u64 = 0x1122_3344_5566_7788;

/// Reads a fixture: hex bytes, `#` comments, `!fill XX N` runs.
fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{path}: {err}"));
    assert!(
        text.starts_with("# ") && text.contains("# Origin: "),
        "{name} lacks its provenance header"
    );
    let mut bytes = Vec::new();
    for line in text.lines() {
        let content = line.split('#').next().unwrap_or("").trim();
        if let Some(fill) = content.strip_prefix("!fill ") {
            let mut words = fill.split_whitespace();
            let byte = u8::from_str_radix(words.next().expect("fill byte"), 16).expect("hex byte");
            let count: usize = words.next().expect("fill count").parse().expect("count");
            bytes.resize(bytes.len() + count, byte);
            continue;
        }
        for word in content.split_whitespace() {
            bytes.push(u8::from_str_radix(word, 16).unwrap_or_else(|_| panic!("{name}: {word:?}")));
        }
    }
    bytes
}

fn request(bytes: &[u8]) -> Request<'_> {
    Request::parse(bytes).unwrap_or_else(|err| panic!("golden frame does not parse: {err}"))
}

#[test]
fn init_from_linux_6_18() {
    let bytes = fixture("request-init.hex");
    let request = request(&bytes);
    assert_eq!(request.header.len, 104);
    assert_eq!(request.opcode(), Opcode::INIT);
    assert_eq!((request.header.unique, request.header.nodeid), (2, 0));
    assert_eq!((request.header.uid, request.header.pid), (0, 0));
    let Operation::Init(init) = request.op else {
        panic!("not INIT: {:?}", request.op)
    };
    assert_eq!(
        (init.major, init.minor, init.max_readahead),
        (7, 45, 131072)
    );
    assert_eq!((init.flags, init.flags2), (0x73ff_fffb, 0x0000_05fd));
    let offer = InitFlags::from_halves(init.flags, init.flags2);
    assert!(offer.contains(InitFlags::ASYNC_DIO | InitFlags::MAX_PAGES | InitFlags::INIT_EXT));
    assert!(offer.contains(InitFlags::DIRECT_IO_ALLOW_MMAP | InitFlags::REQUEST_TIMEOUT));
    assert!(
        !offer.intersects(InitFlags::FILE_OPS | InitFlags::MAP_ALIGNMENT | InitFlags::SUBMOUNTS)
    );
    assert!(offer.unknown().is_empty());
}

#[test]
fn init_from_a_pre_7_36_kernel_reads_missing_fields_as_zero() {
    let bytes = fixture("request-init-7.31.hex");
    let Operation::Init(init) = request(&bytes).op else {
        panic!("not INIT")
    };
    assert_eq!((init.major, init.minor, init.flags), (7, 31, 0x03ff_fffb));
    assert_eq!(init.flags2, 0);
    assert_eq!(init.unused, [0; 11]);
}

#[test]
fn open_getattr_flush_release() {
    let bytes = fixture("request-open.hex");
    let open = request(&bytes);
    assert_eq!((open.header.nodeid, open.header.unique), (1, 4));
    assert_eq!(
        open.op,
        Operation::Open(fuse_proto::abi::OpenIn {
            flags: O_RDWR_LARGEFILE,
            open_flags: 0
        })
    );

    let bytes = fixture("request-getattr.hex");
    let Operation::Getattr(getattr) = request(&bytes).op else {
        panic!("not GETATTR")
    };
    assert_eq!((getattr.getattr_flags, getattr.fh), (0, 0));

    let bytes = fixture("request-flush.hex");
    let Operation::Flush(flush) = request(&bytes).op else {
        panic!("not FLUSH")
    };
    assert_eq!((flush.fh, flush.lock_owner), (1, LOCK_OWNER));

    let bytes = fixture("request-release.hex");
    let release = request(&bytes);
    assert_eq!(release.header.pid, 0);
    let Operation::Release(arg) = release.op else {
        panic!("not RELEASE")
    };
    assert_eq!(
        (arg.fh, arg.flags, arg.release_flags),
        (1, O_RDWR_LARGEFILE, 0)
    );
}

#[test]
fn statx_from_coreutils_stat() {
    let bytes = fixture("request-statx.hex");
    let Operation::Statx(statx) = request(&bytes).op else {
        panic!("not STATX")
    };
    assert_eq!((statx.getattr_flags, statx.fh), (0, 0));
    assert_eq!((statx.sx_flags, statx.sx_mask), (0, 0xfff));
}

#[test]
fn direct_io_read_and_write() {
    let bytes = fixture("request-read.hex");
    let Operation::Read(read) = request(&bytes).op else {
        panic!("not READ")
    };
    assert_eq!((read.offset, read.size), (1 << 20, 1 << 20));
    assert_eq!(ReadFlags(read.read_flags), ReadFlags::LOCKOWNER);
    assert_eq!(
        (read.lock_owner, read.flags),
        (LOCK_OWNER, O_RDWR_DIRECT_LARGEFILE)
    );

    let bytes = fixture("request-write.hex");
    assert_eq!(bytes.len(), 1_048_656);
    let write = request(&bytes);
    let Operation::Write { arg, data } = write.op else {
        panic!("not WRITE")
    };
    assert_eq!(arg.size, 1 << 20);
    assert_eq!(WriteFlags(arg.write_flags), WriteFlags::LOCKOWNER);
    assert_eq!(arg.flags, O_RDWR_DIRECT_LARGEFILE);
    assert_eq!(data.len(), 1 << 20);
    assert!(data.iter().all(|&byte| byte == 0xa5));

    // The server's read slot: 80 header bytes and one 4 KiB page in the
    // first iovec, the rest in the spill-over buffer.
    let head = &bytes[..fuse_proto::WRITE_HEADER_LEN + 4096];
    let split = Request::parse_prefix(head, bytes.len()).expect("split WRITE parses");
    let Operation::Write {
        arg: split_arg,
        data,
    } = split.op
    else {
        panic!("not WRITE")
    };
    assert_eq!(split_arg, arg);
    assert_eq!(data.len(), 4096);
}

#[test]
fn getxattr_security_capability() {
    let bytes = fixture("request-getxattr.hex");
    assert_eq!(bytes.len(), 68);
    let Operation::Getxattr { arg, name } = request(&bytes).op else {
        panic!("not GETXATTR")
    };
    assert_eq!(arg.size, 0);
    assert_eq!(name, b"security.capability");
}

#[test]
fn interrupt_of_a_read() {
    let bytes = fixture("request-interrupt.hex");
    let interrupt = request(&bytes);
    assert_eq!(interrupt.header.len, 48);
    assert_eq!(interrupt.header.unique, 15);
    assert_eq!(
        interrupt.header.unique & fuse_proto::abi::UNIQUE_INTERRUPT_BIT,
        1
    );
    let Operation::Interrupt(arg) = interrupt.op else {
        panic!("not INTERRUPT")
    };
    assert_eq!(arg.unique, 14);
    assert_eq!(arg.unique | 1, interrupt.header.unique);
}

#[test]
fn setattr_fsync_fallocate_lseek() {
    let bytes = fixture("request-setattr.hex");
    let Operation::Setattr(setattr) = request(&bytes).op else {
        panic!("not SETATTR")
    };
    assert_eq!(
        SetattrValid(setattr.valid),
        SetattrValid::SIZE | SetattrValid::FH | SetattrValid::LOCKOWNER
    );
    assert_eq!((setattr.fh, setattr.size), (1, 2 << 30));

    let bytes = fixture("request-fsync.hex");
    let Operation::Fsync(fsync) = request(&bytes).op else {
        panic!("not FSYNC")
    };
    assert_eq!(FsyncFlags(fsync.fsync_flags), FsyncFlags::FDATASYNC);

    let bytes = fixture("request-fallocate.hex");
    let Operation::Fallocate(fallocate) = request(&bytes).op else {
        panic!("not FALLOCATE")
    };
    assert_eq!(
        FallocateMode(fallocate.mode),
        FallocateMode::KEEP_SIZE | FallocateMode::PUNCH_HOLE
    );
    assert_eq!((fallocate.offset, fallocate.length), (65536, 131072));

    let bytes = fixture("request-lseek.hex");
    let Operation::Lseek(lseek) = request(&bytes).op else {
        panic!("not LSEEK")
    };
    assert_eq!((lseek.offset, lseek.whence), (4096, 3));
}

#[test]
fn every_proper_prefix_of_a_request_is_rejected() {
    for name in [
        "request-init.hex",
        "request-open.hex",
        "request-getattr.hex",
        "request-statx.hex",
        "request-read.hex",
        "request-getxattr.hex",
        "request-flush.hex",
        "request-release.hex",
        "request-setattr.hex",
        "request-interrupt.hex",
    ] {
        let bytes = fixture(name);
        for cut in 0..bytes.len() {
            assert!(
                Request::parse(&bytes[..cut]).is_err(),
                "{name} cut at {cut}"
            );
        }
    }
}

fn server_init_out() -> InitOut {
    let flags = InitFlags::ASYNC_READ
        | InitFlags::BIG_WRITES
        | InitFlags::ASYNC_DIO
        | InitFlags::ABORT_ERROR
        | InitFlags::MAX_PAGES
        | InitFlags::INIT_EXT
        | InitFlags::DIRECT_IO_ALLOW_MMAP;
    InitOut {
        major: 7,
        minor: 45,
        max_readahead: 131072,
        flags: flags.low(),
        max_background: 256,
        congestion_threshold: 192,
        max_write: 1 << 20,
        time_gran: 1,
        max_pages: 256,
        flags2: flags.high(),
        ..InitOut::default()
    }
}

/// Encodes, compares with the fixture, and parses the fixture back as the
/// kernel would.
fn assert_reply(reply: Reply, name: &str) -> Vec<u8> {
    let expected = fixture(name);
    assert_eq!(reply.as_bytes(), expected.as_slice(), "{name}");
    assert_eq!(reply.total_len() as usize, expected.len());
    let view = ReplyView::parse(&expected).unwrap_or_else(|err| panic!("{name}: {err}"));
    assert_eq!(view.header.unique, reply.unique());
    expected
}

#[test]
fn init_replies_for_new_and_old_kernels() {
    let out = server_init_out();
    let bytes = assert_reply(Reply::init(2, &out, 45), "reply-init.hex");
    let view = ReplyView::parse(&bytes).expect("valid reply");
    assert_eq!(view.payload_as::<InitOut>(), Some(out));
    assert_reply(Reply::init(2, &out, 22), "reply-init-7.22.hex");
}

#[test]
fn error_replies_are_header_only() {
    assert_reply(Reply::error(4, Errno::ENOSYS), "reply-error-enosys.hex");
    assert_reply(
        Reply::error(15, Errno::EAGAIN),
        "reply-interrupt-eagain.hex",
    );
}

#[test]
fn struct_replies() {
    let attr = AttrOut {
        attr_valid: 1,
        attr: Attr {
            ino: 1,
            size: 1 << 30,
            blocks: (1 << 30) / 512,
            atime: 1_700_000_000,
            mtime: 1_700_000_000,
            ctime: 1_700_000_000,
            mode: 0o100644,
            nlink: 1,
            blksize: 4096,
            ..Attr::default()
        },
        ..AttrOut::default()
    };
    let bytes = assert_reply(Reply::with(6, &attr), "reply-getattr.hex");
    assert_eq!(ReplyView::parse(&bytes).unwrap().payload_as(), Some(attr));

    let open = OpenOut {
        fh: 1,
        open_flags: (FopenFlags::DIRECT_IO | FopenFlags::PARALLEL_DIRECT_WRITES).bits(),
        backing_id: 0,
    };
    assert_reply(Reply::with(4, &open), "reply-open.hex");

    let write = WriteOut {
        size: 1 << 20,
        padding: 0,
    };
    assert_reply(Reply::with(12, &write), "reply-write.hex");

    let time = SxTime {
        tv_sec: 1_700_000_000,
        tv_nsec: 5,
        reserved: 0,
    };
    let statx = StatxOut {
        attr_valid: 1,
        stat: Statx {
            mask: 0xfff,
            blksize: 4096,
            nlink: 1,
            mode: 0o100644,
            ino: 1,
            size: 1 << 30,
            blocks: (1 << 30) / 512,
            atime: time,
            btime: time,
            ctime: time,
            mtime: time,
            ..Statx::default()
        },
        ..StatxOut::default()
    };
    assert_reply(Reply::with(8, &statx), "reply-statx.hex");

    let statfs = StatfsOut {
        st: Kstatfs {
            blocks: 262_144,
            files: 1,
            bsize: 4096,
            namelen: 255,
            frsize: 4096,
            ..Kstatfs::default()
        },
    };
    assert_reply(Reply::with(28, &statfs), "reply-statfs.hex");

    assert_reply(
        Reply::with(26, &LseekOut { offset: 8192 }),
        "reply-lseek.hex",
    );
}

#[test]
fn read_reply_header_counts_the_data() {
    let reply = Reply::data_header(10, 1 << 20);
    assert_eq!(
        reply.as_bytes(),
        fixture("reply-read-header.hex").as_slice()
    );
    assert_eq!(reply.trailing_len(), 1 << 20);
}

fn assert_notification(notification: Notification<'_>, code: NotifyCode, name: &str) {
    let bytes = notification.to_vec();
    assert_eq!(bytes, fixture(name), "{name}");
    assert_eq!(notification.total_len() as usize, bytes.len());
    let view = ReplyView::parse(&bytes).unwrap_or_else(|err| panic!("{name}: {err}"));
    assert!(view.is_notification());
    assert_eq!(view.header.error, code.0);
}

#[test]
fn notifications() {
    assert_notification(
        Notification::inval_inode(1, -1, 0),
        NotifyCode::INVAL_INODE,
        "notify-inval-inode.hex",
    );
    assert_notification(
        Notification::inval_entry(1, b"disk.raw", InvalEntryFlags::EXPIRE_ONLY).unwrap(),
        NotifyCode::INVAL_ENTRY,
        "notify-inval-entry.hex",
    );
    assert_notification(
        Notification::delete(1, 2, b"disk.raw").unwrap(),
        NotifyCode::DELETE,
        "notify-delete.hex",
    );
    assert_notification(
        Notification::store(1, 4096, b"ABCDEFGH").unwrap(),
        NotifyCode::STORE,
        "notify-store.hex",
    );
    assert_notification(
        Notification::retrieve(77, 1, 0, 4096),
        NotifyCode::RETRIEVE,
        "notify-retrieve.hex",
    );
    assert_notification(
        Notification::poll_wakeup(0xab_cdef),
        NotifyCode::POLL,
        "notify-poll.hex",
    );
    assert_notification(
        Notification::resend(),
        NotifyCode::RESEND,
        "notify-resend.hex",
    );
    assert_notification(
        Notification::inc_epoch(),
        NotifyCode::INC_EPOCH,
        "notify-inc-epoch.hex",
    );
    assert_notification(
        Notification::prune(&[5, 6]).unwrap(),
        NotifyCode::PRUNE,
        "notify-prune.hex",
    );
}
