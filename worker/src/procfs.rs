//! Small readers of /proc: is a process (still the same one) alive, its
//! resident memory, and the host's CPU count and memory for the default
//! capacity.

use std::path::Path;

/// Start time of `pid` (field 22 of /proc/<pid>/stat, clock ticks since
/// boot) when it is alive and not a zombie. Comparing it later tells a
/// reused pid from the process we adopted.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: split
    // after its last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); field 22 is index 19.
    if matches!(fields.first(), Some(&"Z") | Some(&"X")) {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Resident set size of `pid` in bytes (0 when unknown).
pub fn rss_bytes(pid: u32) -> u64 {
    read_kib_field(format!("/proc/{pid}/status"), "VmRSS:").unwrap_or(0) * 1024
}

/// Host memory in MiB from /proc/meminfo.
pub fn host_memory_mb() -> u64 {
    read_kib_field("/proc/meminfo", "MemTotal:").unwrap_or(0) / 1024
}

pub fn host_cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

/// Pids of the processes whose command line contains `needle` (used to
/// find a hypervisor by its socket path when its API does not answer).
pub fn pids_with_cmdline_containing(needle: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

fn read_kib_field(path: impl AsRef<Path>, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// Clock ticks per second of `/proc/<pid>/stat` times (USER_HZ, 100 on Linux).
pub const TICKS_PER_SEC: f64 = 100.0;

/// utime + stime of `pid` in clock ticks (fields 14 and 15 of /proc/<pid>/stat).
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields start after its last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3, so field 14 is index 11.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_and_host() {
        let me = std::process::id();
        assert!(start_time(me).is_some());
        assert!(rss_bytes(me) > 0);
        assert!(host_memory_mb() > 0);
        assert!(host_cpus() >= 1);
        assert_eq!(start_time(u32::MAX - 1), None);
        // A marker unique to this test process, so two runs of this test at
        // once (nextest and cargo test side by side) never see each other.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let marker = format!("30.{me}{nanos:09}");
        let mut child = std::process::Command::new("sleep")
            .arg(&marker)
            .spawn()
            .unwrap();
        assert_eq!(pids_with_cmdline_containing(&marker), vec![child.id()]);
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
