//! Interface counters of a pod's network namespace, for PodSandboxStats: the kubelet's
//! `/stats/summary` reports them as the pod's network usage.

use std::io;
use std::os::fd::AsFd;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceCounters {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_errors: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
}

/// The counters of every interface but `lo` in the network namespace pinned at `netns`.
/// A short-lived thread enters the namespace, so the daemon's own threads never move.
pub fn read(netns: &Path) -> io::Result<Vec<InterfaceCounters>> {
    let file = std::fs::File::open(netns)?;
    std::thread::spawn(move || -> io::Result<String> {
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(io::Error::from)?;
        // thread-self: /proc/self/net would show the main thread's namespace.
        std::fs::read_to_string("/proc/thread-self/net/dev")
    })
    .join()
    .map_err(|_| io::Error::other("the namespace reader thread panicked"))?
    .map(|text| parse_proc_net_dev(&text))
}

/// `/proc/net/dev`: two header lines, then `name: rx_bytes rx_packets rx_errs ... (8 rx
/// fields) tx_bytes tx_packets tx_errs ...`.
pub fn parse_proc_net_dev(text: &str) -> Vec<InterfaceCounters> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let f: Vec<u64> = rest
                .split_whitespace()
                .map(|v| v.parse().unwrap_or(0))
                .collect();
            (f.len() >= 11 && name.trim() != "lo").then(|| InterfaceCounters {
                name: name.trim().to_string(),
                rx_bytes: f[0],
                rx_errors: f[2],
                tx_bytes: f[8],
                tx_errors: f[10],
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kernel_format_and_skips_loopback() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
lo:     140       2    0    0    0     0          0         0      140       2    0    0    0     0       0          0\n  \
eth0:    5012      41    3    0    0     0          0         0     1306      13    1    0    0     0       0          0\n";
        assert_eq!(
            parse_proc_net_dev(text),
            vec![InterfaceCounters {
                name: "eth0".into(),
                rx_bytes: 5012,
                rx_errors: 3,
                tx_bytes: 1306,
                tx_errors: 1,
            }]
        );
    }

    #[test]
    fn reads_this_threads_namespace() {
        // Our own namespace through its /proc path: at least one non-loopback interface
        // exists on any machine that runs the tests, or an empty list; never an error.
        let counters = read(Path::new("/proc/self/ns/net")).unwrap();
        assert!(counters.iter().all(|c| c.name != "lo"));
    }
}
