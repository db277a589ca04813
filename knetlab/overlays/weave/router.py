"""The weave router of one node: ``python -m knetlab.overlays.weave.router --run-dir DIR ...``.

Runs inside the node's network namespace as a ``Daemon``. It owns:

- the ``weave`` bridge (made if missing, MTU ``--mtu``) and its sleeve TAP port, which
  vanishes with the process (``sleeve``);
- TCP 6783: a control connection to every other peer. Each side says hello (name, uid,
  address, an ephemeral public key when encrypted), then they exchange gossip: the peer
  list (``gossip``) and the IPAM ring (``ring``). A connection counts only once the first
  message from the peer opened (with a password: the peer knows it; else both ends log
  the mismatch and retry, never forwarding for each other). A router started with one ``--peer``
  learns every peer from it and connects to all of them; a duplicate connection (both
  dialled at once) is resolved by keeping the one dialled by the lower name;
- UDP 6784: the sleeve, plus a heartbeat per second per peer; a connection is
  *established* once heartbeats arrive over UDP (weave's test that the UDP path works);
- IPAM: the seed claims the whole range; any other peer asks the peer owning the most
  space for a donation; pods' addresses (and the bridge's, weave's ``expose``) come from
  the node's own ranges. ``weave.sock`` serves the CNI plugin (allocate, release) and
  ``rmpeer``. Ring and allocations persist in ``ipam.json``, so a restarted router keeps
  its space and its pods keep their addresses;
- ``status.json`` (peers, connections, mode, IPAM, MACs, counters), rewritten each second,
  read by ``knetlab weave status`` and the backend; ``ready`` once the node can host pods;
- ``@knetlab-weave-net-cni``: the node's ``weave-net`` CNI plugin hands its invocations to
  this process, which runs knetlab's bridge plugin warm (knetlab/cni/agent.py), each in a
  thread of its own, never this event loop: the plugin's IPAM asks the loop over
  ``weave.sock``, and the pod's side is configured after ``setns(2)`` of that thread.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import os
import signal
import struct
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from knetlab import shell
from knetlab.cni.agent import Agent
from knetlab.overlays.weave import crypto
from knetlab.overlays.weave.gossip import Peers
from knetlab.overlays.weave.ring import Allocator, Ring
from knetlab.overlays.weave.sleeve import PORT as SLEEVE_PORT
from knetlab.overlays.weave.sleeve import PeerLink, Sleeve

log = logging.getLogger("weave.router")
CONTROL_PORT = 6783
PROTO = "knetlab-weave/1"
EXPOSE = "weave:expose"  # the allocation id of the bridge's own address
HB_EVERY, HB_DEAD = 1.0, 6.0  # seconds: control heartbeat, and silence that ends a link
MAX_MSG = 1 << 20


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 outbound: bool) -> None:
        self.reader, self.writer, self.outbound = reader, writer, outbound
        self.name = self.addr = ""
        self.key: bytes | None = None  # control key when encrypted
        self.sleeve_key: bytes | None = None
        self.initiator = ""

    async def send_raw(self, body: bytes) -> None:
        self.writer.write(struct.pack("!I", len(body)) + body)
        await self.writer.drain()

    async def recv_raw(self, timeout: float) -> bytes:
        head = await asyncio.wait_for(self.reader.readexactly(4), timeout)
        (size,) = struct.unpack("!I", head)
        if size > MAX_MSG:
            raise ValueError(f"message of {size} bytes")
        return await asyncio.wait_for(self.reader.readexactly(size), timeout)

    async def send(self, msg: dict[str, Any]) -> None:
        body = json.dumps(msg).encode()
        await self.send_raw(crypto.seal(self.key, body) if self.key else body)

    async def recv(self, timeout: float = HB_DEAD) -> dict[str, Any]:
        body = await self.recv_raw(timeout)
        return json.loads(crypto.open_box(self.key, body) if self.key else body)

    def close(self) -> None:
        self.writer.close()


class Router:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dir = Path(args.run_dir)
        self.me, self.addr = args.name, args.addr
        self.uid = uuid.uuid4().hex[:12]
        self.password = (Path(args.password_file).read_bytes().strip()
                         if args.password_file else None)
        self.peers = Peers(self.me, self.uid, self.addr)
        self.ring = Ring(args.range)
        self.alloc = Allocator(self.ring, self.me)
        self._load_ipam()
        self.conns: dict[str, Conn] = {}  # peer name -> its one live connection
        self.dialling: set[str] = set()
        self.targets: set[str] = set(args.peer)  # addresses to stay connected to
        self.sleeve = Sleeve(args.tap, encrypted=self.password is not None,
                             offload=not args.no_offload)
        self.donation_asked = 0.0
        self.bridge_ip: str | None = None

    # -- IPAM persistence ------------------------------------------------------------
    def _load_ipam(self) -> None:
        try:
            saved = json.loads((self.dir / "ipam.json").read_text())
        except (OSError, ValueError):
            return
        if saved.get("range") == self.ring.cidr:
            self.ring.merge(saved["ring"])
            self.alloc.allocations = {k: int(v) for k, v in saved["allocations"].items()}

    def _save_ipam(self) -> None:
        tmp = self.dir / "ipam.json.tmp"
        tmp.write_text(json.dumps({"range": self.ring.cidr, "ring": self.ring.to_wire(),
                                   "allocations": self.alloc.allocations}))
        tmp.replace(self.dir / "ipam.json")

    # -- kernel ----------------------------------------------------------------------
    def setup_kernel(self) -> None:
        br, tap, mtu = self.args.bridge, self.args.tap, self.args.mtu
        if shell.run(["ip", "link", "show", "dev", br], check=False).returncode:
            shell.run(["ip", "link", "add", br, "type", "bridge"], context=f"create {br}")
        self.sleeve.open()  # the TAP exists from here on, while we live
        shell.ip_batch([f"link set {br} mtu {mtu} up", f"link set {tap} mtu {mtu}",
                        f"link set {tap} master {br} up"], context=f"attach {tap} to {br}")
        net = self.ring.cidr
        rules = ("*nat\n:WEAVE - [0:0]\n"
                 f"-A WEAVE -s {net} -d {net} -j RETURN\n"
                 f"-A WEAVE -s {net} ! -d 224.0.0.0/4 -j MASQUERADE\nCOMMIT\n")
        shell.run(["iptables-restore", "-w", "--noflush"], input=rules, context="WEAVE chain")
        jump = ["POSTROUTING", "-j", "WEAVE"]
        if shell.run(["iptables", "-w", "-t", "nat", "-C", *jump], check=False).returncode:
            shell.run(["iptables", "-w", "-t", "nat", "-A", *jump], context="jump to WEAVE")

    def ensure_space(self) -> None:
        """Claim (seed), or ask for, address space; then give the bridge its address."""
        if self.ring.empty() and self.args.seed:
            self.ring.claim_all(self.me)
            log.info("seed: claimed all of %s", self.ring.cidr)
            self._save_ipam()
            self.broadcast_gossip()
        if not self.ring.empty() and self.ring.owned(self.me) == 0:
            self.ask_donation()
        if self.ring.owned(self.me) and self.bridge_ip is None:
            ip = self.alloc.allocate(EXPOSE)
            if ip is None:
                return
            self._save_ipam()
            plen = ipaddress.IPv4Network(self.ring.cidr).prefixlen
            self.bridge_ip = str(ipaddress.IPv4Address(ip))
            shell.run(["ip", "addr", "replace", f"{self.bridge_ip}/{plen}", "dev",
                       self.args.bridge], context="expose the weave bridge")
            log.info("bridge %s exposed at %s/%d", self.args.bridge, self.bridge_ip, plen)
            (self.dir / "ready").write_text(self.bridge_ip + "\n")

    def ask_donation(self) -> None:
        if time.monotonic() - self.donation_asked < 2.0:
            return
        owners = sorted(((n, o) for o, n in self.ring.owners().items() if o in self.conns),
                        reverse=True)
        if not owners:
            return
        self.donation_asked = time.monotonic()
        donor = owners[0][1]
        log.info("asking %s for address space", donor)
        asyncio.get_running_loop().create_task(self._send(donor, {"type": "donate"}))

    # -- connections -----------------------------------------------------------------
    async def _send(self, name: str, msg: dict[str, Any]) -> None:
        conn = self.conns.get(name)
        if conn is None:
            return
        try:
            await conn.send(msg)
        except (OSError, ConnectionError):
            conn.close()

    def gossip_msg(self) -> dict[str, Any]:
        return {"type": "gossip", "peers": self.peers.to_wire(), "ring": self.ring.to_wire()}

    def broadcast_gossip(self) -> None:
        loop = asyncio.get_running_loop()
        msg = self.gossip_msg()
        for name in list(self.conns):
            loop.create_task(self._send(name, msg))

    def connections_changed(self) -> None:
        if self.peers.set_connections(list(self.conns)):
            self.broadcast_gossip()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     outbound: bool = False) -> None:
        conn = Conn(reader, writer, outbound)
        peer = writer.get_extra_info("peername")
        try:
            await self._handshake(conn)
            if conn.name == self.me:
                self.targets.discard(conn.addr)  # our own address (given as a peer)
                return
            await conn.send(self.gossip_msg())
            first = await conn.recv()  # opens only if the peer has the same password
            if not self._register(conn):
                return
            self.dispatch(conn, first)
            while True:
                self.dispatch(conn, await conn.recv())
        except crypto.CryptoError:
            log.error("connection with %s (%s): cannot open its messages: the peer has a "
                      "different password", conn.name or peer, conn.addr)
        except (TimeoutError, OSError, ConnectionError, asyncio.IncompleteReadError,
                ValueError, KeyError) as exc:
            if conn.name:
                log.info("connection with %s (%s) ended: %s", conn.name, conn.addr,
                         type(exc).__name__)
        finally:
            conn.close()
            if conn.name and self.conns.get(conn.name) is conn:
                del self.conns[conn.name]
                self.sleeve.forget(conn.addr)
                self.connections_changed()

    async def _handshake(self, conn: Conn) -> None:
        kp = crypto.Keypair() if self.password is not None else None
        await conn.send_raw(json.dumps({
            "proto": PROTO, "name": self.me, "uid": self.uid, "addr": self.addr,
            "encrypted": kp is not None, "pub": kp.public.hex() if kp else None}).encode())
        hello = json.loads(await conn.recv_raw(5.0))
        if hello.get("proto") != PROTO:
            raise ValueError(f"protocol {hello.get('proto')!r}")
        conn.name, conn.addr = hello["name"], hello["addr"]
        conn.initiator = self.me if conn.outbound else conn.name
        if hello["encrypted"] != (kp is not None):
            log.error("peer %s (%s) has encryption %s, this router %s: not connecting "
                      "(set the same weave password on every node)", conn.name, conn.addr,
                      "on" if hello["encrypted"] else "off", "on" if kp else "off")
            raise ValueError("encryption mismatch")
        if kp is not None:
            assert self.password is not None
            session = crypto.Session(kp, bytes.fromhex(hello["pub"]), self.password)
            conn.key, conn.sleeve_key = session.control, session.sleeve

    def _register(self, conn: Conn) -> bool:
        """Make ``conn`` the connection to its peer (the first message from it opened)."""
        old = self.conns.get(conn.name)
        if old is not None:
            if old.initiator <= conn.initiator:
                return False  # keep the one dialled by the lower name (both ends agree)
            old.close()
        self.conns[conn.name] = conn
        self.sleeve.links[conn.addr] = PeerLink(conn.name, (conn.addr, SLEEVE_PORT),
                                                conn.sleeve_key)
        log.info("connected to %s (%s, %s)", conn.name, conn.addr,
                 "outbound" if conn.outbound else "inbound")
        self.connections_changed()
        return True

    def dispatch(self, conn: Conn, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "gossip":
            peers_changed = self.peers.merge(msg["peers"])
            ring_changed = self.ring.merge(msg["ring"])
            if ring_changed:
                self._save_ipam()
            for p in self.peers.table.values():
                if p.name != self.me:
                    self.targets.add(p.addr)
            if peers_changed or ring_changed:
                self.broadcast_gossip()
            self.ensure_space()
        elif kind == "donate":
            got = self.ring.donate(self.me, conn.name, self.alloc.used())
            if got:
                log.info("donated %s to %s", _span(*got), conn.name)
                self._save_ipam()
                self.broadcast_gossip()
        # "hb": nothing to do; receiving it reset the read timeout

    async def dial_loop(self) -> None:
        while True:
            connected = {c.addr for c in self.conns.values()}
            for addr in sorted(self.targets - connected - self.dialling - {self.addr}):
                self.dialling.add(addr)
                asyncio.get_running_loop().create_task(self._dial(addr))
            await asyncio.sleep(1.0)

    async def _dial(self, addr: str) -> None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(addr, CONTROL_PORT), 2.0)
        except (TimeoutError, OSError):
            self.dialling.discard(addr)
            return
        self.dialling.discard(addr)
        await self.handle(reader, writer, outbound=True)

    async def tick_loop(self) -> None:
        while True:
            for name in list(self.conns):
                await self._send(name, {"type": "hb"})
            self.sleeve.heartbeat()
            gone = self.peers.forget_unreachable()
            if gone:
                log.info("forgot unreachable peers %s", ", ".join(gone))
                self.targets -= {a for a in self.targets if a not in self.args.peer
                                 and a not in {p.addr for p in self.peers.table.values()}}
            self.ensure_space()
            self.write_status()
            await asyncio.sleep(HB_EVERY)

    # -- the CNI plugin's and the operator's API -------------------------------------
    async def api(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            req = json.loads(await reader.readline())
            reply = await self.api_call(req)
        except Exception as exc:  # noqa: BLE001 - the caller gets the error, we go on
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        writer.write(json.dumps(reply).encode() + b"\n")
        await writer.drain()
        writer.close()

    async def api_call(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        plen = ipaddress.IPv4Network(self.ring.cidr).prefixlen
        if op == "allocate":
            deadline = time.monotonic() + 10.0
            while self.bridge_ip is None or (ip := self.alloc.allocate(req["id"])) is None:
                if time.monotonic() > deadline:
                    return {"error": f"no free address in {self.me}'s ranges "
                                     f"{self.ring.cidrs(self.me)} (ring {self.ring.cidr})"}
                self.ensure_space()
                await asyncio.sleep(0.2)
            self._save_ipam()
            return {"ip": f"{ipaddress.IPv4Address(ip)}/{plen}", "gateway": self.bridge_ip}
        if op == "release":
            if self.alloc.release(req["id"]) is not None:
                self._save_ipam()
            return {}
        if op == "lookup":
            ip = self.alloc.allocations.get(req["id"])
            return {"ip": f"{ipaddress.IPv4Address(ip)}/{plen}" if ip else None}
        if op == "rmpeer":
            moved = self.ring.take_over(self.me, req["peer"])
            self.peers.table.pop(req["peer"], None)
            if moved:
                self._save_ipam()
                self.broadcast_gossip()
            return {"moved": moved}
        if op == "status":
            return self.status()
        return {"error": f"unknown op {op!r}"}

    # -- status ------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        conns = []
        for name, conn in sorted(self.conns.items()):
            link = self.sleeve.links.get(conn.addr)
            hb = now - link.last_heartbeat if link and link.last_heartbeat else None
            conns.append({"peer": name, "addr": conn.addr,
                          "direction": "outbound" if conn.outbound else "inbound",
                          "state": "established" if hb is not None and hb < HB_DEAD
                          else "pending (no UDP heartbeat yet)",
                          "mode": "sleeve", "encrypted": conn.key is not None})
        c = self.sleeve.counters
        return {
            "name": self.me, "uid": self.uid, "addr": self.addr, "mode": "sleeve",
            "encryption": self.password is not None, "mtu": self.args.mtu,
            "offload": not self.args.no_offload,
            "bridge": {"name": self.args.bridge, "ip": self.bridge_ip},
            "peers": [{"name": p.name, "addr": p.addr, "uid": p.uid, "conns": p.conns}
                      for p in sorted(self.peers.table.values(), key=lambda p: p.name)],
            "connections": conns,
            "ipam": {"range": self.ring.cidr, "owned": self.ring.cidrs(self.me),
                     "free": self.alloc.free(), "allocations": len(self.alloc.allocations),
                     "ring": {o: n for o, n in sorted(self.ring.owners().items())}},
            "macs": self.sleeve.mac_table(),
            "counters": vars(c).copy(),
            "time": time.time(),
        }

    def write_status(self) -> None:
        tmp = self.dir / "status.json.tmp"
        tmp.write_text(json.dumps(self.status(), indent=1))
        tmp.replace(self.dir / "status.json")

    async def run(self) -> None:
        self.setup_kernel()
        self.sleeve.start()
        sock_path = self.dir / "weave.sock"
        sock_path.unlink(missing_ok=True)
        await asyncio.start_unix_server(self.api, path=str(sock_path))
        await asyncio.start_server(self.handle, "0.0.0.0", CONTROL_PORT, reuse_address=True)
        log.info("router %s (%s) listening on %d/tcp, sleeve on %d/udp, encryption %s",
                 self.me, self.addr, CONTROL_PORT, SLEEVE_PORT,
                 "on" if self.password is not None else "off")
        try:
            # before "ready": the node's first pods already use it
            Agent("weave-net", log=logging.getLogger("weave.cni").info).serve_in_background()
        except OSError as exc:  # the weave-net plugin then runs the bridge plugin itself
            log.warning("cannot serve the weave-net CNI plugin: %s", exc)
        self.ensure_space()
        await asyncio.gather(self.dial_loop(), self.tick_loop())


def _span(start: int, end: int) -> str:
    return f"{ipaddress.IPv4Address(start)}-{ipaddress.IPv4Address(end - 1)}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="weave-router")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--name", required=True, help="this peer's name (the node's)")
    p.add_argument("--addr", required=True, help="the node IP peers reach this router at")
    p.add_argument("--peer", action="append", default=[], help="a peer's address (repeat)")
    p.add_argument("--range", default="10.32.0.0/12", help="the IPAM range (ipalloc-range)")
    p.add_argument("--seed", action="store_true", help="claim the whole range if no one has")
    p.add_argument("--password-file", help="a file holding the password: encrypt")
    p.add_argument("--mtu", type=int, default=1376, help="of the bridge, TAP and pods")
    p.add_argument("--no-offload", action="store_true",
                   help="no virtio-net header/TSO on the TAP: one frame per MTU")
    p.add_argument("--bridge", default="weave")
    p.add_argument("--tap", default="weave-tap")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    (Path(args.run_dir) / "ready").unlink(missing_ok=True)
    asyncio.run(Router(args).run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
