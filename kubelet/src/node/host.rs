//! Facts about the machine, read from the same kernel files cAdvisor reads for the
//! upstream kubelet, so capacity and nodeInfo match what upstream would report here.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use anyhow::{Context, Result};

/// Everything about the host that goes into the Node, gathered once per status update.
#[derive(Debug, Clone, PartialEq)]
pub struct HostFacts {
    pub cpus: i64,
    pub memory_bytes: i64,
    /// Hugepage pools by page size in bytes, with their total size in bytes.
    pub hugepages: Vec<(i64, i64)>,
    pub root_fs_bytes: i64,
    pub machine_id: String,
    pub system_uuid: String,
    pub boot_id: String,
    pub kernel_version: String,
    pub os_image: String,
}

impl HostFacts {
    /// Reads the facts; `root_dir` is the kubelet root whose filesystem is nodefs.
    pub fn read(root_dir: &Path) -> Result<Self> {
        let cpus = match std::fs::read_to_string("/sys/devices/system/cpu/online") {
            Ok(text) => count_cpu_list(&text)?,
            Err(_) => std::thread::available_parallelism().map_or(1, |n| n.get() as i64),
        };
        let meminfo = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
        let memory_bytes = mem_total_bytes(&meminfo).context("no MemTotal in /proc/meminfo")?;
        let stat = nix::sys::statvfs::statvfs(root_dir)
            .with_context(|| format!("statvfs {}", root_dir.display()))?;
        let root_fs_bytes = (stat.blocks() as i64).saturating_mul(stat.fragment_size() as i64);
        let machine_id = read_trimmed("/etc/machine-id").unwrap_or_default();
        // product_uuid is root-only and absent in VMs without DMI; cAdvisor falls back
        // to the machine ID in that case too.
        let system_uuid =
            read_trimmed("/sys/class/dmi/id/product_uuid").unwrap_or_else(|| machine_id.clone());
        let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
        Ok(HostFacts {
            cpus,
            memory_bytes,
            hugepages: hugepages(Path::new("/sys/kernel/mm/hugepages")),
            root_fs_bytes,
            machine_id,
            system_uuid,
            boot_id: read_trimmed("/proc/sys/kernel/random/boot_id").unwrap_or_default(),
            // Same string as `uname -r`, without needing the utsname syscall wrapper.
            kernel_version: read_trimmed("/proc/sys/kernel/osrelease").unwrap_or_default(),
            os_image: pretty_name(&os_release),
        })
    }
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Counts a kernel CPU list such as `0-3,6,8-9`.
pub fn count_cpu_list(text: &str) -> Result<i64> {
    let mut n = 0;
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        n += match part.split_once('-') {
            Some((a, b)) => b.trim().parse::<i64>()? - a.trim().parse::<i64>()? + 1,
            None => {
                part.trim().parse::<i64>()?;
                1
            }
        };
    }
    Ok(n.max(1))
}

/// MemTotal from /proc/meminfo, in bytes (the file says kB but means KiB).
pub fn mem_total_bytes(meminfo: &str) -> Option<i64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// PRETTY_NAME from /etc/os-release, or "Linux" as cAdvisor reports without one.
pub fn pretty_name(os_release: &str) -> String {
    os_release
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim().trim_matches('"').trim_matches('\'').to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "Linux".into())
}

/// Hugepage pools under /sys/kernel/mm/hugepages: (page size, total bytes) per size.
/// Upstream reports every size the kernel supports, with 0 for empty pools.
fn hugepages(dir: &Path) -> Vec<(i64, i64)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut pools: Vec<(i64, i64)> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().into_string().ok()?;
            let kib: i64 = name
                .strip_prefix("hugepages-")?
                .strip_suffix("kB")?
                .parse()
                .ok()?;
            let count: i64 = std::fs::read_to_string(e.path().join("nr_hugepages"))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            Some((kib * 1024, count * kib * 1024))
        })
        .collect();
    pools.sort();
    pools
}

/// The address upstream picks without a cloud provider or `--node-ip`: the first
/// global IPv4 address of the interface holding the default route, or failing that of
/// any interface that is up.
pub fn default_ipv4() -> Option<IpAddr> {
    let route = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let default_if = default_route_interface(&route);
    let addrs: Vec<(String, Ipv4Addr)> = nix::ifaddrs::getifaddrs()
        .ok()?
        .filter(|a| {
            a.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP)
                && !a
                    .flags
                    .contains(nix::net::if_::InterfaceFlags::IFF_LOOPBACK)
        })
        .filter_map(|a| {
            let ip = a.address?.as_sockaddr_in()?.ip();
            (!ip.is_loopback() && !ip.is_link_local() && !ip.is_unspecified())
                .then_some((a.interface_name, ip))
        })
        .collect();
    addrs
        .iter()
        .find(|(name, _)| Some(name.as_str()) == default_if.as_deref())
        .or_else(|| addrs.first())
        .map(|(_, ip)| IpAddr::V4(*ip))
}

/// The interface of the IPv4 default route in /proc/net/route (destination and mask 0).
pub fn default_route_interface(route_table: &str) -> Option<String> {
    route_table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 7 && f[1] == "00000000" && f[7] == "00000000").then(|| f[0].to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_files() {
        assert_eq!(count_cpu_list("0-3,6,8-9\n").unwrap(), 7);
        assert_eq!(count_cpu_list("0\n").unwrap(), 1);
        assert_eq!(
            mem_total_bytes("MemTotal:        8148236 kB\nMemFree: 1 kB\n"),
            Some(8_148_236 * 1024)
        );
        assert_eq!(
            pretty_name("NAME=x\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n"),
            "Debian GNU/Linux 12 (bookworm)"
        );
        assert_eq!(pretty_name(""), "Linux");
        let route = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n\
                     eth0\t0002000C\t00000000\t0001\t0\t0\t0\t00FFFFFF\n\
                     eth1\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\n";
        assert_eq!(default_route_interface(route).as_deref(), Some("eth1"));
    }

    #[test]
    fn reads_this_machine() {
        let facts = HostFacts::read(Path::new("/")).unwrap();
        assert!(facts.cpus >= 1);
        assert!(facts.memory_bytes > 0);
        assert!(facts.root_fs_bytes > 0);
        assert!(!facts.boot_id.is_empty());
        assert!(!facts.kernel_version.is_empty());
    }
}
