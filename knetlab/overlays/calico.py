"""Calico-style data planes: every node a vRouter announcing its pods' routes over BGP.

- ``calico-bgp``: pure L3, no encapsulation. Each node runs ExaBGP (announcing the node's
  pod block with next hop = node IP) and knetlab's route installer behind it. Peering
  (``bgp.mode``): ``mesh`` (node-to-node mesh), ``rr`` (route reflectors in their own
  namespaces on the segment: knetlab's ExaBGP reflector or BIRD), ``tor`` on leaf-spine
  (each rack's ToR reflects for its rack and installs routes; spines learn from ToRs).
- ``calico-ipip``: the same BGP, routes out of ``tunl0`` (refused where the kernel has no
  IPIP, before anything is built); ``bgp.ipipMode: CrossSubnet`` tunnels only to next
  hops off the node's subnet.
- ``calico-vxlan``: Calico's VXLAN mode, no BGP needed: ``vxlan.calico`` (VNI 4096, UDP
  4789) programmed from the IPAM blocks in the lab's etcd; ``mode: CrossSubnet`` routes
  natively inside a rack and encapsulates only between racks.

All three take pod addresses from calico-ipam blocks of one pool (``pool``, ``blockSize``).

As the calico-node container's supervisor does, a speaker (or reflector) that exits is
started again after a doubling back-off (``knetlab.watchdog``). Bring-up and membership
changes wait until every node has learned every block, and fail naming what is missing.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, ClassVar

from knetlab.bgp.bird import Bird, BirdConfig
from knetlab.bgp.blocks import aggregate
from knetlab.bgp.exabgp import MEMBERS_FILE, ExaBGP, Neighbor, SpeakerConfig
from knetlab.cni.plugins.calico_ipam import (
    HOSTS,
    BlockStore,
    allocate,
    claim_block,
    node_blocks,
    tunnel_handle,
)
from knetlab.daemon import DaemonError
from knetlab.dataplane import Backend, register
from knetlab.errors import KnetlabError
from knetlab.nodes.host import NetnsHost
from knetlab.overlays.cni_agents import CniAgents
from knetlab.routes import reconcile_routes
from knetlab.store import StoreError
from knetlab.topologies.schema import NODE_HOST_OFFSET
from knetlab.vxlan import VxlanDevice
from knetlab.watchdog import Watchdog

if TYPE_CHECKING:
    from knetlab.daemon import Daemon
    from knetlab.nodes.k8snode import K8sNode
    from knetlab.store import Store
    from knetlab.topologies.fields import Fields
    from knetlab.topologies.schema import ClusterSpec

log = logging.getLogger("knetlab.calico")
CONVERGE_TIMEOUT = 15.0
MESH, RR, TOR = "node-to-node mesh", "route reflector", "ToR"
SPARE_CLIENTS = 32  # reflector neighbours configured ahead of joins (_spare_clients)


def pool_settings(spec: ClusterSpec, f: Fields) -> tuple[str, int]:
    """The IP pool and its block size (calico-ipam), as every Calico data plane has them."""
    pool = f.str("pool", str(spec.pod_cidr))
    try:
        ipaddress.IPv4Network(pool)
    except ValueError:
        raise f.error("pool", f"{pool!r} is not an IPv4 network",
                      "write a CIDR such as 10.244.0.0/16") from None
    for name, net in (("underlay.cidr", spec.underlay.cidr), ("serviceCIDR", spec.service_cidr)):
        if net.overlaps(ipaddress.IPv4Network(pool)):
            # Pod addresses inside the node network would shadow node and router routes.
            raise f.error("pool", f"pool {pool} overlaps {name} {net}",
                          f"choose a pool outside {net}, such as the podCIDR {spec.pod_cidr}")
    size = f.int("blockSize", 26, lo=20, hi=32)
    if size < ipaddress.IPv4Network(pool).prefixlen:
        raise f.error("blockSize", f"/{size} blocks do not fit in pool {pool}",
                      "use a blockSize at least the pool's prefix length")
    return pool, size


def calico_cni_config(store: Store, node: K8sNode, pool: str, size: int,
                      mtu: int, kubeconfig: str = "") -> dict[str, Any]:
    """The calico plugin (veth, /32 host route) with calico-ipam (affine blocks), laid out
    as Calico's ``10-calico.conflist`` with the etcd datastore: ``etcd_endpoints`` and the
    client certificate, ``nodename``, ``ipam: {type: calico-ipam}``, ``policy``."""
    plugin: dict[str, Any] = {
        "type": "calico", "log_level": "info", **store.conf(), "nodename": node.name,
        "mtu": mtu,
        "ipam": {"type": "calico-ipam", "assign_ipv4": "true", "ipv4_pools": [pool],
                 "blockSize": size},
        "policy": {"type": "k8s"}}
    if kubeconfig:
        plugin["kubernetes"] = {"kubeconfig": kubeconfig}
    return {"cniVersion": "1.0.0", "name": "k8s-pod-network", "plugins": [plugin]}


class CalicoIpamBackend(Backend):
    """What every Calico plane shares: pods wired by the calico plugin with addresses from
    calico-ipam blocks of one pool, kept in the lab's store."""
    MTU: ClassVar[int] = 1500  # the pods' MTU (tunnelling planes subtract their header)
    #: knetlab's own plugins: not among the reference ones (``cni: reference`` is refused)
    cni_plugins: ClassVar[tuple[str, ...]] = ("calico", "calico-ipam")

    def __init__(self, cluster: Any) -> None:
        super().__init__(cluster)
        # each node's calico CNI agent: the plugin hands it the pod's wiring (cni_agents.py)
        self.cni_agents = CniAgents(cluster.rundir, "calico")

    def block_store(self) -> BlockStore:
        assert self.cluster.store
        return BlockStore(self.cluster.store)

    def all_blocks(self) -> dict[str, list[str]]:
        """node -> its (aggregated) blocks, from the affinity keys (one keys-only read)."""
        out: dict[str, list[str]] = {}
        for cidr, node in self.block_store().affinities().items():
            out.setdefault(node, []).append(cidr)
        return {n: aggregate(cidrs) for n, cidrs in out.items()}

    def cni_config(self, node: K8sNode) -> dict[str, Any]:
        assert self.cluster.store
        control = getattr(self.cluster, "control", None)
        kubeconfig = str(control.kubeconfig) if control is not None else ""
        return calico_cni_config(self.cluster.store, node, self.settings["pool"],
                                 self.settings["block_size"], self.MTU, kubeconfig)

    def release_blocks(self, node: K8sNode) -> None:
        """The node is gone: its blocks go back to the pool."""
        store = self.block_store()
        for block in node_blocks(store, node.name):
            store.remove(block)

    def describe_node(self, node: K8sNode) -> dict[str, Any]:
        return {"blocks": self.all_blocks().get(node.name, [])}


@register
class CalicoBgpBackend(CalicoIpamBackend):
    name = "calico-bgp"
    section: ClassVar[str | None] = "bgp"
    encap = "none"

    @classmethod
    def validate(cls, spec: ClusterSpec, f: Fields) -> dict[str, Any]:
        f.only(["mode", "asn", "holdTime", "reflectors", "reflector", "clusterId", "pool",
                "blockSize", "serviceClusterIPs",
                *(["ipipMode"] if cls.encap == "ipip" else [])])
        leaf = spec.underlay.type == "leaf-spine"
        mode = f.str("mode", "tor" if leaf else "mesh", choices=["mesh", "rr", "tor"])
        if mode == "tor" and not leaf:
            raise f.error("mode", "mode tor peers each node with its rack's ToR, but "
                          "underlay.type segment has no racks or ToRs",
                          "use mode: mesh or rr on a segment, or underlay.type: leaf-spine")
        if leaf and mode != "tor" and cls.encap == "none":  # tunnels need no fabric routes
            raise f.error("mode", f"mode {mode} on leaf-spine: without encapsulation the "
                          "fabric must learn pod routes, which only mode tor gives it",
                          "use mode: tor on leaf-spine, or dataplane calico-ipip")
        cluster_id = f.str("clusterId", "") or None
        if cluster_id:
            try:
                ipaddress.IPv4Address(cluster_id)
            except ValueError:
                raise f.error("clusterId", f"{cluster_id!r} is not a dotted quad",
                              "write an IPv4-style id such as 244.0.0.1") from None
        pool, size = pool_settings(spec, f)
        return {"mode": mode, "asn": f.int("asn", 64512, lo=1, hi=4294967294),
                "pool": pool, "block_size": size,
                "hold": f.int("holdTime", 3, lo=3, hi=65535),
                "reflectors": f.int("reflectors", 2, lo=1, hi=8),
                "impl": f.str("reflector", "exabgp", choices=["exabgp", "bird"]),
                "cluster_id": cluster_id,
                # Calico's service IP advertisement (BGPConfiguration serviceClusterIPs /
                # serviceLoadBalancerIPs): every node announces these ranges
                "advertise": [*([str(spec.service_cidr)]
                                if f.bool("serviceClusterIPs", False) else []),
                              *([str(spec.load_balancer_cidr)]
                                if spec.load_balancer_cidr is not None else [])],
                # Calico's ipipMode: CrossSubnet tunnels only to next hops off our subnet
                "ipip_mode": f.str("ipipMode", "Always", choices=["Always", "CrossSubnet"])
                if cls.encap == "ipip" else "Never"}

    def __init__(self, cluster: Any) -> None:
        super().__init__(cluster)
        self.speakers: dict[str, ExaBGP] = {}
        self.reflectors: dict[str, Daemon] = {}  # owner -> ExaBGP or Bird
        self.rr_ips: dict[str, str] = {}  # owner -> address its clients peer with
        self.rr_hosts: dict[str, NetnsHost] = {}
        self.clients: set[str] = set()  # node addresses the reflectors have known
        self.external: dict[str, str] = {}  # outside speaker (FRR, BIRD) -> its address
        self._learned: dict[str, tuple[tuple[int, int], set[tuple[str, str]]]] = {}
        self._node_ok: dict[str, tuple[Any, ...]] = {}  # node -> what it was converged on
        self.horizon: dict[str, int] = {}  # reflector -> node indexes it is configured for
        # The watchdog restarts under this lock; sync, removal and teardown change the
        # daemons under it, so no restart races them.
        self.lock = threading.RLock()
        self.watchdog = Watchdog("calico-node", self.lock, self._daemons, self._restart)

    # -- reflectors ------------------------------------------------------------------
    def setup(self) -> None:
        mode = self.settings["mode"]
        if mode == "rr":
            self._reflector_hosts()
        elif mode == "tor":
            for rack, tor in self.cluster.underlay.tors.items():
                self.rr_hosts[tor.name] = tor
                self.rr_ips[tor.name] = str(self.cluster.spec.underlay.gateway(rack))
        if mode == "tor":
            for spine in self.cluster.underlay.spines:
                self._start_spine(spine)

    def _reflector_hosts(self) -> None:
        """Route reflectors in their own namespaces on the segment, at its top addresses."""
        cidr = self.cluster.spec.underlay.cidr
        for k in range(1, self.settings["reflectors"] + 1):
            ip = str(cidr.broadcast_address - k)
            self.rr_hosts[f"rr-{k}"], self.rr_ips[f"rr-{k}"] = self.segment_host(f"rr-{k}", ip), ip

    def segment_host(self, name: str, ip: str) -> NetnsHost:
        """A namespace on the segment at ``ip`` (a reflector, or an outside router)."""
        net, cidr = self.cluster.net, self.cluster.spec.underlay.cidr
        switch = self.cluster.underlay.switches[1]
        host = net.addHost(name, cls=NetnsHost, rundir=self.cluster.rundir, ip=None)
        link = net.addLink(host, switch)
        switch.attach(link.intf2)
        host.ip_batch([f"addr add {ip}/{cidr.prefixlen} dev {link.intf1.name}",
                       f"link set {link.intf1.name} up", "link set lo up"])
        return host

    def add_external_peer(self, name: str, ip: str) -> None:
        """An outside speaker (FRR, BIRD) becomes a client of every ExaBGP reflector.
        Returns once the reflectors have reloaded: a speaker that dials one before is
        refused, and FRR then backs off (its sessions stayed Idle past 10 s on a busy run)."""
        with self.lock:
            self.external[name] = ip
            pending = []
            for owner, daemon in self.reflectors.items():
                if isinstance(daemon, ExaBGP) and owner in self.rr_hosts:
                    self._write_members(owner)
                    before = daemon.reconfigure(self._rr_config(owner))
                    if before is not None:
                        pending.append((daemon, before))
        for daemon, before in pending:
            if not daemon.reload_until_applied(before):
                raise KnetlabError(f"reflector {daemon.owner} did not reload to accept {name} "
                                   f"({ip}); log: {daemon.log_file}")

    def _cluster_id(self, owner: str) -> str:
        return self.settings["cluster_id"] or self.rr_ips[owner]

    def _start_reflector(self, owner: str) -> None:
        host, s = self.rr_hosts[owner], self.settings
        others = [ip for o, ip in self.rr_ips.items() if o != owner]
        if s["impl"] == "bird":
            cfg = BirdConfig(self.rr_ips[owner], self._cluster_id(owner), s["asn"], s["hold"],
                             str(self._client_range(owner)), others)
            daemon: Daemon = Bird(self.cluster.rundir, owner, host.netns, cfg)
        else:
            self._write_members(owner)
            daemon = ExaBGP(self.cluster.rundir, owner, host.netns, self._rr_config(owner),
                            speed=1.0)  # it relays every route to every client: no naps
        daemon.start()
        self.reflectors[owner] = daemon

    def _client_range(self, owner: str) -> ipaddress.IPv4Network:
        u = self.cluster.spec.underlay
        if self.settings["mode"] == "tor":
            return u.rack_subnet(int(owner.split("-")[1]))
        return u.cidr

    def _spare_clients(self, owner: str) -> set[str]:
        """Addresses of nodes yet to join, configured on the reflector ahead of time.

        ExaBGP 4.2 can only add a neighbour by reloading its config, and a reload re-sends
        every route to every peer (its Peer.reconfigure): at 100 nodes each join cost ~10,000
        UPDATEs and seconds of CPU. So the reflectors know the addresses of the next
        SPARE_CLIENTS node indexes already (passive: nothing dials them), and the config
        changes, with one reload, only when joins pass that horizon. (ExaBGP's neighbour
        ranges would avoid even that, but its API cannot send routes to their peers.)
        Nobody configured these peers: ``bgp status`` counts them in one line, telling
        them from clients by the members file (``_write_members``)."""
        top = max((n.index for n in self.cluster.spec.nodes), default=0)
        if top > self.horizon.get(owner, 0):  # a join past the spares (or the start)
            self.horizon[owner] = (top // SPARE_CLIENTS + 1) * SPARE_CLIENTS
        subnet = self._client_range(owner)
        hosts = (subnet.network_address + NODE_HOST_OFFSET + i
                 for i in range(1, self.horizon[owner] + 1))
        return {str(h) for h in hosts if h in subnet and h != subnet.broadcast_address
                and str(h) not in self.rr_ips.values()}

    def _write_members(self, owner: str) -> None:
        """The clients an ExaBGP reflector primes when it (re)starts, also read by ``bgp
        status`` to tell real clients from spares."""
        members = self.cluster.rundir.daemon_dir(owner, "exabgp") / MEMBERS_FILE
        members.write_text("".join(f"{ip}\n" for ip in self._members(owner)))

    def _members(self, owner: str) -> list[str]:
        """The reflector's clients now: nodes in its range and outside speakers."""
        subnet = self._client_range(owner)
        nodes = [n.node_ip for n in self.cluster.k8s_nodes()
                 if ipaddress.ip_address(n.node_ip) in subnet]
        return [*nodes, *self.external.values()]

    def _rr_config(self, owner: str) -> SpeakerConfig:
        me = self.rr_ips[owner]
        neighbors = [Neighbor(ip, me, RR) for o, ip in self.rr_ips.items() if o != owner]
        # Clients that left stay configured (passive: nothing dials them). ExaBGP 4.2 does
        # not take a neighbour removed and re-added at the same address (a node deleted,
        # another joining at its IP): the new session stays stuck in "connected".
        self.clients.update(self._members(owner))
        clients = {ip for ip in self.clients
                   if ipaddress.ip_address(ip) in self._client_range(owner)}
        clients |= self._spare_clients(owner) | set(self.external.values())
        neighbors += [Neighbor(ip, me, "route reflector client")
                      for ip in sorted(clients, key=ipaddress.ip_address)]
        rundir = self.cluster.rundir.daemon_dir(owner, "exabgp")
        args = ["knetlab.bgp.reflector", "--router-id", me, "--cluster-id",
                self._cluster_id(owner), "--config", str(rundir / "exabgp.conf"),
                "--members", str(rundir / MEMBERS_FILE)]
        for n in neighbors:
            if n.kind == RR:
                args += ["--peer", n.address]
        if self.settings["mode"] == "tor":  # a ToR forwards: it installs what it learns
            rack = int(owner.split("-")[1])
            for (r, _k), (tor_ip, spine_ip) in self.cluster.underlay.spine_links.items():
                if r == rack:
                    neighbors.append(Neighbor(spine_ip, tor_ip, "spine (client)"))
                    args += ["--self", tor_ip]
            args += [*(a for p in self.accepted() for a in ("--install", p)), "--self", me]
        return SpeakerConfig(me, self.settings["asn"], self.settings["hold"], neighbors, [],
                             args)

    def _start_spine(self, spine: NetnsHost) -> None:
        """A spine is a client of every ToR; it installs routes, announces nothing."""
        links = [(tor_ip, spine_ip) for (_r, k), (tor_ip, spine_ip)
                 in self.cluster.underlay.spine_links.items() if f"spine-{k}" == spine.name]
        neighbors = [Neighbor(tor_ip, spine_ip, TOR) for tor_ip, spine_ip in links]
        args = ["knetlab.bgp.installer", *(a for p in self.accepted() for a in ("--pool", p))]
        cfg = SpeakerConfig(links[0][1], self.settings["asn"], self.settings["hold"],
                            neighbors, [], args)
        speaker = ExaBGP(self.cluster.rundir, spine.name, spine.netns, cfg)
        speaker.start()
        self.reflectors[spine.name] = speaker

    # -- node speakers ---------------------------------------------------------------
    def _node_config(self, node: K8sNode) -> SpeakerConfig:
        mode, me = self.settings["mode"], node.node_ip
        if mode == "mesh":
            neighbors = [Neighbor(p.node_ip, me, MESH) for p in self.cluster.k8s_nodes()
                         if p is not node]
        elif mode == "rr":
            neighbors = [Neighbor(ip, me, RR) for ip in self.rr_ips.values()]
        else:
            neighbors = [Neighbor(self.rr_ips[f"tor-{node.spec.rack}"], me, TOR)]
        # The installer announces the node's IPAM blocks itself (knetlab/bgp/blocks.py).
        assert self.cluster.store
        args = ["knetlab.bgp.installer", "--pool", self.settings["pool"], "--self", me,
                "--encap", "ipip-crosssubnet" if self.settings["ipip_mode"] == "CrossSubnet"
                else self.encap, "--store", self.cluster.store.to_arg(),
                "--node", node.name]
        # Service ranges from every node, next hop itself (Calico's service advertisement:
        # the fabric spreads the traffic over the nodes; kube-proxy takes it from there).
        announce = [(prefix, me) for prefix in self.settings.get("advertise", [])]
        return SpeakerConfig(me, self.settings["asn"], self.settings["hold"], neighbors,
                             announce, args)

    def accepted(self) -> list[str]:
        """What the fabric's routers install: the pod pool and the advertised Service
        ranges (the nodes install only pod routes: Service traffic is theirs already)."""
        return [self.settings["pool"], *self.settings.get("advertise", [])]

    # -- IPAM blocks -----------------------------------------------------------------
    def blocks(self, node: str) -> list[str]:
        """The node's blocks, aggregated as its speaker announces them."""
        return aggregate([b["cidr"] for b in node_blocks(self.block_store(), node)])

    def setup_node(self, node: K8sNode) -> None:
        # A joining node claims its first block at once (its speaker has something to
        # announce); calico-ipam claims more when the node's pods fill it.
        store = self.block_store()
        if not node_blocks(store, node.name):
            claim_block(store, self.settings["pool"], self.settings["block_size"], node.name)
        self.prepare_node(node)
        self.cni_agents.ensure(node)

    def prepare_node(self, node: K8sNode) -> None:
        """Encapsulating variants create their tunnel device here."""

    def sync(self) -> None:
        """Start speakers of new nodes, reload every speaker whose peers changed, and wait
        until every node has learned every block: raise, naming what is missing, if not."""
        with self.lock:
            self._sync_daemons()
        self.watchdog.start()
        timeout = self.converge_timeout()
        if not self.wait_converged(timeout):
            raise KnetlabError(self.convergence_problem(timeout))

    def _sync_daemons(self) -> None:
        # Reflectors first and with the whole membership: ExaBGP drops routes its API
        # program injected when a reload touches a neighbour, so avoid reloads at start.
        reloading = []
        for owner in self.rr_hosts:
            daemon = self.reflectors.get(owner)
            if daemon is None:
                self._start_reflector(owner)
            elif isinstance(daemon, ExaBGP):
                self._write_members(owner)
                before = daemon.reconfigure(self._rr_config(owner))
                if before is not None:
                    reloading.append((daemon, before))
        for daemon, before in reloading:  # a joining node must not dial them too early
            daemon.wait_reloaded(before)
        new = []
        for node in self.cluster.k8s_nodes():
            cfg = self._node_config(node)
            if node.name in self.speakers:
                self.speakers[node.name].reconfigure(cfg)
            else:  # boot every new speaker at once: a 100-node lab starts in parallel
                speaker = ExaBGP(self.cluster.rundir, node.name, node.netns, cfg)
                speaker.start(wait=False)
                self.speakers[node.name] = speaker
                new.append(speaker)
        for speaker in new:
            try:
                speaker.wait_ready()
            except DaemonError:
                speaker.start()  # stops what is left, starts it again (one retry)

    # -- the restart policy (calico-node's supervisor) --------------------------------
    def _daemons(self) -> dict[tuple[str, str], Daemon]:
        return {**{("speaker", n): d for n, d in self.speakers.items()},
                **{("reflector", o): d for o, d in self.reflectors.items()}}

    def _restart(self, key: tuple[str, str]) -> None:
        """Start a dead speaker again with its current config (called under the lock).
        Not waited for: a restart that dies is seen, and backed off, on the next look."""
        kind, owner = key
        daemon = (self.speakers if kind == "speaker" else self.reflectors)[owner]
        daemon.stop()  # reaps it, and stops whatever is left of it by pid
        if kind == "reflector" and isinstance(daemon, ExaBGP) and owner in self.rr_hosts:
            self._write_members(owner)  # it primes the clients of now, not of its start
        daemon.start(wait=False)

    def learned(self, node: str) -> set[tuple[str, str]]:
        """(peer, prefix) pairs a node's installer has learned (from its state file).

        Parsed again only when the file was replaced: waiting for 100 nodes to converge
        polls them all every 20 ms, and parsing each every time ate a core of two."""
        try:
            path = self.speakers[node].state_file
            st = path.stat()
            key = (st.st_ino, st.st_mtime_ns)
            if node in self._learned and self._learned[node][0] == key:
                return self._learned[node][1]
            state = json.loads(path.read_text())
        except (OSError, ValueError, KeyError):
            return set()
        pairs = {(peer, p) for peer, table in state.get("routes", {}).items() for p in table}
        self._learned[node] = (key, pairs)
        return pairs

    def learned_prefixes(self, node: str) -> set[str]:
        return {p for _peer, p in self.learned(node)}

    def expected(self, node: K8sNode, blocks: dict[str, list[str]] | None = None
                 ) -> set[tuple[str, str]]:
        """What a converged node has learned: every other block, from every peer that
        should carry it (each reflector, with two: they are independent)."""
        blocks = self.all_blocks() if blocks is None else blocks
        nodes = self.cluster.k8s_nodes()
        if self.settings["mode"] == "mesh":
            return {(p.node_ip, b) for p in nodes if p is not node
                    for b in blocks.get(p.name, [])}
        peers = [n.address for n in self._node_config(node).neighbors]
        return {(peer, b) for peer in peers for p in nodes if p is not node
                for b in blocks.get(p.name, [])}

    def converged(self) -> bool:
        """Every node has learned what it should. A node is checked again only when its
        state file, the blocks or the membership moved: waiting on a 100-node join polls
        this every 20 ms, and checking 100 x 200 (peer, block) pairs each time took a
        quarter of a core from the speakers it waits for."""
        blocks, nodes = self.all_blocks(), self.cluster.k8s_nodes()
        members = tuple(n.name for n in nodes)
        held = tuple(sorted((node, tuple(cidrs)) for node, cidrs in blocks.items()))
        for n in nodes:
            learned = self.learned(n.name)
            seen = (self._learned.get(n.name, (None,))[0], held, members)
            if self._node_ok.get(n.name) == seen:
                continue
            if not learned >= self.expected(n, blocks):
                return False
            self._node_ok[n.name] = seen
        return True

    def converge_timeout(self) -> float:
        # a 100-node bring-up boots 100 speakers on 2 cores
        return max(CONVERGE_TIMEOUT, 0.4 * len(self.cluster.k8s_nodes()))

    def wait_converged(self, timeout: float | None = None) -> bool:
        """Poll until every node has learned everything (bring-up and membership changes
        return converged, so `up --check` never races BGP); False at the deadline."""
        timeout = self.converge_timeout() if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.converged():
                return True
            time.sleep(0.02)
        log.warning("%s", self.convergence_problem(timeout))
        return False

    def convergence_problem(self, timeout: float) -> str:
        """What is missing, for the first few nodes (a 100-node dump would bury it):
        the routes a node lacks, from whom, and its sessions that are not up."""
        blocks, nodes = self.all_blocks(), self.cluster.k8s_nodes()
        short = [n for n in nodes if not self.learned(n.name) >= self.expected(n, blocks)]
        parts = []
        for node in short[:3]:
            missing = sorted(self.expected(node, blocks) - self.learned(node.name))
            routes = ", ".join(f"{prefix} from {peer}" for peer, prefix in missing[:3])
            more = f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""
            speaker = self.speakers.get(node.name)
            if speaker is None or not speaker.alive():
                why = "its speaker is not running"
            else:
                why = self._sessions_down(speaker) or "all its sessions are up"
            parts.append(f"{node.name} lacks routes to {routes}{more}; {why}")
        if len(short) > 3:
            parts.append(f"and {len(short) - 3} more nodes")
        return (f"BGP did not converge within {timeout:.0f} s: " + "; ".join(parts)
                + f" (speaker logs: {self.cluster.rundir.path}/daemons/NODE/exabgp/)")

    @staticmethod
    def _sessions_down(speaker: ExaBGP) -> str:
        try:
            peers = json.loads(speaker.state_file.read_text()).get("peers", {})
        except (OSError, ValueError):
            return "its speaker has written no state yet"
        addrs = {n.address for n in speaker.cfg.neighbors}
        down = [f"{a} {peers.get(a, {}).get('state') or 'idle'}"
                + (f" ({peers[a]['info']})" if peers.get(a, {}).get("info") else "")
                for a in sorted(addrs) if peers.get(a, {}).get("state") != "up"]
        return f"sessions not established: {', '.join(down)}" if down else ""

    def remove_node(self, node: K8sNode) -> None:
        with self.lock:
            speaker = self.speakers.pop(node.name, None)
            if speaker:
                speaker.stop()  # SIGTERM: ExaBGP closes its sessions, peers withdraw at once
        self.cni_agents.stop(node.name)
        self.release_blocks(node)

    def teardown(self) -> None:
        self.watchdog.stop()  # first: it must not start what we stop
        with self.lock:
            for daemon in [*self.speakers.values(), *self.reflectors.values()]:
                daemon.stop()
            self.speakers, self.reflectors = {}, {}
        self.cni_agents.stop_all()

    # -- views -----------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {"bgp": {"mode": self.settings["mode"], "asn": self.settings["asn"],
                        "pool": self.settings["pool"], "blockSize": self.settings["block_size"],
                        "blocks": {n.name: self.blocks(n.name) for n in self.cluster.k8s_nodes()},
                        "reflector": self.settings["impl"], "reflectors": self.rr_ips,
                        "speakers": {n: d.pid for n, d in self.speakers.items()}}}


@register
class CalicoIpipBackend(CalicoBgpBackend):
    """Calico's IPIP mode: BGP as calico-bgp, pod traffic out of ``tunl0``."""
    name = "calico-ipip"
    encap = "ipip"
    kernel_features: ClassVar[tuple[str, ...]] = ("ipip",)
    MTU: ClassVar[int] = 1480  # IPIP: 20 bytes of outer header

    def prepare_node(self, node: K8sNode) -> None:
        # tunl0 appears when the ipip module loads; give it the node's block gateway so
        # replies leave with a pod-network source, and the pod MTU minus 20 bytes.
        # tunl0's address comes from the node's block, as Calico's IPAM gives it one.
        ip = allocate(self.block_store(), self.settings["pool"], self.settings["block_size"],
                      node.name, tunnel_handle("ipip", node.name))
        node.ip_batch([f"link set tunl0 up mtu {self.MTU}", f"addr replace {ip}/32 dev tunl0"],
                      context=f"set up tunl0 on {node.name}")


@register
class CalicoVxlanBackend(CalicoIpamBackend):
    """Calico's VXLAN mode: pods take addresses from IPAM blocks (calico-ipam, as with
    calico-bgp) and ``vxlan.calico`` on every node carries them, programmed from the lab's
    store as Felix does from its datastore: BGP is not needed for reachability.

    Per peer block: route ``block via VTEP dev vxlan.calico onlink``, neighbour ``VTEP
    lladdr MAC``, FDB ``MAC dst NODE_IP``. The VTEP address comes from the node's block
    (handle ``vxlan-tunnel-addr``, as Calico's IPAM gives one); the MAC is derived from
    the node IP. Own blocks are blackholed, as Felix does. ``mode: CrossSubnet``: peers in
    the same rack are routed natively. A watcher re-syncs when any node claims or frees a
    block (a node whose pods fill its block claims another).
    """
    name = "calico-vxlan"
    section: ClassVar[str | None] = "vxlan"
    kernel_features: ClassVar[tuple[str, ...]] = ("vxlan",)
    DEV, VNI, PORT, MTU = "vxlan.calico", 4096, 4789, 1450

    @classmethod
    def validate(cls, spec: ClusterSpec, f: Fields) -> dict[str, Any]:
        f.only(["mode", "pool", "blockSize"])
        pool, size = pool_settings(spec, f)
        return {"mode": f.str("mode", "Always", choices=["Always", "CrossSubnet"]),
                "pool": pool, "block_size": size}

    def __init__(self, cluster: Any) -> None:
        super().__init__(cluster)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.watcher: threading.Thread | None = None

    @staticmethod
    def vtep_mac(node: K8sNode) -> str:
        return "66:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(node.node_ip).packed) \
            + ":01"

    def setup_node(self, node: K8sNode) -> None:
        vtep = allocate(self.block_store(), self.settings["pool"],
                        self.settings["block_size"], node.name, tunnel_handle("vxlan", node.name))
        self.device(node, vtep).ensure(node.netns)
        self.cni_agents.ensure(node)

    def device(self, node: K8sNode, vtep: str | None = None) -> VxlanDevice:
        return VxlanDevice(self.DEV, self.VNI, node.node_ip, node.uplink, self.PORT, self.MTU,
                           mac=self.vtep_mac(node), address=f"{vtep}/32" if vtep else None)

    def encapsulate(self, a: K8sNode, b: K8sNode) -> bool:
        return self.settings["mode"] == "Always" or a.spec.rack != b.spec.rack

    def vteps(self) -> dict[str, str]:
        """node -> its VTEP address (the allocation of its ``vxlan-tunnel-addr-<node>``)."""
        return {b["node"]: ip for b in self.block_store().blocks()
                for ip, handle in b.get("allocations", {}).items()
                if handle == tunnel_handle("vxlan", b["node"])}

    def sync(self) -> None:
        with self.lock:
            blocks, vteps = self.all_blocks(), self.vteps()
            nodes = self.cluster.k8s_nodes()
            for node in nodes:
                routes = {b: "blackhole" for b in blocks.get(node.name, [])}
                peers: dict[str, tuple[str, str]] = {}
                for peer in (p for p in nodes if p is not node and p.name in vteps):
                    if not self.encapsulate(node, peer):
                        routes.update({b: f"via {peer.node_ip}" for b in blocks[peer.name]})
                        continue
                    peers[vteps[peer.name]] = (self.vtep_mac(peer), peer.node_ip)
                    routes.update({b: f"via {vteps[peer.name]} dev {self.DEV} onlink"
                                   for b in blocks[peer.name]})
                # Order as flannel does: neighbour and FDB first, the routes last.
                self.device(node).sync_unicast(peers, node.netns)
                reconcile_routes(node, routes)
        if self.watcher is None:
            self.watcher = threading.Thread(target=self._watch, daemon=True,
                                            name="calico-vxlan-felix")
            self.watcher.start()

    def _watch(self) -> None:
        """Felix's part: re-sync when a block changes hands (an etcd watch of every node's
        affinity keys: an address handed out changes none)."""
        assert self.cluster.store
        store = self.cluster.store
        seen = store.revision()
        while not self.stopping.is_set():
            try:
                now = store.wait(HOSTS, seen, 1.0)
            except StoreError:
                self.stopping.wait(1.0)  # etcd going down with the lab
                continue
            if now != seen and not self.stopping.is_set():
                seen = now
                try:
                    self.sync()
                except Exception:  # noqa: BLE001 - a node going away mid-sync; next one fixes it
                    log.exception("calico-vxlan sync after a block claim failed")

    def remove_node(self, node: K8sNode) -> None:
        self.cni_agents.stop(node.name)
        self.release_blocks(node)

    def teardown(self) -> None:
        self.stopping.set()
        self.cni_agents.stop_all()

    def describe(self) -> dict[str, Any]:
        return {"vxlan": {"device": self.DEV, "vni": self.VNI, "mode": self.settings["mode"],
                          "pool": self.settings["pool"],
                          "blockSize": self.settings["block_size"]}}
