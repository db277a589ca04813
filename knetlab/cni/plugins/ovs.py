"""The ovs plugin: a veth into the pod, its host end a port of the node's ``br-int``.

Runs in the node's network namespace. Steps of ADD: IPAM by delegation (host-local over
the node's range) -> veth (MTU 1450, MACs derived from the address; its host end a port
of ``sinkBridge``, a down Linux bridge, or without one an nft netdev ingress drop: the
kernel must not also forward what OVS forwards) -> pod side, from inside the pod's
namespace: address, default route via the pod gateway, ``ethtool -K eth0 tx off`` (the
userspace datapath does not complete partial checksums) -> the OVS port, with the ofport
the pipeline expects, in one OVSDB transaction -> the pod registered in the lab's etcd
(``/knetlab/ovs/pods/PORT``), where the controller learns it -> wait (bounded) until the
controller has programmed every switch.

The registry is keyed by the attachment (the host port, named from container id and
interface, as CNI identifies an attachment), never by the pod's name: pods ``x/a`` and
``y/a`` on one node, or a pod and its same-named replacement, must not overwrite (or, on
DEL, delete) each other's entry, which would leave a live pod without flows.

If the controller is down, ADD still succeeds: the pod is in the store and gets its
flows when the controller returns (as a pod waits for its CNI agent in a real cluster);
STATUS says so (51). GC forgets the node's pods of attachments no longer valid.

Options: ``bridge``, ``ovsdb`` (unix:PATH), ``sinkBridge``, ``mtu``, ``node``, ``podCIDR``, the etcd
store as Calico names it (``etcd_endpoints``, ``etcd_ca_cert_file``, ``etcd_cert_file``,
``etcd_key_file``), ``controllerStatus``, ``controllerPidFile``, ``flowWait`` (s, default
5), ``ipam``.
"""

from __future__ import annotations

import _socket
import _struct
import os
import time

from knetlab.cni import rtnl
from knetlab.cni.invoke import delegate
from knetlab.cni.netutil import (
    RUN_TIMEOUT,
    TIMED_OUT,
    int_to_ip,
    local_mac,
    mac_for,
    parse_cidr,
    pod_lines,
    run,
)
from knetlab.cni.ovsdb import OvsdbError, omap, transact, where_name
from knetlab.cni.plugins.bridge import host_veth_name
from knetlab.cni.skel import Args, plugin_main
from knetlab.cni.types import (
    INVALID_CONFIG,
    LIMITED_CONNECTIVITY,
    PLUGIN_NOT_AVAILABLE,
    CNIError,
    add_result,
    loads,
)

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs plugins ~7 ms

if TYPE_CHECKING:
    from typing import Any

OVS_FAILED = 110
VETH_FAILED = 111
FLOWS_LATE = 112
POD_PORT_BASE = 100  # knetlab.overlays.ovs.pipeline.POD_PORT_BASE (not imported: start-up)
NFT_TABLE = "knetlab_ovs"
REQUIRED = ("ovsdb", "node", "podCIDR", "etcd_endpoints", "ipam")
OVS_NODES = "/knetlab/ovs/nodes/"  # the registry in the lab's etcd (backend: nodes)
OVS_PODS = "/knetlab/ovs/pods/"  # (this plugin: pods)


def _conf(args: Args) -> dict[str, Any]:
    conf = args.conf
    missing = [k for k in REQUIRED if not conf.get(k)]
    if missing:
        raise CNIError(INVALID_CONFIG, f"ovs: missing {', '.join(missing)} in the configuration")
    return conf


def _k8s_arg(args: Args, name: str) -> str:
    for item in args.args.split(";"):
        key, _, value = item.partition("=")
        if key == name and value:
            return value
    return ""


def _pod_name(args: Args) -> str:
    return _k8s_arg(args, "K8S_POD_NAME") or args.container_id[:12]


def _registry_key(args: Args) -> str:
    """The attachment's entry in the store: one per (container id, interface)."""
    return f"{OVS_PODS}{host_veth_name(args.container_id, args.ifname)}"


def _run(argv: list[str], what: str, code: int, check: bool = True) -> str:
    rc, out, err = run(argv)
    if rc == TIMED_OUT:
        raise CNIError(code, f"failed to {what}", f"timed out after {RUN_TIMEOUT:g}s")
    if check and rc != 0:
        raise CNIError(code, f"failed to {what}", (err or out).strip())
    return out


def _vsctl(conf: dict[str, Any], *args: str, check: bool = True) -> str:
    return _run(["ovs-vsctl", f"--db={conf['ovsdb']}", "--timeout=10", *args],
                f"ovs-vsctl {' '.join(args[:3])}", OVS_FAILED, check)


_STORES: dict[str, Any] = {}  # by endpoint: an agent keeps one etcd connection per store


def _store(conf: dict[str, Any]) -> Any:
    from knetlab.store import Store  # stdlib only
    store = Store.from_conf(conf)
    return _STORES.setdefault(store.to_arg(), store)


def add(args: Args) -> dict[str, Any]:
    conf = _conf(args)
    ipam_result = delegate(conf["ipam"]["type"], "ADD", conf, args.env) or {}
    try:
        return _wire(args, conf, ipam_result)
    except Exception:
        _unwire(args, conf)
        delegate(conf["ipam"]["type"], "DEL", conf, args.env)  # roll back the address
        raise


def _wire(args: Args, conf: dict[str, Any], ipam_result: dict[str, Any]) -> dict[str, Any]:
    if not ipam_result.get("ips"):
        raise CNIError(INVALID_CONFIG, "IPAM plugin returned no IP addresses")
    first = ipam_result["ips"][0]
    addr = first["address"]
    ip_int, plen = parse_cidr(addr)
    ip = int_to_ip(ip_int)
    if not 0 <= plen <= 32 or ip != addr.partition("/")[0]:
        raise CNIError(INVALID_CONFIG, f"IPAM returned an invalid address {addr!r}")
    gw = first.get("gateway")
    mtu = int(conf.get("mtu", 1450))
    veth = host_veth_name(args.container_id, args.ifname)
    pod_mac = mac_for(ip)
    sink = conf.get("sinkBridge")
    _, routes = pod_lines(args.ifname, addr, ipam_result, gw, default_route=True)
    try:
        pod_ns = os.open(args.netns, os.O_RDONLY)
    except OSError as exc:
        raise CNIError(VETH_FAILED, f"failed to open netns {args.netns!r}", exc.strerror
                       ) from None
    node_ns = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        _veth(args, veth, mtu, ip, plen, pod_mac, gw, routes, sink, pod_ns, node_ns)
    finally:
        rtnl.enter_netns(node_ns)  # back home: the rest (and any roll-back) works here
        os.close(pod_ns)
        os.close(node_ns)
    if not sink:  # the kernel must not also handle what OVS forwards: an ingress drop
        nft = (f"table netdev {NFT_TABLE} {{}}\nadd chain netdev {NFT_TABLE} in-{veth} "
               f"{{ type filter hook ingress device \"{veth}\" priority 0; policy drop; }}\n")
        rc, _, err = run(["nft", "-f", "-"], nft)
        if rc != 0:
            raise CNIError(VETH_FAILED, f"failed to add the ingress drop on {veth}", err)
    net, net_len = parse_cidr(conf["podCIDR"])
    ofport = POD_PORT_BASE + ip_int - (net & (0xFFFFFFFF << (32 - net_len)) & 0xFFFFFFFF)
    name = _pod_name(args)
    _add_port(conf, veth, {"ofport_request": ofport, "external_ids": omap(
        {"iface-id": name, "attached-mac": pod_mac, "ip": ip})})
    rev = _store(conf).put(_registry_key(args), {
        "name": name, "namespace": _k8s_arg(args, "K8S_POD_NAMESPACE"), "node": conf["node"],
        "ip": ip, "ofport": ofport, "port": veth, "containerID": args.container_id})
    _wait_flows(conf, rev)
    return add_result(args.version,
                      [{"name": veth, "mac": local_mac(veth)},
                       {"name": args.ifname, "mac": pod_mac, "sandbox": args.netns}],
                      ipam_result["ips"], routes,
                      conf.get("dns") or ipam_result.get("dns", {}))


def _veth(args: Args, veth: str, mtu: int, ip: str, plen: int, pod_mac: str, gw: str | None,
          routes: list[dict[str, Any]], sink: str | None, pod_ns: int, node_ns: int) -> None:
    """The kernel work of ADD, in rtnetlink messages (no ``ip``, no ``nsenter``); leaves this
    thread in the pod's namespace.

    ovs-vswitchd reconfigures (re-reads every port; dumps routes and addresses) in every
    main-loop pass that saw a link change in the node, and once more for a change that
    arrives about a port it has open (the veth once OVSDB names it). So the host end
    reaches its final state in one request, before the OVSDB transaction: the veth, its
    pod end already in the pod's namespace and up (created as the device, not as the
    peer: a peer cannot be opened at creation); in the same ``send``, the host end up,
    promiscuous (what vswitchd's userspace datapath would set itself: one more change) and
    a port of ``sink``, the node's down bridge (the kernel drops its frames after
    vswitchd's AF_PACKET socket has seen them), which gives both ends carrier; then the
    host end read back, which makes the kernel announce its operstate now rather than from
    its linkwatch worker up to a second later. Then, from inside the pod's namespace,
    address, routes and tx checksum offload off."""
    what = f"create veth {veth} for {args.container_id}"
    with rtnl.Netlink() as node:  # stays open: deletes the veth again if a step fails
        host = rtnl.link_set(veth, up=True, promisc=True,
                             master=_index(sink, what) if sink else 0)
        try:
            # the pod's end is the device, made up in the pod's namespace; the host end
            # its peer, opened by ``host`` in the same request
            node.request([rtnl.veth_add(args.ifname, mtu, pod_mac, veth, local_mac(veth),
                                        node_ns, netns_fd=pod_ns), host,
                          rtnl.link_get(veth)])
        except OSError as exc:
            if exc.filename:  # the index of the failed message: the veth exists, undo it
                _delete_link(node, veth)
            raise CNIError(VETH_FAILED, f"failed to {what}", exc.strerror or str(exc)
                           ) from None
        try:
            rtnl.enter_netns(pod_ns)
            try:
                tx_checksum_off(args.ifname)
            except OSError as exc:
                raise CNIError(VETH_FAILED, f"failed to turn off tx checksum offload on "
                               f"{args.ifname}", exc.strerror or str(exc)) from None
            what = f"configure {args.ifname} in {args.netns}"
            with rtnl.Netlink() as pod:
                index = _index(args.ifname, what)
                _netlink(pod, rtnl.pod_interface(index, ip, plen, routes, gw, up=False), what)
        except BaseException:
            _delete_link(node, veth)
            raise


def _delete_link(node: rtnl.Netlink, name: str) -> None:
    try:
        node.request([rtnl.link_del(name)])
    except OSError:
        pass  # gone with the pod's namespace already


SIOCETHTOOL, ETHTOOL_STXCSUM = 0x8946, 0x17  # linux/sockios.h, linux/ethtool.h


def tx_checksum_off(ifname: str) -> None:
    """``ethtool -K IFNAME tx off`` in this thread's namespace, as one ioctl (the same
    features end up off: checked with ``ethtool -k``) instead of a program per pod. The
    request carries a pointer to a ``struct ethtool_value``: a ``_ctypes`` buffer."""
    import _ctypes
    import fcntl

    class Byte(_ctypes._SimpleCData):
        _type_ = "B"

    class EthtoolValue(_ctypes.Array):
        _type_ = Byte
        _length_ = 8

    value = EthtoolValue(*_struct.pack("=II", ETHTOOL_STXCSUM, 0))
    ifreq = _struct.pack("=16sQ16x", ifname.encode(), _ctypes.addressof(value))
    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq)
    finally:
        sock.close()


def _netlink(sock: rtnl.Netlink, messages: list[tuple[int, int, bytes]], what: str) -> None:
    try:
        sock.request(messages)
    except OSError as exc:  # a bad address or route from IPAM (inet_aton) fails here too
        raise CNIError(VETH_FAILED, f"failed to {what}", exc.strerror or str(exc)) from None


def _index(name: str, what: str) -> int:
    try:
        return rtnl.link_index(name)
    except OSError as exc:
        raise CNIError(VETH_FAILED, f"failed to {what}", f"{name}: {exc.strerror}") from None


def _add_port(conf: dict[str, Any], port: str, iface: dict[str, Any]) -> None:
    """``ovs-vsctl --no-wait --may-exist add-port BRIDGE PORT -- set interface PORT ...``
    as one OVSDB transaction: the Interface and Port rows, the Port in the bridge's ports.
    No wait for vswitchd: the pod's flows come later, from the controller through the
    same vswitchd, which has read the new port by then (its update precedes our reply)."""
    bridge = conf.get("bridge", "br-int")
    ops = [{"op": "wait", "table": "Port", "where": where_name(port), "columns": ["name"],
            "until": "==", "rows": [], "timeout": 0},  # fails if the port exists
           {"op": "insert", "table": "Interface", "row": {"name": port, **iface},
            "uuid-name": "iface"},
           {"op": "insert", "table": "Port", "uuid-name": "port",
            "row": {"name": port, "interfaces": ["named-uuid", "iface"]}},
           {"op": "mutate", "table": "Bridge", "where": where_name(bridge),
            "mutations": [["ports", "insert", ["set", [["named-uuid", "port"]]]]]}]
    try:
        res = transact(conf["ovsdb"], ops)
        if res and res[0].get("error") == "timed out":  # may-exist: just set the columns
            res = transact(conf["ovsdb"], [{"op": "update", "table": "Interface",
                                            "where": where_name(port), "row": iface}])
    except OvsdbError as exc:
        raise CNIError(OVS_FAILED, f"failed to add port {port} to {bridge}", str(exc)
                       ) from None
    errors = [r for r in res if r.get("error")]
    if errors:
        raise CNIError(OVS_FAILED, f"failed to add port {port} to {bridge}",
                       f"{errors[0]['error']}: {errors[0].get('details', '')}")
    if len(ops) == len(res) and res[-1].get("count") != 1:
        raise CNIError(OVS_FAILED, f"failed to add port {port}: no bridge {bridge}")


def _controller_alive(conf: dict[str, Any]) -> bool:
    try:
        with open(conf["controllerPidFile"]) as f:
            pid = int(f.read().split()[0])
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"controllerd" in f.read()  # a killed, unreaped one has no cmdline
    except (OSError, ValueError, KeyError):
        return False


def _wait_flows(conf: dict[str, Any], rev: int) -> None:
    """Until every connected switch is programmed past ``rev`` (the pod's registration)."""
    if not conf.get("controllerStatus") or not _controller_alive(conf):
        return
    wait = float(conf.get("flowWait", 5))
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            with open(conf["controllerStatus"]) as f:
                switches = loads(f.read()).get("switches", {})
        except (OSError, ValueError):
            switches = {}
        if switches and all(s.get("synced_rev", -1) >= rev for s in switches.values()):
            return
        time.sleep(0.01)
    raise CNIError(FLOWS_LATE, f"the OVS controller did not program the pod's flows within "
                   f"{wait}s", f"see {os.path.dirname(conf['controllerStatus'])}/os-ken.log")


def _del_port(conf: dict[str, Any], port: str) -> None:
    """``ovs-vsctl --if-exists del-port BRIDGE PORT`` as one OVSDB transaction (best effort:
    DEL must go on when OVS is gone): the Port out of the bridge's ports, which drops the
    Port and its Interface rows (OVSDB garbage-collects unreferenced rows)."""
    ops = [{"op": "select", "table": "Port", "where": where_name(port), "columns": ["_uuid"]}]
    try:
        found = transact(conf["ovsdb"], ops)
        rows = found[0].get("rows") or [] if found else []
        if rows:
            transact(conf["ovsdb"], [{
                "op": "mutate", "table": "Bridge", "where": [],
                "mutations": [["ports", "delete", ["set", [rows[0]["_uuid"]]]]]}])
    except OvsdbError:
        pass


def _unwire(args: Args, conf: dict[str, Any]) -> None:
    veth = host_veth_name(args.container_id, args.ifname)
    _del_port(conf, veth)
    if not conf.get("sinkBridge"):
        run(["nft", "delete", "chain", "netdev", NFT_TABLE, f"in-{veth}"])
    with rtnl.Netlink() as node:
        _delete_link(node, veth)


def delete(args: Args) -> None:
    conf = _conf(args)
    from knetlab.store import StoreError
    try:
        _store(conf).delete(_registry_key(args))
    except StoreError as exc:  # still undo what is local; then say so (DEL is retried)
        _unwire(args, conf)
        delegate(conf["ipam"]["type"], "DEL", conf, args.env)
        raise CNIError(OVS_FAILED, "ovs: could not remove the pod from the registry",
                       str(exc)) from None
    _unwire(args, conf)
    delegate(conf["ipam"]["type"], "DEL", conf, args.env)


def check(args: Args) -> None:
    conf = _conf(args)
    if not args.prev_result:
        raise CNIError(INVALID_CONFIG, "ovs: CHECK needs prevResult")
    delegate(conf["ipam"]["type"], "CHECK", conf, args.env)
    veth = host_veth_name(args.container_id, args.ifname)
    ports = _vsctl(conf, "list-ports", conf.get("bridge", "br-int")).split()
    if veth not in ports:
        raise CNIError(OVS_FAILED, f"ovs: port {veth} is not on {conf.get('bridge', 'br-int')}")


def status(args: Args) -> None:
    """50 when ADD cannot work (IPAM cannot, ovsdb does not answer, no bridge); 51 when the
    controller is down: ADD succeeds but the pod has no flows, and no pod's changes reach
    the switches until the controller returns (limited connectivity)."""
    conf = _conf(args)
    delegate(conf["ipam"]["type"], "STATUS", conf, args.env)
    br = conf.get("bridge", "br-int")
    rc, out, err = run(["ovs-vsctl", f"--db={conf['ovsdb']}", "--timeout=5", "br-exists", br])
    if rc == 2:
        raise CNIError(PLUGIN_NOT_AVAILABLE, f"ovs: bridge {br} does not exist")
    if rc != 0:
        raise CNIError(PLUGIN_NOT_AVAILABLE, f"ovs: ovsdb at {conf['ovsdb']} does not answer",
                       (err or out).strip())
    if conf.get("controllerStatus") and not _controller_alive(conf):
        raise CNIError(LIMITED_CONNECTIVITY, "ovs: the OpenFlow controller is not running",
                       f"pid file {conf.get('controllerPidFile')}")


def gc(args: Args) -> None:
    """Forget the node's pods whose port belongs to no valid attachment (store entry, OVS
    port, ingress drop chain), then IPAM's GC."""
    conf = _conf(args)
    ports = {host_veth_name(cid, ifname) for cid, ifname in args.valid_attachments()}
    store = _store(conf)
    for key, pod in store.list(OVS_PODS).items():
        if pod.get("node") != conf["node"] or pod.get("port") in ports:
            continue
        store.delete(key)
        veth = str(pod.get("port", ""))
        if veth:
            _del_port(conf, veth)
            if not conf.get("sinkBridge"):
                run(["nft", "delete", "chain", "netdev", NFT_TABLE, f"in-{veth}"])
    delegate(conf["ipam"]["type"], "GC", conf, args.env)


def main() -> None:
    plugin_main(add, delete, check, status, gc)
