"""The per-node NetworkPolicy agent (Felix's role): watch the API, render, one ``nft -f``.

``python -m knetlab.addons.netpolicy.agent --kubeconfig K --node N --node-netns PATH
--status-file F --rundir R``

Informers on Pods, Namespaces and NetworkPolicies only enqueue one key; one worker computes
the node's whole desired state (``model.compute``) and, when it differs from what it last
applied, replaces table ``inet knetlab-policy`` in the node's namespace in one transaction
(``render.render``). Level-triggered: labels changing, pods coming and going, namespaces
relabelled, policies edited are all just "something changed, recompute". A periodic check
re-applies the table if it went missing (someone flushed the ruleset). The agent runs in the
root namespace (the API server listens on the root's loopback) and enters the node's
namespace only for ``nft``. On a node whose pods are switched by OVS userspace or are
macvlan children of its uplink the same chains are also put into each selected pod's
namespace (found through the lab's run dir), since the node's hooks never see that
traffic.

Each applied state is written to the status file (JSON: fingerprint, policies, endpoints,
seconds the apply took), which tests and the benchmark read.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from knetlab import pyagent, shell
from knetlab.addons.netpolicy import model, render
from knetlab.errors import KnetlabError
from knetlab.kube.client import Informer, KubeClient, WorkQueue
from knetlab.rundir import RunDir

log = logging.getLogger("knetlab.addons.netpolicy.agent")
SYNC_KEY, RESYNC_KEY = "sync", "resync"
RESYNC_PERIOD = 30.0
#: at most one sync per this many seconds: a burst of pod events costs one recompute
MIN_SYNC_INTERVAL = 0.1


class PolicyAgent:
    def __init__(self, client: KubeClient, node: str, node_netns: str,
                 status_file: Path | None = None, rundir: Path | None = None) -> None:
        self.node, self.node_netns, self.status_file = node, node_netns, status_file
        self.rundir = rundir  # the lab's run dir: where pods' sandboxes are found
        self.queue = WorkQueue()
        self.informers = {r: Informer(client, r) for r in ("pods", "namespaces",
                                                            "networkpolicies")}
        for name, inf in self.informers.items():
            inf.add_handler(self._on_pod if name == "pods" else
                            (lambda _kind, _obj, _old: self.queue.add(SYNC_KEY)))
        self.applied = ""  # fingerprint of the state in the kernel
        self._seen: list[str] = []  # the policies (ns/name@resourceVersion) last reported
        #: pod traffic does not cross this node's IP hooks (OVS userspace, macvlan): enforce
        #: in the pods; ``pod_side_reason`` says what showed it
        self.pod_side, self.pod_side_reason = False, ""
        #: what a pod sends to its node's gateway crosses the node's IP stack (macvlan's shim,
        #: not OVS's gw): the pod's table leaves it to the node's (``render_pod(via_node)``)
        self.via_node = False
        self.pod_tables: dict[str, tuple[str, str]] = {}  # pod key -> (netns, script hash)
        self.compute_seconds = 0.0  # how long the last recompute took
        self._stop = threading.Event()

    def _on_pod(self, kind: str, obj: dict, old: dict | None) -> None:
        """Most pod updates are status heartbeats (conditions, container states): only a
        change of what policy looks at (address, labels, node, phase, ports) is work."""
        if kind != "MODIFIED" or old is None or model.pod_info(obj) != model.pod_info(old):
            self.queue.add(SYNC_KEY)

    def desired(self) -> model.Desired:
        return model.compute(self.node, self.informers["pods"].items(),
                             self.informers["namespaces"].items(),
                             self.informers["networkpolicies"].items())

    def sync(self, verify: bool = False) -> None:
        """Apply the desired state if it changed (and, with ``verify``, if the table went
        missing: checking costs an exec, so only the periodic resync does it)."""
        t0 = time.monotonic()
        desired = self.desired()
        fp = model.fingerprint(desired)
        self.compute_seconds = time.monotonic() - t0
        seen = sorted(f"{p['metadata'].get('namespace')}/{p['metadata']['name']}@"
                      f"{p['metadata'].get('resourceVersion', '')}"
                      for p in self.informers["networkpolicies"].items())
        took = None
        if fp != self.applied or (verify and not self.table_present()):
            t0 = time.monotonic()
            shell.run(["nft", "-f", "-"], netns=self.node_netns,
                      input=render.render(desired, self.pod_side),
                      context=f"policy agent of {self.node}: nft -f")
            took = time.monotonic() - t0
            self.applied = fp
            log.info("applied %d policy chains, %d endpoints in %.3f s (%s)",
                     len(desired.chains), len(desired.endpoints), took, fp)
        if self.pod_side:
            self.sync_pods(desired)
        if self.status_file is not None and (took is not None or seen != self._seen):
            self._seen = seen
            for err in desired.errors:
                log.warning("policy not understood, enforced as allowing nothing: %s", err)
            status = {"fingerprint": fp, "seen": seen, "policies": desired.policy_names(),
                      "errors": desired.errors,
                      "enforced_in": "pods" if self.pod_side else "node",
                      "pod_side_reason": self.pod_side_reason,
                      "endpoints": sorted(e.pod.key for e in desired.endpoints),
                      "apply_seconds": round(took, 4) if took is not None else None,
                      "time": time.time()}
            tmp = self.status_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(status))
            tmp.replace(self.status_file)

    def table_present(self) -> bool:
        res = shell.run(["nft", "list", "tables", render.FAMILY], netns=self.node_netns,
                        check=False)
        return f"table {render.FAMILY} {render.TABLE}" in res.stdout

    def sync_pods(self, desired: model.Desired) -> None:
        """Pod-side enforcement: one table per selected local pod, in its own namespace;
        removed from pods no longer selected. A pod that cannot be entered (just gone,
        not started yet) is retried at the next sync."""
        from knetlab.kube.runtime import sandbox_netns
        node_addresses = self.node_addresses()
        wanted: dict[str, tuple[str, str]] = {}
        for ep in desired.endpoints:
            pod = self.informers["pods"].get(ep.pod.name, ep.pod.namespace)
            try:
                netns = sandbox_netns(self.rundir, pod) if pod else ""
            except KnetlabError:
                netns = ""
            if not netns:
                self.queue.add_after(SYNC_KEY, 1.0)
                continue
            script = render.render_pod(desired, ep, node_addresses, self.via_node)
            digest = model.short_hash(netns + script)
            wanted[ep.pod.key] = (netns, digest)
            if self.pod_tables.get(ep.pod.key) != (netns, digest):
                res = shell.run(["nft", "-f", "-"], netns=netns, input=script, check=False)
                if not res.ok:
                    log.warning("pod %s: %s", ep.pod.key, res.stderr.strip())
                    self.queue.add_after(SYNC_KEY, 1.0)
                    continue
                self.pod_tables[ep.pod.key] = (netns, digest)
        for key in [k for k in self.pod_tables if k not in wanted]:
            netns, _ = self.pod_tables.pop(key)
            shell.run(["nft", "-f", "-"], netns=netns, input=render.render_delete(),
                      check=False)  # the pod may be gone, and its namespace with it

    def node_addresses(self) -> list[str]:
        res = shell.run(["ip", "-4", "-j", "addr", "show"], netns=self.node_netns, check=False)
        try:
            return [a["local"] for link in json.loads(res.stdout or "[]")
                    for a in link.get("addr_info", []) if not a["local"].startswith("127.")]
        except (ValueError, KeyError):
            return []

    def detect_pod_side(self) -> None:
        """Some data planes switch pod traffic where the node's IP hooks never see it: the
        node table cannot filter it, so each selected pod gets the same chains in its own
        namespace (``render.render_pod``). Seen from the node, without knowing the plane:

        - OVS's userspace datapath: an ``ovs-netdev`` device in the node;
        - macvlan: the pods' eth0 are macvlan children of the node's uplink, switched by the
          uplink's macvlan bridge and the wire; the node holds a macvlan of its own (the shim
          through which it reaches its pods), the one child a pod-less node can show.
        """
        self.pod_side_reason, self.via_node = self.pod_side_cause()
        self.pod_side = bool(self.pod_side_reason) and self.rundir is not None
        if self.pod_side:
            log.info("pods of %s are switched outside its IP stack (%s): enforcing "
                     "NetworkPolicy in the pods' namespaces", self.node, self.pod_side_reason)
        elif self.pod_side_reason:
            log.warning("pods of %s are switched outside its IP stack (%s), and without "
                        "--rundir their namespaces are unknown: NetworkPolicy is NOT enforced",
                        self.node, self.pod_side_reason)

    def pod_side_cause(self) -> tuple[str, bool]:
        """Why this node's pod traffic bypasses its IP hooks ('' when it does not), and
        whether what pods route through the node does cross its hooks."""
        if shell.run(["ip", "link", "show", "ovs-netdev"], netns=self.node_netns,
                     check=False).ok:
            return "OVS userspace datapath: ovs-netdev", False
        res = shell.run(["ip", "-o", "link", "show", "type", "macvlan"], netns=self.node_netns,
                        check=False)
        names = [line.split(":", 2)[1].strip().split("@")[0]
                 for line in res.stdout.splitlines() if line.count(":") >= 2]
        if res.ok and names:
            return f"macvlan: pods are children of the uplink, like {names[0]}", True
        return "", False

    def enable_bridge_netfilter(self) -> None:
        """Bridged (same-node) IPv4 must cross the forward hook: br_netfilter's switch is on
        by default in a new namespace; say so loudly if this kernel lacks it."""
        res = shell.run(["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"],
                        netns=self.node_netns, check=False)
        if not res.ok:
            log.warning("no br_netfilter here (%s): traffic between pods on one bridge "
                        "is not subject to policy", res.stderr.strip())

    def _work(self) -> None:
        while (key := self.queue.get()) is not None:
            try:
                self.sync(verify=key == RESYNC_KEY)
            except Exception:  # noqa: BLE001 - retry; the next change or resync heals it
                log.exception("sync failed")
                self.queue.add_after(key, 1.0)
            finally:
                # events meanwhile re-queue the key; a costly recompute (1,000s of policies)
                # is not run back to back: at most half of a core per agent
                self._stop.wait(max(MIN_SYNC_INTERVAL, self.compute_seconds))
                self.queue.done(key)

    def run(self, ready_file: Path | None = None) -> None:
        self.enable_bridge_netfilter()
        self.detect_pod_side()
        for inf in self.informers.values():
            inf.start()
        for name, inf in self.informers.items():
            if not inf.wait_synced(60):
                log.warning("%s informer not synced after 60 s; going on", name)
        try:
            self.sync(verify=True)  # ready means: this node's table is in place
        except Exception:  # noqa: BLE001 - the worker retries
            log.exception("first sync failed")
            self.queue.add_after(SYNC_KEY, 1.0)
        threading.Thread(target=self._work, name="sync", daemon=True).start()
        if ready_file is not None:
            ready_file.write_text(f"{os.getpid()}\n")
        while not self._stop.wait(RESYNC_PERIOD):
            self.queue.add(RESYNC_KEY)  # re-applies only if the table went missing

    def stop(self, remove_table: bool) -> None:
        self._stop.set()
        for inf in self.informers.values():
            inf.stop()
        self.queue.shutdown()
        if remove_table:
            shell.run(["nft", "-f", "-"], netns=self.node_netns, input=render.render_delete(),
                      check=False)


class PolicyAgentDaemon(pyagent.PyAgent):
    """The policy agent of node ``owner``; ready after its first sync."""

    name = "policy-agent"
    ready_timeout = 60.0

    def __init__(self, rundir: RunDir, owner: str, *, kubeconfig: str | Path,
                 node_netns: str) -> None:
        super().__init__(rundir, owner)
        self.kubeconfig, self.node_netns = kubeconfig, node_netns
        self.status_file = self.dir / "status.json"
        self.ready_file = self.dir / "ready"

    def command(self) -> list[str]:
        self.ready_file.unlink(missing_ok=True)
        return [*pyagent.argv("knetlab.addons.netpolicy.agent"),
                "--kubeconfig", str(self.kubeconfig), "--node", self.owner,
                "--node-netns", self.node_netns, "--status-file", str(self.status_file),
                "--ready-file", str(self.ready_file), "--dir", str(self.dir),
                "--rundir", str(self.rundir.path)]

    def match(self) -> str:
        return f"--dir {self.dir}"

    def is_ready(self) -> bool:
        return self.ready_file.exists()

    def status(self) -> dict[str, object]:
        try:
            return json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            return {}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="knetlab.addons.netpolicy.agent",
                                description=__doc__.split("\n")[0])
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--node", required=True)
    p.add_argument("--node-netns", required=True)
    p.add_argument("--status-file", default="")
    p.add_argument("--ready-file", default="")
    p.add_argument("--dir", default="", help="the daemon's own directory (identifies it)")
    p.add_argument("--rundir", default="", help="the lab's run dir (pods' sandboxes)")
    p.add_argument("--remove-table", action="store_true",
                   help="remove the rules when the agent stops (default: keep enforcing, as "
                        "Felix does across restarts)")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    agent = PolicyAgent(KubeClient.from_kubeconfig(args.kubeconfig), args.node,
                        args.node_netns, Path(args.status_file) if args.status_file else None,
                        Path(args.rundir) if args.rundir else None)

    def on_term(_sig: int, _frame: object) -> None:
        agent._stop.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        agent.run(Path(args.ready_file) if args.ready_file else None)
    finally:
        agent.stop(remove_table=args.remove_table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
