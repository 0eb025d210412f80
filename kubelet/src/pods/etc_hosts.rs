//! The kubelet-managed /etc/hosts of a pod's containers, as upstream's makeHostsMount:
//! `<root-dir>/pods/<uid>/etc-hosts`, bind-mounted at /etc/hosts into every container
//! that does not mount something there itself. A pod on its own network gets the
//! standard entries plus its IP with its hostname (FQDN first when it has a
//! subdomain); a host-network pod the node's /etc/hosts. hostAliases follow either.

use std::path::Path;

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, Pod};

const FILE: &str = "etc-hosts";
const NODE_HOSTS: &str = "/etc/hosts";

/// upstream's managedHostsHeader and the fixed entries it writes.
fn standard(pod_ip: &str, hostname: &str, fqdn: Option<&str>) -> String {
    let mut out = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    match fqdn {
        Some(fqdn) => out.push_str(&format!("{pod_ip}\t{fqdn}\t{hostname}\n")),
        None => out.push_str(&format!("{pod_ip}\t{hostname}\n")),
    }
    out
}

/// The file's content for `pod` at `pod_ip`; `node_hosts` is the node's /etc/hosts.
pub fn content(pod: &Pod, pod_ip: &str, cluster_domain: &str, node_hosts: &str) -> String {
    let spec = pod.spec.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let hostname: String = spec
        .hostname
        .clone()
        .unwrap_or(name)
        .chars()
        .take(63)
        .collect();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let fqdn = spec
        .subdomain
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(|sub| format!("{hostname}.{sub}.{namespace}.svc.{cluster_domain}"));
    let mut out = if spec.host_network.unwrap_or(false) {
        // upstream: "# Kubernetes-managed hosts file (host network)." then the node's.
        format!("# Kubernetes-managed hosts file (host network).\n{node_hosts}")
    } else {
        standard(pod_ip, &hostname, fqdn.as_deref())
    };
    let aliases = spec.host_aliases.unwrap_or_default();
    if !aliases.is_empty() {
        out.push_str("\n# Entries added by HostAliases.\n");
        for a in aliases {
            let names = a.hostnames.unwrap_or_default().join("\t");
            out.push_str(&format!("{}\t{names}\n", a.ip));
        }
    }
    out
}

/// Writes the pod's file (again: its IP may have changed with a new sandbox) and
/// returns the mount for `c`, unless `c` mounts /etc/hosts itself or the pod has no
/// IP yet.
pub fn mount(
    root_dir: &Path,
    pod: &Pod,
    c: &Container,
    pod_ip: &str,
    cluster_domain: &str,
) -> std::io::Result<Option<cri::Mount>> {
    let own = c
        .volume_mounts
        .iter()
        .flatten()
        .any(|m| m.mount_path.trim_end_matches('/') == NODE_HOSTS);
    if own || pod_ip.is_empty() {
        return Ok(None);
    }
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let dir = crate::volumes::pod_dir(root_dir, &uid);
    std::fs::create_dir_all(&dir)?;
    let node_hosts = std::fs::read_to_string(NODE_HOSTS).unwrap_or_default();
    let path = dir.join(FILE);
    std::fs::write(&path, content(pod, pod_ip, cluster_domain, &node_hosts))?;
    Ok(Some(cri::Mount {
        container_path: NODE_HOSTS.into(),
        host_path: path.to_string_lossy().into_owned(),
        ..Default::default()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-0", "namespace": "shop", "uid": "u"}, "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn written_as_upstream() {
        let p = pod(serde_json::json!({"containers": [], "subdomain": "web",
            "hostAliases": [{"ip": "10.1.2.3", "hostnames": ["foo.local", "bar.local"]}]}));
        let text = content(&p, "10.244.1.5", "cluster.local", "");
        assert!(text.starts_with("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n"));
        assert!(
            text.contains("\n10.244.1.5\tweb-0.web.shop.svc.cluster.local\tweb-0\n"),
            "{text}"
        );
        assert!(
            text.ends_with("\n# Entries added by HostAliases.\n10.1.2.3\tfoo.local\tbar.local\n"),
            "{text}"
        );
        let host = pod(serde_json::json!({"containers": [], "hostNetwork": true}));
        let text = content(&host, "192.168.0.9", "cluster.local", "127.0.0.1 node\n");
        assert_eq!(
            text,
            "# Kubernetes-managed hosts file (host network).\n127.0.0.1 node\n"
        );
    }
}
