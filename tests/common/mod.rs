//! End-to-end harness: runs the real `fuse-export` binary against real
//! clients (dd, qemu-img, std::fs) on a real FUSE mount.
//!
//! Every resource a test creates is owned by a guard: [`TestDir`] removes its
//! directory, [`Server`] stops its process and unmounts whatever it left
//! mounted. Guards run on panic too, so a failing test leaves neither a mount
//! nor a process behind. A [`Server`] borrows its [`TestDir`], so the borrow
//! checker guarantees the unmount happens before the directory is removed.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::marker::PhantomData;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use rustix::mount::UnmountFlags;
use rustix::process::{Pid, Signal};

/// The server binary Cargo built for this test run.
pub const SERVER_BIN: &str = env!("CARGO_BIN_EXE_fuse-export");
/// Filesystem type of an export in /proc/self/mounts (`fuse.<subtype>`).
pub const EXPORT_FSTYPE: &str = "fuse.fuse-export";

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * KIB;

/// How long a server may take to mount and answer GETATTR.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a server may take to exit after SIGTERM or an external umount.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound for one client command; a hung FUSE request otherwise hangs the
/// test until the runner kills it, with no hint of what was running.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// Alignment that satisfies O_DIRECT on every filesystem we meet.
pub const DIRECT_IO_ALIGN: usize = 4096;

// ---------------------------------------------------------------------------
// Preconditions

/// Returns whether end-to-end tests can mount here. If not, prints a visible
/// `SKIP:` line; the caller then returns early (and passes).
#[must_use]
pub fn skip_unless_fuse() -> bool {
    let reason = if !rustix::process::getuid().is_root() {
        "not running as root (mounting the export needs root)".to_string()
    } else if !Path::new("/dev/fuse").exists() {
        "/dev/fuse is missing (FUSE not loaded or not passed into this container)".to_string()
    } else if let Err(why) = transport_available() {
        why
    } else {
        return true;
    };
    eprintln!("SKIP: {}: {reason}", current_test_name());
    false
}

/// Whether this is a CI run (`CI` set, and not to `false` or `0`). There a
/// missing tool or facility is a failure, not a skip: `make setup` installs
/// everything the tests use, so a skip would only hide a broken setup.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| !matches!(value.trim(), "" | "0" | "false"))
}

/// For a precondition of the machine that is missing: prints
/// `SKIP: <test>: <reason>` and returns false, or fails the test under CI
/// (see [`in_ci`]).
#[track_caller]
pub fn skip_unless_in_ci(reason: &str) -> bool {
    let test = current_test_name();
    assert!(
        !in_ci(),
        "{test}: {reason}; CI is set, so this fails instead of skipping"
    );
    eprintln!("SKIP: {test}: {reason}");
    false
}

/// Names the transport every server of the run uses (`uring`, `readv`);
/// unset, servers run with their default. `make test` runs the end-to-end
/// suite once without it and once with `uring`.
pub const TRANSPORT_VAR: &str = "FUSE_EXPORT_TEST_TRANSPORT";

/// The transport asked for with [`TRANSPORT_VAR`].
pub fn test_transport() -> Option<String> {
    std::env::var(TRANSPORT_VAR)
        .ok()
        .filter(|value| !value.is_empty())
}

/// Whether the run's transport can be used here: FUSE-over-io_uring needs
/// the kernel's `enable_uring` switch, which the harness turns on for each
/// server (and restores) when it can.
fn transport_available() -> Result<(), String> {
    if test_transport().as_deref() != Some("uring") {
        return Ok(());
    }
    fuse_dev::uring::EnableUringGuard::acquire()
        .map(drop)
        .map_err(|err| format!("the uring run cannot use FUSE-over-io_uring: {err}"))
}

/// The server's command line with the run's transport (see
/// [`TRANSPORT_VAR`]) in front, unless the test picks one itself (in front,
/// so that a test's deliberately broken arguments stay as they are), and
/// the `enable_uring` guard the server needs while it runs with
/// FUSE-over-io_uring. Where the switch cannot be turned on, tests that
/// mount have skipped (`skip_unless_fuse`) and the others run with the
/// default transport.
fn with_run_transport(
    args: &[OsString],
) -> (Vec<OsString>, Option<fuse_dev::uring::EnableUringGuard>) {
    let mut transport = test_transport().filter(|_| !args.iter().any(|a| a == "--transport"));
    let mut uring = None;
    if transport.as_deref() == Some("uring") {
        uring = fuse_dev::uring::EnableUringGuard::acquire().ok();
        if uring.is_none() {
            transport = None;
        }
    }
    let mut command_line: Vec<OsString> = Vec::new();
    if let Some(transport) = &transport {
        command_line.extend(["--transport".into(), transport.into()]);
    }
    command_line.extend(args.iter().cloned());
    (command_line, uring)
}

/// Whether every program in `tools` is installed; if not, prints `SKIP:`
/// (or fails under CI, see [`in_ci`]).
#[must_use]
#[track_caller]
pub fn require_tools(tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|tool| find_in_path(tool).is_none())
        .collect();
    missing.is_empty()
        || skip_unless_in_ci(&format!(
            "{} not installed (`make setup` installs it)",
            missing.join(", ")
        ))
}

/// A PATH for the server in which `fusermount3` is a shell wrapper in
/// `<dir>/fusermount3-wrapper` that runs `prelude` (shell commands; `$*` are
/// fusermount3's arguments, `$PPID` the server) and then the real
/// fusermount3, which must be installed (see [`require_tools`]).
pub fn path_with_fusermount3_wrapper(dir: &TestDir, prelude: &str) -> OsString {
    use std::os::unix::fs::PermissionsExt;
    let real = find_in_path("fusermount3").expect("fusermount3 is installed");
    let bin = dir.join("fusermount3-wrapper");
    fs::create_dir(&bin).expect("create the wrapper directory");
    let wrapper = bin.join("fusermount3");
    let script = format!("#!/bin/sh\n{prelude}\nexec '{}' \"$@\"\n", real.display());
    write_file(&wrapper, script.as_bytes());
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).expect("chmod the wrapper");
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&path)))
        .expect("PATH entries contain no ':'")
}

/// The first executable file named `program` in the `PATH` directories.
pub fn find_in_path(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            fs::metadata(candidate)
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

/// The running test's name (libtest and nextest name the thread after it).
pub fn current_test_name() -> String {
    thread::current().name().unwrap_or("test").to_owned()
}

// ---------------------------------------------------------------------------
// Scratch directory

static NEXT_DIR_ID: AtomicU64 = AtomicU64::new(0);

/// A fresh directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    /// `label` only makes the directory recognisable; pid and a counter make it
    /// unique across parallel test processes and threads.
    pub fn new(label: &str) -> TestDir {
        let id = NEXT_DIR_ID.fetch_add(1, Ordering::Relaxed);
        let base = std::env::temp_dir();
        // Canonical, because /proc/self/mounts lists canonical paths and the
        // harness compares mountpoints with them.
        let base = fs::canonicalize(&base)
            .unwrap_or_else(|err| panic!("cannot resolve {}: {err}", base.display()));
        let path = base.join(format!("fuse-export-{label}-{}-{id}", std::process::id()));
        fs::create_dir(&path)
            .unwrap_or_else(|err| panic!("cannot create {}: {err}", path.display()));
        TestDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        // Never descend into a mount that somehow survived: removing through
        // it would touch the exported image (or hang on a dead server).
        if let Some(mount) = mounts_below(&self.path).first() {
            eprintln!(
                "keeping {}: {} is still mounted",
                self.path.display(),
                mount.display()
            );
            return;
        }
        if let Err(err) = fs::remove_dir_all(&self.path) {
            eprintln!("cannot remove {}: {err}", self.path.display());
        }
    }
}

// ---------------------------------------------------------------------------
// Test data

/// xorshift64* seeded through splitmix64: fast, reproducible test data
/// without a `rand` dependency. Any seed (0 included) is fine.
#[derive(Debug, Clone)]
pub struct Xorshift {
    state: u64,
}

impl Xorshift {
    pub fn new(seed: u64) -> Xorshift {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // xorshift's state must never be zero.
        Xorshift { state: z | 1 }
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Fills `buf` with the next bytes of the stream. The stream is the same
    /// however it is cut, as long as every cut but the last falls on a
    /// multiple of 8 bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut words = buf.chunks_exact_mut(8);
        for word in &mut words {
            word.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let tail = words.into_remainder();
        if !tail.is_empty() {
            let last = self.next_u64().to_le_bytes();
            tail.copy_from_slice(&last[..tail.len()]);
        }
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        self.fill(&mut buf);
        buf
    }
}

/// `len` bytes of the stream of `seed`.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    Xorshift::new(seed).bytes(len)
}

/// Writes the first `len` bytes of the stream of `seed` to a new file,
/// without holding them all in memory; the content equals
/// `random_bytes(seed, len)`.
pub fn create_random_file(path: &Path, seed: u64, len: u64) {
    let mut rng = Xorshift::new(seed);
    let mut file = File::create_new(path)
        .unwrap_or_else(|err| panic!("cannot create {}: {err}", path.display()));
    let mut chunk = vec![0; MIB as usize];
    let mut written = 0;
    while written < len {
        let n = (len - written).min(MIB) as usize;
        rng.fill(&mut chunk[..n]);
        file.write_all(&chunk[..n])
            .unwrap_or_else(|err| panic!("cannot write {}: {err}", path.display()));
        written += n as u64;
    }
}

/// A new file of `len` bytes that are all holes.
pub fn create_sparse_file(path: &Path, len: u64) {
    let file = File::create_new(path)
        .unwrap_or_else(|err| panic!("cannot create {}: {err}", path.display()));
    file.set_len(len)
        .unwrap_or_else(|err| panic!("cannot size {}: {err}", path.display()));
}

pub fn write_file(path: &Path, data: &[u8]) {
    fs::write(path, data).unwrap_or_else(|err| panic!("cannot write {}: {err}", path.display()));
}

pub fn read_file(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()))
}

/// The names in a directory, sorted.
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|err| panic!("cannot list {}: {err}", dir.display()))
        .map(|entry| {
            entry
                .expect("a directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

pub fn file_size(path: &Path) -> u64 {
    fs::metadata(path)
        .unwrap_or_else(|err| panic!("cannot stat {}: {err}", path.display()))
        .len()
}

/// Allocated bytes of a local file (st_blocks is in 512-byte units).
pub fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path)
        .unwrap_or_else(|err| panic!("cannot stat {}: {err}", path.display()))
        .blocks()
        * 512
}

/// A heap buffer whose start is aligned for O_DIRECT, without `unsafe`:
/// over-allocate and start at the first aligned byte.
#[derive(Debug)]
pub struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    pub fn zeroed(len: usize) -> AlignedBuf {
        let storage = vec![0; len + DIRECT_IO_ALIGN];
        let misalignment = storage.as_ptr() as usize % DIRECT_IO_ALIGN;
        let start = (DIRECT_IO_ALIGN - misalignment) % DIRECT_IO_ALIGN;
        AlignedBuf {
            storage,
            start,
            len,
        }
    }

    pub fn from_slice(data: &[u8]) -> AlignedBuf {
        let mut buf = AlignedBuf::zeroed(data.len());
        buf.as_mut_slice().copy_from_slice(data);
        buf
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

/// Opens `path` read-write with O_DIRECT.
pub fn open_direct(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(path)
        .unwrap_or_else(|err| panic!("cannot open {} with O_DIRECT: {err}", path.display()))
}

// ---------------------------------------------------------------------------
// Comparisons

/// Offset of the first byte where `a` and `b` differ, or of the end of the
/// shorter one when one is a prefix of the other.
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    // Comparing chunk by chunk lets memcmp do the bulk of the work (tests
    // are built without optimisation and compare hundreds of MiB).
    const CHUNK: usize = 64 * 1024;
    let common = a.len().min(b.len());
    let mut offset = 0;
    while offset < common {
        let end = (offset + CHUNK).min(common);
        if a[offset..end] != b[offset..end] {
            let within = a[offset..end]
                .iter()
                .zip(&b[offset..end])
                .position(|(x, y)| x != y);
            return within.map(|i| offset + i);
        }
        offset = end;
    }
    (a.len() != b.len()).then_some(common)
}

/// Asserts `actual == expected`, reporting the first differing offset and
/// the bytes around it instead of dumping both buffers.
#[track_caller]
pub fn assert_same_bytes(what: &str, expected: &[u8], actual: &[u8]) {
    if let Some(offset) = first_difference(expected, actual) {
        let around = |data: &[u8]| {
            let end = (offset + 16).min(data.len());
            format!("{:02x?}", &data[offset.min(end)..end])
        };
        panic!(
            "{what}: first difference at offset {offset} ({offset:#x}); expected {} bytes, got {}\n\
             expected from there: {}\n\
             actual from there:   {}",
            expected.len(),
            actual.len(),
            around(expected),
            around(actual),
        );
    }
}

/// Asserts two files have identical contents, reading both in chunks.
#[track_caller]
pub fn assert_files_equal(expected: &Path, actual: &Path) {
    let open = |path: &Path| {
        File::open(path).unwrap_or_else(|err| panic!("cannot open {}: {err}", path.display()))
    };
    let (mut expected_file, mut actual_file) = (open(expected), open(actual));
    let mut expected_buf = vec![0; 4 * MIB as usize];
    let mut actual_buf = vec![0; 4 * MIB as usize];
    let mut offset = 0usize;
    loop {
        let n = read_full(&mut expected_file, &mut expected_buf, expected);
        let m = read_full(&mut actual_file, &mut actual_buf, actual);
        if let Some(at) = first_difference(&expected_buf[..n], &actual_buf[..m]) {
            let (offset, a, b) = (offset + at, expected.display(), actual.display());
            panic!("{b} differs from {a}: first difference at offset {offset} ({offset:#x})");
        }
        if n == 0 {
            return;
        }
        offset += n;
    }
}

/// Reads until `buf` is full or EOF; returns the byte count.
fn read_full(file: &mut File, buf: &mut [u8], path: &Path) -> usize {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => panic!("cannot read {}: {err}", path.display()),
        }
    }
    filled
}

/// The OS error number of an I/O error, for messages and assertions.
pub fn errno_of(err: &io::Error) -> Option<rustix::io::Errno> {
    err.raw_os_error().map(rustix::io::Errno::from_raw_os_error)
}

// ---------------------------------------------------------------------------
// Mount table

/// One line of /proc/self/mounts.
#[derive(Debug, Clone)]
pub struct MountEntry {
    pub mountpoint: PathBuf,
    pub fstype: String,
    pub options: String,
}

impl MountEntry {
    /// Whether the mount options include `option` (e.g. `ro`).
    pub fn has_option(&self, option: &str) -> bool {
        self.options.split(',').any(|o| o == option)
    }
}

pub fn mount_table() -> Vec<MountEntry> {
    read_mount_table().unwrap_or_else(|err| panic!("cannot read /proc/self/mounts: {err}"))
}

/// [`mount_table`] for guards, which must not panic.
fn read_mount_table() -> io::Result<Vec<MountEntry>> {
    let table = fs::read("/proc/self/mounts")?;
    let entries = table
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            let mut fields = line.split(|&b| b == b' ');
            let _source = fields.next()?;
            let mountpoint = unescape_mount_field(fields.next()?);
            let fstype = String::from_utf8_lossy(fields.next()?).into_owned();
            let options = String::from_utf8_lossy(fields.next()?).into_owned();
            Some(MountEntry {
                mountpoint,
                fstype,
                options,
            })
        })
        .collect();
    Ok(entries)
}

/// A mountpoint field of the mount table, unescaped.
fn unescape_mount_field(field: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(&fuse_dev::mountinfo::unescape(field)))
}

/// The topmost mount at exactly `path`, if any.
pub fn find_mount(path: &Path) -> Option<MountEntry> {
    mount_table()
        .into_iter()
        .rev()
        .find(|entry| entry.mountpoint == path)
}

pub fn is_mounted(path: &Path) -> bool {
    find_mount(path).is_some()
}

/// Mountpoints strictly inside `dir`; for guards, so it does not panic (and
/// cannot read the table: it reports `dir` itself as mounted to be safe).
fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    match read_mount_table() {
        Ok(table) => table
            .into_iter()
            .map(|entry| entry.mountpoint)
            .filter(|mountpoint| mountpoint.starts_with(dir) && mountpoint != dir)
            .collect(),
        Err(_) => vec![dir.to_path_buf()],
    }
}

#[track_caller]
pub fn assert_mounted(path: &Path) {
    assert!(is_mounted(path), "{} is not mounted", path.display());
}

#[track_caller]
pub fn assert_not_mounted(path: &Path) {
    if let Some(entry) = find_mount(path) {
        panic!("{} is still mounted: {entry:?}", path.display());
    }
}

// ---------------------------------------------------------------------------
// Running commands

/// Runs `f` on a helper thread and gives up after `timeout`. For operations
/// that block on the FUSE server (stat, a client command): when the server
/// hangs, the test fails with a message instead of hanging; the stuck thread
/// is released once the server guard kills the server.
pub fn with_timeout<T: Send + 'static>(
    timeout: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        // The receiver is gone after a timeout; nobody wants the result then.
        let _ = sender.send(f());
    });
    receiver.recv_timeout(timeout).ok()
}

/// [`with_timeout`] with [`COMMAND_TIMEOUT`], failing the test (naming
/// `what`) when `f` does not return in time.
pub fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    with_timeout(COMMAND_TIMEOUT, f)
        .unwrap_or_else(|| panic!("{what} did not return within {COMMAND_TIMEOUT:?}"))
}

/// Calls `check` every 10 ms until it returns `Some` or `timeout` passes.
pub fn poll_until<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// The command line as a shell would show it, for messages.
pub fn describe(command: &Command) -> String {
    let mut words = vec![command.get_program().to_string_lossy().into_owned()];
    words.extend(
        command
            .get_args()
            .map(|arg| arg.to_string_lossy().into_owned()),
    );
    words.join(" ")
}

/// Runs `command` to completion (stdin closed, output captured), killing it
/// and failing the test after [`COMMAND_TIMEOUT`].
pub fn run(command: &mut Command) -> Output {
    let shown = describe(command);
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start `{shown}`: {err}"));
    let pid = child_pid(&child);
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        let _ = sender.send(child.wait_with_output());
    });
    let result = match receiver.recv_timeout(COMMAND_TIMEOUT) {
        Ok(result) => result,
        Err(_) => {
            // The waiting thread has not reaped the child, so the pid is
            // still ours.
            let _ = rustix::process::kill_process(pid, Signal::KILL);
            let output = receiver.recv().map(|r| r.map(|o| output_text(&o)));
            panic!("`{shown}` did not finish within {COMMAND_TIMEOUT:?}; killed it: {output:?}");
        }
    };
    result.unwrap_or_else(|err| panic!("cannot wait for `{shown}`: {err}"))
}

/// Runs `command` and fails the test, with its output, unless it succeeds.
#[track_caller]
pub fn run_ok(command: &mut Command) -> Output {
    let output = run(command);
    assert!(
        output.status.success(),
        "`{}` failed ({}):\n{}",
        describe(command),
        output.status,
        output_text(&output)
    );
    output
}

/// stdout and stderr of a finished command, for messages.
pub fn output_text(output: &Output) -> String {
    format!(
        "--- stdout ---\n{}--- stderr ---\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `dd` with `key=value` operands; paths are interpolated with `display()`
/// (test paths are UTF-8).
pub fn dd(operands: &[String]) -> Command {
    let mut command = Command::new("dd");
    command.args(operands);
    command
}

fn child_pid(child: &Child) -> Pid {
    let raw = i32::try_from(child.id()).expect("pid fits in i32");
    Pid::from_raw(raw).expect("a child's pid is positive")
}

// ---------------------------------------------------------------------------
// The server under test

/// A running `fuse-export` process. Dropping it sends SIGTERM (to this pid
/// only), waits up to [`STOP_TIMEOUT`], then SIGKILLs; afterwards it detaches
/// (`umount -l`) the mountpoint if it is still mounted.
#[derive(Debug)]
pub struct Server<'dir> {
    child: Child,
    exit_status: Option<ExitStatus>,
    mount: PathBuf,
    log: PathBuf,
    /// The scratch directory (holding the log, usually the mountpoint too)
    /// must outlive the server guard.
    _dir: PhantomData<&'dir TestDir>,
    /// In the uring run: `enable_uring` stays on while the server runs
    /// (restored when the last holder on the machine ends). Dropped after
    /// the server has stopped (fields drop after `Drop::drop`).
    _uring: Option<fuse_dev::uring::EnableUringGuard>,
}

static NEXT_LOG_ID: AtomicU64 = AtomicU64::new(0);

/// The pidfile that tells the harness the server is ready: the one in
/// `extra_args`, or one in `dir` added to `args`.
fn readiness_pidfile(dir: &TestDir, args: &mut Vec<OsString>, extra_args: &[&str]) -> PathBuf {
    let given = extra_args
        .iter()
        .position(|&arg| arg == "--pidfile")
        .and_then(|at| extra_args.get(at + 1));
    if let Some(path) = given {
        return PathBuf::from(path);
    }
    let path = dir.join(format!(
        "ready-{}.pid",
        NEXT_LOG_ID.fetch_add(1, Ordering::Relaxed)
    ));
    args.extend(["--pidfile".into(), path.clone().into()]);
    path
}

/// `--image <image> --mount <mount> <extra_args>`.
pub fn export_args(image: &Path, mount: &Path, extra_args: &[&str]) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "--image".into(),
        image.into(),
        "--mount".into(),
        mount.into(),
    ];
    args.extend(extra_args.iter().map(OsString::from));
    args
}

impl<'dir> Server<'dir> {
    /// Starts `fuse-export --image <image> --mount <mount> <extra_args>` and
    /// returns once the export is ready: mounted with the export's fstype,
    /// `stat` reports the image's size, and the server has published its
    /// pidfile (`--pidfile`, added in `dir` unless `extra_args` has one),
    /// which it does only after its own stat of the export returned: until
    /// then that stat may hold the mount, and an `umount` would find it
    /// busy. Fails with the server's stderr if it exits first or is not
    /// ready within [`READY_TIMEOUT`].
    pub fn export(
        dir: &'dir TestDir,
        image: &Path,
        mount: &Path,
        extra_args: &[&str],
    ) -> Server<'dir> {
        Server::export_with_env(dir, image, mount, extra_args, &[])
    }

    /// [`Server::export`] with extra environment variables for the server.
    pub fn export_with_env(
        dir: &'dir TestDir,
        image: &Path,
        mount: &Path,
        extra_args: &[&str],
        env: &[(&str, &OsStr)],
    ) -> Server<'dir> {
        let image_size = file_size(image);
        // On a directory mountpoint the image appears inside it, by name.
        let exported_file = if mount.is_dir() {
            mount.join(image.file_name().expect("the image path has a file name"))
        } else {
            mount.to_path_buf()
        };
        let mut args = export_args(image, mount, extra_args);
        let pidfile = readiness_pidfile(dir, &mut args, extra_args);
        let mut server = Server::spawn_with_env(dir, &args, mount, env);
        server.wait_until_ready(image_size, &exported_file, &pidfile);
        server
    }

    /// Starts the server with exactly `args`, without waiting for anything.
    /// `mount` is the path the guard unmounts on drop if it is mounted.
    pub fn spawn(dir: &'dir TestDir, args: &[OsString], mount: &Path) -> Server<'dir> {
        Server::spawn_with_env(dir, args, mount, &[])
    }

    /// [`Server::spawn`] with extra environment variables for the server.
    pub fn spawn_with_env(
        dir: &'dir TestDir,
        args: &[OsString],
        mount: &Path,
        env: &[(&str, &OsStr)],
    ) -> Server<'dir> {
        let mut command = Command::new(SERVER_BIN);
        command.envs(env.iter().copied());
        Server::start(dir, command, args, mount, "")
    }

    /// Runs `command` (which ends by naming the server binary) with `args`
    /// and the run's transport, its output going to a fresh log in `dir`.
    /// `via` completes the failure message (" through setpriv").
    fn start(
        dir: &'dir TestDir,
        mut command: Command,
        args: &[OsString],
        mount: &Path,
        via: &str,
    ) -> Server<'dir> {
        let log_id = NEXT_LOG_ID.fetch_add(1, Ordering::Relaxed);
        let log = dir.join(format!("server-{log_id}.log"));
        let stderr = File::create(&log)
            .unwrap_or_else(|err| panic!("cannot create {}: {err}", log.display()));
        let stdout = stderr
            .try_clone()
            .expect("cannot duplicate the log file descriptor");
        let (command_line, uring) = with_run_transport(args);
        let child = command
            .args(&command_line)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {SERVER_BIN}{via}: {err}"));
        Server {
            child,
            exit_status: None,
            mount: mount.to_path_buf(),
            log,
            _dir: PhantomData,
            _uring: uring,
        }
    }

    pub fn mount(&self) -> &Path {
        &self.mount
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the server wrote to stdout and stderr so far.
    pub fn stderr(&self) -> String {
        fs::read(&self.log)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_else(|err| format!("<cannot read {}: {err}>", self.log.display()))
    }

    /// Waits (up to [`READY_TIMEOUT`]) until the server's log contains
    /// `text` and returns the log; fails the test otherwise. A line the
    /// server logs around the time it becomes ready (the startup line) may
    /// reach the log just after a client could use the mount.
    #[track_caller]
    pub fn wait_for_log(&self, text: &str) -> String {
        poll_until(READY_TIMEOUT, || {
            let log = self.stderr();
            log.contains(text).then_some(log)
        })
        .unwrap_or_else(|| {
            panic!(
                "the server did not log {text:?}; its log:\n{}",
                self.stderr()
            )
        })
    }

    /// The server's resident memory (`VmRSS`) in KiB, while it runs.
    pub fn resident_kib(&self) -> Option<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    }

    /// Sends `signal` to the server process, unless it has been reaped.
    pub fn signal(&self, signal: Signal) {
        if self.exit_status.is_none() {
            rustix::process::kill_process(child_pid(&self.child), signal)
                .unwrap_or_else(|err| panic!("cannot send {signal:?} to the server: {err}"));
        }
    }

    /// `kill -9`: SIGKILL, then reaps the server within [`STOP_TIMEOUT`]
    /// (failing the test if it is still there).
    pub fn kill_9(&mut self) {
        self.signal(Signal::KILL);
        self.wait_for_exit(STOP_TIMEOUT)
            .expect("the server survived SIGKILL");
    }

    /// Waits up to `timeout` for the server to exit.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        poll_until(timeout, || self.try_wait())
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exit_status.is_none() {
            self.exit_status = self
                .child
                .try_wait()
                .unwrap_or_else(|err| panic!("cannot wait for the server: {err}"));
        }
        self.exit_status
    }

    /// Asserts the server exits with status 0 within [`STOP_TIMEOUT`] and
    /// leaves nothing mounted (after SIGTERM, umount, ...).
    #[track_caller]
    pub fn assert_exits_cleanly(&mut self, after: &str) {
        let Some(status) = self.wait_for_exit(STOP_TIMEOUT) else {
            panic!(
                "the server is still running {STOP_TIMEOUT:?} after {after}; stderr:\n{}",
                self.stderr()
            );
        };
        assert_eq!(
            status.code(),
            Some(0),
            "the server exited with {status} after {after}; stderr:\n{}",
            self.stderr()
        );
        if let Some(entry) = find_mount(&self.mount) {
            panic!(
                "{} is still mounted after the server exited: {entry:?}; stderr:\n{}",
                self.mount.display(),
                self.stderr()
            );
        }
    }

    /// SIGTERM, then [`Server::assert_exits_cleanly`]. After this the image
    /// file can be inspected directly.
    #[track_caller]
    pub fn stop(mut self) {
        self.signal(Signal::TERM);
        self.assert_exits_cleanly("SIGTERM");
    }

    fn wait_until_ready(&mut self, image_size: u64, exported_file: &Path, pidfile: &Path) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last_seen = String::from("not mounted");
        loop {
            if let Some(status) = self.try_wait() {
                panic!(
                    "the server exited ({status}) before the export was ready; stderr:\n{}",
                    self.stderr()
                );
            }
            if let Some(entry) = find_mount(&self.mount) {
                if entry.fstype != EXPORT_FSTYPE {
                    last_seen = format!("mounted with fstype {}", entry.fstype);
                } else {
                    // stat goes to the server (GETATTR) and blocks until it
                    // answers, so it is bounded by the remaining time too.
                    let file = exported_file.to_path_buf();
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    match with_timeout(remaining, move || fs::metadata(file)) {
                        Some(Ok(meta)) if meta.is_file() && meta.len() == image_size => {
                            if pidfile.exists() {
                                return;
                            }
                            last_seen = format!("mounted; no pidfile {} yet", pidfile.display());
                        }
                        Some(Ok(meta)) => {
                            last_seen = format!(
                                "mounted; stat: {:?}, {} bytes (image: {image_size})",
                                meta.file_type(),
                                meta.len()
                            );
                        }
                        Some(Err(err)) => last_seen = format!("mounted; stat failed: {err}"),
                        None => last_seen = String::from("mounted; stat did not return"),
                    }
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "the export at {} was not ready within {READY_TIMEOUT:?} ({last_seen}); stderr:\n{}",
                    self.mount.display(),
                    self.stderr()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server<'_> {
    fn drop(&mut self) {
        if self.try_wait_quietly().is_none() {
            let _ = rustix::process::kill_process(child_pid(&self.child), Signal::TERM);
            if self.wait_quietly(STOP_TIMEOUT).is_none() {
                eprintln!("the server ignored SIGTERM for {STOP_TIMEOUT:?}; sending SIGKILL");
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        let still_mounted = read_mount_table().map_or(true, |table| {
            table.iter().any(|entry| entry.mountpoint == self.mount)
        });
        if still_mounted {
            eprintln!("{} was left mounted; detaching it", self.mount.display());
            if let Err(err) = rustix::mount::unmount(&self.mount, UnmountFlags::DETACH) {
                eprintln!("umount -l {} failed: {err}", self.mount.display());
            }
        }
        if thread::panicking() {
            eprintln!(
                "--- fuse-export output ({}) ---\n{}",
                self.log.display(),
                self.stderr()
            );
        }
    }
}

impl Server<'_> {
    // Drop must not panic (a panic while unwinding aborts the whole test
    // binary), so it uses these non-panicking variants.

    fn try_wait_quietly(&mut self) -> Option<ExitStatus> {
        if self.exit_status.is_none() {
            self.exit_status = self.child.try_wait().ok().flatten();
        }
        self.exit_status
    }

    fn wait_quietly(&mut self, timeout: Duration) -> Option<ExitStatus> {
        poll_until(timeout, || self.try_wait_quietly())
    }
}

/// A client process (e.g. a long dd) that is killed and reaped if the test
/// ends while it still runs, so no test leaves it behind.
#[derive(Debug)]
pub struct KillOnDrop {
    pub child: Child,
    exit_status: Option<ExitStatus>,
}

impl KillOnDrop {
    pub fn spawn(command: &mut Command) -> KillOnDrop {
        let child = command
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start `{}`: {err}", describe(command)));
        KillOnDrop {
            child,
            exit_status: None,
        }
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exit_status.is_none() {
            self.exit_status = self.child.try_wait().ok().flatten();
        }
        self.exit_status
    }

    pub fn wait_for_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        poll_until(timeout, || self.try_wait())
    }

    /// The captured stderr, once the process has exited (else empty, as
    /// reading a live pipe would block).
    pub fn stderr(&mut self) -> String {
        let mut text = String::new();
        if self.try_wait().is_some()
            && let Some(mut pipe) = self.child.stderr.take()
        {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.try_wait().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// Refused command lines

/// Who refuses a command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusedBy {
    /// clap's usage error: `error: ...` (naming the option), a usage or
    /// value hint, `For more information, try '--help'.`.
    Clap,
    /// The server's own check: exactly one line, `fuse-export: ...`.
    Server,
}

/// A command line the server must refuse with exit code 2, before it
/// creates or mounts anything.
#[derive(Debug, Clone)]
pub struct RefusedCommandLine {
    /// For messages.
    pub name: String,
    pub args: Vec<OsString>,
    /// Where the server would mount; it must never be mounted.
    pub mount: PathBuf,
    pub by: RefusedBy,
    /// What the error must say (each must appear in it): the option, value
    /// or path that is wrong and what is wrong with it. A failed mount or
    /// some other refusal also exits with 2 and one line; this tells them
    /// apart.
    pub says: Vec<String>,
}

impl RefusedCommandLine {
    /// `--image <image> --mount <mount> <extra>`, refused by `by` with an
    /// error that contains every string in `says`.
    pub fn new(
        name: &str,
        image: &Path,
        mount: &Path,
        extra: &[&str],
        by: RefusedBy,
        says: &[&str],
    ) -> RefusedCommandLine {
        let mut args: Vec<OsString> = vec![
            "--image".into(),
            image.into(),
            "--mount".into(),
            mount.into(),
        ];
        args.extend(extra.iter().map(OsString::from));
        RefusedCommandLine {
            name: name.to_owned(),
            args,
            mount: mount.to_path_buf(),
            by,
            says: says.iter().map(|&s| s.to_owned()).collect(),
        }
    }
}

/// Runs the server with `case` and returns what went wrong, each line
/// prefixed with the case's name: the exit code must be 2 and the error
/// the one `case.by` gives and contain `case.says`; the mountpoint must
/// never be mounted (watched while the server runs, not only after it
/// exits) and `fresh` (a path that does not exist yet, usually the
/// mountpoint) must never be created, not even for a moment.
pub fn refused_command_line_failures(
    dir: &TestDir,
    case: &RefusedCommandLine,
    fresh: &Path,
) -> Vec<String> {
    let name = &case.name;
    let mut failures = Vec::new();
    let creation = CreationWatch::new(fresh);
    // A fixed log level: the expectation is exact, whatever RUST_LOG the
    // developer has set.
    let mut server = Server::spawn_with_env(
        dir,
        &case.args,
        &case.mount,
        &[("RUST_LOG", "info".as_ref())],
    );
    let mut seen_mounted = false;
    let status = poll_until(STOP_TIMEOUT, || {
        seen_mounted |= is_mounted(&case.mount);
        server.wait_for_exit(Duration::ZERO)
    });
    let stderr = server.stderr();
    match status {
        // Dropping the guard stops the server and unmounts.
        None => failures.push(format!(
            "{name}: still running after {STOP_TIMEOUT:?}; stderr:\n{stderr}"
        )),
        Some(status) => {
            if let Some(problem) = refusal_problem(case, &stderr) {
                failures.push(format!(
                    "{name}: {problem}; exit {status}, stderr:\n{stderr}"
                ));
            } else if status.code() != Some(2) {
                failures.push(format!(
                    "{name}: exit {status} instead of 2; stderr:\n{stderr}"
                ));
            }
        }
    }
    if seen_mounted || is_mounted(&case.mount) {
        failures.push(format!("{name}: mounted {}", case.mount.display()));
    }
    if creation.was_created() {
        failures.push(format!("{name}: created {}", fresh.display()));
    }
    if fresh.exists() {
        let _ = fs::remove_file(fresh);
    }
    failures
}

/// What is wrong with `stderr` as `case`'s refusal, if anything.
fn refusal_problem(case: &RefusedCommandLine, stderr: &str) -> Option<String> {
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    // The part that must name what is wrong.
    let message = match case.by {
        RefusedBy::Server => {
            let [line] = lines[..] else {
                return Some(format!("{} lines instead of one", lines.len()));
            };
            if !line.starts_with("fuse-export: ") {
                return Some("the line does not start with `fuse-export: `".into());
            }
            if line.starts_with("fuse-export: mounting") {
                return Some("it got as far as mounting".into());
            }
            line
        }
        RefusedBy::Clap => {
            let (Some(first), Some(last)) = (lines.first(), lines.last()) else {
                return Some("no output".into());
            };
            if !first.starts_with("error: ") || *last != "For more information, try '--help'." {
                return Some("not clap's usage error".into());
            }
            first
        }
    };
    let missing: Vec<&str> = case
        .says
        .iter()
        .map(String::as_str)
        .filter(|text| !message.contains(text))
        .collect();
    (!missing.is_empty()).then(|| format!("the error does not say {missing:?}"))
}

/// The older form of [`refused_command_line_failures`], for the tests that
/// only know the arguments: exit 2 with one `fuse-export: ` line (or, when
/// `clap_may_answer`, clap's usage error), never mounted, `must_not_exist`
/// never created. Prefer [`RefusedCommandLine`], which also checks that the
/// error names what was wrong.
pub fn rejected_command_line_failures(
    dir: &TestDir,
    name: &str,
    args: &[OsString],
    mount: &Path,
    must_not_exist: &Path,
    clap_may_answer: bool,
) -> Vec<String> {
    let case = |by| RefusedCommandLine {
        name: name.to_owned(),
        args: args.to_vec(),
        mount: mount.to_path_buf(),
        by,
        says: Vec::new(),
    };
    let as_server = refused_command_line_failures(dir, &case(RefusedBy::Server), must_not_exist);
    if as_server.is_empty() || !clap_may_answer {
        return as_server;
    }
    refused_command_line_failures(dir, &case(RefusedBy::Clap), must_not_exist)
}

/// Notices whether a file of a given name is created in a directory, even
/// one that is removed again before anyone looks (inotify).
#[derive(Debug)]
pub struct CreationWatch {
    inotify: rustix::fd::OwnedFd,
    name: OsString,
}

impl CreationWatch {
    /// Watches the directory of `path` for `path`'s name to appear.
    pub fn new(path: &Path) -> CreationWatch {
        use rustix::fs::inotify;
        let directory = path.parent().expect("the path has a directory");
        let name = path
            .file_name()
            .expect("the path has a file name")
            .to_owned();
        let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)
            .expect("inotify_init1");
        inotify::add_watch(
            &fd,
            directory,
            inotify::WatchFlags::CREATE | inotify::WatchFlags::MOVED_TO,
        )
        .unwrap_or_else(|err| panic!("cannot watch {}: {err}", directory.display()));
        CreationWatch { inotify: fd, name }
    }

    /// Whether the file was created (or moved in) since [`CreationWatch::new`].
    pub fn was_created(&self) -> bool {
        let mut buffer = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
        let mut events = rustix::fs::inotify::Reader::new(&self.inotify, &mut buffer);
        let mut created = false;
        loop {
            match events.next() {
                Ok(event) => {
                    created |= event
                        .file_name()
                        .is_some_and(|name| name.to_bytes() == self.name.as_bytes());
                }
                Err(rustix::io::Errno::AGAIN) => return created,
                Err(err) => panic!("cannot read inotify events: {err}"),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Clients that stay open

/// A client driven command by command through its stdin (`qemu-io` without
/// `-c`, a small script), so that it holds its files open while the test
/// does something else in between. Its stdout and stderr are read as one
/// stream; a command's answer is everything up to the next `prompt`.
/// Killed and reaped on drop.
#[derive(Debug)]
pub struct Interactive {
    process: KillOnDrop,
    stdin: Option<std::process::ChildStdin>,
    output: mpsc::Receiver<Vec<u8>>,
    pending: Vec<u8>,
    prompt: String,
    shown: String,
}

impl Interactive {
    /// Starts `command` and waits for its first `prompt`. The command
    /// keeps a copy of the output pipe until it is dropped, so pass a
    /// temporary: the answer to a client that died is only complete once
    /// every copy is closed.
    pub fn spawn(command: &mut Command, prompt: &str) -> Interactive {
        let shown = describe(command);
        let (reader, writer) = io::pipe().expect("cannot create a pipe");
        let writer_too = writer.try_clone().expect("cannot duplicate a pipe");
        let mut process = KillOnDrop::spawn(
            command
                .stdin(Stdio::piped())
                .stdout(writer)
                .stderr(writer_too),
        );
        // Dropping the command closes our copies of the pipe's write end,
        // so the reader sees EOF when the client exits.
        let stdin = process.child.stdin.take();
        let (sender, output) = mpsc::channel();
        thread::spawn(move || {
            let mut reader = reader;
            let mut chunk = [0u8; 4096];
            while let Ok(n) = reader.read(&mut chunk) {
                if n == 0 || sender.send(chunk[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        let mut client = Interactive {
            process,
            stdin,
            output,
            pending: Vec::new(),
            prompt: prompt.to_owned(),
            shown,
        };
        client.answer();
        client
    }

    /// Sends `line` and returns its answer (without the prompt). If the
    /// client exits instead (a crash, a signal), returns what it printed,
    /// followed by its exit status.
    pub fn ask(&mut self, line: &str) -> String {
        let stdin = self.stdin.as_mut().expect("the client's stdin is open");
        let sent = stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush());
        if let Err(err) = sent {
            return format!("<cannot send {line:?}: {err}>");
        }
        self.answer()
    }

    /// Output up to the next prompt, or to EOF with the exit status.
    fn answer(&mut self) -> String {
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let prompt = self.prompt.as_bytes();
        loop {
            if let Some(at) = self
                .pending
                .windows(prompt.len())
                .position(|window| window == prompt)
            {
                let text = String::from_utf8_lossy(&self.pending[..at]).into_owned();
                self.pending.drain(..at + prompt.len());
                return text;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(chunk) => self.pending.extend_from_slice(&chunk),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let text = String::from_utf8_lossy(&self.pending).into_owned();
                    self.pending.clear();
                    let status = self.process.wait_for_exit(STOP_TIMEOUT);
                    return format!("{text}<exited: {status:?}>");
                }
                Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                    "`{}` gave no prompt within {COMMAND_TIMEOUT:?}; so far: {:?}",
                    self.shown,
                    String::from_utf8_lossy(&self.pending)
                ),
            }
        }
    }

    /// Closes stdin and waits for the client to exit.
    pub fn finish(mut self) -> Option<ExitStatus> {
        drop(self.stdin.take());
        self.process.wait_for_exit(COMMAND_TIMEOUT)
    }
}

/// A scratch tmpfs of `size` bytes mounted on `dir` (which must exist):
/// a filesystem that fills up, for tests of what a full disk does.
/// Unmounted on drop.
#[derive(Debug)]
pub struct SmallFilesystem {
    mountpoint: PathBuf,
}

impl SmallFilesystem {
    pub fn mount(dir: &Path, size: u64) -> SmallFilesystem {
        let options = std::ffi::CString::new(format!("size={size},mode=0755"))
            .expect("mount options have no NUL");
        rustix::mount::mount(
            "fuse-export-test",
            dir,
            "tmpfs",
            rustix::mount::MountFlags::NOSUID | rustix::mount::MountFlags::NODEV,
            options.as_c_str(),
        )
        .unwrap_or_else(|err| panic!("cannot mount a tmpfs on {}: {err}", dir.display()));
        SmallFilesystem {
            mountpoint: dir.to_path_buf(),
        }
    }

    /// Fills the free space with a file named `name`.
    pub fn fill(&self, name: &str) {
        let path = self.mountpoint.join(name);
        let mut file = File::create_new(&path)
            .unwrap_or_else(|err| panic!("cannot create {}: {err}", path.display()));
        let chunk = vec![0x55; 64 * KIB as usize];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(err) if errno_of(&err) == Some(rustix::io::Errno::NOSPC) => break,
                Err(err) => panic!("cannot fill {}: {err}", path.display()),
            }
        }
    }
}

impl Drop for SmallFilesystem {
    fn drop(&mut self) {
        if let Err(err) = rustix::mount::unmount(&self.mountpoint, UnmountFlags::DETACH) {
            eprintln!("umount -l {} failed: {err}", self.mountpoint.display());
        }
    }
}

// ---------------------------------------------------------------------------
// Block devices and filesystems made by a test

/// A loop device attached to a file (`losetup --find --show`); detached on
/// drop.
#[derive(Debug)]
pub struct LoopDevice {
    device: PathBuf,
}

impl LoopDevice {
    pub fn attach(file: &Path, extra_args: &[&str]) -> LoopDevice {
        let output = run_ok(
            Command::new("losetup")
                .args(["--find", "--show"])
                .args(extra_args)
                .arg(file),
        );
        let device = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        assert!(
            device.starts_with("/dev/loop"),
            "losetup printed no device: {device:?}"
        );
        LoopDevice {
            device: PathBuf::from(device),
        }
    }

    pub fn path(&self) -> &Path {
        &self.device
    }

    /// `/sys/block/loopN/<attribute>`.
    fn sysfs_path(&self, attribute: &str) -> PathBuf {
        let name = self.device.file_name().expect("a device name");
        Path::new("/sys/block").join(name).join(attribute)
    }

    /// `/sys/block/loopN/loop/<attribute>`.
    pub fn sysfs(&self, attribute: &str) -> String {
        let path = self.sysfs_path(&format!("loop/{attribute}"));
        fs::read_to_string(&path)
            .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()))
            .trim()
            .to_owned()
    }

    /// Flush requests the device has completed: field 16 ("flush I/Os") of
    /// `/sys/block/loopN/stat` (Documentation/block/stat.rst).
    pub fn flushes(&self) -> u64 {
        let path = self.sysfs_path("stat");
        let stat = fs::read_to_string(&path)
            .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
        let fields: Vec<&str> = stat.split_whitespace().collect();
        let field = fields.get(15).unwrap_or_else(|| {
            panic!(
                "{} has {} fields; this kernel does not count flushes",
                path.display(),
                fields.len()
            )
        });
        field
            .parse()
            .unwrap_or_else(|err| panic!("flush count {field:?} in {}: {err}", path.display()))
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let detached = Command::new("losetup")
            .arg("-d")
            .arg(&self.device)
            .stdin(Stdio::null())
            .status();
        if !detached.as_ref().is_ok_and(|status| status.success()) {
            eprintln!("losetup -d {} failed: {detached:?}", self.device.display());
        }
    }
}

/// A filesystem mounted on a directory; unmounted on drop (retrying while
/// busy, then lazily).
#[derive(Debug)]
pub struct MountedFs {
    dir: PathBuf,
    mounted: bool,
}

/// How long an unmount retries while the filesystem is busy. A server that
/// has exited can still hold its image open for a moment: the kernel drops
/// the files registered with an io_uring asynchronously, after the process
/// is gone.
const BUSY_UNMOUNT_RETRY: Duration = Duration::from_secs(5);

impl MountedFs {
    /// `mount [-o options] device dir`.
    pub fn mount(device: &Path, dir: &Path, options: Option<&str>) -> MountedFs {
        MountedFs::mount_typed(device, None, dir, options)
    }

    /// `mount [-t fstype] [-o options] source dir`.
    pub fn mount_typed(
        source: &Path,
        fstype: Option<&str>,
        dir: &Path,
        options: Option<&str>,
    ) -> MountedFs {
        let mut command = Command::new("mount");
        if let Some(fstype) = fstype {
            command.args(["-t", fstype]);
        }
        if let Some(options) = options {
            command.args(["-o", options]);
        }
        run_ok(command.arg(source).arg(dir));
        MountedFs {
            dir: dir.to_path_buf(),
            mounted: true,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Unmounts with one attempt, failing the test if that fails (busy
    /// included): for a test whose check is that nothing holds the
    /// filesystem any more.
    pub fn unmount_at_once(mut self) {
        let result = rustix::mount::unmount(&self.dir, UnmountFlags::empty());
        self.mounted = false;
        if let Err(err) = result {
            let _ = rustix::mount::unmount(&self.dir, UnmountFlags::DETACH);
            panic!("umount {}: {err}", self.dir.display());
        }
    }

    /// Unmounts now, failing the test if it stays busy.
    pub fn unmount(mut self) {
        let result = self.unmount_retrying();
        self.mounted = false;
        if let Err(err) = result {
            let _ = rustix::mount::unmount(&self.dir, UnmountFlags::DETACH);
            panic!("umount {}: {err}", self.dir.display());
        }
    }

    fn unmount_retrying(&self) -> rustix::io::Result<()> {
        let deadline = Instant::now() + BUSY_UNMOUNT_RETRY;
        loop {
            match rustix::mount::unmount(&self.dir, UnmountFlags::empty()) {
                Err(rustix::io::Errno::BUSY) if Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(20));
                }
                result => return result,
            }
        }
    }
}

impl Drop for MountedFs {
    fn drop(&mut self) {
        if !self.mounted {
            return;
        }
        if let Err(err) = self.unmount_retrying() {
            eprintln!("umount {} failed ({err}); detaching it", self.dir.display());
            let _ = rustix::mount::unmount(&self.dir, UnmountFlags::DETACH);
        }
    }
}

impl<'dir> Server<'dir> {
    /// [`Server::export`] of an image whose size `stat` does not show (a
    /// block device, whose node has size 0): ready once the export shows
    /// `image_size` bytes.
    pub fn export_sized(
        dir: &'dir TestDir,
        image: &Path,
        image_size: u64,
        mount: &Path,
        extra_args: &[&str],
    ) -> Server<'dir> {
        let mut args = export_args(image, mount, extra_args);
        let pidfile = readiness_pidfile(dir, &mut args, extra_args);
        let mut server = Server::spawn(dir, &args, mount);
        server.wait_until_ready(image_size, mount, &pidfile);
        server
    }
}

// ---------------------------------------------------------------------------
// Servers run as another user

impl<'dir> Server<'dir> {
    /// [`Server::spawn`] as the user `uid:gid` (through `setpriv`, which
    /// execs the server, so the guard signals the server itself).
    pub fn spawn_as_user(
        dir: &'dir TestDir,
        (uid, gid): (u32, u32),
        args: &[OsString],
        mount: &Path,
    ) -> Server<'dir> {
        let mut command = Command::new("setpriv");
        command
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"))
            .arg("--clear-groups")
            .arg("--")
            .arg(SERVER_BIN);
        Server::start(dir, command, args, mount, " through setpriv")
    }
}
