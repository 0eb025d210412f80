//! Container resource usage from cgroup v1 (cgroupfs driver) and the writable layer.

use std::path::Path;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub cpu_nanos: u64,
    pub memory_usage: u64,
    /// usage minus inactive file pages, what the kubelet evicts on.
    pub working_set: u64,
    pub rss: u64,
    pub writable_bytes: u64,
    pub writable_inodes: u64,
    /// Processes in the container's cgroup.
    pub processes: u64,
}

fn read_u64(p: &Path) -> u64 {
    std::fs::read_to_string(p)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn stat_field(stat: &str, key: &str) -> u64 {
    stat.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

/// Usage of the container whose cgroupfs path is `cgroups_path`, with its overlay
/// upper dir at `upper`.
pub fn collect(cgroups_path: &str, upper: &Path) -> Usage {
    let rel = cgroups_path.trim_start_matches('/');
    let mem = Path::new("/sys/fs/cgroup/memory").join(rel);
    let stat = std::fs::read_to_string(mem.join("memory.stat")).unwrap_or_default();
    let usage = read_u64(&mem.join("memory.usage_in_bytes"));
    let inactive = stat_field(&stat, "total_inactive_file ");
    let (bytes, inodes) = dir_usage(upper);
    Usage {
        cpu_nanos: read_u64(
            &Path::new("/sys/fs/cgroup/cpuacct")
                .join(rel)
                .join("cpuacct.usage"),
        ),
        memory_usage: usage,
        working_set: usage.saturating_sub(inactive),
        rss: stat_field(&stat, "total_rss "),
        writable_bytes: bytes,
        writable_inodes: inodes,
        processes: std::fs::read_to_string(mem.join("cgroup.procs"))
            .map(|p| p.lines().count() as u64)
            .unwrap_or(0),
    }
}

fn dir_usage(p: &Path) -> (u64, u64) {
    let mut acc = (0, 0);
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                if let Ok(m) = e.metadata() {
                    acc.0 += m.len();
                    acc.1 += 1;
                    if m.is_dir() {
                        stack.push(e.path());
                    }
                }
            }
        }
    }
    acc
}
