"""The calico plugin: a routed veth per pod, no bridge (as Calico's CNI plugin wires pods).

Pod side: the address as a /32, ``169.254.1.1`` reachable on-link and the default route
through it; a permanent neighbour entry for 169.254.1.1 (the host end's MAC, derived so
nothing is read back) spares the pod an ARP round trip. Host side (``cali`` + 11 hex
characters): proxy-ARP on (Calico's answer for 169.254.1.1 when the pod does ask) and a
host route ``<pod>/32 dev cali...``, more specific than the blackhole of the node's block.
IPAM by delegation (``calico-ipam``), STATUS and GC included.

Where it runs: usually in the node's calico CNI agent (knetlab/cni/agent.py), to
which the plugin executable hands each invocation; in the plugin process itself where no
agent listens. Either way the kernel is programmed over rtnetlink (knetlab/cni/rtnl.py),
not by ``ip`` processes: they cost more CPU than the messages they send.
"""

from __future__ import annotations

# _sha1, not hashlib (which loads OpenSSL), no ipaddress, no subprocess: start-up time.
import _sha1
import os

from knetlab.cni import rtnl
from knetlab.cni.invoke import delegate
from knetlab.cni.netutil import int_to_ip, parse_cidr, run
from knetlab.cni.skel import Args, plugin_main
from knetlab.cni.types import INVALID_CONFIG, CNIError, add_result

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs plugins ~7 ms

if TYPE_CHECKING:
    from typing import Any

GATEWAY = "169.254.1.1"
VETH_FAILED = 102  # plugin-specific code, as the bridge plugin's for the same failure
ENODEV = 19


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
    ipam = delegate(conf["ipam"]["type"], "ADD", conf, args.env) or {}
    try:
        return _wire(args, conf, ipam)
    except Exception:
        delegate(conf["ipam"]["type"], "DEL", conf, args.env)  # roll back the address
        raise


def _wire(args: Args, conf: dict[str, Any], ipam: dict[str, Any]) -> dict[str, Any]:
    if not ipam.get("ips"):
        raise CNIError(INVALID_CONFIG, "IPAM plugin returned no IP addresses")
    ip = _ipv4(ipam["ips"][0]["address"])
    veth = host_veth_name(args.container_id, args.ifname)
    host_mac, pod_mac = _mac(veth), _mac(f"{veth}/pod")
    try:
        pod_ns = os.open(args.netns, os.O_RDONLY)
    except OSError as exc:
        raise CNIError(VETH_FAILED, f"failed to open netns {args.netns!r}", exc.strerror
                       ) from None
    node_ns = os.open("/proc/thread-self/ns/net", os.O_RDONLY)  # (an agent's thread's)
    try:
        # The node's socket stays open: it deletes the veth again if the pod's side fails.
        with rtnl.Netlink() as node:
            _netlink(node, [rtnl.veth_add(veth, int(conf.get("mtu", 1500)), host_mac,
                                          args.ifname, pod_mac, pod_ns)],
                     f"create {veth} for {args.container_id}")
            try:
                _host_side(node, veth, ip)
                # The pod's side from inside it (no nsenter + ip): addresses and routes
                # can only be set through a socket of the pod's namespace.
                rtnl.enter_netns(pod_ns)
                _pod_side(args.ifname, ip, host_mac, args.netns)
            except BaseException:
                try:
                    node.request([rtnl.link_del(veth)])
                except OSError:
                    pass  # gone with the namespace already
                raise
    finally:
        # Back home (the thread serves more invocations; the caller may still release
        # the address over TCP), whatever happened.
        rtnl.enter_netns(node_ns)
        os.close(pod_ns)
        os.close(node_ns)
    return add_result(args.version,
                      [{"name": veth, "mac": host_mac},
                       {"name": args.ifname, "mac": pod_mac, "sandbox": args.netns}],
                      [{"address": f"{ip}/32", "gateway": GATEWAY}],
                      [{"dst": "0.0.0.0/0", "gw": GATEWAY}], conf.get("dns") or ipam.get("dns", {}))


def _host_side(node: rtnl.Netlink, veth: str, ip: str) -> None:
    """The /32 route to the pod, proxy-ARP (answer for 169.254.1.1, at once: proxy_delay 0)
    and forwarding on the host end."""
    _netlink(node, [rtnl.route(rtnl.link_index(veth), ip, 32, flags=rtnl.REPLACE)],
             f"add the host route {ip}/32 dev {veth}")
    for key, value in (("conf", "proxy_arp"), ("neigh", "proxy_delay"), ("conf", "forwarding")):
        with open(f"/proc/sys/net/ipv4/{key}/{veth}/{value}", "w") as f:
            f.write("0" if value == "proxy_delay" else "1")
    with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
        f.write("1")


def _pod_side(ifname: str, ip: str, host_mac: str, netns: str) -> None:
    """Inside the pod's namespace: the /32, the interface up, 169.254.1.1 on-link with a
    permanent neighbour entry, the default route through it."""
    with rtnl.Netlink() as pod:
        index = rtnl.link_index(ifname)
        _netlink(pod, [rtnl.addr_add(index, ip, 32), rtnl.link_up(index),
                       rtnl.neigh_permanent(index, GATEWAY, host_mac),
                       rtnl.route(index, GATEWAY, 32), rtnl.route(index, "0.0.0.0", 0, GATEWAY)],
                 f"configure {ifname} in {netns}")


def _netlink(sock: rtnl.Netlink, messages: list[tuple[int, int, bytes]], what: str) -> None:
    try:
        sock.request(messages)
    except OSError as exc:
        raise CNIError(VETH_FAILED, f"failed to {what}", exc.strerror or str(exc)) from None


def delete(args: Args) -> None:
    conf = _conf(args)
    delegate(conf["ipam"]["type"], "DEL", conf, args.env)
    # Deleting the host end removes the pod end and the /32 route with it; DEL of what is
    # gone already succeeds, as the spec asks.
    veth = host_veth_name(args.container_id, args.ifname)
    try:
        with rtnl.Netlink() as node:
            node.request([rtnl.link_del(veth)])
    except OSError as exc:
        if exc.errno != ENODEV:
            raise CNIError(VETH_FAILED, f"failed to delete {veth}", exc.strerror) from None


def check(args: Args) -> None:
    conf = _conf(args)
    delegate(conf["ipam"]["type"], "CHECK", conf, args.env)
    veth = host_veth_name(args.container_id, args.ifname)
    rc, out, _ = run(["ip", "-o", "route", "show", "dev", veth])
    if rc or "scope link" not in out:
        raise CNIError(VETH_FAILED, f"calico: no host route through {veth}")


def status(args: Args) -> None:
    """Ready when IPAM is: the routed veth needs nothing shared but addresses."""
    conf = _conf(args)
    delegate(conf["ipam"]["type"], "STATUS", conf, args.env)


def gc(args: Args) -> None:
    """IPAM's GC releases stale addresses; the veth and its /32 route went with the pod's
    namespace, so there is nothing else of an attachment left to collect."""
    conf = _conf(args)
    delegate(conf["ipam"]["type"], "GC", conf, args.env)


def main() -> None:
    plugin_main(add, delete, check, status, gc)
