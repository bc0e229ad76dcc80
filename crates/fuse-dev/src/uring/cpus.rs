//! Ring queues are per possible CPU: the kernel creates
//! `num_possible_cpus()` queues, delivers a request to the queue of the CPU
//! its client runs on, and holds every request back until each queue has an
//! entry registered. So the server needs the same count, and each queue's
//! thread runs best pinned to its CPU.

use std::io;

/// The kernel's list of possible CPUs.
const POSSIBLE: &str = "/sys/devices/system/cpu/possible";

/// Number of ring queues the kernel expects: the possible CPUs.
pub fn possible_cpus() -> io::Result<usize> {
    let text = std::fs::read_to_string(POSSIBLE)
        .map_err(|err| io::Error::new(err.kind(), format!("reading {POSSIBLE}: {err}")))?;
    parse_cpu_list(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{POSSIBLE}: unexpected contents {:?}", text.trim()),
        )
    })
}

/// Counts the CPUs of a sysfs CPU list (`0-3,8,10-11`). The kernel numbers
/// queues by CPU, so the list must be `0..n`; a list with holes is refused
/// rather than guessed at.
fn parse_cpu_list(text: &str) -> Option<usize> {
    let mut next = 0usize;
    for part in text.trim().split(',') {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<usize>().ok()?, b.parse::<usize>().ok()?),
            None => {
                let cpu = part.parse::<usize>().ok()?;
                (cpu, cpu)
            }
        };
        if first != next || last < first {
            return None;
        }
        next = last + 1;
    }
    (next > 0).then_some(next)
}

/// Pins the calling thread to `cpu`. A CPU that is possible but offline
/// cannot be pinned to; the queue then runs unpinned (its requests only come
/// from tasks on that CPU, which cannot run while it is offline).
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0\n"), Some(1));
        assert_eq!(parse_cpu_list("0-1\n"), Some(2));
        assert_eq!(parse_cpu_list("0-3,4,5-7"), Some(8));
        assert_eq!(parse_cpu_list("1-3"), None, "must start at 0");
        assert_eq!(parse_cpu_list("0-1,3"), None, "no holes");
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn this_machine_has_possible_cpus() {
        assert!(possible_cpus().unwrap() >= 1);
    }
}
