//! Node-level usage read from the kernel: CPU from /proc/stat, memory from the root
//! memory cgroup (v1) or /proc/meminfo, filesystem from statvfs, network from
//! /proc/net/dev — what cAdvisor reports for the machine.

use std::path::Path;

/// USER_HZ: /proc/stat counts in 1/100 s on every Linux ABI we run on.
const NANOS_PER_TICK: u64 = 10_000_000;

/// Cumulative CPU time spent outside idle/iowait, in nanoseconds.
pub fn cpu_usage_nanos() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_cpu_line(stat.lines().next()?)
}

fn parse_cpu_line(line: &str) -> Option<u64> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let values: Vec<u64> = fields.map(|f| f.parse().unwrap_or(0)).collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let busy: u64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|i| values.get(*i))
        .sum();
    Some(busy * NANOS_PER_TICK)
}

/// Boot time (seconds since the epoch), the node's `startTime`.
pub fn boot_time() -> Option<i64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Memory {
    pub capacity: u64,
    pub usage: u64,
    pub working_set: u64,
    pub rss: Option<u64>,
    pub page_faults: Option<u64>,
    pub major_page_faults: Option<u64>,
}

pub fn memory() -> Option<Memory> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = |key: &str| -> Option<u64> {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map(|v| v * 1024)
    };
    let capacity = kib("MemTotal")?;
    let cgroup = Path::new("/sys/fs/cgroup/memory");
    let usage = std::fs::read_to_string(cgroup.join("memory.usage_in_bytes"))
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok());
    let stat = std::fs::read_to_string(cgroup.join("memory.stat")).unwrap_or_default();
    let stat_value = |key: &str| -> Option<u64> {
        stat.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    };
    match usage {
        // cAdvisor's working set: usage minus inactive file pages.
        Some(usage) => Some(Memory {
            capacity,
            usage,
            working_set: usage.saturating_sub(stat_value("total_inactive_file").unwrap_or(0)),
            rss: stat_value("total_rss"),
            page_faults: stat_value("total_pgfault"),
            major_page_faults: stat_value("total_pgmajfault"),
        }),
        None => {
            let free = kib("MemFree").unwrap_or(0);
            let available = kib("MemAvailable").unwrap_or(free);
            Some(Memory {
                capacity,
                usage: capacity.saturating_sub(free),
                working_set: capacity.saturating_sub(available),
                ..Default::default()
            })
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Filesystem {
    pub capacity: u64,
    pub available: u64,
    pub used: u64,
    pub inodes: u64,
    pub inodes_free: u64,
}

pub fn filesystem(path: &Path) -> Option<Filesystem> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    let frsize = s.fragment_size() as u64;
    let blocks = s.blocks() as u64;
    Some(Filesystem {
        capacity: blocks * frsize,
        available: s.blocks_available() as u64 * frsize,
        used: blocks.saturating_sub(s.blocks_free() as u64) * frsize,
        inodes: s.files() as u64,
        inodes_free: s.files_free() as u64,
    })
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Interface {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_errors: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
}

/// Every interface but loopback, the default-route interface first.
pub fn interfaces() -> Vec<Interface> {
    let dev = std::fs::read_to_string("/proc/net/dev").unwrap_or_default();
    let mut list: Vec<Interface> = dev.lines().skip(2).filter_map(parse_dev_line).collect();
    list.retain(|i| i.name != "lo");
    let default = std::fs::read_to_string("/proc/net/route")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .find_map(|l| {
            let mut f = l.split_whitespace();
            let name = f.next()?;
            (f.next()? == "00000000").then(|| name.to_string())
        });
    if let Some(default) = default {
        list.sort_by_key(|i| i.name != default);
    }
    list
}

fn parse_dev_line(line: &str) -> Option<Interface> {
    let (name, counters) = line.split_once(':')?;
    let v: Vec<u64> = counters
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    Some(Interface {
        name: name.trim().to_string(),
        rx_bytes: *v.first()?,
        rx_errors: *v.get(2)?,
        tx_bytes: *v.get(8)?,
        tx_errors: *v.get(10)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        assert_eq!(
            parse_cpu_line("cpu  100 5 50 1000 7 3 2 1 0 0"),
            Some(161 * NANOS_PER_TICK)
        );
        assert_eq!(parse_cpu_line("cpu0 1 2 3"), None);
        let i = parse_dev_line("  eth0: 1000 10 2 0 0 0 0 0 2000 20 3 0 0 0 0 0").unwrap();
        assert_eq!(
            i,
            Interface {
                name: "eth0".into(),
                rx_bytes: 1000,
                rx_errors: 2,
                tx_bytes: 2000,
                tx_errors: 3
            }
        );
        assert!(cpu_usage_nanos().is_some());
        let m = memory().unwrap();
        assert!(m.capacity > 0 && m.working_set <= m.usage.max(m.capacity));
        assert!(filesystem(Path::new("/")).unwrap().capacity > 0);
    }
}
