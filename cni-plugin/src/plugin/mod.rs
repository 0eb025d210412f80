//! The `vpc-cni` plugin: one CNI invocation, from the CNI_* environment and the network
//! configuration on stdin to the result (or error) the runtime reads on stdout.
//!
//! Addresses come from ipamd over its unix socket; the plumbing is [`crate::net`].

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde_json::Value;
use tonic::Code;

use crate::cni::{
    CURRENT_VERSION, CniArgs, CniError, CniResult, Command, ErrorCode, Interface, IpConfig,
    NetConf, Route, SUPPORTED_VERSIONS, VersionResult,
};
use crate::error_chain;
use crate::ipam::{AttachmentKey, deferred, now_ms};
use crate::net::veth::{attachment_host_veth, delete_link, find_link};
use crate::net::{
    NetError, NetNs, POD_GATEWAY, PodLinks, PodNetwork, check_pod_network, host_netlink,
    host_veth_name, setup_pod_network, teardown_pod_network, teardown_released, teardown_stale,
};
use crate::rpc::{self, DEFAULT_SOCKET, pb};

/// Plugin-specific error codes (the spec leaves 100 and up to plugins).
pub const ERR_IPAMD: u32 = 100;
pub const ERR_NETWORK: u32 = 101;

/// Pod MTU when the configuration names none: podcidr nodes are usually on plain
/// Ethernet; ENI mode uses the VPC's jumbo frames.
pub const DEFAULT_MTU_PODCIDR: u32 = 1500;
pub const DEFAULT_MTU_ENI: u32 = 9001;

/// A failed invocation: the error and the protocol version to report it in.
#[derive(Debug)]
pub struct Failure {
    pub cni_version: String,
    pub error: CniError,
}

/// Runs one invocation. `Ok(Some(v))` is printed on stdout; `Ok(None)` prints nothing.
/// Must be called from within a tokio runtime.
pub async fn run(
    env: &dyn Fn(&str) -> Option<String>,
    stdin: &[u8],
) -> Result<Option<Value>, Failure> {
    let version = requested_version(stdin);
    let fail = |error: CniError| Failure {
        cni_version: version.clone(),
        error,
    };
    let args = CniArgs::from_lookup(env).map_err(fail)?;
    if args.command == Command::Version {
        return Ok(Some(
            serde_json::to_value(VersionResult::new(&version))
                .expect("a version result always serialises"),
        ));
    }
    let conf = NetConf::parse(stdin).map_err(fail)?;
    let out = match args.command {
        Command::Add => add(&args, &conf).await.map(Some),
        Command::Del => del(&args, &conf).await.map(|()| None),
        Command::Check => check(&args, &conf).await.map(|()| None),
        Command::Status => status(&conf).await.map(|()| None),
        Command::Gc => gc(&conf).await.map(|()| None),
        Command::Version => unreachable!("handled above"),
    };
    out.map_err(fail)
}

/// The version to answer in: the input's cniVersion when we speak it, else ours.
fn requested_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| CURRENT_VERSION.to_string())
}

fn socket(conf: &NetConf) -> PathBuf {
    PathBuf::from(conf.ipamd_socket.as_deref().unwrap_or(DEFAULT_SOCKET))
}

/// The host veth name: per pod when the runtime passes the Kubernetes args, else per
/// container (a plain CNI runtime).
fn host_veth(args: &CniArgs) -> String {
    match (&args.args.pod_namespace, &args.args.pod_name) {
        (Some(ns), Some(name)) => host_veth_name(ns, name),
        _ => attachment_host_veth("", "", required(&args.container_id)),
    }
}

/// CniArgs has checked the variables each command requires.
fn required(v: &Option<String>) -> &str {
    v.as_deref().expect("required by CniArgs")
}

async fn client(conf: &NetConf) -> Result<rpc::IpamdClient<tonic::transport::Channel>, CniError> {
    let path = socket(conf);
    rpc::connect(&path).await.map_err(|e| {
        CniError::new(
            ErrorCode::TryAgainLater,
            "ipamd is not reachable",
            format!("{}: {}", path.display(), error_chain(&e)),
        )
    })
}

fn ipamd_error(call: &str, s: tonic::Status) -> CniError {
    match s.code() {
        Code::ResourceExhausted => {
            CniError::new(ErrorCode::TryAgainLater, "no free pod IP", s.message())
        }
        // Unknown: the connection broke mid-call (ipamd restarting), not ipamd's answer.
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
            CniError::new(
                ErrorCode::TryAgainLater,
                format!("ipamd {call} did not complete"),
                s.message(),
            )
        }
        _ => CniError::new(
            ErrorCode::Plugin(ERR_IPAMD),
            format!("ipamd {call} failed"),
            s.message(),
        ),
    }
}

fn net_error(e: NetError) -> CniError {
    match e {
        // What is wrong is the message itself.
        NetError::CheckFailed(_) => {
            CniError::new(ErrorCode::Plugin(ERR_NETWORK), e.to_string(), "")
        }
        NetError::OpenNetns { .. } | NetError::NotANetns { .. } | NetError::InvalidName { .. } => {
            CniError::new(ErrorCode::InvalidEnvironment, e.to_string(), "")
        }
        _ => CniError::new(
            ErrorCode::Plugin(ERR_NETWORK),
            "pod network plumbing failed",
            e.to_string(),
        ),
    }
}

async fn add(args: &CniArgs, conf: &NetConf) -> Result<Value, CniError> {
    let netns = args.netns.clone().expect("required by CniArgs");
    let ifname: &str = required(&args.ifname);
    let container_id: &str = required(&args.container_id);
    // Refuse a bad namespace before anything is allocated or created.
    NetNs::open(&netns).map_err(net_error)?;

    let mut ipamd = client(conf).await?;
    let reply = ipamd
        .add_network(pb::AddNetworkRequest {
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
            netns: netns.display().to_string(),
            pod_namespace: args.args.pod_namespace.clone().unwrap_or_default(),
            pod_name: args.args.pod_name.clone().unwrap_or_default(),
        })
        .await
        .map_err(|s| ipamd_error("AddNetwork", s))?
        .into_inner();
    let ip = match reply.ip.parse::<Ipv4Net>() {
        Ok(net) => net.addr(),
        Err(e) => {
            release(&mut ipamd, container_id, ifname).await;
            return Err(CniError::new(
                ErrorCode::Plugin(ERR_IPAMD),
                format!("ipamd returned an invalid address {:?}", reply.ip),
                e.to_string(),
            ));
        }
    };
    let table = (reply.route_table != 0).then_some(reply.route_table);
    let rule_destinations = match reply
        .rule_destinations
        .iter()
        .map(|d| d.parse::<Ipv4Net>())
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(d) => d,
        Err(e) => {
            release(&mut ipamd, container_id, ifname).await;
            return Err(CniError::new(
                ErrorCode::Plugin(ERR_IPAMD),
                format!(
                    "ipamd returned invalid rule destinations {:?}",
                    reply.rule_destinations
                ),
                e.to_string(),
            ));
        }
    };
    let pod = PodNetwork {
        netns_path: netns,
        ifname: ifname.to_string(),
        host_veth: host_veth(args),
        ip,
        mtu: conf.mtu.unwrap_or(if table.is_some() {
            DEFAULT_MTU_ENI
        } else {
            DEFAULT_MTU_PODCIDR
        }),
        table,
        rule_destinations,
    };

    // A repeated ADD of an attachment that is complete answers with what exists.
    if reply.existing
        && check_pod_network(&pod).await.is_ok()
        && let Some(links) = current_links(&pod).await
    {
        return result(conf, &pod, &links);
    }
    match setup_pod_network(&pod).await {
        Ok(links) => result(conf, &pod, &links),
        Err(e) => {
            // An interface that exists for this very attachment (a repeated ADD of a
            // damaged one) still uses the address: the runtime's DEL releases it.
            if !(reply.existing && matches!(e, NetError::AlreadyExists { .. })) {
                release(&mut ipamd, container_id, ifname).await;
            }
            Err(net_error(e))
        }
    }
}

async fn current_links(pod: &PodNetwork) -> Option<PodLinks> {
    let host = host_netlink().ok()?;
    let inside = NetNs::open(&pod.netns_path).ok()?.netlink().ok()?;
    Some(PodLinks {
        host: find_link(&host, &pod.host_veth).await.ok()??,
        pod: find_link(&inside, &pod.ifname).await.ok()??,
    })
}

/// Best effort: a failed ADD gives its address back; if that fails too, the address
/// stays assigned until the runtime's DEL for this attachment.
async fn release(
    ipamd: &mut rpc::IpamdClient<tonic::transport::Channel>,
    container_id: &str,
    ifname: &str,
) {
    let req = pb::DelNetworkRequest {
        container_id: container_id.to_string(),
        ifname: ifname.to_string(),
    };
    if let Err(s) = ipamd.del_network(req).await {
        eprintln!(
            "vpc-cni: releasing the address of {container_id}/{ifname} after a failed ADD: {}",
            s.message()
        );
    }
}

fn result(conf: &NetConf, pod: &PodNetwork, links: &PodLinks) -> Result<Value, CniError> {
    let r = CniResult {
        cni_version: conf.cni_version.clone(),
        interfaces: vec![
            Interface {
                name: links.host.name.clone(),
                mac: Some(links.host.mac.to_string()),
                mtu: Some(links.host.mtu),
                sandbox: None,
            },
            Interface {
                name: links.pod.name.clone(),
                mac: Some(links.pod.mac.to_string()),
                mtu: Some(links.pod.mtu),
                sandbox: Some(pod.netns_path.display().to_string()),
            },
        ],
        ips: vec![IpConfig {
            address: Ipv4Net::new(pod.ip, 32).expect("/32 is valid").into(),
            gateway: Some(POD_GATEWAY.into()),
            interface: Some(1),
        }],
        routes: vec![Route {
            dst: "0.0.0.0/0".parse().expect("valid CIDR"),
            gw: Some(POD_GATEWAY.into()),
            table: None,
            scope: None,
        }],
        dns: Default::default(),
    };
    r.to_version(&conf.cni_version)
}

/// The pod's IPv4 address from prevResult, if the runtime passed one.
fn prev_ip(conf: &NetConf) -> Result<Option<Ipv4Addr>, CniError> {
    let Some(prev) = &conf.prev_result else {
        return Ok(None);
    };
    let prev = CniResult::from_value(prev)?;
    Ok(prev.ips.iter().find_map(|c| match c.address.addr() {
        std::net::IpAddr::V4(ip) => Some(ip),
        std::net::IpAddr::V6(_) => None,
    }))
}

/// DEL: release the address, remove the plumbing. Succeeds when there is nothing left
/// (a repeated DEL), when the netns is gone, and when ipamd is down (the address then
/// stays assigned in ipamd until a later DEL or its reconciliation, but the node is clean).
async fn del(args: &CniArgs, conf: &NetConf) -> Result<(), CniError> {
    let container_id: &str = required(&args.container_id);
    let ifname: &str = required(&args.ifname);
    // A DEL with an unreadable prevResult still has to clean up what it can.
    let prev = prev_ip(conf).unwrap_or_else(|e| {
        eprintln!("vpc-cni: DEL {container_id}: ignoring prevResult: {e}");
        None
    });

    let released = match client(conf).await {
        Ok(mut ipamd) => {
            let req = pb::DelNetworkRequest {
                container_id: container_id.to_string(),
                ifname: ifname.to_string(),
            };
            match ipamd.del_network(req).await {
                Ok(r) => r.into_inner().ip.parse::<Ipv4Addr>().ok(),
                Err(s) => {
                    eprintln!(
                        "vpc-cni: DEL {container_id}/{ifname}: ipamd DelNetwork failed, tearing down anyway: {}",
                        s.message()
                    );
                    defer_release(conf, container_id, ifname);
                    None
                }
            }
        }
        Err(e) => {
            eprintln!("vpc-cni: DEL {container_id}/{ifname}: {e}; tearing down anyway");
            defer_release(conf, container_id, ifname);
            None
        }
    };

    // Host veth names are per pod, so after a sandbox was replaced the name may belong
    // to the newer sandbox: only a pair whose pod side still exists in this DEL's netns
    // is ours. Without it (netns gone, repeated DEL, failed ADD) our pair is already
    // gone, since a veth dies with its peer.
    let veth = if pod_side_exists(args).await {
        host_veth(args)
    } else {
        GONE_VETH.to_string()
    };
    match prev.or(released) {
        // ipamd released this address from this attachment: its route and rules are ours
        // wherever they lead (found by the soak: right after `ip netns del` the route
        // still goes through the dying veth).
        Some(ip) if released == Some(ip) => teardown_released(&veth, ip).await.map_err(net_error),
        // Removes the host route and rules of `ip` unless they lead to another link
        // (the address already serves a newer pod), then the pair.
        Some(ip) => teardown_pod_network(&veth, ip).await.map_err(net_error),
        // No address known: nothing of ours can be routed to it; the pair is all.
        None => {
            let host = host_netlink().map_err(net_error)?;
            delete_link(&host, &veth).await.map_err(net_error)?;
            Ok(())
        }
    }
}

/// Leaves the release for ipamd to apply when it is back ([`deferred`]).
fn defer_release(conf: &NetConf, container_id: &str, ifname: &str) {
    let dir = deferred::dir_for(&rpc::socket_path(&socket(conf)));
    let key = AttachmentKey {
        container_id: container_id.to_string(),
        ifname: ifname.to_string(),
    };
    if let Err(e) = deferred::record(&dir, &key, now_ms()) {
        eprintln!(
            "vpc-cni: DEL {container_id}/{ifname}: cannot leave the release in {}: {e}; the address stays assigned until the runtime's next GC",
            dir.display()
        );
    }
}

/// A name no link has (host veths are "eni" + hex): tearing down "through" it removes
/// only an address's stale routes and rules, never a link.
const GONE_VETH: &str = "vpccni-gone";

async fn pod_side_exists(args: &CniArgs) -> bool {
    let (Some(netns), Some(ifname)) = (&args.netns, &args.ifname) else {
        return false;
    };
    let Ok(inside) = NetNs::open(netns).and_then(|ns| ns.netlink()) else {
        return false;
    };
    matches!(find_link(&inside, ifname).await, Ok(Some(_)))
}

async fn check(args: &CniArgs, conf: &NetConf) -> Result<(), CniError> {
    let Some(ip) = prev_ip(conf)? else {
        return Err(CniError::new(
            ErrorCode::InvalidNetConf,
            "CHECK needs a prevResult with the pod's IPv4 address",
            "",
        ));
    };
    let container_id = required(&args.container_id);
    let ifname = required(&args.ifname);
    // ipamd knows the table and destinations the rules must have.
    let held = client(conf)
        .await?
        .get_network(pb::GetNetworkRequest {
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
        })
        .await
        .map_err(|s| ipamd_error("GetNetwork", s))?
        .into_inner();
    let check_failed =
        |msg: String| CniError::new(ErrorCode::Plugin(ERR_NETWORK), msg, String::new());
    if !held.found {
        return Err(check_failed(format!(
            "ipamd holds no address for {container_id}/{ifname}; the pod must be recreated"
        )));
    }
    if held.ip.parse::<Ipv4Net>().ok().map(|n| n.addr()) != Some(ip) {
        return Err(check_failed(format!(
            "ipamd holds {} for {container_id}/{ifname}, but prevResult says {ip}",
            held.ip
        )));
    }
    let rule_destinations = held
        .rule_destinations
        .iter()
        .map(|d| d.parse::<Ipv4Net>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            CniError::new(
                ErrorCode::Plugin(ERR_IPAMD),
                format!(
                    "ipamd returned invalid rule destinations {:?}",
                    held.rule_destinations
                ),
                e.to_string(),
            )
        })?;
    let pod = PodNetwork {
        netns_path: args.netns.clone().expect("required by CniArgs"),
        ifname: ifname.to_string(),
        host_veth: host_veth(args),
        ip,
        mtu: conf.mtu.unwrap_or(DEFAULT_MTU_PODCIDR),
        table: (held.route_table != 0).then_some(held.route_table),
        rule_destinations,
    };
    check_pod_network(&pod).await.map_err(net_error)
}

/// GC (spec 1.1): releases every attachment the runtime no longer lists and removes
/// what is left of their host plumbing.
async fn gc(conf: &NetConf) -> Result<(), CniError> {
    let valid = valid_attachments(conf)?;
    let released = client(conf)
        .await?
        .gc(pb::GcRequest { valid })
        .await
        .map_err(|s| ipamd_error("Gc", s))?
        .into_inner()
        .released;
    let mut failures = Vec::new();
    for r in released {
        let Ok(ip) = r.ip.parse::<Ipv4Addr>() else {
            failures.push(format!("ipamd released an invalid address {:?}", r.ip));
            continue;
        };
        let veth = attachment_host_veth(&r.pod_namespace, &r.pod_name, &r.container_id);
        if let Err(e) = teardown_stale(&veth, ip).await {
            failures.push(format!("{}/{} ({ip}): {e}", r.container_id, r.ifname));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            ErrorCode::Plugin(ERR_NETWORK),
            "GC released the addresses but could not remove all host plumbing",
            failures.join("; "),
        ))
    }
}

/// The key libcni writes, and the one spec drafts used (libcni sets both).
const VALID_ATTACHMENTS_KEYS: [&str; 2] = ["cni.dev/valid-attachments", "cni.dev/attachments"];

/// The attachments GC must keep; refusing a missing list, which would release every pod.
fn valid_attachments(conf: &NetConf) -> Result<Vec<pb::Attachment>, CniError> {
    let invalid = |msg: String| CniError::new(ErrorCode::InvalidNetConf, msg, String::new());
    let list = VALID_ATTACHMENTS_KEYS
        .iter()
        .find_map(|k| conf.extra.get(*k))
        .ok_or_else(|| {
            invalid(format!(
                "GC needs {:?}: the runtime's list of live attachments",
                VALID_ATTACHMENTS_KEYS[0]
            ))
        })?
        .as_array()
        .ok_or_else(|| invalid(format!("{:?} must be an array", VALID_ATTACHMENTS_KEYS[0])))?;
    list.iter()
        .map(|a| {
            let field = |k: &str| {
                a.get(k)
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
            };
            match (field("containerID"), field("ifname")) {
                (Some(container_id), Some(ifname)) => Ok(pb::Attachment {
                    container_id,
                    ifname,
                }),
                _ => Err(invalid(format!(
                    "valid attachment {a} needs non-empty \"containerID\" and \"ifname\" strings"
                ))),
            }
        })
        .collect()
}

/// STATUS: ready when ipamd answers and has an address an ADD could get right now.
async fn status(conf: &NetConf) -> Result<(), CniError> {
    let not_available =
        |msg: &str, details: String| CniError::new(ErrorCode::NotAvailable, msg, details);
    let mut ipamd = client(conf)
        .await
        .map_err(|e| not_available("ipamd is not reachable", e.details))?;
    let s = ipamd
        .status(pb::StatusRequest {})
        .await
        .map_err(|s| not_available("ipamd Status failed", s.message().to_string()))?
        .into_inner();
    if s.free.saturating_sub(s.cooldown) == 0 {
        return Err(not_available(
            "no free pod IP",
            format!(
                "ipamd ({} {}): {} assigned, {} free of which {} are cooling down",
                s.mode, s.pod_cidr, s.assigned, s.free, s.cooldown
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[tokio::test]
    async fn version_answers_in_the_requested_version() {
        let out = run(
            &env(&[("CNI_COMMAND", "VERSION")]),
            br#"{"cniVersion":"0.4.0"}"#,
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(out["cniVersion"], "0.4.0");
        assert_eq!(out["supportedVersions"][2], "1.1.0");
        let out = run(&env(&[("CNI_COMMAND", "VERSION")]), b"")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(out["cniVersion"], CURRENT_VERSION);
    }

    #[tokio::test]
    async fn malformed_stdin_is_code_6() {
        let vars = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/proc/self/ns/net"),
            ("CNI_IFNAME", "eth0"),
        ];
        let e = run(&env(&vars), b"{not json").await.unwrap_err();
        assert_eq!(e.error.code, 6);
        assert_eq!(e.cni_version, CURRENT_VERSION);
    }

    #[tokio::test]
    async fn status_without_ipamd_is_code_50() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("none.sock");
        let conf = format!(
            r#"{{"cniVersion":"1.0.0","name":"n","type":"vpc-cni","ipamdSocket":"{}"}}"#,
            sock.display()
        );
        let e = run(&env(&[("CNI_COMMAND", "STATUS")]), conf.as_bytes())
            .await
            .unwrap_err();
        assert_eq!(e.error.code, 50, "{}", e.error);
        assert_eq!(e.cni_version, "1.0.0");
    }

    #[tokio::test]
    async fn gc_without_a_valid_list_is_refused() {
        let vars = [("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")];
        for conf in [
            r#"{"cniVersion":"1.1.0","name":"n","type":"vpc-cni"}"#,
            r#"{"cniVersion":"1.1.0","name":"n","type":"vpc-cni","cni.dev/valid-attachments":{}}"#,
            r#"{"cniVersion":"1.1.0","name":"n","type":"vpc-cni","cni.dev/valid-attachments":[{"containerID":"a"}]}"#,
        ] {
            let e = run(&env(&vars), conf.as_bytes()).await.unwrap_err();
            assert_eq!(e.error.code, 7, "{conf}: {}", e.error);
        }
    }

    #[tokio::test]
    async fn check_needs_a_prev_result() {
        let vars = [
            ("CNI_COMMAND", "CHECK"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/proc/self/ns/net"),
            ("CNI_IFNAME", "eth0"),
        ];
        let conf = br#"{"cniVersion":"1.1.0","name":"n","type":"vpc-cni"}"#;
        assert_eq!(run(&env(&vars), conf).await.unwrap_err().error.code, 7);
    }

    #[test]
    fn host_veth_falls_back_to_the_container_id() {
        let lookup = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
        ]);
        let args = CniArgs::from_lookup(&lookup).unwrap();
        assert_eq!(host_veth(&args), host_veth_name("", "abc"));
        let lookup = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p"),
        ]);
        let args = CniArgs::from_lookup(&lookup).unwrap();
        assert_eq!(host_veth(&args), host_veth_name("ns", "p"));
    }
}
