//! Smoke test: `cargo xtask lab --quick --dry-run` builds and prints the
//! plan anywhere (no root, no fio, no server build), and `--only` filters it.
//! No timing is asserted: performance numbers come from running the lab.

use std::process::Command;

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

fn dry_run(extra: &[&str]) -> String {
    let output = Command::new(XTASK)
        .args(["lab", "--quick", "--dry-run"])
        .args(extra)
        .output()
        .expect("xtask runs");
    assert!(
        output.status.success(),
        "xtask lab --quick --dry-run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("the plan is UTF-8")
}

#[test]
fn quick_dry_run_lists_the_plan() {
    let plan = dry_run(&[]);
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
    let plan = dry_run(&["--only", "fio-randread-4k-qd1-io_uring/qsd"]);
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
