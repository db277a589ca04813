"""The bridge plugin: a Linux bridge on the node, a veth into the pod, IPAM by delegation.

Runs in the node's network namespace (the runtime puts it there); the pod's namespace is
``CNI_NETNS``. Options as the reference plugin: ``bridge`` (default cni0), ``isGateway``,
``isDefaultGateway``, ``ipMasq``, ``hairpinMode``, ``mtu``, ``ipam``.

ADD speaks rtnetlink itself (knetlab.cni.rtnl): a few messages on a socket in the node's
namespace, then, having entered the pod's, on one there; no ``ip`` or ``nsenter`` is
started (they cost ~3 ms of CPU per pod). MACs are derived (``0a:58`` + the IPv4 address,
as older Kubernetes bridges did) so nothing is read back.
STATUS asks IPAM and checks the bridge name; GC runs IPAM's GC and drops the masquerade
chains of containers no longer valid (found by the comment each rule carries).
"""

from __future__ import annotations

import os

from knetlab.cni import rtnl
from knetlab.cni.invoke import delegate
from knetlab.cni.netutil import (
    int_to_ip,
    local_mac,
    mac_for,
    parse_cidr,
    pod_lines,
    run,
    short_hash,
)
from knetlab.cni.skel import Args, plugin_main
from knetlab.cni.types import INVALID_CONFIG, PLUGIN_NOT_AVAILABLE, CNIError, add_result

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs plugins ~7 ms

if TYPE_CHECKING:
    from typing import Any

EEXIST = 17
BRIDGE_FAILED = 101
VETH_FAILED = 102

def host_veth_name(container_id: str, ifname: str) -> str:
    return "veth" + short_hash(f"{container_id}/{ifname}")


def _conf(args: Args) -> dict[str, Any]:
    conf = args.conf
    if "ipam" not in conf or not isinstance(conf["ipam"], dict) or not conf["ipam"].get("type"):
        raise CNIError(INVALID_CONFIG, "bridge: ipam with a type is required")
    for flag in ("isGateway", "isDefaultGateway", "ipMasq", "hairpinMode"):
        if flag in conf and not isinstance(conf[flag], bool):
            raise CNIError(INVALID_CONFIG, f"bridge: {flag} must be true or false")
    return conf


def _masq_names(network: str, cid: str) -> tuple[str, str]:
    """The reference plugin's chain name and rule comment for one container's masquerade."""
    chain = "CNI-" + short_hash(f"{network}{cid}") + short_hash(f"{cid}{network}")
    return chain, f'name: "{network}" id: "{cid}"'


def _masq(args: Args, conf: dict[str, Any], addr: str, add: bool) -> None:
    """Reference layout: POSTROUTING -s IP -> CNI-<hash> (ACCEPT own subnet, else MASQUERADE)."""
    chain, comment = _masq_names(conf["name"], args.container_id)
    ip, plen = parse_cidr(addr)
    network = f"{int_to_ip(ip & (0xFFFFFFFF << (32 - plen)))}/{plen}"
    if add:
        # iptables-restore quotes with "..." and \" only (a Python repr's '...' fails)
        quoted = '"' + comment.replace('"', '\\"') + '"'
        rules = [f":{chain} - [0:0]",
                 f"-A {chain} -d {network} -m comment --comment {quoted} -j ACCEPT",
                 f"-A {chain} ! -d 224.0.0.0/4 -m comment --comment {quoted} -j MASQUERADE",
                 f"-A POSTROUTING -s {int_to_ip(ip)} -m comment --comment {quoted} -j {chain}"]
        rc, _, err = run(["iptables-restore", "--noflush", "-w"],
                         "*nat\n" + "\n".join(rules) + "\nCOMMIT\n")
        if rc != 0:
            raise CNIError(BRIDGE_FAILED, "failed to set up IP masquerade", err.strip())
        return
    _unmasq(conf["name"], args.container_id, int_to_ip(ip))


def _unmasq(network: str, cid: str, ip: str) -> None:
    chain, comment = _masq_names(network, cid)
    run(["iptables", "-w", "-t", "nat", "-D", "POSTROUTING", "-s", ip, "-m",
         "comment", "--comment", comment, "-j", chain])
    run(["iptables", "-w", "-t", "nat", "-F", chain])
    run(["iptables", "-w", "-t", "nat", "-X", chain])


def _stale_masq(network: str, valid_cids: set[str]) -> list[tuple[str, str]]:
    """(container id, source address) of this network's masquerade rules whose container
    is no valid attachment: read back from the comment every rule carries."""
    rc, out, _ = run(["iptables", "-w", "-t", "nat", "-S", "POSTROUTING"])
    marker = f'--comment "name: \\"{network}\\" id: \\"'
    stale = []
    for line in out.splitlines() if rc == 0 else []:
        if marker not in line or " -s " not in line:
            continue
        cid = line.split(marker, 1)[1].split('\\"', 1)[0]
        source = line.split(" -s ", 1)[1].split()[0].partition("/")[0]
        if cid not in valid_cids:
            stale.append((cid, source))
    return stale


def add(args: Args) -> dict[str, Any]:
    conf = _conf(args)
    br = conf.get("bridge", "cni0")
    mtu = int(conf.get("mtu", 1500))
    ipam_result = delegate(conf["ipam"]["type"], "ADD", conf, args.env) or {}
    try:
        return _wire(args, conf, br, mtu, ipam_result)
    except Exception:
        delegate(conf["ipam"]["type"], "DEL", conf, args.env)  # roll back the address
        raise


def _wire(args: Args, conf: dict[str, Any], br: str, mtu: int,
          ipam_result: dict[str, Any]) -> dict[str, Any]:
    if not ipam_result.get("ips"):
        raise CNIError(INVALID_CONFIG, "IPAM plugin returned no IP addresses")
    first = ipam_result["ips"][0]
    addr = first["address"]
    ip, plen = addr.split("/")
    gw = first.get("gateway")
    veth = host_veth_name(args.container_id, args.ifname)
    host_mac, pod_mac = local_mac(veth), mac_for(ip)
    br_mac = mac_for(gw) if gw else local_mac(br)
    _, routes = pod_lines(args.ifname, addr, ipam_result, gw, bool(conf.get("isDefaultGateway")))
    try:
        pod_ns = os.open(args.netns, os.O_RDONLY)
    except OSError as exc:
        raise CNIError(VETH_FAILED, f"failed to open netns {args.netns!r}", exc.strerror
                       ) from None
    node_ns = os.open("/proc/thread-self/ns/net", os.O_RDONLY)  # this thread's
    try:
        _attach(args, conf, br, mtu, ip, int(plen), gw, routes, pod_ns)
    finally:
        # Back home: the caller may still roll back the address through IPAM.
        rtnl.enter_netns(node_ns)
        os.close(pod_ns)
        os.close(node_ns)
    if conf.get("isGateway"):
        with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
            f.write("1")
    if conf.get("ipMasq"):
        _masq(args, conf, addr, add=True)
    return add_result(args.version,
                      [{"name": br, "mac": br_mac}, {"name": veth, "mac": host_mac},
                       {"name": args.ifname, "mac": pod_mac, "sandbox": args.netns}],
                      ipam_result["ips"], routes,
                      conf.get("dns") or ipam_result.get("dns", {}))


def _attach(args: Args, conf: dict[str, Any], br: str, mtu: int, ip: str, plen: int,
            gw: str | None, routes: list[dict[str, Any]], pod_ns: int) -> None:
    """The kernel work of ADD; leaves this thread in the pod's namespace."""
    veth = host_veth_name(args.container_id, args.ifname)
    host_mac, pod_mac = local_mac(veth), mac_for(ip)
    what = f"attach {args.ifname} of {args.container_id} to bridge {br}"
    # The node's socket stays open: it deletes the veth again if a later step fails.
    with rtnl.Netlink() as node:
        # The bridge may exist already (another pod, or the data plane, made it).
        br_mac = mac_for(gw) if gw else local_mac(br)
        _netlink(node, [rtnl.bridge_add(br, br_mac)], what, BRIDGE_FAILED, may_exist=True)
        br_index = _index(br, what, BRIDGE_FAILED)
        _netlink(node, [rtnl.link_up(br_index),
                        rtnl.veth_add(veth, mtu, host_mac, args.ifname, pod_mac, pod_ns)],
                 what, BRIDGE_FAILED)
        try:
            veth_index = _index(veth, what, BRIDGE_FAILED)
            port = [rtnl.link_master_up(veth_index, br_index)]
            if conf.get("hairpinMode"):
                port.append(rtnl.bridge_port_hairpin(veth_index))
            _netlink(node, port, what, BRIDGE_FAILED)
            if conf.get("isGateway") and gw:
                _netlink(node, [rtnl.addr_add(br_index, gw, plen)], what, BRIDGE_FAILED,
                         may_exist=True)
            # The pod's side from inside it: addresses and routes can only be set through
            # a socket of the pod's namespace.
            rtnl.enter_netns(pod_ns)
            what = f"configure {args.ifname} in {args.netns}"
            with rtnl.Netlink() as pod:
                index = _index(args.ifname, what, VETH_FAILED)
                _netlink(pod, rtnl.pod_interface(index, ip, plen, routes, gw), what, VETH_FAILED)
        except BaseException:
            try:
                node.request([rtnl.link_del(veth)])
            except OSError:
                pass  # gone with the pod's namespace already
            raise


def _netlink(sock: rtnl.Netlink, messages: list[tuple[int, int, bytes]], what: str,
             code: int, may_exist: bool = False) -> None:
    """Send ``messages``; a failure is a CNIError ``code`` (EEXIST is fine if ``may_exist``).
    A bad address or route in IPAM's result (inet_aton) fails here too."""
    try:
        sock.request(messages)
    except OSError as exc:
        if not (may_exist and exc.errno == EEXIST):
            raise CNIError(code, f"failed to {what}", exc.strerror or str(exc)) from None


def _index(name: str, what: str, code: int) -> int:
    try:
        return rtnl.link_index(name)
    except OSError as exc:
        raise CNIError(code, f"failed to {what}", f"{name}: {exc.strerror}") from None


def delete(args: Args) -> None:
    conf = _conf(args)
    prev = args.prev_result or {}
    delegate(conf["ipam"]["type"], "DEL", conf, args.env)
    # The pod's end lives in the pod namespace; deleting the host end removes both, and the
    # host end outlives a pod namespace that is already gone (DEL must still succeed: a
    # veth that is gone already is no error).
    try:
        with rtnl.Netlink() as node:
            node.request([rtnl.link_del(host_veth_name(args.container_id, args.ifname))])
    except OSError:
        pass
    if conf.get("ipMasq"):
        for ip in prev.get("ips", []):
            _masq(args, conf, ip["address"], add=False)


def check(args: Args) -> None:
    conf = _conf(args)
    prev = args.prev_result
    if not prev:
        raise CNIError(INVALID_CONFIG, "bridge: CHECK needs prevResult")
    delegate(conf["ipam"]["type"], "CHECK", conf, args.env)
    br = conf.get("bridge", "cni0")
    veth = host_veth_name(args.container_id, args.ifname)
    rc, out, _ = run(["ip", "-o", "link", "show", veth])
    if rc != 0 or f"master {br}" not in out:
        raise CNIError(VETH_FAILED, f"bridge: host veth {veth} missing or not on {br}")
    rc, shown, err = run(["nsenter", f"--net={args.netns}", "--", "ip", "-o", "-4", "addr",
                          "show", "dev", args.ifname])
    for ip in prev.get("ips", []):
        if f"inet {ip['address']} " not in shown:
            raise CNIError(VETH_FAILED, f"bridge: {args.ifname} in {args.netns} lacks "
                           f"{ip['address']}", err.strip())


def status(args: Args) -> None:
    """Ready when IPAM is (spec: STATUS goes to the delegate too) and the bridge exists or
    can be made: a link of that name that is no bridge would fail every ADD."""
    conf = _conf(args)
    delegate(conf["ipam"]["type"], "STATUS", conf, args.env)
    br = conf.get("bridge", "cni0")
    rc, out, _ = run(["ip", "-d", "-o", "link", "show", "dev", br])
    if rc == 0 and " bridge " not in out:
        raise CNIError(PLUGIN_NOT_AVAILABLE, f"bridge: {br!r} exists and is not a bridge",
                       out.strip()[:200])


def gc(args: Args) -> None:
    """IPAM's GC (reservations), then the masquerade chains of containers no longer valid.
    Host veths need nothing: they went with their pod's namespace. Errors are collected,
    so one failure does not stop the rest (spec: remove as much as possible)."""
    conf = _conf(args)
    valid_cids = {cid for cid, _ in args.valid_attachments()}
    errors = []
    try:
        delegate(conf["ipam"]["type"], "GC", conf, args.env)
    except CNIError as exc:
        errors.append(exc)
    if conf.get("ipMasq"):
        for cid, source in _stale_masq(conf["name"], valid_cids):
            _unmasq(conf["name"], cid, source)
    if errors:
        raise errors[0]


def main() -> None:
    plugin_main(add, delete, check, status, gc)
