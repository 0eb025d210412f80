"""The emulated VPC's data plane: makes the links and the delivery of a bridge on this
host follow what the EC2 API (moto) says about ENIs, as AWS's fabric does.

Each emulated instance is a network namespace whose eth0 is its primary ENI (same MAC and
primary IP). This program, polling EC2:

  * hot-plugs every other ENI attached to an instance into its namespace as eth<device
    index>, with the ENI's MAC (a veth whose host end is a port of the bridge), and
    unplugs it when EC2 detaches it;
  * acts as the VPC router on the bridge: the host (the subnet's gateway address) answers
    ARP for the subnet (proxy ARP, also back out of the same port) and delivers a packet
    for an address only to the ENI that EC2 says holds it, as a secondary IP, a primary IP
    or inside a delegated prefix: a permanent neighbour entry per address, with the ENI's
    MAC, and a /32 route in protocol PROTO so stale ones can be found. The rest of the VPC
    CIDR is an `unreachable` route, so the host neither proxies ARP for an address EC2
    does not know nor sends it anywhere: it is unreachable, as on AWS. (The bridge's own
    address must therefore be added with `noprefixroute`.)

    vpc.py info --ec2-endpoint URL --instance ID
        prints the primary ENI's "MAC IP/PREFIXLEN GATEWAY" for the instance's eth0
    vpc.py run --ec2-endpoint URL --bridge BR --vpc-cidr CIDR --node INSTANCE_ID=NETNS [...]
        reconciles every 0.5 s until killed; cleans its links and routes up on SIGTERM
"""

import argparse
import hashlib
import ipaddress
import json
import signal
import subprocess
import sys
import time

from imds import ec2_client

PROTO = "77"  # rtnetlink protocol number marking our routes


def ip(*args, check=True):
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def subnet_of(ec2, eni):
    return ec2.describe_subnets(SubnetIds=[eni["SubnetId"]])["Subnets"][0]["CidrBlock"]


def info(args):
    ec2 = ec2_client(args.ec2_endpoint)
    enis = ec2.describe_network_interfaces(
        Filters=[{"Name": "attachment.instance-id", "Values": [args.instance]}]
    )["NetworkInterfaces"]
    primary = next(e for e in enis if e["Attachment"]["DeviceIndex"] == 0)
    net = ipaddress.ip_network(subnet_of(ec2, primary))
    # AWS reserves the subnet's first address after the network for the VPC router.
    print(primary["MacAddress"], f"{primary['PrivateIpAddress']}/{net.prefixlen}", net[1])


def host_port(eni_id):
    """The bridge-side name of an ENI's veth: at most 15 bytes, stable per ENI."""
    return "ve" + hashlib.sha256(eni_id.encode()).hexdigest()[:11]


def addresses(eni):
    """Every IPv4 address EC2 says the ENI holds: private IPs and delegated prefixes."""
    out = [a["PrivateIpAddress"] for a in eni.get("PrivateIpAddresses", [])]
    for p in eni.get("Ipv4Prefixes", []):
        out += [str(a) for a in ipaddress.ip_network(p["Ipv4Prefix"])]
    return out


class Vpc:
    def __init__(self, ec2, bridge, nodes):
        self.ec2 = ec2
        self.bridge = bridge
        self.nodes = nodes  # instance id -> netns

    def attached(self):
        enis = self.ec2.describe_network_interfaces(
            Filters=[{"Name": "attachment.instance-id", "Values": list(self.nodes)}]
        )["NetworkInterfaces"]
        return [e for e in enis if e.get("Attachment", {}).get("Status") in ("attached", "attaching")]

    def our_ports(self):
        out = ip("-j", "link", "show", "master", self.bridge).stdout
        return {l["ifname"] for l in json.loads(out or "[]") if l["ifname"].startswith("ve")}

    def our_routes(self):
        out = ip("-j", "route", "show", "dev", self.bridge, "proto", PROTO).stdout
        return {r["dst"] for r in json.loads(out or "[]")}

    def reconcile(self):
        enis = self.attached()
        want_ports = {}
        want_addrs = {}
        for e in enis:
            mac = e["MacAddress"]
            for a in addresses(e):
                want_addrs[a] = mac
            idx = e["Attachment"]["DeviceIndex"]
            if idx > 0:
                want_ports[host_port(e["NetworkInterfaceId"])] = (e, idx)
        have = self.our_ports()
        # Unplug first: an ENI attached at the device index of one just detached needs
        # its eth<index> name free.
        for port in have - set(want_ports):
            ip("link", "del", port, check=False)
        for port, (e, idx) in want_ports.items():
            if port not in have:
                self.plug(port, e, idx)
        for a, mac in want_addrs.items():
            ip("neigh", "replace", a, "lladdr", mac, "dev", self.bridge, "nud", "permanent")
            ip("route", "replace", f"{a}/32", "dev", self.bridge, "proto", PROTO)
        for dst in self.our_routes() - set(want_addrs):
            ip("route", "del", f"{dst}/32", "dev", self.bridge, "proto", PROTO, check=False)
            ip("neigh", "del", dst, "dev", self.bridge, check=False)

    def plug(self, port, eni, idx):
        ns = self.nodes[eni["Attachment"]["InstanceId"]]
        name = f"eth{idx}"
        ip("link", "add", port, "type", "veth", "peer", "name", name, "netns", ns,
           "address", eni["MacAddress"])
        ip("link", "set", port, "master", self.bridge, "up")
        # The instance's OS brings a hot-plugged NIC up; ipamd configures its addresses.
        ip("-n", ns, "link", "set", name, "up")
        print(f"plugged {eni['NetworkInterfaceId']} into {ns} as {name}", flush=True)

    def cleanup(self):
        for port in self.our_ports():
            ip("link", "del", port, check=False)
        for dst in self.our_routes():
            ip("route", "del", f"{dst}/32", "dev", self.bridge, "proto", PROTO, check=False)
            ip("neigh", "del", dst, "dev", self.bridge, check=False)


def run(args):
    nodes = dict(n.split("=", 1) for n in args.node)
    vpc = Vpc(ec2_client(args.ec2_endpoint), args.bridge, nodes)
    # The VPC router answers ARP for every subnet address, even towards the port asking.
    for key, value in (("proxy_arp", "1"), ("proxy_arp_pvlan", "1"), ("send_redirects", "0")):
        with open(f"/proc/sys/net/ipv4/conf/{args.bridge}/{key}", "w") as f:
            f.write(value)
    ip("route", "replace", "unreachable", args.vpc_cidr, "proto", PROTO)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    ready = False
    while not stop:
        try:
            vpc.reconcile()
            if not ready:
                print("ready", flush=True)
                ready = True
        except Exception as e:  # moto restarting, a namespace going away: retry
            print(f"reconcile failed: {e}", file=sys.stderr, flush=True)
        time.sleep(0.5)
    vpc.cleanup()
    ip("route", "del", "unreachable", args.vpc_cidr, "proto", PROTO, check=False)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("info")
    i.add_argument("--ec2-endpoint", required=True)
    i.add_argument("--instance", required=True)
    r = sub.add_parser("run")
    r.add_argument("--ec2-endpoint", required=True)
    r.add_argument("--bridge", required=True)
    r.add_argument("--vpc-cidr", required=True)
    r.add_argument("--node", action="append", default=[])
    args = p.parse_args()
    {"info": info, "run": run}[args.cmd](args)


if __name__ == "__main__":
    main()
