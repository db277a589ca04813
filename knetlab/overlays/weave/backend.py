"""The ``weave`` data plane: the cluster-side half (what weave-kube's DaemonSet does).

Per node it starts the weave router (``router``) in the node's namespace: the first node
as the IPAM seed, every later one given a single peer (the node started just before it)
so that it learns the rest of the mesh by gossip, as ``weave launch <one peer>`` does. It
waits until the router has address space and its bridge is exposed, then hands the
kubelet a CNI config: the ``weave-net`` plugin (as weave's own CNI config names it) with
the bridge plugin's options (on the ``weave`` bridge, hairpin, gateway) and the
``weave-ipam`` IPAM plugin asking that router. ``weave-net`` is a thin client of the
router, which runs knetlab's bridge plugin warm (knetlab/cni/agent.py: a pod's CNI ADD costs
~5 ms of CPU instead of ~16 for a Python plugin process). ``sync`` waits until every
router has an established connection (TCP control + UDP heartbeats) to every other one and
all agree on the ring.

Weave's fast data path (``fastdp``) is kernel VXLAN through the Open vSwitch kernel
datapath; this kernel has no such datapath, so, as weave does then, everything runs in
the sleeve (userspace, UDP 6784); ``knetlab status`` says so. Routers that exit are started
again after a doubling back-off (``knetlab.watchdog``), as the DaemonSet's kubelet does.
A removed node's address ranges go to a remaining router (weave's ``rmpeer``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from knetlab import kernel
from knetlab.daemon import Daemon
from knetlab.dataplane import Backend, register
from knetlab.errors import KnetlabError
from knetlab.overlays.weave.ipam_plugin import ask
from knetlab.watchdog import Watchdog

log = logging.getLogger("knetlab.weave")

if TYPE_CHECKING:
    from knetlab.nodes.k8snode import K8sNode
    from knetlab.rundir import RunDir
    from knetlab.topologies.fields import Fields
    from knetlab.topologies.schema import ClusterSpec

SYNC_TIMEOUT = 20.0
WEAVE_MTU = 1376  # weave's own default; fast anyway with offload (see sleeve)


class WeaveRouter(Daemon):
    name = "weave-router"
    ready_timeout = 20.0

    def __init__(self, node: K8sNode, peers: list[str], seed: bool, settings: dict[str, Any],
                 password_file: Path | None) -> None:
        super().__init__(node.rundir, node.name, node.netns)
        self.node, self.peers, self.seed = node, peers, seed
        self.settings, self.password_file = settings, password_file

    def command(self) -> list[str]:
        argv = [sys.executable, "-m", "knetlab.overlays.weave.router", "--run-dir",
                str(self.dir), "--name", self.node.name, "--addr", self.node.node_ip,
                "--range", self.settings["ipallocRange"], "--mtu", str(self.settings["mtu"])]
        for peer in self.peers:
            argv += ["--peer", peer]
        if self.seed:
            argv.append("--seed")
        if not self.settings["offload"]:
            argv.append("--no-offload")
        if self.password_file:
            argv += ["--password-file", str(self.password_file)]
        return argv

    def is_ready(self) -> bool:
        return (self.dir / "ready").exists()

    def start(self, wait: bool = True) -> None:
        (self.dir / "ready").unlink(missing_ok=True)
        super().start(wait)

    @property
    def socket(self) -> Path:
        return self.dir / "weave.sock"

    def status(self) -> dict[str, Any] | None:
        return read_status(self.dir)


def read_status(router_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((router_dir / "status.json").read_text())
    except (OSError, ValueError):
        return None


def router_dir(rundir: RunDir, node: str) -> Path:
    return rundir.path / "daemons" / node / WeaveRouter.name


def fastdp_note() -> str:
    answer = kernel.probe("openvswitch")
    if answer.present:
        return "fastdp: not implemented by knetlab (the kernel has the OVS datapath); sleeve"
    return (f"fastdp unavailable: no Open vSwitch kernel datapath ({answer.how}); "
            "using sleeve (userspace, UDP 6784), as weave falls back to")


@register
class WeaveBackend(Backend):
    name = "weave"
    section: ClassVar[str | None] = "weave"
    kernel_features: ClassVar[tuple[str, ...]] = ("bridge", "tun")
    cni_plugins: ClassVar[tuple[str, ...]] = ("weave-net", "weave-ipam")

    @classmethod
    def validate(cls, spec: ClusterSpec, f: Fields) -> dict[str, Any]:
        f.only(["password", "mtu", "ipallocRange", "offload"])
        net = f.cidr("ipallocRange", str(spec.pod_cidr))
        for name, other in (("underlay.cidr", spec.underlay.cidr),
                            ("serviceCIDR", spec.service_cidr)):
            if net.overlaps(other):
                raise f.error("ipallocRange", f"{net} overlaps {name} {other}",
                              "use weave's default 10.32.0.0/12 (and podCIDR: 10.32.0.0/12)")
        if net.prefixlen > 24:
            raise f.error("ipallocRange", f"{net} is too small to split among peers",
                          "use a /24 or larger, such as 10.32.0.0/12")
        password = f.raw("password")
        if password is not None and (not isinstance(password, str) or not password):
            raise f.error("password", "must be a non-empty string",
                          "write password: some-secret (quote it if it looks like a number)")
        return {"ipallocRange": str(net), "mtu": f.int("mtu", WEAVE_MTU, lo=576, hi=65000),
                "offload": f.bool("offload", True), "password": password}

    def __init__(self, cluster: Any) -> None:
        super().__init__(cluster)
        self.routers: dict[str, WeaveRouter] = {}
        self.order: list[str] = []  # nodes in the order their routers joined
        self.lock = threading.RLock()
        self.watchdog = Watchdog("weave-daemonset", self.lock, lambda: dict(self.routers),
                                 self._restart)
        self.password_file: Path | None = None

    def setup(self) -> None:
        if self.settings["password"]:
            # A file readable by root only, never on a command line (ps would show it).
            self.password_file = self.cluster.rundir.path / "weave-password"
            fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(self.settings["password"])

    def _router(self, node: K8sNode, peers: list[str], seed: bool) -> WeaveRouter:
        return WeaveRouter(node, peers, seed, self.settings, self.password_file)

    def setup_node(self, node: K8sNode) -> None:
        with self.lock:
            live = [n for n in self.order if n in self.routers]
            # One peer is enough: the router learns the others by gossip.
            peers = [self.cluster.node(live[-1]).node_ip] if live else []
            router = self._router(node, peers, seed=not self.order)
            router.start()
            self.routers[node.name] = router
            if node.name not in self.order:
                self.order.append(node.name)

    def cni_config(self, node: K8sNode) -> dict[str, Any]:
        router = self.routers[node.name]
        return {"cniVersion": "1.0.0", "name": "weave", "plugins": [{
            "type": "weave-net", "bridge": "weave", "isGateway": True, "isDefaultGateway": True,
            "hairpinMode": True, "mtu": self.settings["mtu"],
            "ipam": {"type": "weave-ipam", "socket": str(router.socket)}}]}

    # -- convergence ---------------------------------------------------------------------
    def problem(self) -> str | None:
        """What keeps the mesh from being complete, or None."""
        names = set(self.routers)
        rings = set()
        for name, router in self.routers.items():
            st = router.status()
            if st is None:
                return f"router on {name} has written no status yet"
            est = {c["peer"] for c in st["connections"] if c["state"] == "established"}
            if est != names - {name}:
                return (f"router on {name} has established connections to "
                        f"{sorted(est) or 'none'}, expected {sorted(names - {name})}")
            rings.add(json.dumps(st["ipam"]["ring"], sort_keys=True))
        if len(rings) > 1:
            return f"routers disagree on the IPAM ring: {sorted(rings)}"
        return None

    def sync(self) -> None:
        deadline = time.monotonic() + SYNC_TIMEOUT + 0.5 * len(self.routers)
        while (why := self.problem()) is not None:
            if time.monotonic() > deadline:
                raise KnetlabError(f"weave mesh did not form: {why}")
            time.sleep(0.1)
        self.watchdog.start()

    def _restart(self, name: str) -> int:
        node = self.cluster.node(name)
        old = self.routers[name]  # stays listed until replaced: callers may look it up
        old.stop()
        others = [self.cluster.node(n).node_ip for n in self.order
                  if n in self.routers and n != name]
        router = self._router(node, others[-1:], seed=old.seed)
        router.start()
        self.routers[name] = router
        assert router.pid
        return router.pid

    def remove_node(self, node: K8sNode) -> None:
        with self.lock:
            router = self.routers.pop(node.name, None)
            if router:
                router.stop()
            # weave rmpeer: a remaining router takes the departed peer's address ranges.
            for other in self.routers.values():
                try:
                    ask(str(other.socket), {"op": "rmpeer", "peer": node.name})
                    break
                except Exception as exc:  # noqa: BLE001 - try the next router
                    log.warning("rmpeer %s through %s failed: %s", node.name, other.owner, exc)

    def teardown(self) -> None:
        self.watchdog.stop()
        with self.lock:
            for router in self.routers.values():
                router.stop()
            self.routers.clear()

    # -- what users see --------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        enc = "encrypted (NaCl secretbox)" if self.settings["password"] else "not encrypted"
        return {
            "weave": {"mode": "sleeve", "fastdp": fastdp_note(), "encryption": bool(
                self.settings["password"]), "mtu": self.settings["mtu"],
                "offload": self.settings["offload"],
                "ipallocRange": self.settings["ipallocRange"]},
            "summary": [f"weave: {fastdp_note()}",
                        f"weave: sleeve {enc}, MTU {self.settings['mtu']}, TSO offload "
                        f"{'on' if self.settings['offload'] else 'off'}, IPAM range "
                        f"{self.settings['ipallocRange']} split among "
                        f"{len(self.routers)} peers (knetlab weave status)"],
            "daemons": [{"name": r.name, "owner": n, "pid": r.pid}
                        for n, r in self.routers.items()]}

    def describe_node(self, node: K8sNode) -> dict[str, Any]:
        router = self.routers.get(node.name)
        st = router.status() if router else None
        return {"blocks": st["ipam"]["owned"] if st else []}


