//! Property tests: no input makes the parsers panic, what a parser accepts
//! is self-consistent, and every encoder's output parses back to what was
//! encoded.

use proptest::prelude::*;
use zerocopy::{FromBytes, IntoBytes};

use fuse_proto::abi::{
    self, AttrOut, BmapOut, CopyFileRangeOut, CuseInitOut, EntryOut, FileLock, GetxattrOut,
    InHeader, InitOut, IoctlOut, LkOut, LseekOut, OpenOut, PollOut, StatfsOut, StatxOut, WriteOut,
};
use fuse_proto::notify::{Notification, NotifyCode};
use fuse_proto::reply::{DirentBuffer, DirentError, Errno, Reply, ReplyPayload, ReplyView};
use fuse_proto::{Opcode, Operation, ParseOptions, Request};

/// Some opcode: mostly known ones (so parsing goes deep), sometimes any value.
fn opcode() -> impl Strategy<Value = Opcode> {
    prop_oneof![
        4 => proptest::sample::select(Opcode::ALL.to_vec()),
        1 => any::<u32>().prop_map(Opcode),
    ]
}

fn options() -> impl Strategy<Value = ParseOptions> {
    any::<bool>().prop_map(|setxattr_ext| ParseOptions { setxattr_ext })
}

/// A frame whose header is self-consistent (so that the parser reaches the
/// per-opcode code) around an arbitrary body.
fn framed() -> impl Strategy<Value = Vec<u8>> {
    (
        opcode(),
        prop_oneof![3 => Just(0u16), 1 => 0u16..8, 1 => any::<u16>()],
        any::<u64>(),
        proptest::collection::vec(any::<u8>(), 0..400),
    )
        .prop_map(|(opcode, total_extlen, unique, body)| {
            let header = InHeader {
                len: u32::try_from(size_of::<InHeader>() + body.len()).unwrap_or(u32::MAX),
                opcode: opcode.0,
                unique,
                nodeid: 1,
                total_extlen,
                ..InHeader::default()
            };
            [header.as_bytes(), &body].concat()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = Request::parse(&bytes);
    }

    #[test]
    fn parse_prefix_never_panics(
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
        cut in any::<usize>(),
        total_len in prop_oneof![any::<usize>(), 0usize..700],
        options in options(),
    ) {
        let head = &bytes[..cut % (bytes.len() + 1)];
        let _ = Request::parse_prefix_with(head, total_len, options);
    }

    #[test]
    fn accepted_requests_are_self_consistent(frame in framed(), cut in any::<usize>(), options in options()) {
        let full = Request::parse_prefix_with(&frame, frame.len(), options);
        if let Ok(request) = &full {
            prop_assert_eq!(request.header.len as usize, frame.len());
            prop_assert_eq!(request.op.opcode(), request.opcode());
        }
        // Whatever parses from a first buffer also parses whole, identically
        // up to the bulk data that the first buffer cuts short.
        let head = &frame[..cut % (frame.len() + 1)];
        if let Ok(partial) = Request::parse_prefix_with(head, frame.len(), options) {
            let whole = full.as_ref().map_err(|err| TestCaseError::fail(err.to_string()))?;
            prop_assert_eq!(partial.header, whole.header);
            prop_assert_eq!(partial.op.opcode(), whole.op.opcode());
        }
    }
}

/// Builds the frame the kernel would send for a fixed-size argument struct.
fn request_frame(opcode: Opcode, arg: &[u8], tail: &[u8]) -> Vec<u8> {
    let header = InHeader {
        len: u32::try_from(size_of::<InHeader>() + arg.len() + tail.len()).expect("small"),
        opcode: opcode.0,
        unique: 2,
        nodeid: 1,
        ..InHeader::default()
    };
    [header.as_bytes(), arg, tail].concat()
}

/// An arbitrary value of a `FromBytes` struct.
fn arbitrary<T: FromBytes + core::fmt::Debug>() -> impl Strategy<Value = T> {
    proptest::collection::vec(any::<u8>(), size_of::<T>())
        .prop_map(|bytes| T::read_from_bytes(&bytes).expect("exact size"))
}

/// Encode → parse for every request struct that tests build frames from.
macro_rules! request_round_trip {
    ($($test:ident: $opcode:ident, $ty:ty, $variant:ident;)*) => {
        proptest! {
            $(
                #[test]
                fn $test(arg in arbitrary::<$ty>()) {
                    let frame = request_frame(Opcode::$opcode, arg.as_bytes(), &[]);
                    let request = Request::parse(&frame).map_err(|err| TestCaseError::fail(err.to_string()))?;
                    prop_assert_eq!(request.op, Operation::$variant(arg));
                }
            )*
        }
    };
}

request_round_trip! {
    getattr_round_trips: GETATTR, abi::GetattrIn, Getattr;
    setattr_round_trips: SETATTR, abi::SetattrIn, Setattr;
    open_round_trips: OPEN, abi::OpenIn, Open;
    read_round_trips: READ, abi::ReadIn, Read;
    release_round_trips: RELEASE, abi::ReleaseIn, Release;
    flush_round_trips: FLUSH, abi::FlushIn, Flush;
    fsync_round_trips: FSYNC, abi::FsyncIn, Fsync;
    interrupt_round_trips: INTERRUPT, abi::InterruptIn, Interrupt;
    fallocate_round_trips: FALLOCATE, abi::FallocateIn, Fallocate;
    lseek_round_trips: LSEEK, abi::LseekIn, Lseek;
    statx_round_trips: STATX, abi::StatxIn, Statx;
    init_round_trips: INIT, abi::InitIn, Init;
}

proptest! {
    #[test]
    fn write_round_trips(arg in arbitrary::<abi::WriteIn>(), data in proptest::collection::vec(any::<u8>(), 0..300)) {
        let arg = abi::WriteIn { size: u32::try_from(data.len()).expect("small"), ..arg };
        let frame = request_frame(Opcode::WRITE, arg.as_bytes(), &data);
        let request = Request::parse(&frame).map_err(|err| TestCaseError::fail(err.to_string()))?;
        prop_assert_eq!(request.op, Operation::Write { arg, data: &data });
    }

    #[test]
    fn getxattr_round_trips(
        arg in arbitrary::<abi::GetxattrIn>(),
        name in proptest::collection::vec(1u8..=255, 0..100),
    ) {
        let frame = request_frame(Opcode::GETXATTR, arg.as_bytes(), &[&name[..], &[0]].concat());
        let request = Request::parse(&frame).map_err(|err| TestCaseError::fail(err.to_string()))?;
        prop_assert_eq!(request.op, Operation::Getxattr { arg, name: &name });
    }
}

/// Checks a reply the way the kernel does and returns its payload.
fn kernel_view(reply: &Reply, trailing: &[u8]) -> Result<Vec<u8>, TestCaseError> {
    let bytes = [reply.as_bytes(), trailing].concat();
    let view = ReplyView::parse(&bytes).map_err(|err| TestCaseError::fail(err.to_string()))?;
    prop_assert_eq!(view.header.unique, reply.unique());
    prop_assert_eq!(view.header.error, reply.error_code());
    prop_assert_eq!(reply.total_len() as usize, bytes.len());
    Ok(view.payload.to_vec())
}

/// Encode → parse for every reply struct with a parser (`FromBytes`).
macro_rules! reply_round_trip {
    ($($test:ident: $ty:ty;)*) => {
        proptest! {
            $(
                #[test]
                fn $test(value in arbitrary::<$ty>(), unique in 1u64..) {
                    let reply = Reply::with(unique, &value);
                    let payload = kernel_view(&reply, &[])?;
                    prop_assert_eq!(<$ty>::read_from_bytes(&payload).ok(), Some(value));
                }
            )*
        }
    };
}

reply_round_trip! {
    init_out_round_trips: InitOut;
    attr_out_round_trips: AttrOut;
    open_out_round_trips: OpenOut;
    write_out_round_trips: WriteOut;
    statfs_out_round_trips: StatfsOut;
    getxattr_out_round_trips: GetxattrOut;
    lseek_out_round_trips: LseekOut;
    statx_out_round_trips: StatxOut;
}

/// Reply structs without a parser: the payload must be exactly their bytes.
fn assert_payload<T: ReplyPayload>(unique: u64, value: &T) -> Result<(), TestCaseError> {
    let payload = kernel_view(&Reply::with(unique, value), &[])?;
    prop_assert_eq!(payload.as_slice(), value.as_bytes());
    Ok(())
}

proptest! {
    #[test]
    fn send_only_reply_payloads_are_exact(
        (a, b, c, d) in (any::<u64>(), any::<u64>(), any::<u32>(), any::<u32>()),
        unique in 1u64..,
    ) {
        let entry = EntryOut { nodeid: a, generation: b, entry_valid_nsec: c, attr_valid_nsec: d, ..EntryOut::default() };
        assert_payload(unique, &entry)?;
        let lock = FileLock { start: a, end: b, lock_type: c, pid: d };
        assert_payload(unique, &LkOut { lk: lock })?;
        assert_payload(unique, &BmapOut { block: a })?;
        assert_payload(unique, &IoctlOut { result: c as i32, flags: d, in_iovs: 1, out_iovs: 2 })?;
        assert_payload(unique, &PollOut { revents: c, padding: 0 })?;
        assert_payload(unique, &CopyFileRangeOut { bytes_copied: b })?;
        assert_payload(unique, &CuseInitOut { max_read: c, max_write: d, ..CuseInitOut::default() })?;
        let create = Reply::create(unique, &entry, &OpenOut { fh: a, ..OpenOut::default() });
        prop_assert_eq!(kernel_view(&create, &[])?.len(), 128 + 16);
        let ioctl = Reply::with_data(unique, &IoctlOut::default(), 5);
        prop_assert_eq!(kernel_view(&ioctl, b"12345")?.len(), 16 + 5);
    }

    #[test]
    fn error_replies_are_always_valid(value in any::<i32>(), unique in 1u64..) {
        let errno = Errno::from_any(value);
        prop_assert!((1..=511).contains(&errno.get()));
        let reply = Reply::error(unique, errno);
        prop_assert!(kernel_view(&reply, &[])?.is_empty());
        prop_assert_eq!(reply.error_code(), -errno.get());
    }

    #[test]
    fn data_headers_count_their_data(data_len in any::<u32>(), unique in any::<u64>()) {
        let reply = Reply::data_header(unique, data_len);
        prop_assert_eq!(reply.as_bytes().len(), 16);
        prop_assert_eq!(u64::from(reply.total_len()), (16 + u64::from(data_len)).min(u64::from(u32::MAX)));
        prop_assert_eq!(reply.total_len() - 16, reply.trailing_len());
    }

    #[test]
    fn init_replies_fit_the_kernel_minor(value in arbitrary::<InitOut>(), minor in any::<u32>()) {
        let reply = Reply::init(2, &value, minor);
        let payload = kernel_view(&reply, &[])?;
        prop_assert_eq!(payload.len(), abi::init_out_len(minor));
        prop_assert_eq!(&payload[..], &value.as_bytes()[..payload.len()]);
    }

    #[test]
    fn notifications_are_accepted_and_sized_exactly(
        name in proptest::collection::vec(1u8..=255, 0..300),
        data in proptest::collection::vec(any::<u8>(), 0..300),
        nodeids in proptest::collection::vec(any::<u64>(), 0..40),
        (ino, off, len) in (any::<u64>(), any::<i64>(), any::<i64>()),
    ) {
        let read_u32 = |bytes: &[u8], at: usize| u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap());
        let checked = |notification: Notification<'_>, code: NotifyCode| -> Result<Vec<u8>, TestCaseError> {
            let bytes = notification.to_vec();
            let view = ReplyView::parse(&bytes).map_err(|err| TestCaseError::fail(err.to_string()))?;
            prop_assert!(view.is_notification());
            prop_assert_eq!(view.header.error, code.0);
            prop_assert_eq!(notification.code(), code);
            let parts: usize = notification.parts().iter().map(|part| part.len()).sum();
            prop_assert_eq!(parts, bytes.len());
            Ok(view.payload.to_vec())
        };
        let body = checked(Notification::inval_inode(ino, off, len), NotifyCode::INVAL_INODE)?;
        prop_assert_eq!(body.len(), 24);
        let entry = Notification::inval_entry(ino, &name, Default::default()).unwrap();
        let body = checked(entry, NotifyCode::INVAL_ENTRY)?;
        prop_assert_eq!(read_u32(&body, 8) as usize, name.len());
        prop_assert_eq!(body.len(), 16 + name.len() + 1);
        prop_assert_eq!(body.last(), Some(&0));
        let body = checked(Notification::delete(ino, 2, &name).unwrap(), NotifyCode::DELETE)?;
        prop_assert_eq!(read_u32(&body, 16) as usize, name.len());
        prop_assert_eq!(body.len(), 24 + name.len() + 1);
        let body = checked(Notification::store(ino, 0, &data).unwrap(), NotifyCode::STORE)?;
        prop_assert_eq!(read_u32(&body, 16) as usize, data.len());
        prop_assert_eq!(&body[24..], &data[..]);
        let body = checked(Notification::prune(&nodeids).unwrap(), NotifyCode::PRUNE)?;
        prop_assert_eq!(read_u32(&body, 0) as usize, nodeids.len());
        prop_assert_eq!(body.len() - 16, nodeids.len() * 8);
        prop_assert_eq!(checked(Notification::retrieve(1, ino, 0, 7), NotifyCode::RETRIEVE)?.len(), 32);
        prop_assert_eq!(checked(Notification::poll_wakeup(ino), NotifyCode::POLL)?.len(), 8);
    }

    #[test]
    fn dirent_buffers_hold_exactly_the_accepted_records(
        entries in proptest::collection::vec(
            (any::<u64>(), any::<u64>(), 0u32..16, proptest::collection::vec(any::<u8>(), 0..40)),
            0..20,
        ),
        capacity in 0usize..1024,
    ) {
        let mut storage = vec![0xeeu8; capacity];
        let mut records = DirentBuffer::new(&mut storage);
        let mut accepted = Vec::new();
        for (ino, off, kind, name) in &entries {
            match records.push(*ino, *off, *kind, name) {
                Ok(()) => accepted.push((*ino, *off, *kind, name.clone())),
                Err(DirentError::InvalidName) => {
                    prop_assert!(name.is_empty() || name.contains(&b'/') || name.contains(&0));
                }
                Err(DirentError::Full) => {}
            }
        }
        prop_assert!(records.len() <= capacity);
        prop_assert_eq!(records.len() % 8, 0);
        // Decode the records back, as the kernel's parse_dirfile does.
        let bytes = records.as_bytes();
        let mut at = 0;
        for (ino, off, kind, name) in &accepted {
            let record = &bytes[at..];
            prop_assert_eq!(u64::from_ne_bytes(record[0..8].try_into().unwrap()), *ino);
            prop_assert_eq!(u64::from_ne_bytes(record[8..16].try_into().unwrap()), *off);
            let namelen = u32::from_ne_bytes(record[16..20].try_into().unwrap()) as usize;
            prop_assert_eq!(u32::from_ne_bytes(record[20..24].try_into().unwrap()), *kind);
            prop_assert_eq!(&record[24..24 + namelen], &name[..]);
            let size = abi::dirent_size(namelen);
            prop_assert!(record[24 + namelen..size].iter().all(|&byte| byte == 0));
            at += size;
        }
        prop_assert_eq!(at, bytes.len());
    }
}
