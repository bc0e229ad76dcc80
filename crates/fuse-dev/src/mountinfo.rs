//! `/proc/self/mountinfo`: which mount sits on a path, without touching
//! the path itself (a syscall on a FUSE mount can block on its server).

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// One mount, as far as this crate cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// The mount's ID (field 1; reused after an unmount).
    pub mount_id: u64,
    /// The superblock's device, `major:minor` (field 3; for FUSE an
    /// anonymous device whose minor names the connection in
    /// `/sys/fs/fuse/connections`).
    pub device: (u32, u32),
    /// Where it is mounted (field 5, unescaped).
    pub mountpoint: PathBuf,
    /// The filesystem type after the separator, e.g. `fuse.fuse-export`.
    pub fstype: String,
}

impl MountEntry {
    /// Whether `other` is this very mount: same ID and same superblock, so
    /// a later mount that reuses the ID is not mistaken for it.
    pub fn is_same_mount(&self, other: &MountEntry) -> bool {
        self.mount_id == other.mount_id && self.device == other.device
    }
}

/// Every mount in this process's mount namespace, in mount order.
pub fn read() -> io::Result<Vec<MountEntry>> {
    Ok(parse(&std::fs::read("/proc/self/mountinfo")?))
}

/// The topmost mount exactly at `path` (made absolute, not resolved), if any.
pub fn topmost_at(path: &Path) -> io::Result<Option<MountEntry>> {
    let absolute = std::path::absolute(path)?;
    Ok(read()?
        .into_iter()
        .rev()
        .find(|entry| entry.mountpoint == absolute))
}

/// Parses mountinfo text; lines that do not parse are skipped.
pub fn parse(text: &[u8]) -> Vec<MountEntry> {
    text.split(|&b| b == b'\n').filter_map(parse_line).collect()
}

fn parse_line(line: &[u8]) -> Option<MountEntry> {
    let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    let text = |field: &[u8]| std::str::from_utf8(field).ok().map(str::to_owned);
    let mount_id = text(fields.first()?)?.parse().ok()?;
    let device = text(fields.get(2)?)?;
    let (major, minor) = device.split_once(':')?;
    let device = (major.parse().ok()?, minor.parse().ok()?);
    let mountpoint = PathBuf::from(OsStr::from_bytes(&unescape(fields.get(4)?)));
    // Optional fields end at a lone "-"; the fstype follows it.
    let separator = fields.iter().skip(6).position(|f| *f == b"-")? + 6;
    let fstype = text(fields.get(separator + 1)?)?;
    Some(MountEntry {
        mount_id,
        device,
        mountpoint,
        fstype,
    })
}

/// Undoes the escaping of a mount table field: mountinfo (and
/// `/proc/self/mounts`, which the kernel escapes the same way) writes
/// space, tab, newline and backslash as `\ooo`.
pub fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field
            .get(i + 1..i + 4)
            .filter(|digits| field[i] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d)));
        match octal {
            Some(digits) => {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                out.push(value as u8);
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &[u8] = b"\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/root rw
98 22 0:51 / /tmp/a\\040b/disk.img rw,nosuid,nodev,relatime shared:50 - fuse.fuse-export /tmp/disk.raw rw,user_id=0
99 22 0:52 / /tmp/x rw,relatime - fuse /dev/fuse rw
garbage line
";

    #[test]
    fn fields_are_parsed_and_unescaped() {
        let entries = parse(SAMPLE);
        assert_eq!(entries.len(), 3);
        assert_eq!(
            entries[1],
            MountEntry {
                mount_id: 98,
                device: (0, 51),
                mountpoint: PathBuf::from("/tmp/a b/disk.img"),
                fstype: "fuse.fuse-export".into(),
            }
        );
        // No optional fields at all.
        assert_eq!(entries[2].fstype, "fuse");
        assert_eq!(entries[0].mountpoint, PathBuf::from("/"));
    }

    #[test]
    fn the_same_id_on_another_superblock_is_another_mount() {
        let entries = parse(SAMPLE);
        let mut reused = entries[1].clone();
        assert!(reused.is_same_mount(&entries[1]));
        reused.device.1 += 1;
        assert!(!reused.is_same_mount(&entries[1]));
    }

    #[test]
    fn this_processes_root_is_listed() {
        let root = topmost_at(Path::new("/")).unwrap();
        assert!(root.is_some());
    }
}
