"""EC2 instance metadata (IMDSv2) for instances emulated by moto.

moto's own metadata endpoint is static and knows nothing of ENIs. This server answers
every request by asking the EC2 API (moto) about the instance, so attaching an ENI or
assigning an IP through EC2 shows up here at once, as it does on AWS.

    imds.py setup --ec2-endpoint URL [--instances N] [--instance-type T]
        creates a VPC, a subnet and N instances; prints one JSON object describing them
    imds.py serve --ec2-endpoint URL --listen HOST:PORT=INSTANCE_ID [--listen ...]
        one metadata server per listen address, each the view of one instance

IMDSv2 only (HttpTokens=required, as EKS recommends): PUT /latest/api/token with
X-aws-ec2-metadata-token-ttl-seconds, then X-aws-ec2-metadata-token on every GET.
"""

import argparse
import json
import secrets
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3

REGION = "us-west-2"
ACCOUNT = "123456789012"
ROLE = "nodert-node-role"


def ec2_client(endpoint):
    return boto3.client(
        "ec2",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def setup(args):
    ec2 = ec2_client(args.ec2_endpoint)
    vpc = ec2.create_vpc(CidrBlock=args.vpc_cidr)["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(
        VpcId=vpc, CidrBlock=args.subnet_cidr, AvailabilityZone=REGION + "a"
    )["Subnet"]["SubnetId"]
    sg = ec2.create_security_group(
        GroupName="nodert-nodes", Description="nodert test nodes", VpcId=vpc
    )["GroupId"]
    ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    reservation = ec2.run_instances(
        ImageId=ami,
        InstanceType=args.instance_type,
        MinCount=args.instances,
        MaxCount=args.instances,
        SubnetId=subnet,
        SecurityGroupIds=[sg],
    )
    instances = [i["InstanceId"] for i in reservation["Instances"]]
    json.dump(
        {
            "region": REGION,
            "vpc_id": vpc,
            "vpc_cidr": args.vpc_cidr,
            "subnet_id": subnet,
            "security_group_id": sg,
            "instance_ids": instances,
        },
        sys.stdout,
    )
    print()


class InstanceView:
    """What IMDS says about one instance, read live from EC2."""

    def __init__(self, ec2, instance_id):
        self.ec2 = ec2
        self.instance_id = instance_id

    def instance(self):
        res = self.ec2.describe_instances(InstanceIds=[self.instance_id])
        return res["Reservations"][0]["Instances"][0]

    def enis(self):
        res = self.ec2.describe_network_interfaces(
            Filters=[{"Name": "attachment.instance-id", "Values": [self.instance_id]}]
        )
        enis = [e for e in res["NetworkInterfaces"] if e.get("Attachment")]
        return sorted(enis, key=lambda e: e["Attachment"]["DeviceIndex"])

    def subnet(self, subnet_id):
        return self.ec2.describe_subnets(SubnetIds=[subnet_id])["Subnets"][0]

    def vpc(self, vpc_id):
        return self.ec2.describe_vpcs(VpcIds=[vpc_id])["Vpcs"][0]

    def lookup(self, path):
        """The answer for a path below /latest/, or None (404). A str is sent as is."""
        inst = self.instance()
        az = inst["Placement"]["AvailabilityZone"]
        ip = inst["PrivateIpAddress"]
        hostname = "ip-%s.%s.compute.internal" % (ip.replace(".", "-"), az[:-1])
        primary = self.enis()[0] if self.enis() else None
        simple = {
            "meta-data/instance-id": inst["InstanceId"],
            "meta-data/instance-type": inst["InstanceType"],
            "meta-data/ami-id": inst["ImageId"],
            "meta-data/local-ipv4": ip,
            "meta-data/local-hostname": hostname,
            "meta-data/hostname": hostname,
            "meta-data/mac": primary["MacAddress"] if primary else "",
            "meta-data/placement/availability-zone": az,
            "meta-data/placement/region": az[:-1],
            "meta-data/iam/security-credentials/": ROLE,
        }
        if path in simple:
            return simple[path]
        if path == "meta-data/iam/security-credentials/" + ROLE:
            expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 6 * 3600))
            return json.dumps(
                {
                    "Code": "Success",
                    "Type": "AWS-HMAC",
                    "AccessKeyId": "ASIANODERTTESTING",
                    "SecretAccessKey": "testing",
                    "Token": "nodert-session-token",
                    "Expiration": expires,
                    "LastUpdated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                }
            )
        if path == "dynamic/instance-identity/document":
            return json.dumps(
                {
                    "accountId": ACCOUNT,
                    "architecture": "x86_64",
                    "availabilityZone": az,
                    "imageId": inst["ImageId"],
                    "instanceId": inst["InstanceId"],
                    "instanceType": inst["InstanceType"],
                    "privateIp": ip,
                    "region": az[:-1],
                    "version": "2017-09-30",
                }
            )
        macs_prefix = "meta-data/network/interfaces/macs/"
        if path == macs_prefix:
            return "\n".join(e["MacAddress"] + "/" for e in self.enis())
        if path.startswith(macs_prefix):
            mac, _, field = path[len(macs_prefix):].partition("/")
            eni = next((e for e in self.enis() if e["MacAddress"] == mac), None)
            if eni is None:
                return None
            return self.eni_field(eni, field)
        return None

    def eni_field(self, eni, field):
        subnet = self.subnet(eni["SubnetId"])
        vpc = self.vpc(eni["VpcId"])
        prefixes = [p["Ipv4Prefix"] for p in eni.get("Ipv4Prefixes", [])]
        fields = {
            "device-number": str(eni["Attachment"]["DeviceIndex"]),
            "interface-id": eni["NetworkInterfaceId"],
            "mac": eni["MacAddress"],
            "owner-id": ACCOUNT,
            "subnet-id": eni["SubnetId"],
            "subnet-ipv4-cidr-block": subnet["CidrBlock"],
            "vpc-id": eni["VpcId"],
            "vpc-ipv4-cidr-block": vpc["CidrBlock"],
            "vpc-ipv4-cidr-blocks": "\n".join(
                a["CidrBlock"] for a in vpc.get("CidrBlockAssociationSet", [])
            )
            or vpc["CidrBlock"],
            # The primary address first, as on AWS.
            "local-ipv4s": "\n".join(
                a["PrivateIpAddress"]
                for a in sorted(eni["PrivateIpAddresses"], key=lambda a: not a.get("Primary"))
            ),
            "security-group-ids": "\n".join(g["GroupId"] for g in eni.get("Groups", [])),
            "security-groups": "\n".join(g["GroupName"] for g in eni.get("Groups", [])),
        }
        if prefixes:
            fields["ipv4-prefix"] = "\n".join(prefixes)
        if field == "":
            return "\n".join(sorted(fields))
        return fields.get(field)


def make_handler(view):
    tokens = {}  # token -> expiry (monotonic seconds)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *a):  # quiet: tests read stderr only on failure
            pass

        def reply(self, code, body=""):
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_PUT(self):
            if self.path != "/latest/api/token":
                return self.reply(404, "Not Found")
            ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
            if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                return self.reply(400, "Bad Request")
            token = secrets.token_urlsafe(32)
            with lock:
                tokens[token] = time.monotonic() + int(ttl)
            self.reply(200, token)

        def do_GET(self):
            token = self.headers.get("X-aws-ec2-metadata-token", "")
            with lock:
                valid = tokens.get(token, 0) > time.monotonic()
            if not valid:
                return self.reply(401, "Unauthorized")
            if not self.path.startswith("/latest/"):
                return self.reply(404, "Not Found")
            try:
                answer = view.lookup(self.path[len("/latest/"):])
            except Exception as e:  # EC2 said no (e.g. the instance is gone)
                return self.reply(500, "metadata unavailable: %s" % e)
            if answer is None:
                return self.reply(404, "Not Found")
            self.reply(200, answer)

    return Handler


def serve(args):
    ec2 = ec2_client(args.ec2_endpoint)
    servers = []
    for spec in args.listen:
        addr, _, instance_id = spec.partition("=")
        host, _, port = addr.rpartition(":")
        server = ThreadingHTTPServer((host, int(port)), make_handler(InstanceView(ec2, instance_id)))
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("imds serving %d instance(s)" % len(servers), file=sys.stderr, flush=True)
    threading.Event().wait()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("setup")
    s.add_argument("--ec2-endpoint", required=True)
    s.add_argument("--instances", type=int, default=1)
    s.add_argument("--instance-type", default="m5.large")
    s.add_argument("--vpc-cidr", default="10.0.0.0/16")
    s.add_argument("--subnet-cidr", default="10.0.0.0/20")
    s = sub.add_parser("serve")
    s.add_argument("--ec2-endpoint", required=True)
    s.add_argument("--listen", action="append", required=True)
    args = p.parse_args()
    {"setup": setup, "serve": serve}[args.cmd](args)


if __name__ == "__main__":
    main()
