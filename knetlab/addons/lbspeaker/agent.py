"""The per-node LoadBalancer speaker (MetalLB's speaker in layer-2 mode)::

    python -m knetlab.addons.lbspeaker --kubeconfig K --node node-1 --node-ip 192.168.0.11 \
        --node-netns /proc/PID/ns/net --pool 192.168.100.0/24 --ready-file DIR/ready

Like the kubelet it runs beside the API server (which listens on the root namespace's
loopback) and acts in its node's namespace (``--node-netns``). It watches Services, Nodes
and EndpointSlices and, level-triggered, makes the node own exactly the addresses it won
(``election.py``): each as a ``/32`` on the interface that carries the node IP (the uplink,
or ``br-phy`` on the OVS planes), so the node's kernel answers ARP for it on the segment,
and a gratuitous ARP tells the segment at once when an address moves here. Traffic to the
address then meets kube-proxy's rules for the Service's ``load_balancer_ips`` in the node's
PREROUTING. Any ``/32`` of the pool the node should not own is removed (the pool is
disjoint from every other lab network, so only the speaker puts such addresses there).
Changes are coalesced (``COALESCE``) and everything is re-checked every ``RESYNC`` seconds.
"""

from __future__ import annotations

import argparse
import ctypes
import ipaddress
import json
import logging
import signal
import socket
import sys
import threading
from pathlib import Path

from knetlab import shell
from knetlab.addons.lbspeaker.election import announced_by
from knetlab.kube.client import Informer, KubeClient

log = logging.getLogger("knetlab.lbspeaker")
COALESCE = 0.02  # seconds of events gathered into one sync (kube-proxy's minSyncPeriod idea)
RESYNC = 10.0
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def device_of(netns: str, ip: str) -> str:
    """The interface carrying ``ip`` in ``netns``."""
    res = shell.run(["ip", "-j", "-4", "addr", "show"], netns=netns, timeout=10)
    for link in json.loads(res.stdout or "[]"):
        if any(a.get("local") == ip for a in link.get("addr_info", [])):
            return str(link["ifname"])
    raise RuntimeError(f"no interface carries the node address {ip}")


def owned(netns: str, dev: str, pool: ipaddress.IPv4Network) -> set[str]:
    res = shell.run(["ip", "-j", "-4", "addr", "show", "dev", dev], netns=netns, timeout=10)
    return {a["local"] for link in json.loads(res.stdout or "[]")
            for a in link.get("addr_info", [])
            if a.get("prefixlen") == 32 and ipaddress.IPv4Address(a["local"]) in pool}


def gratuitous_arp(netns: str, dev: str, ip: str) -> None:
    """An unsolicited ARP reply (broadcast) for ``ip`` from ``dev`` in ``netns``: neighbours
    update their caches now rather than when their entry goes stale (MetalLB does the same
    on a move). Sent from a thread that entered the namespace (setns is per thread)."""
    error: list[BaseException] = []

    def send() -> None:
        try:
            with open(netns) as ns:
                if _libc.setns(ns.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {netns}")
            with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
                s.bind((dev, 0))
                mac = s.getsockname()[4]
                addr = socket.inet_aton(ip)
                s.send(b"\xff" * 6 + mac + b"\x08\x06"  # Ethernet: broadcast, ARP
                       + b"\x00\x01\x08\x00\x06\x04\x00\x02"  # Ethernet/IPv4, reply
                       + mac + addr + b"\xff" * 6 + addr)
        except BaseException as exc:  # noqa: BLE001 - reported to the caller
            error.append(exc)

    t = threading.Thread(target=send, name="garp")
    t.start()
    t.join()
    if error:
        raise OSError(f"gratuitous ARP for {ip} on {dev}: {error[0]}")


class Speaker:
    def __init__(self, client: KubeClient, node: str, node_ip: str, netns: str,
                 pool: ipaddress.IPv4Network) -> None:
        self.node, self.node_ip, self.netns, self.pool = node, node_ip, netns, pool
        self.informers = {r: Informer(client, r) for r in ("services", "nodes",
                                                           "endpointslices")}
        self.kick = threading.Event()
        for inf in self.informers.values():
            inf.add_handler(lambda *_: self.kick.set())

    def start(self) -> None:
        for inf in self.informers.values():
            inf.start()
        for name, inf in self.informers.items():
            if not inf.wait_synced(60):
                raise RuntimeError(f"{name} informer not synced after 60 s")

    def sync(self) -> None:
        want = announced_by(self.node, self.pool, self.informers["services"].items(),
                            self.informers["nodes"].items(),
                            self.informers["endpointslices"].items())
        dev = device_of(self.netns, self.node_ip)
        have = owned(self.netns, dev, self.pool)
        lines = [f"addr del {ip}/32 dev {dev}" for ip in sorted(have - want)]
        lines += [f"addr add {ip}/32 dev {dev}" for ip in sorted(want - have)]
        if not lines:
            return
        shell.ip_batch(lines, netns=self.netns, force=True,
                       context=f"LoadBalancer addresses on {self.node}")
        for ip in sorted(want - have):
            try:
                gratuitous_arp(self.netns, dev, ip)
            except OSError as exc:
                log.warning("gratuitous ARP for %s on %s: %s", ip, dev, exc)
        log.info("announcing %s (added %s, withdrawn %s)", sorted(want) or "nothing",
                 sorted(want - have), sorted(have - want))

    def withdraw_all(self) -> None:
        dev = device_of(self.netns, self.node_ip)
        lines = [f"addr del {ip}/32 dev {dev}"
                 for ip in sorted(owned(self.netns, dev, self.pool))]
        if lines:
            shell.ip_batch(lines, netns=self.netns, force=True,
                           context=f"withdraw on {self.node}")

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.kick.wait(RESYNC)
            if stop.is_set():
                return
            stop.wait(COALESCE)
            self.kick.clear()
            try:
                self.sync()
            except Exception:  # noqa: BLE001 - keep announcing; the next pass retries
                log.exception("sync failed")
                stop.wait(1.0)
                self.kick.set()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m knetlab.addons.lbspeaker")
    ap.add_argument("--kubeconfig", required=True)
    ap.add_argument("--node", required=True)
    ap.add_argument("--node-ip", required=True)
    ap.add_argument("--node-netns", required=True)
    ap.add_argument("--pool", required=True)
    ap.add_argument("--ready-file", required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ready = Path(args.ready_file)
    ready.unlink(missing_ok=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    speaker = Speaker(KubeClient.from_kubeconfig(args.kubeconfig), args.node, args.node_ip,
                      args.node_netns, ipaddress.IPv4Network(args.pool))
    speaker.start()
    speaker.sync()
    ready.write_text("ok\n")
    speaker.run(stop)
    try:  # a stopped speaker announces nothing: the address moves to another node
        speaker.withdraw_all()
    except Exception:  # noqa: BLE001 - the namespace may be going away with it
        log.exception("withdraw on exit failed")
    ready.unlink(missing_ok=True)
    return 0
