//! Notifications: messages the server sends unasked (`unique` 0, the code
//! in `error`).
//!
//! The kernel checks each body's size exactly (`size != sizeof` ⇒ EINVAL)
//! and, for names, that `namelen` matches the bytes and a NUL follows. The
//! constructors here compute every length and count from the slices they
//! are given, so a message with a wrong size cannot be built. Notifications
//! are only accepted on `/dev/fuse`, not through FUSE-over-io_uring.

use core::fmt;

use zerocopy::IntoBytes;

use crate::abi::{
    NotifyDeleteOut, NotifyInvalEntryOut, NotifyInvalInodeOut, NotifyPollWakeupOut, NotifyPruneOut,
    NotifyRetrieveOut, NotifyStoreOut, OutHeader,
};
use crate::flags::InvalEntryFlags;
use crate::reply::OUT_HEADER_LEN;

code_newtype! {
    /// A notification code (`enum fuse_notify_code`), sent in `fuse_out_header.error`.
    NotifyCode(i32), kernel prefix "FUSE_NOTIFY_" {
        /// Wake up a poller (`fuse_notify_poll_wakeup_out`).
        POLL = 1,
        /// Invalidate an inode's attributes and cached data (`fuse_notify_inval_inode_out`).
        INVAL_INODE = 2,
        /// Invalidate a directory entry (`fuse_notify_inval_entry_out`, name, NUL).
        INVAL_ENTRY = 3,
        /// Store data in the page cache (`fuse_notify_store_out`, data).
        STORE = 4,
        /// Ask for cached data back (`fuse_notify_retrieve_out`); answered by NOTIFY_REPLY.
        RETRIEVE = 5,
        /// Invalidate an entry and tell the kernel it is gone (`fuse_notify_delete_out`, name, NUL).
        DELETE = 6,
        /// Resend all requests in flight (7.40; no body).
        RESEND = 7,
        /// Increment the connection epoch, invalidating dentries (7.44; no body).
        INC_EPOCH = 8,
        /// Drop unused inodes (7.45; `fuse_notify_prune_out`, `count` × u64 ids).
        PRUNE = 9,
    }
}

/// The largest fixed-size notification body (`fuse_notify_retrieve_out`).
const MAX_NOTIFY_STRUCT: usize = size_of::<NotifyRetrieveOut>();

const NUL: &[u8] = &[0];

/// A complete notification message: the header and fixed body inline,
/// followed by up to two borrowed parts (a name and its NUL, or data).
///
/// Write it with one `writev` of [`Notification::parts`] (or copy it with
/// [`Notification::to_vec`]).
#[derive(Clone, Copy)]
pub struct Notification<'a> {
    inline: [u8; OUT_HEADER_LEN + MAX_NOTIFY_STRUCT],
    inline_len: usize,
    tail: [&'a [u8]; 2],
    total_len: u32,
}

/// Why a notification cannot be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyError {
    /// A name contains a NUL byte, which would end it early.
    NameContainsNul,
    /// The message would not fit the 32-bit length (or count) fields.
    TooLarge {
        /// Bytes (or entries) given.
        len: usize,
    },
}

impl fmt::Display for NotifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            NotifyError::NameContainsNul => f.write_str("notification name contains a NUL byte"),
            NotifyError::TooLarge { len } => {
                write!(
                    f,
                    "notification part of {len} is too large for its length field"
                )
            }
        }
    }
}

impl core::error::Error for NotifyError {}

impl<'a> Notification<'a> {
    /// Builds the message; `body` is the fixed struct's bytes.
    fn new(
        code: NotifyCode,
        body: &[u8],
        tail: [&'a [u8]; 2],
    ) -> Result<Notification<'a>, NotifyError> {
        let inline_len = OUT_HEADER_LEN + body.len().min(MAX_NOTIFY_STRUCT);
        let total = tail
            .iter()
            .try_fold(inline_len, |sum, part| sum.checked_add(part.len()));
        let total_len =
            total
                .and_then(|total| u32::try_from(total).ok())
                .ok_or(NotifyError::TooLarge {
                    len: total.unwrap_or(usize::MAX),
                })?;
        let header = OutHeader {
            len: total_len,
            error: code.0,
            unique: 0,
        };
        let mut inline = [0u8; OUT_HEADER_LEN + MAX_NOTIFY_STRUCT];
        if let Some(target) = inline.get_mut(..OUT_HEADER_LEN) {
            target.copy_from_slice(header.as_bytes());
        }
        if let (Some(target), Some(source)) = (
            inline.get_mut(OUT_HEADER_LEN..inline_len),
            body.get(..inline_len - OUT_HEADER_LEN),
        ) {
            target.copy_from_slice(source);
        }
        Ok(Notification {
            inline,
            inline_len,
            tail,
            total_len,
        })
    }

    /// Infallible constructor for bodies without variable parts.
    fn fixed(code: NotifyCode, body: &[u8]) -> Notification<'static> {
        match Notification::new(code, body, [&[], &[]]) {
            Ok(notification) => notification,
            // A fixed body of at most 32 bytes always fits a 32-bit length.
            Err(_) => Notification {
                inline: [0; OUT_HEADER_LEN + MAX_NOTIFY_STRUCT],
                inline_len: 0,
                tail: [&[], &[]],
                total_len: 0,
            },
        }
    }

    /// `FUSE_NOTIFY_INVAL_INODE`: drop cached data of `ino` from `off` for
    /// `len` bytes (`len` ≤ 0: to the end); a negative `off` drops only the
    /// attributes.
    pub fn inval_inode(ino: u64, off: i64, len: i64) -> Notification<'static> {
        let body = NotifyInvalInodeOut { ino, off, len };
        Notification::fixed(NotifyCode::INVAL_INODE, body.as_bytes())
    }

    /// `FUSE_NOTIFY_INVAL_ENTRY`: invalidate `name` in directory `parent`.
    pub fn inval_entry(
        parent: u64,
        name: &'a [u8],
        flags: InvalEntryFlags,
    ) -> Result<Notification<'a>, NotifyError> {
        let body = NotifyInvalEntryOut {
            parent,
            namelen: name_len(name)?,
            flags: flags.bits(),
        };
        Notification::new(NotifyCode::INVAL_ENTRY, body.as_bytes(), [name, NUL])
    }

    /// `FUSE_NOTIFY_DELETE`: `name` (inode `child`) was removed from `parent`.
    pub fn delete(
        parent: u64,
        child: u64,
        name: &'a [u8],
    ) -> Result<Notification<'a>, NotifyError> {
        let body = NotifyDeleteOut {
            parent,
            child,
            namelen: name_len(name)?,
            padding: 0,
        };
        Notification::new(NotifyCode::DELETE, body.as_bytes(), [name, NUL])
    }

    /// `FUSE_NOTIFY_STORE`: put `data` into `nodeid`'s page cache at
    /// `offset` (extending the kernel's idea of the size if it ends beyond).
    pub fn store(
        nodeid: u64,
        offset: u64,
        data: &'a [u8],
    ) -> Result<Notification<'a>, NotifyError> {
        let body = NotifyStoreOut {
            nodeid,
            offset,
            size: u32::try_from(data.len())
                .map_err(|_| NotifyError::TooLarge { len: data.len() })?,
            padding: 0,
        };
        Notification::new(NotifyCode::STORE, body.as_bytes(), [data, &[]])
    }

    /// `FUSE_NOTIFY_RETRIEVE`: ask for `size` bytes of `nodeid`'s cached
    /// data at `offset`; the kernel answers with a NOTIFY_REPLY request
    /// whose `unique` is `notify_unique`.
    pub fn retrieve(
        notify_unique: u64,
        nodeid: u64,
        offset: u64,
        size: u32,
    ) -> Notification<'static> {
        let body = NotifyRetrieveOut {
            notify_unique,
            nodeid,
            offset,
            size,
            padding: 0,
        };
        Notification::fixed(NotifyCode::RETRIEVE, body.as_bytes())
    }

    /// `FUSE_NOTIFY_POLL`: wake the poller registered with kernel handle `kh`.
    pub fn poll_wakeup(kh: u64) -> Notification<'static> {
        let body = NotifyPollWakeupOut { kh };
        Notification::fixed(NotifyCode::POLL, body.as_bytes())
    }

    /// `FUSE_NOTIFY_RESEND` (7.40): resend every request in flight.
    pub fn resend() -> Notification<'static> {
        Notification::fixed(NotifyCode::RESEND, &[])
    }

    /// `FUSE_NOTIFY_INC_EPOCH` (7.44): start a new dentry epoch.
    pub fn inc_epoch() -> Notification<'static> {
        Notification::fixed(NotifyCode::INC_EPOCH, &[])
    }

    /// `FUSE_NOTIFY_PRUNE` (7.45): drop the unused inodes `nodeids`.
    pub fn prune(nodeids: &'a [u64]) -> Result<Notification<'a>, NotifyError> {
        let body = NotifyPruneOut {
            count: u32::try_from(nodeids.len())
                .map_err(|_| NotifyError::TooLarge { len: nodeids.len() })?,
            padding: 0,
            spare: 0,
        };
        Notification::new(
            NotifyCode::PRUNE,
            body.as_bytes(),
            [nodeids.as_bytes(), &[]],
        )
    }

    /// The notification code.
    pub fn code(&self) -> NotifyCode {
        let code = self
            .inline
            .get(4..8)
            .and_then(|b| <[u8; 4]>::try_from(b).ok());
        NotifyCode(code.map(i32::from_ne_bytes).unwrap_or(0))
    }

    /// The message in order: header and fixed body, then the variable
    /// parts (possibly empty). Their lengths add up to [`Notification::total_len`].
    pub fn parts(&self) -> [&[u8]; 3] {
        let inline = self.inline.get(..self.inline_len).unwrap_or_default();
        [inline, self.tail[0], self.tail[1]]
    }

    /// The `len` field: the whole message.
    pub fn total_len(&self) -> u32 {
        self.total_len
    }

    /// The whole message in one buffer.
    pub fn to_vec(&self) -> Vec<u8> {
        self.parts().concat()
    }
}

impl fmt::Debug for Notification<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notification")
            .field("code", &self.code())
            .field("total_len", &self.total_len)
            .finish()
    }
}

/// A name's length for `namelen`, refusing names the kernel would cut at a NUL.
fn name_len(name: &[u8]) -> Result<u32, NotifyError> {
    if name.contains(&0) {
        return Err(NotifyError::NameContainsNul);
    }
    u32::try_from(name.len()).map_err(|_| NotifyError::TooLarge { len: name.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inval_inode_for_attributes_only() {
        let message = Notification::inval_inode(1, -1, 0).to_vec();
        assert_eq!(message.len(), 40);
        assert_eq!(&message[0..4], &40u32.to_ne_bytes());
        assert_eq!(&message[4..8], &2i32.to_ne_bytes());
        assert_eq!(&message[8..16], &[0; 8]);
        assert_eq!(&message[16..24], &1u64.to_ne_bytes());
        assert_eq!(&message[24..32], &(-1i64).to_ne_bytes());
    }

    #[test]
    fn names_carry_their_nul_and_length() {
        let message = Notification::inval_entry(1, b"abc", InvalEntryFlags::EXPIRE_ONLY).unwrap();
        assert_eq!(message.total_len(), 16 + 16 + 3 + 1);
        let bytes = message.to_vec();
        assert_eq!(&bytes[24..28], &3u32.to_ne_bytes());
        assert_eq!(&bytes[28..32], &1u32.to_ne_bytes());
        assert_eq!(&bytes[32..], b"abc\0");
        assert_eq!(
            Notification::delete(1, 2, b"a\0b").unwrap_err(),
            NotifyError::NameContainsNul
        );
    }

    #[test]
    fn bodies_without_payload() {
        assert_eq!(Notification::resend().to_vec().len(), 16);
        assert_eq!(Notification::inc_epoch().code(), NotifyCode::INC_EPOCH);
        let prune = Notification::prune(&[3, 4]).unwrap();
        assert_eq!(prune.total_len(), 16 + 16 + 16);
    }
}
