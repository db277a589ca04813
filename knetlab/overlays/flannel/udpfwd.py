"""flannel's UDP backend data path: TUN ``flannel0`` <-> UDP 8285, in userspace.

``python -m knetlab.overlays.flannel.udpfwd --run-dir DIR --store S --subnet-len 24``, run
inside a node's namespace as a ``Daemon``. It owns the TUN device (it vanishes with the
process, as with flanneld). Two threads move packets in blocking system calls, which
release the GIL, so both directions run at once on two cores:

- TUN -> UDP: ``readv`` into one preallocated buffer, look the destination's subnet up in
  a dict keyed by integer network address, ``sendto`` the peer's node IP:8285.
- UDP -> TUN: ``recv_into`` one preallocated buffer, ``write`` it to the TUN device.

The main thread watches the store and updates the peer table in place (level-triggered).
"""

from __future__ import annotations

import argparse
import fcntl
import ipaddress
import logging
import os
import signal
import socket
import struct
import sys
import threading
import time
from pathlib import Path

from knetlab.overlays.flannel import subnet
from knetlab.store import Store, StoreError

log = logging.getLogger("flannel.udp")
TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
BUF = 65536
SOCK_BUF = 8 << 20  # deep socket buffers absorb bursts while the other side is descheduled


def open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def tun_to_udp(fd: int, sock: socket.socket, table: dict[int, tuple[str, int]],
               mask: int, counters: list[int]) -> None:
    buf = bytearray(BUF)
    view = memoryview(buf)
    readv, sendto, get = os.readv, sock.sendto, table.get
    frm = int.from_bytes
    bufs = [buf]
    while True:
        n = readv(fd, bufs)
        peer = get(frm(view[16:20], "big") & mask)
        if peer is None:
            counters[0] += 1  # no lease for the destination: dropped, as flanneld does
            continue
        try:
            sendto(view[:n], peer)
        except OSError:
            counters[0] += 1


def udp_to_tun(fd: int, sock: socket.socket) -> None:
    buf = bytearray(BUF)
    view = memoryview(buf)
    recv_into, write = sock.recv_into, os.write
    while True:
        n = recv_into(buf)
        try:
            write(fd, view[:n])
        except OSError:
            pass  # a malformed packet; the kernel refused it


def refresh(store: Store, table: dict[int, tuple[str, int]], own: str, port: int) -> int:
    """Make the peer table match the leases (in place: the data threads hold it); the
    revision read."""
    want = {}
    rev, leases = subnet.read_leases(store)
    for lease in leases:
        if lease["subnet"] != own:
            net = int(ipaddress.ip_network(lease["subnet"]).network_address)
            want[net] = (lease["PublicIP"], port)
    for key in [k for k in table if k not in want]:
        del table[key]
    for key, peer in want.items():
        if table.get(key) != peer:
            table[key] = peer
    return rev


def run(args: argparse.Namespace) -> None:
    store = Store.from_arg(args.store)
    port = subnet.get_config(store)["Backend"]["Port"]
    mask = (0xFFFFFFFF << (32 - args.subnet_len)) & 0xFFFFFFFF
    fd = open_tun("flannel0")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        sock.setsockopt(socket.SOL_SOCKET, opt, SOCK_BUF)
    sock.bind(("0.0.0.0", port))
    table: dict[int, tuple[str, int]] = {}
    refresh(store, table, args.subnet, port)
    counters = [0]
    for target, targs in ((tun_to_udp, (fd, sock, table, mask, counters)),
                          (udp_to_tun, (fd, sock))):
        threading.Thread(target=target, args=targs, daemon=True).start()
    (Path(args.run_dir) / "ready").write_text("flannel0\n")
    log.info("forwarding flannel0 <-> udp/%d for %d peers", port, len(table))
    rev = refresh(store, table, args.subnet, port)
    while True:  # level-triggered: any lease change (an etcd watch), re-read them all
        try:
            store.wait(subnet.SUBNETS, rev, 10.0)
            rev = refresh(store, table, args.subnet, port)
        except StoreError:
            log.exception("watching the leases failed; retrying")
            time.sleep(1.0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="flannel-udp")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--store", required=True, help="the lab's etcd (Store.to_arg)")
    p.add_argument("--subnet", required=True, help="this node's lease (not forwarded)")
    p.add_argument("--subnet-len", type=int, required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    (Path(args.run_dir) / "ready").unlink(missing_ok=True)
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
