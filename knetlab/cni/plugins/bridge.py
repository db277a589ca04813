"""The bridge plugin: a Linux bridge on the node, a veth into the pod, IPAM by delegation.

Runs in the node's network namespace (the runtime puts it there); the pod's namespace is
``CNI_NETNS``. Options as the reference plugin: ``bridge`` (default cni0), ``isGateway``,
``isDefaultGateway``, ``ipMasq``, ``hairpinMode``, ``mtu``, ``ipam``.

Kernel work is batched: one ``ip -batch`` in the node and one in the pod. MACs are derived
(``0a:58`` + the IPv4 address, as older Kubernetes bridges did) so nothing is read back.
STATUS asks IPAM and checks the bridge name; GC runs IPAM's GC and drops the masquerade
chains of containers no longer valid (found by the comment each rule carries).
"""

from __future__ import annotations

from knetlab.cni.invoke import delegate
from knetlab.cni.netutil import (
    int_to_ip,
    ip_batch,
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
    ipam_result = delegate(conf["ipam"]["type"], "ADD", conf) or {}
    try:
        return _wire(args, conf, br, mtu, ipam_result)
    except Exception:
        delegate(conf["ipam"]["type"], "DEL", conf)  # roll back the address
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
    node = [f"link add {br} address {br_mac} type bridge",
            f"link set {br} up",
            f"link add {veth} mtu {mtu} address {host_mac} type veth peer name {args.ifname} "
            f"mtu {mtu} address {pod_mac} netns {args.netns}",
            f"link set {veth} master {br} up"]
    if conf.get("hairpinMode"):
        node.append(f"link set {veth} type bridge_slave hairpin on")
    if conf.get("isGateway") and gw:
        node.append(f"addr add {gw}/{plen} dev {br}")
    # The bridge (line 1) and its address (last line) may exist already; the veth may not.
    ip_batch(node, None, f"attach {args.ifname} of {args.container_id} to bridge {br}",
             BRIDGE_FAILED, frozenset({1, len(node)} if conf.get("isGateway") else {1}))
    pod, routes = pod_lines(args.ifname, addr, ipam_result, gw, bool(conf.get("isDefaultGateway")))
    ip_batch(pod, args.netns, f"configure {args.ifname} in {args.netns}", VETH_FAILED)
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


def delete(args: Args) -> None:
    conf = _conf(args)
    prev = args.prev_result or {}
    delegate(conf["ipam"]["type"], "DEL", conf)
    # The pod's end lives in the pod namespace; deleting the host end removes both, and the
    # host end outlives a pod namespace that is already gone (DEL must still succeed).
    run(["ip", "link", "del", host_veth_name(args.container_id, args.ifname)])
    if conf.get("ipMasq"):
        for ip in prev.get("ips", []):
            _masq(args, conf, ip["address"], add=False)


def check(args: Args) -> None:
    conf = _conf(args)
    prev = args.prev_result
    if not prev:
        raise CNIError(INVALID_CONFIG, "bridge: CHECK needs prevResult")
    delegate(conf["ipam"]["type"], "CHECK", conf)
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
    delegate(conf["ipam"]["type"], "STATUS", conf)
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
        delegate(conf["ipam"]["type"], "GC", conf)
    except CNIError as exc:
        errors.append(exc)
    if conf.get("ipMasq"):
        for cid, source in _stale_masq(conf["name"], valid_cids):
            _unmasq(conf["name"], cid, source)
    if errors:
        raise errors[0]


def main() -> None:
    plugin_main(add, delete, check, status, gc)
