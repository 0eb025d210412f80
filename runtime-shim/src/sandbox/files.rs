//! The files every container of a pod shares: /etc/hostname, /etc/hosts and
//! /etc/resolv.conf, written once per sandbox and bind-mounted into each container.

use std::io;
use std::path::Path;

use k8s_cri::v1::DnsConfig;

pub fn write_hostname(dir: &Path, hostname: &str) -> io::Result<()> {
    std::fs::write(dir.join("hostname"), format!("{hostname}\n"))
}

pub fn write_hosts(dir: &Path, hostname: &str, pod_ip: Option<&str>) -> io::Result<()> {
    let mut s = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    if let Some(ip) = pod_ip {
        s.push_str(&format!("{ip}\t{hostname}\n"));
    }
    std::fs::write(dir.join("hosts"), s)
}

/// resolv.conf from the pod's DNSConfig; without one, the host's (as upstream does for
/// dnsPolicy Default).
pub fn write_resolv_conf(dir: &Path, dns: Option<&DnsConfig>) -> io::Result<()> {
    let content = match dns {
        Some(d) if !(d.servers.is_empty() && d.searches.is_empty() && d.options.is_empty()) => {
            let mut s = String::new();
            if !d.searches.is_empty() {
                s.push_str(&format!("search {}\n", d.searches.join(" ")));
            }
            for server in &d.servers {
                s.push_str(&format!("nameserver {server}\n"));
            }
            if !d.options.is_empty() {
                s.push_str(&format!("options {}\n", d.options.join(" ")));
            }
            s
        }
        _ => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
    };
    std::fs::write(dir.join("resolv.conf"), content)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_follows_dns_config() {
        let d = tempfile::tempdir().unwrap();
        let dns = DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
        };
        write_resolv_conf(d.path(), Some(&dns)).unwrap();
        assert_eq!(
            std::fs::read_to_string(d.path().join("resolv.conf")).unwrap(),
            "search default.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
        );
        write_hosts(d.path(), "web-0", Some("10.0.0.5")).unwrap();
        let hosts = std::fs::read_to_string(d.path().join("hosts")).unwrap();
        assert!(hosts.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(hosts.ends_with("10.0.0.5\tweb-0\n"));
    }
}
