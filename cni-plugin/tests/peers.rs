//! ipamd's routes to other nodes' pod CIDRs, programmed in a private network namespace.

mod common;

use cni_plugin::net::NetNs;
use cni_plugin::peers::{PeerRoutes, ROUTE_PROTOCOL, sync};
use common::{ip_json, quiet, run};

/// A namespace with a link on 172.31.250.0/24, so that gateways there are reachable.
struct Ns(String);

impl Ns {
    fn new() -> Ns {
        let name = format!("peers-{}", std::process::id());
        run("ip", &["netns", "add", &name]);
        let ns = Ns(name);
        run(
            "ip",
            &[
                "-n", &ns.0, "link", "add", "name", "pa", "type", "veth", "peer", "name", "pb",
            ],
        );
        run(
            "ip",
            &["-n", &ns.0, "addr", "add", "172.31.250.1/24", "dev", "pa"],
        );
        run("ip", &["-n", &ns.0, "link", "set", "pa", "up"]);
        run("ip", &["-n", &ns.0, "link", "set", "pb", "up"]);
        ns
    }

    fn our_routes(&self) -> Vec<(String, String)> {
        ip_json(&[
            "-n",
            &self.0,
            "route",
            "show",
            "proto",
            &ROUTE_PROTOCOL.to_string(),
        ])
        .iter()
        .map(|r| {
            (
                r["dst"].as_str().unwrap().to_string(),
                r["gateway"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        quiet("ip", &["netns", "del", &self.0]);
    }
}

fn routes(pairs: &[(&str, &str)]) -> PeerRoutes {
    pairs
        .iter()
        .map(|(c, v)| (c.parse().unwrap(), v.parse().unwrap()))
        .collect()
}

#[tokio::test(flavor = "current_thread")]
async fn sync_adds_moves_and_removes_only_its_own_routes() {
    let ns = Ns::new();
    // A route someone else owns, in a range we will also route: never touched.
    run(
        "ip",
        &[
            "-n",
            &ns.0,
            "route",
            "add",
            "10.250.9.0/24",
            "via",
            "172.31.250.9",
        ],
    );
    let handle = NetNs::open(&ns.0).unwrap().netlink().unwrap();

    sync(
        &handle,
        &routes(&[
            ("10.250.2.0/24", "172.31.250.2"),
            ("10.250.3.0/24", "172.31.250.3"),
        ]),
    )
    .await
    .unwrap();
    assert_eq!(
        ns.our_routes(),
        vec![
            ("10.250.2.0/24".into(), "172.31.250.2".into()),
            ("10.250.3.0/24".into(), "172.31.250.3".into())
        ]
    );

    // Node 3 is gone and node 2 has a new address.
    sync(&handle, &routes(&[("10.250.2.0/24", "172.31.250.22")]))
        .await
        .unwrap();
    assert_eq!(
        ns.our_routes(),
        vec![("10.250.2.0/24".into(), "172.31.250.22".into())]
    );

    sync(&handle, &PeerRoutes::new()).await.unwrap();
    assert!(ns.our_routes().is_empty());
    let foreign = ip_json(&["-n", &ns.0, "route", "show", "10.250.9.0/24"]);
    assert_eq!(foreign.len(), 1, "a route we do not own was touched");
}
