"""rtnetlink for CNI plugins: links, addresses, routes and neighbours without exec'ing ``ip``.

A plugin runs once per pod, so every program it starts is part of a pod's price: ``ip
-batch`` on the host side and ``nsenter`` + ``ip -batch`` on the pod side cost about 3 ms of
CPU per pod on the lab machines, the netlink messages themselves well under 0.1 ms. This
module speaks ``NETLINK_ROUTE`` over ``_socket`` with ``_struct`` (C modules, nothing to
import) and enters a namespace with ``setns(2)`` through ``_ctypes`` (``ctypes`` itself
imports ~5 ms of Python; Python 3.11 has no ``os.setns``).

Design notes:
- A ``Netlink`` socket belongs to the namespace its process was in when it was opened,
  so a plugin opens one in the node's namespace, enters the pod's (``enter_netns``) and
  opens a second there: no switching back.
- ``request`` sends several messages in one ``send`` (the kernel handles them in order,
  each with its own ACK) and raises the first error as ``OSError(errno)`` with the index
  of the failing message, as ``ip -batch`` names the failing line.
- A veth is created as one message, up, its pod end already in the pod's namespace
  (``IFLA_NET_NS_FD`` in the peer's attributes). The pod end cannot be brought up in that
  message (a veth end opens only once its peer is linked: ENOTCONN), so ``link_up`` does
  it from the pod's side, with its address. ``veth_add(..., netns_fd=POD)`` swaps the
  roles (the pod end is the device, up; the host end the peer, opened by a ``link_set``
  in the same ``request``): for a node whose daemons react to every link change there
  (ovs-vswitchd).
"""

from __future__ import annotations

import _socket
import _struct
import os

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs plugins ~7 ms
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

# linux/netlink.h, linux/rtnetlink.h, linux/if_link.h, linux/neighbour.h
NETLINK_ROUTE = 0
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
ADD = NLM_F_CREATE | NLM_F_EXCL  # ip ... add
REPLACE = NLM_F_CREATE | NLM_F_REPLACE  # ip ... replace
RTM_NEWLINK, RTM_DELLINK, RTM_NEWADDR, RTM_NEWROUTE, RTM_NEWNEIGH = 16, 17, 20, 24, 28
RTM_GETLINK = 18
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINKINFO, IFLA_NET_NS_FD = 1, 3, 4, 18, 28
IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 1, 2, 1
IFF_UP, IFF_PROMISC = 0x1, 0x100
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_DST, RTA_OIF, RTA_GATEWAY = 1, 4, 5
RT_TABLE_MAIN, RTPROT_BOOT, RTN_UNICAST = 254, 3, 1
SCOPE_UNIVERSE, SCOPE_LINK = 0, 253
NDA_DST, NDA_LLADDR = 1, 2
NUD_PERMANENT = 0x80
AF_INET = 2
CLONE_NEWNET = 0x40000000


def _attr(kind: int, data: bytes) -> bytes:
    """One rtattr, padded to 4 bytes."""
    size = 4 + len(data)
    return _struct.pack("=HH", size, kind) + data + b"\0" * (-size % 4)


def _name(text: str) -> bytes:
    return text.encode() + b"\0"


def _mac(text: str) -> bytes:
    return bytes(int(x, 16) for x in text.split(":"))


def _ip(text: str) -> bytes:
    return _socket.inet_aton(text)


def _ifinfo(index: int = 0, up: bool = False) -> bytes:
    flags = IFF_UP if up else 0
    return _struct.pack("=BxHiII", 0, 0, index, flags, flags)


class Netlink:
    """A NETLINK_ROUTE socket in the namespace this process is in now."""

    def __init__(self) -> None:
        self.sock = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW, NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def request(self, messages: Iterable[tuple[int, int, bytes]]) -> None:
        """Send ``(type, flags, body)`` messages at once; wait for every ACK. The first
        failure is raised as OSError(errno, strerror, index of the message)."""
        out, seqs = [], []
        for kind, flags, body in messages:
            self.seq += 1
            seqs.append(self.seq)
            out.append(_struct.pack("=LHHLL", 16 + len(body), kind,
                                    flags | NLM_F_REQUEST | NLM_F_ACK, self.seq, 0) + body)
        self.sock.send(b"".join(out))
        pending, failure = set(seqs), None
        while pending:
            data = self.sock.recv(65536)
            at = 0
            while at + 16 <= len(data):
                size, kind, _flags, seq, _pid = _struct.unpack_from("=LHHLL", data, at)
                if kind == NLMSG_ERROR and seq in pending:
                    pending.discard(seq)
                    err = -_struct.unpack_from("=i", data, at + 16)[0]
                    if err and failure is None:
                        failure = OSError(err, os.strerror(err), seqs.index(seq))
                at += (size + 3) & ~3 or len(data)
        if failure is not None:
            raise failure


# -- messages (type, flags, body), named after the ``ip`` command they replace ---------------
def veth_add(name: str, mtu: int, mac: str, peer: str, peer_mac: str, peer_netns_fd: int,
             netns_fd: int | None = None) -> tuple[int, int, bytes]:
    """``ip link add NAME mtu M address MAC [netns FD] up type veth peer name PEER mtu M
    address PEER_MAC netns PEER_FD``: the device up from its creation (in ``netns_fd``'s
    namespace if given), its peer down (a peer cannot be opened before it is linked:
    ENOTCONN; opening it later gives both ends carrier at once)."""
    peer_attrs = (_ifinfo() + _attr(IFLA_IFNAME, _name(peer))
                  + _attr(IFLA_MTU, _struct.pack("=I", mtu))
                  + _attr(IFLA_ADDRESS, _mac(peer_mac))
                  + _attr(IFLA_NET_NS_FD, _struct.pack("=I", peer_netns_fd)))
    info = _attr(IFLA_INFO_KIND, b"veth") + _attr(IFLA_INFO_DATA,
                                                  _attr(VETH_INFO_PEER, peer_attrs))
    body = (_ifinfo(up=True) + _attr(IFLA_IFNAME, _name(name))
            + _attr(IFLA_MTU, _struct.pack("=I", mtu)) + _attr(IFLA_ADDRESS, _mac(mac)))
    if netns_fd is not None:
        body += _attr(IFLA_NET_NS_FD, _struct.pack("=I", netns_fd))
    return RTM_NEWLINK, ADD, body + _attr(IFLA_LINKINFO, info)


def link_up(index: int) -> tuple[int, int, bytes]:
    """``ip link set INDEX up``."""
    return RTM_NEWLINK, 0, _ifinfo(index, up=True)


def link_del(name: str) -> tuple[int, int, bytes]:
    """``ip link del NAME``."""
    return RTM_DELLINK, 0, _ifinfo() + _attr(IFLA_IFNAME, _name(name))


def addr_add(index: int, ip: str, plen: int) -> tuple[int, int, bytes]:
    """``ip addr add IP/PLEN dev INDEX``."""
    body = (_struct.pack("=BBBBI", AF_INET, plen, 0, SCOPE_UNIVERSE, index)
            + _attr(IFA_LOCAL, _ip(ip)) + _attr(IFA_ADDRESS, _ip(ip)))
    return RTM_NEWADDR, ADD, body


def route(index: int, dst: str, plen: int, gateway: str | None = None,
          flags: int = ADD) -> tuple[int, int, bytes]:
    """``ip route add|replace DST/PLEN [via GATEWAY] dev INDEX``: scope link without a
    gateway, as ``ip`` picks it."""
    scope = SCOPE_UNIVERSE if gateway else SCOPE_LINK
    body = _struct.pack("=BBBBBBBBI", AF_INET, plen, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, scope,
                        RTN_UNICAST, 0)
    if plen:
        body += _attr(RTA_DST, _ip(dst))
    if gateway:
        body += _attr(RTA_GATEWAY, _ip(gateway))
    return RTM_NEWROUTE, flags, body + _attr(RTA_OIF, _struct.pack("=I", index))


def pod_interface(index: int, ip: str, plen: int, routes: list[dict[str, Any]],
                  gateway: str | None, up: bool = True) -> list[tuple[int, int, bytes]]:
    """A pod's interface as the CNI result says: its address, up (unless ``up`` is False:
    it is already), then the result's ``routes`` (``{"dst": CIDR, "gw": IP?}``), via
    ``gateway`` where one names none."""
    msgs = [addr_add(index, ip, plen)] + ([link_up(index)] if up else [])
    for r in routes:
        dst, _, dst_len = r["dst"].partition("/")
        msgs.append(route(index, dst, int(dst_len or 32), r.get("gw") or gateway))
    return msgs


def neigh_permanent(index: int, ip: str, mac: str) -> tuple[int, int, bytes]:
    """``ip neigh replace IP lladdr MAC dev INDEX nud permanent``."""
    body = (_struct.pack("=BxxxiHBB", AF_INET, index, NUD_PERMANENT, 0, 0)
            + _attr(NDA_DST, _ip(ip)) + _attr(NDA_LLADDR, _mac(mac)))
    return RTM_NEWNEIGH, REPLACE, body


# bridge ports (linux/if_link.h): IFLA_MASTER, IFLA_INFO_SLAVE_{KIND,DATA}, IFLA_BRPORT_MODE
IFLA_MASTER, IFLA_INFO_SLAVE_KIND, IFLA_INFO_SLAVE_DATA, IFLA_BRPORT_MODE = 10, 4, 5, 4


def bridge_add(name: str, mac: str) -> tuple[int, int, bytes]:
    """``ip link add NAME address MAC up type bridge`` (EEXIST when it exists)."""
    info = _attr(IFLA_INFO_KIND, b"bridge")
    return RTM_NEWLINK, ADD, (_ifinfo(up=True) + _attr(IFLA_IFNAME, _name(name))
                              + _attr(IFLA_ADDRESS, _mac(mac)) + _attr(IFLA_LINKINFO, info))


def link_master_up(index: int, master: int) -> tuple[int, int, bytes]:
    """``ip link set INDEX master MASTER up``."""
    return RTM_NEWLINK, 0, _ifinfo(index, up=True) + _attr(IFLA_MASTER, _struct.pack("=I", master))


def bridge_port_hairpin(index: int) -> tuple[int, int, bytes]:
    """``ip link set INDEX type bridge_slave hairpin on`` (after it has a bridge master:
    the kernel asks the master to change the port)."""
    data = _attr(IFLA_BRPORT_MODE, b"\1")
    info = _attr(IFLA_INFO_SLAVE_KIND, b"bridge") + _attr(IFLA_INFO_SLAVE_DATA, data)
    return RTM_NEWLINK, 0, _ifinfo(index) + _attr(IFLA_LINKINFO, info)


def link_set(name: str, up: bool = True, promisc: bool = False, master: int = 0
             ) -> tuple[int, int, bytes]:
    """``ip link set NAME [up] [promisc on] [master MASTER]``, by name (no index needed:
    it can follow the link's creation in the same ``request``)."""
    flags = (IFF_UP if up else 0) | (IFF_PROMISC if promisc else 0)
    body = _struct.pack("=BxHiII", 0, 0, 0, flags, IFF_UP | IFF_PROMISC)
    body += _attr(IFLA_IFNAME, _name(name))
    if master:
        body += _attr(IFLA_MASTER, _struct.pack("=I", master))
    return RTM_NEWLINK, 0, body


def link_get(name: str) -> tuple[int, int, bytes]:
    """``ip link show NAME``. The kernel first runs the link's pending linkwatch work
    (``linkwatch_sync_dev``): a carrier change just made is announced (operstate) within
    this request, not later from a worker. ``request`` skips the reply itself."""
    return RTM_GETLINK, 0, _ifinfo() + _attr(IFLA_IFNAME, _name(name))


def link_index(name: str) -> int:
    """The index of link ``name`` in the current namespace (OSError ENODEV when absent)."""
    return _socket.if_nametoindex(name)


# -- setns(2) through _ctypes ------------------------------------------------------------------
_setns = None


def enter_netns(fd: int) -> None:
    """Move this process (a single-threaded plugin) into the network namespace ``fd``."""
    global _setns
    if _setns is None:
        import _ctypes

        class _Int(_ctypes._SimpleCData):
            _type_ = "i"

        class _SetNs(_ctypes.CFuncPtr):
            _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
            _restype_ = _Int
            _argtypes_ = (_Int, _Int)

        _setns = _SetNs(_ctypes.dlsym(_ctypes.dlopen(None, 2), "setns"))
    if _setns(fd, CLONE_NEWNET) != 0:
        import _ctypes
        err = _ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")
