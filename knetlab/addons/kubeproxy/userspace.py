"""kube-proxy's first design, the userspace mode: a proxy socket per Service port on the
node, and iptables ``REDIRECT`` rules that steer the Service's traffic into it.

How it works (kube-proxy <= 1.2's default, removed in 1.26; ``pkg/proxy/userspace``):

- For every ServicePort the proxy listens on a port of its own (``0.0.0.0:<random>``, TCP
  or UDP) in the node's namespace; the process itself relays bytes to an endpoint, so every
  byte crosses into userspace twice (the cost the iptables mode removed).
- ``nat`` chains send the Service's addresses there: ``KUBE-PORTALS-CONTAINER`` (from
  PREROUTING: pods and other hosts) and ``KUBE-PORTALS-HOST`` (from OUTPUT: the node
  itself), ``-d CLUSTER_IP -p tcp --dport P -j REDIRECT --to-ports PROXY_PORT``;
  ``KUBE-NODEPORT-CONTAINER``/``-HOST`` do the same for ``--dport NODE_PORT`` on the node's
  own addresses.
- Endpoint choice is round robin; ``sessionAffinity: ClientIP`` pins a client address to
  its endpoint until it has been idle for the timeout. A TCP endpoint that refuses is skipped
  (the next one is tried), as the original did.
- A Service without endpoints has no REDIRECT; ``KUBE-PORTALS-REJECT`` (filter, for new
  connections) REJECTs it, so the client is refused at once instead of timing out.
- UDP: one session per client address (a connected socket to the endpoint, closed when idle);
  replies leave through the proxy socket with the address the client sent to as their source
  (``IP_PKTINFO``), so conntrack's reverse REDIRECT matches and the client sees the Service.

The relay is an asyncio loop in one thread that ``sync`` starts; a thread inherits its
creator's network namespace, so the sockets live in the node's namespace whichever process
drives the proxier (the agent's sync thread, or the benchmark). One ``iptables-restore
--noflush`` per sync rewrites the four nat chains and the reject chain whole; new proxy
sockets open before it (the rules need their ports), and on failure they close again while
the old sockets and rules keep serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

from knetlab import shell
from knetlab.addons.kubeproxy.model import ProxyState, ServicePort
from knetlab.addons.kubeproxy.proxier import Proxier, register

NAT_CHAINS = {"KUBE-PORTALS-CONTAINER": "PREROUTING", "KUBE-PORTALS-HOST": "OUTPUT",
              "KUBE-NODEPORT-CONTAINER": "PREROUTING", "KUBE-NODEPORT-HOST": "OUTPUT"}
REJECT_CHAIN = "KUBE-PORTALS-REJECT"
REJECT_FROM = ("INPUT", "FORWARD", "OUTPUT")
UDP_IDLE = 10.0       # seconds a UDP session to an endpoint stays open without traffic
CONNECT_TIMEOUT = 2.0
CHUNK = 256 * 1024
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
PROTOCOLS = ("TCP", "UDP")


@dataclass
class ProxySocket:
    """One ServicePort's listening socket and its endpoint choice."""
    key: str
    protocol: str
    sock: socket.socket
    endpoints: tuple[tuple[str, int], ...] = ()
    affinity_timeout: int = 0
    _rr: itertools.count = field(default_factory=itertools.count)
    _affinity: dict[str, tuple[tuple[str, int], float]] = field(default_factory=dict)
    server: asyncio.AbstractServer | None = None
    sessions: dict[tuple[str, int], UdpSession] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def choose(self, client_ip: str, skip: frozenset[tuple[str, int]] = frozenset()
               ) -> tuple[str, int] | None:
        """Round robin; a client with affinity keeps its endpoint while it is alive."""
        eps = [e for e in self.endpoints if e not in skip]
        if not eps:
            return None
        now = time.monotonic()
        if self.affinity_timeout:
            pinned = self._affinity.get(client_ip)
            if pinned and pinned[0] in eps and now - pinned[1] < self.affinity_timeout:
                self._affinity[client_ip] = (pinned[0], now)
                return pinned[0]
        ep = eps[next(self._rr) % len(eps)]
        if self.affinity_timeout:
            self._affinity[client_ip] = (ep, now)
        return ep


@dataclass
class UdpSession:
    upstream: socket.socket
    local_ip: str        # the address the client sent to (after REDIRECT): reply from it
    last: float


def _listen(protocol: str) -> socket.socket:
    kind = socket.SOCK_STREAM if protocol == "TCP" else socket.SOCK_DGRAM
    s = socket.socket(socket.AF_INET, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if protocol == "UDP":
        s.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    s.bind(("0.0.0.0", 0))
    if protocol == "TCP":
        s.listen(1024)
    s.setblocking(False)
    return s


class Relay:
    """The asyncio loop that moves the bytes, in its own thread."""

    def __init__(self, log: logging.Logger, sockets: dict[str, ProxySocket]) -> None:
        self.log, self.sockets = log, sockets  # the proxier's sockets (idle UDP reaping)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="userspace-proxy", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        reaper = self.loop.create_task(self._reap_udp())
        self.loop.run_forever()
        reaper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            self.loop.run_until_complete(reaper)
        self.loop.close()

    def call(self, coro: object) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)  # type: ignore

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    # -- opening and closing -----------------------------------------------------------
    async def open(self, ps: ProxySocket) -> None:
        if ps.protocol == "TCP":
            ps.server = await asyncio.start_server(
                lambda r, w: self._tcp(ps, r, w), sock=ps.sock)
        else:
            self.loop.add_reader(ps.sock.fileno(), self._udp_in, ps)

    async def close(self, ps: ProxySocket) -> None:
        if ps.server is not None:
            ps.server.close()
        else:
            self.loop.remove_reader(ps.sock.fileno())
            for sess in list(ps.sessions.values()):
                self._drop(sess)
            ps.sessions.clear()
        ps.sock.close()

    # -- TCP ------------------------------------------------------------------------------
    async def _tcp(self, ps: ProxySocket, reader: asyncio.StreamReader,
                   writer: asyncio.StreamWriter) -> None:
        client = writer.get_extra_info("peername")[0]
        tried: set[tuple[str, int]] = set()
        while (ep := ps.choose(client, frozenset(tried))) is not None:
            try:
                up_r, up_w = await asyncio.wait_for(asyncio.open_connection(*ep),
                                                    CONNECT_TIMEOUT)
                break
            except (TimeoutError, OSError) as exc:
                self.log.info("%s: endpoint %s:%d failed (%s), trying another", ps.key,
                              *ep, exc)
                tried.add(ep)
        else:
            writer.close()
            return
        try:
            await asyncio.gather(_pipe(reader, up_w), _pipe(up_r, writer))
        finally:
            for w in (writer, up_w):
                w.close()

    # -- UDP ------------------------------------------------------------------------------
    def _udp_in(self, ps: ProxySocket) -> None:
        try:
            data, anc, _flags, client = ps.sock.recvmsg(65535, 256)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        sess = ps.sessions.get(client)
        if sess is None:
            ep = ps.choose(client[0])
            if ep is None:
                return
            # in_pktinfo.ipi_addr: the datagram's destination after REDIRECT
            local = next((socket.inet_ntoa(d[8:12]) for lvl, typ, d in anc
                          if lvl == socket.IPPROTO_IP and typ == IP_PKTINFO), "0.0.0.0")
            up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            up.setblocking(False)
            up.connect(ep)
            sess = ps.sessions[client] = UdpSession(up, local, time.monotonic())
            self.loop.add_reader(up.fileno(), self._udp_back, ps, client, sess)
        sess.last = time.monotonic()
        with contextlib.suppress(OSError):
            sess.upstream.send(data)

    def _udp_back(self, ps: ProxySocket, client: tuple[str, int], sess: UdpSession) -> None:
        try:
            data = sess.upstream.recv(65535)
        except OSError:
            return
        sess.last = time.monotonic()
        # ipi_spec_dst = the address the client sent to: the reply's source
        info = struct.pack("I4s4s", 0, socket.inet_aton(sess.local_ip), b"\0" * 4)
        with contextlib.suppress(OSError):
            ps.sock.sendmsg([data], [(socket.IPPROTO_IP, IP_PKTINFO, info)], 0, client)

    def _drop(self, sess: UdpSession) -> None:
        self.loop.remove_reader(sess.upstream.fileno())
        sess.upstream.close()

    async def _reap_udp(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for ps in list(self.sockets.values()):
                for client, sess in list(ps.sessions.items()):
                    if now - sess.last > UDP_IDLE:
                        self._drop(sess)
                        del ps.sessions[client]


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while data := await src.read(CHUNK):
            dst.write(data)
            await dst.drain()
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if dst.can_write_eof():
                dst.write_eof()
            else:
                dst.close()


def restore_text(state: ProxyState, sockets: dict[str, ProxySocket]) -> str:
    """Our five chains, whole: REDIRECTs for Services with endpoints, REJECTs for the rest."""
    nat: dict[str, list[str]] = {c: [] for c in NAT_CHAINS}
    reject: list[str] = []
    for key, sp in sorted(state.services.items()):
        proto = sp.protocol.lower()
        addrs = (sp.cluster_ip, *sp.external_ips, *sp.load_balancer_ips)
        ps = sockets.get(key)
        # the comment names where the relay sends (what a reader of iptables-save wants)
        eps = ",".join(f"{ip}:{port}" for ip, port in (ps.endpoints if ps else ()))
        note = f'-m comment --comment "{key} -> {eps[:200]}"'
        if ps is not None and ps.endpoints:
            to = f"-j REDIRECT --to-ports {ps.port}"
            for ip in addrs:
                for chain in ("KUBE-PORTALS-CONTAINER", "KUBE-PORTALS-HOST"):
                    nat[chain].append(f"-A {chain} -d {ip}/32 -p {proto} --dport {sp.port} "
                                      f"{note} {to}")
            if sp.node_port:
                for chain in ("KUBE-NODEPORT-CONTAINER", "KUBE-NODEPORT-HOST"):
                    nat[chain].append(f"-A {chain} -p {proto} --dport {sp.node_port} -m "
                                      f"addrtype --dst-type LOCAL {note} {to}")
            continue
        why = f'-m comment --comment "{key} has no endpoints" -j REJECT'
        reject += [f"-A {REJECT_CHAIN} -d {ip}/32 -p {proto} --dport {sp.port} {why}"
                   for ip in addrs]
        if sp.node_port:
            reject.append(f"-A {REJECT_CHAIN} -p {proto} --dport {sp.node_port} -m addrtype "
                          f"--dst-type LOCAL {why}")
    lines = ["*nat", *(f":{c} - [0:0]" for c in nat)]
    for rules in nat.values():
        lines += rules
    lines += ["COMMIT", "*filter", f":{REJECT_CHAIN} - [0:0]", *reject, "COMMIT"]
    return "\n".join(lines) + "\n"


def _jumps() -> list[tuple[str, str, list[str]]]:
    out = [("nat", base, ["-j", chain]) for chain, base in NAT_CHAINS.items()]
    out += [("filter", base, ["-m", "conntrack", "--ctstate", "NEW", "-j", REJECT_CHAIN])
            for base in REJECT_FROM]
    return out


@register
class UserspaceProxier(Proxier):
    mode = "userspace"

    def __init__(self, node: str, log: logging.Logger) -> None:
        super().__init__(node, log)
        self.sockets: dict[str, ProxySocket] = {}
        self._relay: Relay | None = None

    def sync(self, state: ProxyState, changed: set[str] | None) -> None:
        if self._relay is None:
            self._relay = Relay(self.log, self.sockets)  # the caller's namespace is ours
            self._ensure_jumps()
        elif changed is None:
            self._ensure_jumps()  # a full sync also repairs missing jumps
        relay = self._relay
        skipped = sorted(k for k, sp in state.services.items() if sp.protocol not in PROTOCOLS)
        if skipped:  # the userspace proxy never carried SCTP; render nothing for it
            self.log.warning("userspace mode proxies TCP and UDP only; skipping %s",
                             ", ".join(skipped))
            state = ProxyState(state.node, state.node_ips, state.cluster_cidr,
                               {k: sp for k, sp in state.services.items()
                                if sp.protocol in PROTOCOLS})
        opened: dict[str, ProxySocket] = {}
        for key, sp in state.services.items():
            if key not in self.sockets or self.sockets[key].protocol != sp.protocol:
                opened[key] = ProxySocket(key, sp.protocol, _listen(sp.protocol))
        sockets = {**self.sockets, **opened}
        for key, sp in state.services.items():  # endpoints the rules will see
            if key in opened:
                _configure(opened[key], sp, state.node)
        view = {k: _preview(sockets[k], sp, state.node) for k, sp in state.services.items()}
        try:
            for ps in opened.values():
                relay.call(relay.open(ps))
            shell.run(["iptables-restore", "-w", "--noflush"], input=restore_text(state, view),
                      timeout=120, context=f"userspace proxy rules on {self.node}")
        except Exception:
            for ps in opened.values():
                with contextlib.suppress(Exception):
                    relay.call(relay.close(ps))
            raise
        for key, ps in list(self.sockets.items()):
            sp = state.services.get(key)
            if sp is None or key in opened:
                relay.call(relay.close(ps))
                del self.sockets[key]
            else:
                _configure(ps, sp, state.node)
        self.sockets.update(opened)

    def _ensure_jumps(self) -> None:
        lines = ["*nat", *(f":{c} - [0:0]" for c in NAT_CHAINS), "COMMIT",
                 "*filter", f":{REJECT_CHAIN} - [0:0]", "COMMIT"]
        shell.run(["iptables-restore", "-w", "--noflush"], input="\n".join(lines) + "\n")
        for table, base, rule in _jumps():
            if not shell.run(["iptables", "-w", "-t", table, "-C", base, *rule],
                             check=False).ok:
                shell.run(["iptables", "-w", "-t", table, "-I", base, "1", *rule])

    def rules(self) -> str:
        ours = (*NAT_CHAINS, REJECT_CHAIN)
        lines = [line for table in ("nat", "filter")
                 for line in shell.run(["iptables-save", "-t", table]).stdout.splitlines()
                 if line.startswith("*") or any(c in line for c in ours)]
        # the proxy sockets the REDIRECTs lead to: the kube-proxy process listening there
        ports = {w.split()[0] for line in lines for w in line.split("--to-ports ")[1:]}
        lines.append("# proxy sockets (ss -lntup): where REDIRECT --to-ports leads")
        for line in shell.run(["ss", "-Hlntup"]).stdout.splitlines():
            local = line.split()[4] if len(line.split()) > 4 else ""
            if local.rsplit(":", 1)[-1] in ports:
                lines.append("# " + " ".join(line.split()))
        return "\n".join(lines) + "\n"

    def cleanup(self) -> None:
        if self._relay is not None:
            for ps in list(self.sockets.values()):
                with contextlib.suppress(Exception):
                    self._relay.call(self._relay.close(ps))
            self._relay.stop()
            self._relay = None
        self.sockets.clear()
        for table, base, rule in _jumps():
            while shell.run(["iptables", "-w", "-t", table, "-D", base, *rule],
                            check=False).ok:
                pass
        for table, chains in (("nat", NAT_CHAINS), ("filter", (REJECT_CHAIN,))):
            for chain in chains:
                shell.run(["iptables", "-w", "-t", table, "-F", chain], check=False)
                shell.run(["iptables", "-w", "-t", table, "-X", chain], check=False)


def _configure(ps: ProxySocket, sp: ServicePort, node: str) -> None:
    ps.endpoints = tuple((e.ip, e.port) for e in sp.cluster_endpoints(node))
    ps.affinity_timeout = sp.affinity_timeout


def _preview(ps: ProxySocket, sp: ServicePort, node: str) -> ProxySocket:
    """The socket as the new rules must see it (endpoints of ``sp``), without changing the
    live one before the rules are in."""
    return ProxySocket(ps.key, ps.protocol, ps.sock,
                       tuple((e.ip, e.port) for e in sp.cluster_endpoints(node)))
