code_newtype! {
    /// A FUSE opcode (`enum fuse_opcode`).
    ///
    /// Each constant's documentation gives the request body after
    /// `fuse_in_header` and the reply payload after `fuse_out_header`, as the
    /// 6.18 kernel sends and expects them over `/dev/fuse`. Creation
    /// requests (MKNOD, MKDIR, SYMLINK, CREATE, TMPFILE) may additionally end
    /// in extensions (`in_header.total_extlen`).
    Opcode(u32), kernel prefix "FUSE_" {
        /// Look up a name in a directory. Request: name NUL. Reply: `fuse_entry_out`.
        LOOKUP = 1,
        /// Drop lookup references. Request: `fuse_forget_in`. No reply.
        FORGET = 2,
        /// Get attributes. Request: `fuse_getattr_in`. Reply: `fuse_attr_out`.
        GETATTR = 3,
        /// Set attributes. Request: `fuse_setattr_in`. Reply: `fuse_attr_out`.
        SETATTR = 4,
        /// Read a symlink. Request: empty. Reply: the target (variable length).
        READLINK = 5,
        /// Create a symlink. Request: name NUL, target NUL. Reply: `fuse_entry_out`.
        SYMLINK = 6,
        /// Create a node. Request: `fuse_mknod_in`, name NUL. Reply: `fuse_entry_out`.
        MKNOD = 8,
        /// Create a directory. Request: `fuse_mkdir_in`, name NUL. Reply: `fuse_entry_out`.
        MKDIR = 9,
        /// Remove a name. Request: name NUL. Reply: none.
        UNLINK = 10,
        /// Remove a directory. Request: name NUL. Reply: none.
        RMDIR = 11,
        /// Rename. Request: `fuse_rename_in`, old name NUL, new name NUL. Reply: none.
        RENAME = 12,
        /// Hard link. Request: `fuse_link_in`, new name NUL. Reply: `fuse_entry_out`.
        LINK = 13,
        /// Open a file. Request: `fuse_open_in`. Reply: `fuse_open_out`.
        OPEN = 14,
        /// Read. Request: `fuse_read_in`. Reply: 0..=`size` bytes of data (short = EOF).
        READ = 15,
        /// Write. Request: `fuse_write_in`, `size` bytes of data. Reply: `fuse_write_out`.
        WRITE = 16,
        /// File system statistics. Request: empty. Reply: `fuse_statfs_out`.
        STATFS = 17,
        /// Last close of an open file. Request: `fuse_release_in`. Reply: none.
        RELEASE = 18,
        /// Sync a file. Request: `fuse_fsync_in`. Reply: none.
        FSYNC = 20,
        /// Set an xattr. Request: `fuse_setxattr_in` (8 bytes without
        /// `SETXATTR_EXT`), name NUL, value. Reply: none.
        SETXATTR = 21,
        /// Get an xattr. Request: `fuse_getxattr_in`, name NUL. Reply:
        /// `fuse_getxattr_out` when `size` is 0, else the value.
        GETXATTR = 22,
        /// List xattrs. Request: `fuse_getxattr_in`. Reply: as GETXATTR.
        LISTXATTR = 23,
        /// Remove an xattr. Request: name NUL. Reply: none.
        REMOVEXATTR = 24,
        /// `close(2)` of a file descriptor. Request: `fuse_flush_in`. Reply: none.
        FLUSH = 25,
        /// Protocol negotiation. Request: `fuse_init_in` (16 bytes before
        /// 7.36). Reply: `fuse_init_out` (24 bytes before 7.23).
        INIT = 26,
        /// Open a directory. Request: `fuse_open_in`. Reply: `fuse_open_out`.
        OPENDIR = 27,
        /// Read a directory. Request: `fuse_read_in`. Reply: `fuse_dirent` records.
        READDIR = 28,
        /// Release a directory. Request: `fuse_release_in`. Reply: none.
        RELEASEDIR = 29,
        /// Sync a directory. Request: `fuse_fsync_in`. Reply: none.
        FSYNCDIR = 30,
        /// Test for a POSIX lock. Request: `fuse_lk_in`. Reply: `fuse_lk_out`.
        GETLK = 31,
        /// Acquire or release a POSIX lock. Request: `fuse_lk_in`. Reply: none.
        SETLK = 32,
        /// As SETLK, waiting. Request: `fuse_lk_in`. Reply: none.
        SETLKW = 33,
        /// Check permissions. Request: `fuse_access_in`. Reply: none.
        ACCESS = 34,
        /// Create and open. Request: `fuse_create_in`, name NUL. Reply:
        /// `fuse_entry_out`, `fuse_open_out`.
        CREATE = 35,
        /// Interrupt a request. Request: `fuse_interrupt_in`; `in_header.unique`
        /// is the target's unique with bit 0 set. Reply: optional, header only.
        INTERRUPT = 36,
        /// Map a file block. Request: `fuse_bmap_in`. Reply: `fuse_bmap_out`.
        BMAP = 37,
        /// Connection teardown (fuseblk only). Request: empty. Reply: none.
        DESTROY = 38,
        /// ioctl. Request: `fuse_ioctl_in`, `in_size` bytes. Reply:
        /// `fuse_ioctl_out`, then data or iovecs.
        IOCTL = 39,
        /// poll. Request: `fuse_poll_in`. Reply: `fuse_poll_out`.
        POLL = 40,
        /// Answer to `FUSE_NOTIFY_RETRIEVE`. Request: `fuse_notify_retrieve_in`, data. No reply.
        NOTIFY_REPLY = 41,
        /// Drop lookup references of many inodes. Request:
        /// `fuse_batch_forget_in`, `count` × `fuse_forget_one`. No reply.
        BATCH_FORGET = 42,
        /// fallocate. Request: `fuse_fallocate_in`. Reply: none.
        FALLOCATE = 43,
        /// Read a directory with attributes. Request: `fuse_read_in`. Reply:
        /// `fuse_direntplus` records.
        READDIRPLUS = 44,
        /// Rename with flags. Request: `fuse_rename2_in`, old name NUL, new
        /// name NUL. Reply: none.
        RENAME2 = 45,
        /// SEEK_DATA/SEEK_HOLE. Request: `fuse_lseek_in`. Reply: `fuse_lseek_out`.
        LSEEK = 46,
        /// copy_file_range. Request: `fuse_copy_file_range_in`. Reply: `fuse_write_out`.
        COPY_FILE_RANGE = 47,
        /// DAX mapping setup (virtiofs). Request: `fuse_setupmapping_in`. Reply: none.
        SETUPMAPPING = 48,
        /// DAX mapping removal (virtiofs). Request: `fuse_removemapping_in`,
        /// `count` × `fuse_removemapping_one`. Reply: none.
        REMOVEMAPPING = 49,
        /// Sync the file system (fuseblk/virtiofs). Request: `fuse_syncfs_in`. Reply: none.
        SYNCFS = 50,
        /// O_TMPFILE. Request: `fuse_create_in`, name NUL. Reply: as CREATE.
        TMPFILE = 51,
        /// statx (7.39). Request: `fuse_statx_in`. Reply: `fuse_statx_out`.
        STATX = 52,
        /// copy_file_range with a 64-bit result (7.45). Request:
        /// `fuse_copy_file_range_in`. Reply: `fuse_copy_file_range_out`.
        COPY_FILE_RANGE_64 = 53,
        /// CUSE initialisation (over `/dev/cuse`). Request: `cuse_init_in`.
        /// Reply: `cuse_init_out`, device info strings.
        CUSE_INIT = 4096 => "CUSE_INIT",
        /// Reserved: CUSE_INIT with swapped byte order, to detect endianness mismatches.
        CUSE_INIT_BSWAP_RESERVED = 1048576 => "CUSE_INIT_BSWAP_RESERVED",
        /// Reserved: FUSE_INIT with swapped byte order, to detect endianness mismatches.
        INIT_BSWAP_RESERVED = 436207616,
    }
}

impl Opcode {
    /// Whether the kernel expects no reply to this opcode.
    pub const fn is_no_reply(self) -> bool {
        matches!(
            self,
            Opcode::FORGET | Opcode::BATCH_FORGET | Opcode::NOTIFY_REPLY
        )
    }
}

#[cfg(test)]
mod tests {
    use super::Opcode;

    #[test]
    fn names_and_unknown_values() {
        assert_eq!(Opcode::LOOKUP.name(), Some("LOOKUP"));
        assert_eq!(Opcode::LOOKUP.kernel_name(), Some("FUSE_LOOKUP"));
        assert_eq!(Opcode::CUSE_INIT.kernel_name(), Some("CUSE_INIT"));
        assert_eq!(
            Opcode::INIT_BSWAP_RESERVED.kernel_name(),
            Some("FUSE_INIT_BSWAP_RESERVED")
        );
        assert_eq!(Opcode(7).name(), None);
        assert_eq!(format!("{:?}", Opcode(7)), "Opcode(7)");
        assert_eq!(Opcode::STATX.to_string(), "STATX");
    }

    #[test]
    fn all_is_sorted_and_unique() {
        assert!(Opcode::ALL.windows(2).all(|pair| pair[0] < pair[1]));
    }
}
