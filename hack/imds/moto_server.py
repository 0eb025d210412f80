"""moto's server (the same flags as `moto_server`), with what the emulated VPC needs.

moto picks an ENI's private IPs at random in the subnet without looking at what the
subnet already uses, so two ENIs (of two instances, or of one) can get the same address,
and an ENI can get one AWS keeps for itself (the network address, the VPC router .1,
.2, .3 and the broadcast address). AWS never does either, and the data plane (vpc.py)
delivers each address to one ENI only, so a duplicate makes a pod unreachable. Here an
IPv4 address is drawn among the subnet's addresses that are neither reserved nor used
(addresses inside delegated prefixes count as used).

moto has no prefix delegation either: hack/imds/moto_prefixes.py adds /28 prefixes.

    moto_server.py -H HOST -p PORT
"""

import collections
import ipaddress
import random
import sys
import threading

import moto.ec2.models.elastic_network_interfaces as enis
from moto.ec2.models import ec2_backends
from moto.server import main

import moto_prefixes

_moto_pick = enis.random_private_ip
# Picks not yet recorded on an ENI (one ENI's secondary IPs are drawn before it exists).
_recent = collections.deque(maxlen=1024)
# moto serves requests on threads: one address choice at a time, IPs and prefixes alike.
_lock = threading.RLock()


def _used():
    used = set(_recent)
    for account in list(ec2_backends.values()):
        for backend in list(account.values()):
            for eni in list(backend.enis.values()):
                used.update(a["PrivateIpAddress"] for a in eni.private_ip_addresses)
                if eni.private_ip_address:
                    used.add(eni.private_ip_address)
                used.update(moto_prefixes.prefix_addresses(eni))
    return used


def free_private_ip(cidr=None, ipv6=False):
    if ipv6 or not cidr:
        return _moto_pick(cidr, ipv6)
    net = ipaddress.ip_network(cidr, strict=False)
    with _lock:
        used = _used()
        # network+4 .. broadcast-1: what AWS lets an ENI have.
        for _ in range(10000):
            ip = str(net.network_address + random.randrange(4, net.num_addresses - 1))
            if ip not in used:
                _recent.append(ip)
                return ip
    raise RuntimeError("subnet %s has no free address" % cidr)


enis.random_private_ip = free_private_ip
moto_prefixes.install(_used, _lock)

if __name__ == "__main__":
    sys.exit(main())
