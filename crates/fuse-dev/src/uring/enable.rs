//! The kernel switch for FUSE-over-io_uring:
//! `/sys/module/fuse/parameters/enable_uring`.
//!
//! The admin turns it on; while it is on, the kernel offers
//! `FUSE_OVER_IO_URING` in INIT to every new connection. The server only
//! reads it ([`param_state`]). Tests and the lab turn it on for their runs
//! with [`EnableUringGuard`], which restores the previous value when the last
//! guard on the machine ends: the parameter is global and several test
//! processes run in parallel, so the guards of all processes share one
//! record under `/run`, locked with `flock`, that names the original value and
//! every live holder. A holder that died without releasing (killed) is
//! pruned by the next process that looks, so the value is restored even then.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The module parameter.
pub const PARAM_PATH: &str = "/sys/module/fuse/parameters/enable_uring";

/// The record shared by every [`EnableUringGuard`] on the machine.
const RECORD_PATH: &str = "/run/fuse-export-enable-uring";

/// What the parameter says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamState {
    /// `Y`: new connections are offered FUSE-over-io_uring.
    On,
    /// `N`.
    Off,
    /// No such parameter: the kernel is built without `CONFIG_FUSE_IO_URING`
    /// (or older than 6.14), or FUSE is not loaded.
    Missing,
}

/// Reads the parameter.
pub fn param_state() -> ParamState {
    read_param(Path::new(PARAM_PATH))
}

fn read_param(path: &Path) -> ParamState {
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim() == "Y" || text.trim() == "1" => ParamState::On,
        Ok(_) => ParamState::Off,
        Err(_) => ParamState::Missing,
    }
}

/// Turns `enable_uring` on while it lives; the last guard on the machine
/// restores the value found by the first (see the module documentation).
#[derive(Debug)]
pub struct EnableUringGuard {
    record: PathBuf,
    param: PathBuf,
    holder: Holder,
}

/// Why the parameter could not be turned on.
#[derive(Debug)]
pub enum GuardError {
    /// The kernel has no such parameter.
    Missing,
    /// It cannot be written here (not root, read-only sysfs) or the record
    /// cannot be kept.
    Io(io::Error),
}

impl std::fmt::Display for GuardError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GuardError::Missing => write!(
                f,
                "{PARAM_PATH} does not exist (kernel without CONFIG_FUSE_IO_URING or older than 6.14)"
            ),
            GuardError::Io(err) => write!(f, "cannot turn on {PARAM_PATH}: {err}"),
        }
    }
}

impl std::error::Error for GuardError {}

/// One live guard: a process (pid and start time, so that a reused pid is
/// not taken for the holder).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Holder {
    pid: u32,
    start_time: u64,
}

impl Holder {
    fn current() -> io::Result<Holder> {
        let pid = std::process::id();
        let start_time = start_time(pid).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "cannot read /proc/self/stat")
        })?;
        Ok(Holder { pid, start_time })
    }

    fn is_alive(&self) -> bool {
        start_time(self.pid) == Some(self.start_time)
    }
}

/// Field 22 of `/proc/<pid>/stat` (start time in clock ticks after boot),
/// or `None` if there is no such process or it has exited: a zombie (state
/// `Z`, or `X` while it is being reaped) can no longer use the switch, and
/// one whose last thread is stuck in the kernel may stay a zombie for good,
/// which must not keep the switch on for good.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is parenthesised and may contain anything,
    // so count fields after its closing parenthesis: that is field 3.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    if matches!(fields.next()?, "Z" | "X") {
        return None;
    }
    fields.nth(22 - 4)?.parse().ok()
}

/// The shared record: the value to restore, and one line per live guard.
#[derive(Debug, Default, PartialEq, Eq)]
struct Record {
    previous: Option<String>,
    holders: Vec<Holder>,
}

impl Record {
    fn parse(text: &str) -> Record {
        let mut record = Record::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some("previous"), Some(value), None) => record.previous = Some(value.to_string()),
                (Some("holder"), Some(pid), Some(start)) => {
                    if let (Ok(pid), Ok(start_time)) = (pid.parse(), start.parse()) {
                        record.holders.push(Holder { pid, start_time });
                    }
                }
                _ => {}
            }
        }
        record
    }

    fn render(&self) -> String {
        let mut text = String::new();
        if let Some(previous) = &self.previous {
            text.push_str(&format!("previous {previous}\n"));
        }
        for holder in &self.holders {
            text.push_str(&format!("holder {} {}\n", holder.pid, holder.start_time));
        }
        text
    }
}

/// The record file, locked for as long as this value lives.
struct LockedRecord(File);

impl LockedRecord {
    fn open(path: &Path) -> io::Result<LockedRecord> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)?;
        Ok(LockedRecord(file))
    }

    fn read(&mut self) -> io::Result<Record> {
        let mut text = String::new();
        self.0.rewind()?;
        self.0.read_to_string(&mut text)?;
        Ok(Record::parse(&text))
    }

    fn write(&mut self, record: &Record) -> io::Result<()> {
        self.0.set_len(0)?;
        self.0.rewind()?;
        self.0.write_all(record.render().as_bytes())?;
        self.0.sync_data()
    }
}

fn write_param(path: &Path, value: &str) -> io::Result<()> {
    OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(value.as_bytes())
}

impl EnableUringGuard {
    /// Turns the parameter on (if no other guard has) and registers this
    /// guard as a holder.
    pub fn acquire() -> Result<EnableUringGuard, GuardError> {
        EnableUringGuard::acquire_at(Path::new(PARAM_PATH), Path::new(RECORD_PATH))
    }

    fn acquire_at(param: &Path, record_path: &Path) -> Result<EnableUringGuard, GuardError> {
        if read_param(param) == ParamState::Missing {
            return Err(GuardError::Missing);
        }
        let holder = Holder::current().map_err(GuardError::Io)?;
        let mut locked = LockedRecord::open(record_path).map_err(GuardError::Io)?;
        // Read under the lock: another process may be switching it.
        let current = match read_param(param) {
            ParamState::Missing => return Err(GuardError::Missing),
            ParamState::On => "Y",
            ParamState::Off => "N",
        };
        let mut record = locked.read().map_err(GuardError::Io)?;
        record.holders.retain(Holder::is_alive);
        if record.holders.is_empty() {
            // First holder, or every earlier one died without restoring: the
            // recorded value (if any) is the original one, not what a dead
            // holder left behind.
            if record.previous.is_none() {
                record.previous = Some(current.to_string());
            }
        }
        if current != "Y" {
            write_param(param, "Y").map_err(GuardError::Io)?;
        }
        record.holders.push(holder);
        locked.write(&record).map_err(GuardError::Io)?;
        Ok(EnableUringGuard {
            record: record_path.to_path_buf(),
            param: param.to_path_buf(),
            holder,
        })
    }

    fn release(&self) -> io::Result<()> {
        let mut locked = LockedRecord::open(&self.record)?;
        let mut record = locked.read()?;
        if let Some(mine) = record.holders.iter().position(|h| *h == self.holder) {
            record.holders.remove(mine);
        }
        record.holders.retain(Holder::is_alive);
        if record.holders.is_empty() {
            if let Some(previous) = record.previous.take()
                && previous != "Y"
            {
                write_param(&self.param, &previous)?;
            }
            record = Record::default();
        }
        locked.write(&record)
    }
}

impl Drop for EnableUringGuard {
    fn drop(&mut self) {
        if let Err(err) = self.release() {
            eprintln!("restoring {}: {err}", self.param.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake parameter and record in a scratch directory.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir =
                std::env::temp_dir().join(format!("enable-uring-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("param"), "N\n").unwrap();
            Scratch(dir)
        }
        fn param(&self) -> PathBuf {
            self.0.join("param")
        }
        fn record(&self) -> PathBuf {
            self.0.join("record")
        }
        fn value(&self) -> String {
            std::fs::read_to_string(self.param())
                .unwrap()
                .trim()
                .to_string()
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn the_last_guard_restores_the_first_value() {
        let scratch = Scratch::new("nested");
        let first = EnableUringGuard::acquire_at(&scratch.param(), &scratch.record()).unwrap();
        assert_eq!(scratch.value(), "Y");
        let second = EnableUringGuard::acquire_at(&scratch.param(), &scratch.record()).unwrap();
        drop(first);
        assert_eq!(scratch.value(), "Y", "a guard is still alive");
        drop(second);
        assert_eq!(scratch.value(), "N");
        assert_eq!(std::fs::read_to_string(scratch.record()).unwrap(), "");
    }

    #[test]
    fn a_value_that_was_on_stays_on() {
        let scratch = Scratch::new("already-on");
        std::fs::write(scratch.param(), "Y\n").unwrap();
        let guard = EnableUringGuard::acquire_at(&scratch.param(), &scratch.record()).unwrap();
        drop(guard);
        assert_eq!(scratch.value(), "Y");
    }

    #[test]
    fn dead_holders_are_pruned_and_the_original_value_kept() {
        let scratch = Scratch::new("dead");
        // A holder that was killed while the parameter was on: its pid
        // cannot be alive with this start time.
        std::fs::write(scratch.param(), "Y\n").unwrap();
        std::fs::write(scratch.record(), "previous N\nholder 999999999 1\n").unwrap();
        let guard = EnableUringGuard::acquire_at(&scratch.param(), &scratch.record()).unwrap();
        let record = Record::parse(&std::fs::read_to_string(scratch.record()).unwrap());
        assert_eq!(record.previous.as_deref(), Some("N"));
        assert_eq!(record.holders, vec![Holder::current().unwrap()]);
        drop(guard);
        assert_eq!(scratch.value(), "N", "the value before the dead holder");
    }

    #[test]
    fn a_missing_parameter_is_reported() {
        let scratch = Scratch::new("missing");
        std::fs::remove_file(scratch.param()).unwrap();
        assert!(matches!(
            EnableUringGuard::acquire_at(&scratch.param(), &scratch.record()),
            Err(GuardError::Missing)
        ));
        assert_eq!(read_param(&scratch.param()), ParamState::Missing);
    }

    #[test]
    fn an_exited_unreaped_holder_is_not_alive() {
        let mut child = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .unwrap();
        let holder = Holder {
            pid: child.id(),
            start_time: start_time(child.id()).expect("the child runs"),
        };
        assert!(holder.is_alive());
        // Not reaped yet: the child stays a zombie until `wait`.
        let stat = format!("/proc/{}/stat", child.id());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !std::fs::read_to_string(&stat).is_ok_and(|s| s.contains(") Z ")) {
            assert!(
                std::time::Instant::now() < deadline,
                "the child never exited"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!holder.is_alive(), "a zombie holds the switch");
        child.wait().unwrap();
    }

    #[test]
    fn own_start_time_is_readable() {
        let me = Holder::current().unwrap();
        assert!(me.is_alive());
        assert!(
            !Holder {
                start_time: me.start_time + 1,
                ..me
            }
            .is_alive()
        );
    }
}
