//! Tables that describe the Rust definitions in kernel terms (C struct,
//! field and macro names), computed from the definitions themselves with
//! `size_of`/`offset_of!`. The reference-layout test and the C header probe
//! compare these tables against independent sources.
#![allow(dead_code)] // Each test binary uses a different part.

use core::mem::offset_of;

use fuse_proto::abi;
use fuse_proto::flags::{
    AttrFlags, CuseInitFlags, FallocateMode, FopenFlags, FsyncFlags, GetattrFlags, InitFlags,
    InvalEntryFlags, IoctlFlags, LkFlags, OpenInFlags, PollFlags, ReadFlags, ReleaseFlags,
    SetattrValid, SetupmappingFlags, SetxattrFlags, WriteFlags,
};
use fuse_proto::notify::NotifyCode;
use fuse_proto::uring::UringCmd;
use fuse_proto::{Opcode, ioctl};

/// One field of a struct, in kernel terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldLayout {
    /// The C field name.
    pub c_name: &'static str,
    /// Byte offset.
    pub offset: usize,
    /// Byte size (0 for a C flexible array member).
    pub size: usize,
    /// A C flexible array member (not part of the Rust struct).
    pub flexible: bool,
}

/// One struct, in kernel terms.
#[derive(Debug, Clone)]
pub struct StructLayout {
    /// The C struct name (without `struct`).
    pub c_name: &'static str,
    /// The Rust type name in `fuse_proto::abi`.
    pub rust_name: &'static str,
    /// `size_of`.
    pub size: usize,
    /// Fields in declaration order.
    pub fields: Vec<FieldLayout>,
}

impl StructLayout {
    pub fn field(&self, c_name: &str) -> Option<&FieldLayout> {
        self.fields.iter().find(|field| field.c_name == c_name)
    }
}

macro_rules! c_field_name {
    ($field:ident) => {
        stringify!($field)
    };
    ($field:ident, $c_name:literal) => {
        $c_name
    };
}

/// `layout!(RustType, "c_name", { field, field as "c_field", ... } [, flexible "name"])`
macro_rules! layout {
    ($ty:ident, $c_name:literal, { $($field:ident $(as $c_field:literal)?),* $(,)? }
        $(, flexible $flex:literal)?) => {{
        let value = <abi::$ty as Default>::default();
        let fields = [$(
            FieldLayout {
                c_name: c_field_name!($field $(, $c_field)?),
                offset: offset_of!(abi::$ty, $field),
                size: size_of_val(&value.$field),
                flexible: false,
            }
        ),*]
        .into_iter()
        .chain([$(
            FieldLayout {
                c_name: $flex,
                offset: size_of::<abi::$ty>(),
                size: 0,
                flexible: true,
            }
        )?])
        .collect();
        StructLayout {
            c_name: $c_name,
            rust_name: stringify!($ty),
            size: size_of::<abi::$ty>(),
            fields,
        }
    }};
}

/// Every struct of `fuse_proto::abi` with its kernel name.
pub fn struct_layouts() -> Vec<StructLayout> {
    vec![
        layout!(InHeader, "fuse_in_header", { len, opcode, unique, nodeid, uid, gid, pid,
            total_extlen, padding }),
        layout!(OutHeader, "fuse_out_header", { len, error, unique }),
        layout!(ExtHeader, "fuse_ext_header", { size, ext_type as "type" }),
        layout!(SecctxHeader, "fuse_secctx_header", { size, nr_secctx }),
        layout!(Secctx, "fuse_secctx", { size, padding }),
        layout!(SuppGroups, "fuse_supp_groups", { nr_groups }, flexible "groups"),
        layout!(InitIn, "fuse_init_in", { major, minor, max_readahead, flags, flags2, unused }),
        layout!(InitOut, "fuse_init_out", { major, minor, max_readahead, flags, max_background,
            congestion_threshold, max_write, time_gran, max_pages, map_alignment, flags2,
            max_stack_depth, request_timeout, unused }),
        layout!(CuseInitIn, "cuse_init_in", { major, minor, unused, flags }),
        layout!(CuseInitOut, "cuse_init_out", { major, minor, unused, flags, max_read,
            max_write, dev_major, dev_minor, spare }),
        layout!(Attr, "fuse_attr", { ino, size, blocks, atime, mtime, ctime, atimensec,
            mtimensec, ctimensec, mode, nlink, uid, gid, rdev, blksize, flags }),
        layout!(AttrOut, "fuse_attr_out", { attr_valid, attr_valid_nsec, dummy, attr }),
        layout!(EntryOut, "fuse_entry_out", { nodeid, generation, entry_valid, attr_valid,
            entry_valid_nsec, attr_valid_nsec, attr }),
        layout!(GetattrIn, "fuse_getattr_in", { getattr_flags, dummy, fh }),
        layout!(SetattrIn, "fuse_setattr_in", { valid, padding, fh, size, lock_owner, atime,
            mtime, ctime, atimensec, mtimensec, ctimensec, mode, unused4, uid, gid, unused5 }),
        layout!(SxTime, "fuse_sx_time", { tv_sec, tv_nsec, reserved as "__reserved" }),
        layout!(Statx, "fuse_statx", { mask, blksize, attributes, nlink, uid, gid, mode,
            spare0 as "__spare0", ino, size, blocks, attributes_mask, atime, btime, ctime,
            mtime, rdev_major, rdev_minor, dev_major, dev_minor, spare2 as "__spare2" }),
        layout!(StatxIn, "fuse_statx_in", { getattr_flags, reserved, fh, sx_flags, sx_mask }),
        layout!(StatxOut, "fuse_statx_out", { attr_valid, attr_valid_nsec, flags, spare,
            stat }),
        layout!(Kstatfs, "fuse_kstatfs", { blocks, bfree, bavail, files, ffree, bsize, namelen,
            frsize, padding, spare }),
        layout!(StatfsOut, "fuse_statfs_out", { st }),
        layout!(ForgetIn, "fuse_forget_in", { nlookup }),
        layout!(ForgetOne, "fuse_forget_one", { nodeid, nlookup }),
        layout!(BatchForgetIn, "fuse_batch_forget_in", { count, dummy }),
        layout!(MknodIn, "fuse_mknod_in", { mode, rdev, umask, padding }),
        layout!(MkdirIn, "fuse_mkdir_in", { mode, umask }),
        layout!(RenameIn, "fuse_rename_in", { newdir }),
        layout!(Rename2In, "fuse_rename2_in", { newdir, flags, padding }),
        layout!(LinkIn, "fuse_link_in", { oldnodeid }),
        layout!(AccessIn, "fuse_access_in", { mask, padding }),
        layout!(SyncfsIn, "fuse_syncfs_in", { padding }),
        layout!(Dirent, "fuse_dirent", { ino, off, namelen, dirent_type as "type" },
            flexible "name"),
        layout!(Direntplus, "fuse_direntplus", { entry_out, dirent }),
        layout!(OpenIn, "fuse_open_in", { flags, open_flags }),
        layout!(OpenOut, "fuse_open_out", { fh, open_flags, backing_id }),
        layout!(CreateIn, "fuse_create_in", { flags, mode, umask, open_flags }),
        layout!(ReadIn, "fuse_read_in", { fh, offset, size, read_flags, lock_owner, flags,
            padding }),
        layout!(WriteIn, "fuse_write_in", { fh, offset, size, write_flags, lock_owner, flags,
            padding }),
        layout!(WriteOut, "fuse_write_out", { size, padding }),
        layout!(ReleaseIn, "fuse_release_in", { fh, flags, release_flags, lock_owner }),
        layout!(FlushIn, "fuse_flush_in", { fh, unused, padding, lock_owner }),
        layout!(FsyncIn, "fuse_fsync_in", { fh, fsync_flags, padding }),
        layout!(FallocateIn, "fuse_fallocate_in", { fh, offset, length, mode, padding }),
        layout!(LseekIn, "fuse_lseek_in", { fh, offset, whence, padding }),
        layout!(LseekOut, "fuse_lseek_out", { offset }),
        layout!(CopyFileRangeIn, "fuse_copy_file_range_in", { fh_in, off_in, nodeid_out,
            fh_out, off_out, len, flags }),
        layout!(CopyFileRangeOut, "fuse_copy_file_range_out", {
            bytes_copied
        }),
        layout!(InterruptIn, "fuse_interrupt_in", { unique }),
        layout!(BmapIn, "fuse_bmap_in", { block, blocksize, padding }),
        layout!(BmapOut, "fuse_bmap_out", { block }),
        layout!(FileLock, "fuse_file_lock", { start, end, lock_type as "type", pid }),
        layout!(LkIn, "fuse_lk_in", { fh, owner, lk, lk_flags, padding }),
        layout!(LkOut, "fuse_lk_out", { lk }),
        layout!(IoctlIn, "fuse_ioctl_in", { fh, flags, cmd, arg, in_size, out_size }),
        layout!(IoctlIovec, "fuse_ioctl_iovec", { base, len }),
        layout!(IoctlOut, "fuse_ioctl_out", { result, flags, in_iovs, out_iovs }),
        layout!(PollIn, "fuse_poll_in", { fh, kh, flags, events }),
        layout!(PollOut, "fuse_poll_out", { revents, padding }),
        layout!(SetupmappingIn, "fuse_setupmapping_in", { fh, foffset, len, flags, moffset }),
        layout!(RemovemappingIn, "fuse_removemapping_in", { count }),
        layout!(RemovemappingOne, "fuse_removemapping_one", { moffset, len }),
        layout!(SetxattrIn, "fuse_setxattr_in", { size, flags, setxattr_flags, padding }),
        layout!(GetxattrIn, "fuse_getxattr_in", { size, padding }),
        layout!(GetxattrOut, "fuse_getxattr_out", { size, padding }),
        layout!(NotifyPollWakeupOut, "fuse_notify_poll_wakeup_out", { kh }),
        layout!(NotifyInvalInodeOut, "fuse_notify_inval_inode_out", { ino, off, len }),
        layout!(NotifyInvalEntryOut, "fuse_notify_inval_entry_out", { parent, namelen,
            flags }),
        layout!(NotifyDeleteOut, "fuse_notify_delete_out", { parent, child, namelen,
            padding }),
        layout!(NotifyStoreOut, "fuse_notify_store_out", { nodeid, offset, size, padding }),
        layout!(NotifyRetrieveOut, "fuse_notify_retrieve_out", { notify_unique, nodeid,
            offset, size, padding }),
        layout!(NotifyRetrieveIn, "fuse_notify_retrieve_in", { dummy1, offset, size, dummy2,
            dummy3, dummy4 }),
        layout!(NotifyPruneOut, "fuse_notify_prune_out", { count, padding, spare }),
        layout!(BackingMap, "fuse_backing_map", { fd, flags, padding }),
        layout!(UringEntInOut, "fuse_uring_ent_in_out", { flags, commit_id, payload_sz,
            padding, reserved }),
        layout!(UringReqHeader, "fuse_uring_req_header", { in_out, op_in, ring_ent_in_out }),
        layout!(UringCmdReq, "fuse_uring_cmd_req", { flags, commit_id, qid, padding }),
    ]
}

/// A kernel constant: the identifier whose presence in a header says the
/// constant exists there, the C expression that computes it, and this
/// crate's value.
#[derive(Debug, Clone)]
pub struct ConstantValue {
    pub ident: &'static str,
    pub c_expr: String,
    pub value: u64,
}

fn constant(ident: &'static str, value: u64) -> ConstantValue {
    ConstantValue {
        ident,
        c_expr: ident.to_string(),
        value,
    }
}

/// Pushes every named flag of a flag set, under its kernel name.
///
/// Bits that live in a 32-bit wire field are compared as `uint32_t`: the
/// header writes bit 31 as `(1 << 31)`, an `int`, which C sign-extends to
/// 0xffffffff80000000 when widened; on the wire it is 0x80000000.
macro_rules! push_flags {
    ($list:expr, $($set:ty),* $(,)?) => {
        $(
            for (name, flag) in <$set>::KERNEL_NAMES {
                let value = u64::from(flag.bits());
                let c_expr = if value <= u64::from(u32::MAX) {
                    format!("(uint32_t)({name})")
                } else {
                    name.to_string()
                };
                $list.push(ConstantValue { ident: name, c_expr, value });
            }
        )*
    };
}

/// Every constant of the crate that has a kernel name.
pub fn constant_values() -> Vec<ConstantValue> {
    let mut list = Vec::new();
    for opcode in Opcode::ALL {
        list.push(constant(
            opcode
                .kernel_name()
                .expect("every listed opcode has a name"),
            u64::from(opcode.0),
        ));
    }
    for code in NotifyCode::ALL {
        list.push(constant(
            code.kernel_name().expect("every listed code has a name"),
            u64::try_from(code.0).expect("notify codes are positive"),
        ));
    }
    for command in UringCmd::ALL {
        list.push(constant(
            command
                .kernel_name()
                .expect("every listed command has a name"),
            u64::from(command.0),
        ));
    }
    push_flags!(
        list,
        InitFlags,
        FopenFlags,
        SetattrValid,
        WriteFlags,
        ReadFlags,
        FsyncFlags,
        GetattrFlags,
        ReleaseFlags,
        LkFlags,
        OpenInFlags,
        AttrFlags,
        SetxattrFlags,
        InvalEntryFlags,
        PollFlags,
        IoctlFlags,
        SetupmappingFlags,
        CuseInitFlags,
        FallocateMode,
    );
    let size = |n: usize| u64::try_from(n).expect("sizes fit in u64");
    list.extend([
        constant("FUSE_DIRECT_IO_RELAX", InitFlags::DIRECT_IO_RELAX.bits()),
        constant(
            "FUSE_WRITE_KILL_PRIV",
            u64::from(WriteFlags::KILL_PRIV.bits()),
        ),
        constant("FUSE_KERNEL_VERSION", u64::from(fuse_proto::KERNEL_VERSION)),
        constant("FUSE_ROOT_ID", fuse_proto::ROOT_ID),
        constant("FUSE_MIN_READ_BUFFER", size(fuse_proto::MIN_READ_BUFFER)),
        constant(
            "FUSE_COMPAT_ENTRY_OUT_SIZE",
            size(abi::COMPAT_ENTRY_OUT_SIZE),
        ),
        constant("FUSE_COMPAT_ATTR_OUT_SIZE", size(abi::COMPAT_ATTR_OUT_SIZE)),
        constant("FUSE_COMPAT_MKNOD_IN_SIZE", size(abi::COMPAT_MKNOD_IN_SIZE)),
        constant("FUSE_COMPAT_WRITE_IN_SIZE", size(abi::COMPAT_WRITE_IN_SIZE)),
        constant("FUSE_COMPAT_STATFS_SIZE", size(abi::COMPAT_STATFS_SIZE)),
        constant(
            "FUSE_COMPAT_SETXATTR_IN_SIZE",
            size(abi::COMPAT_SETXATTR_IN_SIZE),
        ),
        constant("FUSE_COMPAT_INIT_OUT_SIZE", size(abi::COMPAT_INIT_OUT_SIZE)),
        constant(
            "FUSE_COMPAT_22_INIT_OUT_SIZE",
            size(abi::COMPAT_22_INIT_OUT_SIZE),
        ),
        constant("CUSE_INIT_INFO_MAX", size(abi::CUSE_INIT_INFO_MAX)),
        constant("FUSE_IOCTL_MAX_IOV", size(abi::IOCTL_MAX_IOV)),
        constant("FUSE_UNIQUE_RESEND", abi::UNIQUE_RESEND),
        constant("FUSE_INVALID_UIDGID", u64::from(abi::INVALID_UIDGID)),
        constant("FUSE_MAX_NR_SECCTX", u64::from(abi::MAX_NR_SECCTX)),
        constant("FUSE_EXT_GROUPS", u64::from(abi::EXT_GROUPS)),
        constant("FUSE_NAME_OFFSET", size(abi::NAME_OFFSET)),
        constant(
            "FUSE_NAME_OFFSET_DIRENTPLUS",
            size(abi::NAME_OFFSET_DIRENTPLUS),
        ),
        constant(
            "FUSE_URING_IN_OUT_HEADER_SZ",
            size(abi::URING_IN_OUT_HEADER_SZ),
        ),
        constant("FUSE_URING_OP_IN_OUT_SZ", size(abi::URING_OP_IN_OUT_SZ)),
        constant("FUSE_DEV_IOC_MAGIC", u64::from(ioctl::DEV_IOC_MAGIC)),
        constant("FUSE_DEV_IOC_CLONE", u64::from(ioctl::DEV_IOC_CLONE)),
        constant(
            "FUSE_DEV_IOC_BACKING_OPEN",
            u64::from(ioctl::DEV_IOC_BACKING_OPEN),
        ),
        constant(
            "FUSE_DEV_IOC_BACKING_CLOSE",
            u64::from(ioctl::DEV_IOC_BACKING_CLOSE),
        ),
        constant(
            "FUSE_DEV_IOC_SYNC_INIT",
            u64::from(ioctl::DEV_IOC_SYNC_INIT),
        ),
    ]);
    // Function-like macros: checked at a few points each.
    for len in [0usize, 1, 7, 8, 13, 24, 25] {
        list.push(ConstantValue {
            ident: "FUSE_REC_ALIGN",
            c_expr: format!("FUSE_REC_ALIGN({len})"),
            value: size(abi::rec_align(len)),
        });
        list.push(ConstantValue {
            ident: "FUSE_DIRENT_ALIGN",
            c_expr: format!("FUSE_DIRENT_ALIGN({len})"),
            value: size(abi::rec_align(len)),
        });
    }
    list
}
