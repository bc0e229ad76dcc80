//! Smoke test: `cargo xtask lab --quick --dry-run` builds and prints the
//! plan anywhere (no root, no fio, no server build), and `--only` filters it.
//! No timing is asserted: performance numbers come from running the lab.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::process::Command;

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

/// `cargo xtask lab --dry-run ARGS` with no server binary, so the plan
/// assumes every option is there (whatever is built in target/).
fn dry_run(extra: &[&str]) -> String {
    let output = Command::new(XTASK)
        .args(["lab", "--dry-run", "--server", "/nonexistent/fuse-export"])
        .args(extra)
        .output()
        .expect("xtask runs");
    assert!(
        output.status.success(),
        "xtask lab --dry-run {extra:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("the plan is UTF-8")
}

/// A stand-in server whose `--help` is `help`, in a temp dir.
struct FakeServer(PathBuf);

impl FakeServer {
    fn new(help: &str) -> FakeServer {
        let dir = std::env::temp_dir().join(format!("lab-plan-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("fuse-export");
        fs::write(&path, format!("#!/bin/sh\ncat <<'EOF'\n{help}\nEOF\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        FakeServer(path)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

const HELP: &str = "Usage: fuse-export [OPTIONS] --image <PATH> --mount <PATH>

Options:
      --transport <TRANSPORT>
          How requests reach the server

          Possible values:
          - auto:  uring where the kernel offers it, else readv
          - readv: io_uring READV on /dev/fuse
          - uring: FUSE-over-io_uring
          - spdk:  a transport the lab does not know yet

      --queues <N>
          Queue threads

  -h, --help
          Print help";

#[test]
fn quick_dry_run_lists_the_plan() {
    let plan = dry_run(&["--quick"]);
    for case in [
        "matrix/convert-direct/plain",
        "matrix/convert-direct/fuse-export",
        "matrix/convert-direct/qsd",
        "matrix/dd-read-1M/fuse-export",
        "matrix/fio-randread-4k-qd32-io_uring/qsd",
        "matrix/fio-randwrite-4k-qd1-io_uring/fuse-export",
        "matrix/fio-write-1M-qd16-io_uring/plain",
        "matrix/fio-randrw70-4k-qd32-io_uring/fuse-export",
        "knob-queues/",
        "alloc/",
    ] {
        assert!(plan.contains(case), "{case} missing from the plan:\n{plan}");
    }
    assert!(plan.contains("runs, estimated"), "{plan}");
}

#[test]
fn only_keeps_the_selected_cases_and_their_baseline() {
    let plan = dry_run(&["--quick", "--only", "fio-randread-4k-qd1-io_uring/qsd"]);
    assert!(
        plan.contains("matrix/fio-randread-4k-qd1-io_uring/qsd"),
        "{plan}"
    );
    assert!(
        plan.contains("matrix/fio-randread-4k-qd1-io_uring/plain"),
        "{plan}"
    );
    assert!(
        !plan.contains("matrix/fio-randread-4k-qd1-io_uring/fuse-export"),
        "{plan}"
    );
    assert!(!plan.contains("convert"), "{plan}");
}

#[test]
fn bad_arguments_fail_with_a_message() {
    let output = Command::new(XTASK)
        .args(["lab", "--repetitions", "0", "--dry-run"])
        .output()
        .expect("xtask runs");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--repetitions"));
}

#[test]
fn transport_and_queue_depth_apply_to_every_workload() {
    let plan = dry_run(&[
        "--transport",
        "readv,uring",
        "--queue-depth",
        "16",
        "--only",
        "matrix/",
    ]);
    for case in [
        "matrix/convert-direct/fuse-export[transport=readv,queue_depth=16]",
        "matrix/ext4-fio-randwrite-4k-qd32-io_uring/fuse-export[transport=uring,queue_depth=16]",
        "matrix/ext4-fio-randread-4k-qd32-io_uring/qsd",
    ] {
        assert!(plan.contains(case), "{case} missing from the plan:\n{plan}");
    }
    assert!(
        !plan.contains("matrix/convert-direct/fuse-export\n"),
        "{plan}"
    );
}

#[test]
fn transports_and_options_come_from_the_servers_help() {
    let server = FakeServer::new(HELP);
    let server_path = server.0.to_str().unwrap();
    let output = Command::new(XTASK)
        .args(["lab", "--dry-run", "--server", server_path])
        .output()
        .expect("xtask runs");
    assert!(output.status.success());
    let plan = String::from_utf8_lossy(&output.stdout);
    for wanted in [
        "knob-transport/convert-direct/fuse-export[transport=uring]",
        "knob-transport/convert-direct/fuse-export[transport=spdk]",
        "knob transport=passthrough: this fuse-export build does not offer --transport passthrough",
        "knob cache: this fuse-export build has no --cache option",
    ] {
        assert!(
            plan.contains(wanted),
            "{wanted} missing from the plan:\n{plan}"
        );
    }
    assert!(!plan.contains("transport=auto"), "{plan}");

    let output = Command::new(XTASK)
        .args(["lab", "--dry-run", "--server", server_path])
        .args(["--transport", "passthrough"])
        .output()
        .expect("xtask runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("does not offer --transport passthrough"),
        "{stderr}"
    );
}
