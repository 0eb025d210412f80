//! aws-node's SNAT for pod traffic that leaves the VPC, in the node's nat table:
//!
//! ```text
//! -A POSTROUTING -m comment --comment "AWS SNAT CHAIN" -j AWS-SNAT-CHAIN-0
//! -A AWS-SNAT-CHAIN-0 -d <VPC CIDR> -m comment --comment "AWS SNAT CHAIN" -j RETURN   (each VPC / excluded CIDR)
//! -A AWS-SNAT-CHAIN-0 ! -o vlan+ -m comment --comment "AWS, SNAT" -m addrtype ! --dst-type LOCAL
//!    -j SNAT --to-source <primary IP> --random-fully
//! ```
//!
//! Only traffic that reaches the main table is SNATed: the pods' policy rules send
//! traffic for the VPC's CIDRs through their ENI's table unchanged. There is no netlink
//! API for iptables, so this runs the `iptables` binary, as kube-proxy does.

use std::net::Ipv4Addr;
use std::process::Command;

use ipnet::Ipv4Net;

use super::NetError;

pub const CHAIN: &str = "AWS-SNAT-CHAIN-0";

/// AWS_VPC_K8S_CNI_RANDOMIZESNAT: how SNAT picks source ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Randomize {
    None,
    /// `--random`
    HashRandom,
    /// `--random-fully` (aws-node's default)
    Prng,
}

/// The SNAT rules one node needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snat {
    /// The primary ENI's primary address: what traffic leaving the VPC appears from.
    pub primary_ip: Ipv4Addr,
    /// Destinations left alone: the VPC's CIDRs and AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS.
    pub excluded: Vec<Ipv4Net>,
    pub randomize: Randomize,
}

fn iptables(args: &[&str]) -> Result<String, NetError> {
    // -w: wait for the xtables lock kube-proxy also takes.
    let out = Command::new("iptables")
        .args(["-w", "5", "-t", "nat"])
        .args(args)
        .output()
        .map_err(|e| NetError::Iptables {
            args: args.join(" "),
            stderr: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(NetError::Iptables {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Snat {
    /// The chain's rules, in order, as `-A CHAIN` arguments.
    fn rules(&self) -> Vec<Vec<String>> {
        let mut rules: Vec<Vec<String>> = self
            .excluded
            .iter()
            .map(|cidr| {
                [
                    "-d",
                    &cidr.to_string(),
                    "-m",
                    "comment",
                    "--comment",
                    "AWS SNAT CHAIN",
                    "-j",
                    "RETURN",
                ]
                .map(str::to_string)
                .to_vec()
            })
            .collect();
        let mut snat: Vec<String> = [
            "!",
            "-o",
            "vlan+",
            "-m",
            "comment",
            "--comment",
            "AWS, SNAT",
            "-m",
            "addrtype",
            "!",
            "--dst-type",
            "LOCAL",
            "-j",
            "SNAT",
            "--to-source",
        ]
        .map(str::to_string)
        .to_vec();
        snat.push(self.primary_ip.to_string());
        match self.randomize {
            Randomize::None => {}
            Randomize::HashRandom => snat.push("--random".into()),
            Randomize::Prng => snat.push("--random-fully".into()),
        }
        rules.push(snat);
        rules
    }

    /// Creates or repairs the chain and the jump to it; leaves them alone when they are
    /// as wanted, so a periodic call does not disturb traffic.
    pub fn ensure(&self) -> Result<(), NetError> {
        if iptables(&["-S", CHAIN]).is_err() {
            iptables(&["-N", CHAIN])?;
        }
        let rules = self.rules();
        let listed = iptables(&["-S", CHAIN])?;
        let present = |r: &Vec<String>| {
            let mut args = vec!["-C", CHAIN];
            args.extend(r.iter().map(String::as_str));
            iptables(&args).is_ok()
        };
        // `-S` lists `-N CHAIN` and then one line per rule.
        let exact = listed.lines().count() == rules.len() + 1 && rules.iter().all(present);
        if !exact {
            iptables(&["-F", CHAIN])?;
            for r in &rules {
                let mut args = vec!["-A", CHAIN];
                args.extend(r.iter().map(String::as_str));
                iptables(&args)?;
            }
        }
        let jump = ["-m", "comment", "--comment", "AWS SNAT CHAIN", "-j", CHAIN];
        if iptables(&[&["-C", "POSTROUTING"], &jump[..]].concat()).is_err() {
            iptables(&[&["-A", "POSTROUTING"], &jump[..]].concat())?;
        }
        Ok(())
    }
}
