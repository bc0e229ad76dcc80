//! Runs a command with `/sys/module/fuse/parameters/enable_uring` set to
//! `Y`, and restores the previous value when the command ends, fails, or
//! this wrapper gets SIGINT/SIGTERM/SIGHUP (passed on to the command, which
//! is waited for). For the FUSE-over-io_uring test run and the lab:
//!
//! ```sh
//! cargo run -q -p fuse-dev --example with_enable_uring -- cargo nextest run -p fuse-export
//! ```
//!
//! Nested and parallel users (the test harness takes its own guard per
//! server) share one record, so the value is restored when the last one
//! ends (see `fuse_dev::uring::EnableUringGuard`). Exits with the command's
//! status. Where the parameter cannot be turned on (no such parameter, not
//! root), it says so in a `SKIP:` line and runs the command anyway: the test
//! harness then skips what needs the transport, one test at a time.

use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicI32, Ordering};

use fuse_dev::uring::EnableUringGuard;

/// The command's pid, for the signal handler.
static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn pass_on(signal: libc::c_int) {
    let pid = CHILD.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe and takes plain integers.
        unsafe { libc::kill(pid, signal) };
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(program) = args.next() else {
        eprintln!("with_enable_uring: usage: with_enable_uring COMMAND [ARGS...]");
        return ExitCode::from(2);
    };
    let guard = match EnableUringGuard::acquire() {
        Ok(guard) => Some(guard),
        Err(err) => {
            eprintln!("SKIP: with_enable_uring: {err}; running the command without it");
            None
        }
    };
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: `pass_on` only reads an atomic and calls kill(2), both
        // async-signal-safe; installing a handler has no other effect.
        unsafe { libc::signal(signal, pass_on as *const () as libc::sighandler_t) };
    }
    let status = match Command::new(&program).args(args).spawn() {
        Ok(mut child) => {
            CHILD.store(child.id() as i32, Ordering::Relaxed);
            child.wait()
        }
        Err(err) => Err(err),
    };
    drop(guard);
    match status {
        Ok(status) => match status.code() {
            Some(code) => ExitCode::from(code.clamp(0, 255) as u8),
            // Killed by a signal: report failure the way shells do.
            None => ExitCode::from(1),
        },
        Err(err) => {
            eprintln!(
                "with_enable_uring: running {}: {err}",
                program.to_string_lossy()
            );
            ExitCode::from(2)
        }
    }
}
