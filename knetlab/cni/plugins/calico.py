"""The calico plugin: a routed veth per pod, no bridge (as Calico's CNI plugin wires pods).

Pod side: the address as a /32, ``169.254.1.1`` reachable on-link and the default route
through it; a permanent neighbour entry for 169.254.1.1 (the host end's MAC, derived so
nothing is read back) spares the pod an ARP round trip. Host side (``cali`` + 11 hex
characters): proxy-ARP on (Calico's answer for 169.254.1.1 when the pod does ask) and a
host route ``<pod>/32 dev cali...``, more specific than the blackhole of the node's block.
IPAM by delegation (``calico-ipam``), STATUS and GC included.
"""

from __future__ import annotations

# _sha1, not hashlib (which loads OpenSSL), no ipaddress, no subprocess: start-up time.
import _sha1

from knetlab.cni.invoke import delegate
from knetlab.cni.netutil import int_to_ip, ip_batch, parse_cidr, run
from knetlab.cni.plugins.bridge import VETH_FAILED
from knetlab.cni.skel import Args, plugin_main
from knetlab.cni.types import INVALID_CONFIG, CNIError, add_result

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs plugins ~7 ms

if TYPE_CHECKING:
    from typing import Any

GATEWAY = "169.254.1.1"


def host_veth_name(container_id: str, ifname: str) -> str:
    return "cali" + _sha1.sha1(f"{container_id}/{ifname}".encode()).hexdigest()[:11]


def _mac(name: str) -> str:
    return "ee:" + ":".join(f"{b:02x}" for b in _sha1.sha1(name.encode()).digest()[:5])


def _ipv4(address: str) -> str:
    """The address of ``a.b.c.d[/len]``, checked as ipaddress.IPv4Interface would."""
    try:
        ip, plen = parse_cidr(address)
        if not 0 <= plen <= 32 or not all(0 <= int(x) <= 255 for x in
                                          address.partition("/")[0].split(".")):
            raise ValueError
    except ValueError:
        raise CNIError(INVALID_CONFIG, f"IPAM returned an invalid address {address!r}"
                       ) from None
    return int_to_ip(ip)


def _conf(args: Args) -> dict[str, Any]:
    conf = args.conf
    if not isinstance(conf.get("ipam"), dict) or not conf["ipam"].get("type"):
        raise CNIError(INVALID_CONFIG, "calico: ipam with a type is required")
    return conf


def add(args: Args) -> dict[str, Any]:
    conf = _conf(args)
    ipam = delegate(conf["ipam"]["type"], "ADD", conf) or {}
    try:
        return _wire(args, conf, ipam)
    except Exception:
        delegate(conf["ipam"]["type"], "DEL", conf)  # roll back the address
        raise


def _wire(args: Args, conf: dict[str, Any], ipam: dict[str, Any]) -> dict[str, Any]:
    if not ipam.get("ips"):
        raise CNIError(INVALID_CONFIG, "IPAM plugin returned no IP addresses")
    ip = _ipv4(ipam["ips"][0]["address"])
    mtu = int(conf.get("mtu", 1500))
    veth = host_veth_name(args.container_id, args.ifname)
    host_mac, pod_mac = _mac(veth), _mac(f"{veth}/pod")
    ip_batch([f"link add {veth} mtu {mtu} address {host_mac} type veth peer name "
               f"{args.ifname} mtu {mtu} address {pod_mac} netns {args.netns}",
               f"link set {veth} up",
               f"route replace {ip}/32 dev {veth} scope link"],
              None, f"create {veth} for {args.container_id}", VETH_FAILED)
    # proxy_arp: answer for 169.254.1.1; neigh/proxy_delay 0: answer at once
    for key, value in (("conf", "proxy_arp"), ("neigh", "proxy_delay"), ("conf", "forwarding")):
        with open(f"/proc/sys/net/ipv4/{key}/{veth}/{value}", "w") as f:
            f.write("0" if value == "proxy_delay" else "1")
    with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
        f.write("1")
    ip_batch([f"addr add {ip}/32 dev {args.ifname}",
               f"link set {args.ifname} up",
               f"neigh replace {GATEWAY} lladdr {host_mac} dev {args.ifname} nud permanent",
               f"route add {GATEWAY} dev {args.ifname} scope link",
               f"route add default via {GATEWAY} dev {args.ifname}"],
              args.netns, f"configure {args.ifname} in {args.netns}", VETH_FAILED)
    return add_result(args.version,
                      [{"name": veth, "mac": host_mac},
                       {"name": args.ifname, "mac": pod_mac, "sandbox": args.netns}],
                      [{"address": f"{ip}/32", "gateway": GATEWAY}],
                      [{"dst": "0.0.0.0/0", "gw": GATEWAY}], conf.get("dns") or ipam.get("dns", {}))


def delete(args: Args) -> None:
    conf = _conf(args)
    delegate(conf["ipam"]["type"], "DEL", conf)
    # Deleting the host end removes the pod end and the /32 route with it.
    run(["ip", "link", "del", host_veth_name(args.container_id, args.ifname)])


def check(args: Args) -> None:
    conf = _conf(args)
    delegate(conf["ipam"]["type"], "CHECK", conf)
    veth = host_veth_name(args.container_id, args.ifname)
    rc, out, _ = run(["ip", "-o", "route", "show", "dev", veth])
    if rc or "scope link" not in out:
        raise CNIError(VETH_FAILED, f"calico: no host route through {veth}")


def status(args: Args) -> None:
    """Ready when IPAM is: the routed veth needs nothing shared but addresses."""
    conf = _conf(args)
    delegate(conf["ipam"]["type"], "STATUS", conf)


def gc(args: Args) -> None:
    """IPAM's GC releases stale addresses; the veth and its /32 route went with the pod's
    namespace, so there is nothing else of an attachment left to collect."""
    conf = _conf(args)
    delegate(conf["ipam"]["type"], "GC", conf)


def main() -> None:
    plugin_main(add, delete, check, status, gc)
