"""IPv4 prefix delegation for moto, which has none: /28 prefixes on ENIs, as EC2 has them.

  * AssignPrivateIpAddresses takes Ipv4PrefixCount (EC2 picks) or Ipv4Prefix.N (the
    caller names them); CreateNetworkInterface takes the same. A prefix is an aligned /28
    of the ENI's subnet holding none of AWS's reserved addresses (the network address,
    the next three, the broadcast address), no address an ENI uses and no other prefix.
    When the subnet has too few such /28s the call fails with InsufficientCidrBlocks and
    changes nothing, as EC2 does in a small or fragmented subnet.
  * UnassignPrivateIpAddresses takes Ipv4Prefix.N; naming a prefix the ENI does not hold
    fails with InvalidParameterValue and changes nothing.
  * DescribeNetworkInterfaces lists them as Ipv4Prefixes (moto serialises the ENI
    attribute `ipv4_prefixes` by the API's member name).

Prefixes and secondary IPs are never asked for in one call (InvalidParameterCombination),
as on EC2. The per-ENI limit of addresses (IPs + prefixes) is not enforced here.

`install(used, lock)` patches moto; `used()` returns every address ENIs hold (prefixes
included), and `lock` serialises address choices with moto's own IP draws.
"""

import ipaddress
import random

from moto.core.responses import ActionResult, EmptyResult
from moto.ec2.exceptions import EC2ClientError
from moto.ec2.responses.elastic_network_interfaces import ElasticNetworkInterfaces

PREFIX_LEN = 28


def prefixes(eni):
    """The ENI's prefixes, as strings ("10.0.3.16/28")."""
    return [p["Ipv4Prefix"] for p in getattr(eni, "ipv4_prefixes", None) or []]


def prefix_addresses(eni):
    for p in prefixes(eni):
        yield from (str(a) for a in ipaddress.ip_network(p))


def _set_prefixes(eni, cidrs):
    # A fresh list each time: moto shares nothing between ENIs, neither do we.
    eni.ipv4_prefixes = [{"Ipv4Prefix": c} for c in cidrs]


def _reserved(net):
    return {net.network_address + i for i in range(4)} | {net.broadcast_address}


def free_blocks(subnet_cidr, used):
    """The subnet's aligned /28s that EC2 could delegate now."""
    net = ipaddress.ip_network(subnet_cidr)
    if net.prefixlen > PREFIX_LEN:
        return []
    taken = {ipaddress.ip_address(a) for a in used} | _reserved(net)
    return [
        str(b)
        for b in net.subnets(new_prefix=PREFIX_LEN)
        if not any(a in taken for a in (b.network_address + i for i in range(b.num_addresses)))
    ]


def insufficient(subnet_cidr, wanted, free):
    return EC2ClientError(
        "InsufficientCidrBlocks",
        "The specified subnet %s does not have enough free cidr blocks to satisfy the "
        "request: %d /28 prefix(es) asked for, %d free" % (subnet_cidr, wanted, free),
    )


def invalid(message):
    return EC2ClientError("InvalidParameterValue", message)


def combination():
    return EC2ClientError(
        "InvalidParameterCombination",
        "Prefixes and secondary private IP addresses cannot be assigned in one request",
    )


def _normalise(cidr, subnet_cidr):
    try:
        p = ipaddress.ip_network(cidr)
    except ValueError:
        raise invalid("Invalid IPv4 prefix %r: it must be an aligned /28" % cidr)
    if p.version != 4 or p.prefixlen != PREFIX_LEN:
        raise invalid("Invalid IPv4 prefix %r: it must be an aligned /28" % cidr)
    if not p.subnet_of(ipaddress.ip_network(subnet_cidr)):
        raise invalid("Prefix %s is not in the ENI's subnet %s" % (p, subnet_cidr))
    return str(p)


class Prefixes:
    def __init__(self, used, lock):
        self.used = used
        self.lock = lock

    def add(self, eni, count=0, wanted=()):
        """Gives `eni` `count` free /28s (or the `wanted` ones); the new ones. Call with
        the lock held."""
        subnet = eni.subnet.cidr_block
        free = free_blocks(subnet, self.used())
        if wanted:
            new = [_normalise(c, subnet) for c in wanted]
            busy = [c for c in new if c not in free]
            if busy:
                raise invalid("Prefix(es) %s are not free in subnet %s" % (", ".join(busy), subnet))
        else:
            if count > len(free):
                raise insufficient(subnet, count, len(free))
            new = random.sample(free, count)
        _set_prefixes(eni, prefixes(eni) + new)
        return new

    def remove(self, eni, wanted):
        have = prefixes(eni)
        gone = [_normalise(c, eni.subnet.cidr_block) for c in wanted]
        missing = [c for c in gone if c not in have]
        if missing:
            raise invalid(
                "Some of the specified prefixes are not assigned to interface %s: %s"
                % (eni.id, ", ".join(missing))
            )
        _set_prefixes(eni, [c for c in have if c not in gone])


def install(used, lock):
    p = Prefixes(used, lock)
    R = ElasticNetworkInterfaces
    moto_assign = R.assign_private_ip_addresses
    moto_unassign = R.unassign_private_ip_addresses
    moto_create = R.create_network_interface

    def asked(self):
        count = self._get_int_param("Ipv4PrefixCount", 0) or 0
        wanted = self._get_param("Ipv4Prefixes", []) or []
        if count and wanted:
            raise EC2ClientError(
                "InvalidParameterCombination",
                "Ipv4PrefixCount and Ipv4Prefixes cannot be given together",
            )
        return count, wanted

    def assign_private_ip_addresses(self):
        count, wanted = asked(self)
        if not count and not wanted:
            return moto_assign(self)
        if self._get_int_param("SecondaryPrivateIpAddressCount", 0) or self._get_param(
            "PrivateIpAddresses", []
        ):
            raise combination()
        eni = self.ec2_backend.get_network_interface(self._get_param("NetworkInterfaceId"))
        with lock:
            new = p.add(eni, count, wanted)
        return ActionResult(
            {
                "NetworkInterfaceId": eni.id,
                "AssignedIpv4Prefixes": [{"Ipv4Prefix": c} for c in new],
            }
        )

    def unassign_private_ip_addresses(self):
        wanted = self._get_param("Ipv4Prefixes", []) or []
        if not wanted:
            return moto_unassign(self)
        if self._get_param("PrivateIpAddresses", []):
            raise combination()
        eni = self.ec2_backend.get_network_interface(self._get_param("NetworkInterfaceId"))
        with lock:
            p.remove(eni, wanted)
        return EmptyResult()

    def create_network_interface(self):
        count, specs = asked(self)
        wanted = [s["Ipv4Prefix"] for s in specs]
        if not count and not wanted:
            return moto_create(self)
        if self._get_param("SecondaryPrivateIpAddressCount"):
            raise combination()
        subnet = self.ec2_backend.get_subnet(self._get_param("SubnetId"))
        with lock:
            # Refuse before creating anything; the ENI's own address can still take the
            # last free /28, in which case the new ENI is deleted again.
            free = free_blocks(subnet.cidr_block, used())
            if count > len(free):
                raise insufficient(subnet.cidr_block, count, len(free))
            result = moto_create(self)
            eni = result.result["NetworkInterface"]
            try:
                p.add(eni, count, wanted)
            except EC2ClientError:
                self.ec2_backend.delete_network_interface(eni.id)
                raise
        return result

    R.assign_private_ip_addresses = assign_private_ip_addresses
    R.unassign_private_ip_addresses = unassign_private_ip_addresses
    R.create_network_interface = create_network_interface
