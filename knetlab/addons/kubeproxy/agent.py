"""The kube-proxy of one node: watch Services and EndpointSlices, render them in one mode.

``python -m knetlab.addons.kubeproxy --kubeconfig K --node N --netns PATH --node-ip IP
--cluster-cidr CIDR --service-cidr CIDR --mode iptables --dir DIR [--api-port PORT]``

Threads: two informers (Services, EndpointSlices) whose handlers only set a flag; one sync
thread that does everything else. The process runs in the root namespace (the API server is
on its 127.0.0.1) and the sync thread enters the node's namespace once at start with
setns(2), so every rule, route, socket and program the proxier makes is the node's (threads
a proxier starts from the sync thread are there too).

Level-triggered, as kube-proxy: on a change the sync thread waits ``--min-sync-period``
(changes arriving meanwhile ride along), builds the whole ``ProxyState`` from the caches and
hands the proxier the keys of the ServicePorts that differ from the last state it applied
(a partial sync), or None for a full sync: the first, every ``--full-sync-period`` and after
any failure. A failed sync is logged and retried with back-off; the previous rules stay.

What the agent writes in ``--dir``: ``ready`` (after the first successful sync),
``status.json`` (mode, sync counts and timings, the last error) and reads ``inject-rules``
(a test hook: raw lines the iptables proxier adds to the nat table, so a test can make a sync
fail on purpose).
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from knetlab.addons.kubeproxy import conntrack
from knetlab.addons.kubeproxy.apirelay import ApiServerRelay
from knetlab.addons.kubeproxy.model import ProxyState, build_state, changed_keys
from knetlab.addons.kubeproxy.proxier import Proxier, proxier_class
from knetlab.errors import KnetlabError
from knetlab.kube.client import Informer, KubeClient
from knetlab.netns import entered

log = logging.getLogger("knetlab.addons.kubeproxy")


class Agent:
    def __init__(self, client: KubeClient, proxier: Proxier, *, netns: str, node_ips:
                 tuple[str, ...], cluster_cidr: str, service_cidr: str, state_dir: Path,
                 min_sync: float = 0.03, full_sync_period: float = 300.0) -> None:
        self.client, self.proxier, self.netns = client, proxier, netns
        self.node, self.node_ips = proxier.node, node_ips
        self.cluster_cidr, self.service_cidr = cluster_cidr, service_cidr
        self.dir = state_dir
        self.min_sync, self.full_sync_period = min_sync, full_sync_period
        self.services = Informer(client, "services")
        self.slices = Informer(client, "endpointslices")
        self._dirty = threading.Event()
        self._stop = threading.Event()
        for inf in (self.services, self.slices):
            inf.add_handler(lambda _kind, _obj, _old: self._dirty.set())
        self.applied: ProxyState | None = None
        self.status: dict[str, Any] = {"mode": proxier.mode, "node": self.node,
                                       "iptablesBackend": getattr(proxier, "backend", ""),
                                       "syncs": 0,
                                       "fullSyncs": 0, "failures": 0, "lastError": "",
                                       "services": 0}

    # -- life cycle ------------------------------------------------------------------
    def run(self) -> None:
        self.services.start()
        self.slices.start()
        died: list[bool] = []

        def sync() -> None:
            try:
                self._sync_loop()
            finally:
                if not self._stop.is_set():
                    died.append(True)
                self._stop.set()  # wakes the wait below: no once-a-second look at the thread

        threading.Thread(target=sync, name="sync", daemon=True).start()
        self._stop.wait()
        if died:
            raise RuntimeError("the sync thread died")

    def stop(self) -> None:
        self._stop.set()
        self._dirty.set()
        self.services.stop()
        self.slices.stop()

    # -- the sync thread (inside the node's namespace) ------------------------------------
    def _sync_loop(self) -> None:
        with entered(self.netns):
            self._ensure_service_route()
            self._ensure_bridge_netfilter()
            self.services.wait_synced(60)
            self.slices.wait_synced(60)
            backoff, full, last_full = 0.0, True, time.monotonic()
            self._dirty.set()
            while not self._stop.is_set():
                wait = backoff if backoff else max(
                    0.0, self.full_sync_period - (time.monotonic() - last_full))
                if not self._dirty.wait(wait) and not backoff:
                    full = True  # the periodic full sync
                if self._stop.is_set():
                    break
                time.sleep(self.min_sync)  # coalesce a burst of events into one sync
                self._dirty.clear()
                try:
                    if self._sync(full):
                        last_full = time.monotonic() if full else last_full
                    backoff, full = 0.0, False
                except Exception as exc:  # noqa: BLE001 - keep serving, retry with a full sync
                    backoff = min(max(backoff * 2, 0.5), 30.0)
                    full = True
                    self.status["failures"] += 1
                    self.status["lastError"] = str(exc).strip()[-2000:]
                    self._write_status()
                    log.error("sync failed (retrying in %.1fs; previous rules stay): %s",
                              backoff, exc)

    def _sync(self, full: bool) -> bool:
        state = build_state(self.node, self.node_ips, self.cluster_cidr,
                            self.services.items(), self.slices.items())
        changed = None if full else changed_keys(self.applied, state)
        if changed is not None and not changed:
            return False
        inject = self.dir / "inject-rules"
        if hasattr(self.proxier, "inject"):
            self.proxier.inject = (inject.read_text().splitlines()  # type: ignore[attr-defined]
                                   if inject.exists() else [])
        t0 = time.monotonic()
        self.proxier.sync(state, changed)
        ms = (time.monotonic() - t0) * 1000
        flushed = conntrack.delete_stale_udp(self.applied, state)
        self.applied = state
        self.status.update(syncs=self.status["syncs"] + 1, lastSyncMs=round(ms, 1),
                           lastSyncFull=changed is None, lastChanged=len(changed or ()),
                           services=len(state.services), lastError="",
                           conntrackDeletes=flushed, lastSyncAt=time.time())
        if changed is None:
            self.status["fullSyncs"] += 1
        self._write_status()
        (self.dir / "ready").touch()
        log.info("%s sync: %d service ports, %s changed, %.1f ms",
                 "full" if changed is None else "partial", len(state.services),
                 "all" if changed is None else len(changed), ms)
        return True

    def _ensure_service_route(self) -> None:
        """The node itself must route the service CIDR somewhere for its own connections
        to a ClusterIP to reach the OUTPUT hook (where they are DNATed); a real node has a
        default route. Here: via the device that holds the node IP."""
        from knetlab import shell
        out = shell.run(["ip", "-o", "-4", "addr", "show"]).stdout
        dev = next((line.split()[1] for line in out.splitlines()
                    if f" {self.node_ips[0]}/" in line), None)
        have = shell.run(["ip", "-4", "route", "show", "default"]).stdout.strip()
        if dev and not have:
            shell.run(["ip", "route", "replace", self.service_cidr, "dev", dev],
                      context="kube-proxy: route to the service CIDR")

    def _ensure_bridge_netfilter(self) -> None:
        """Bridged traffic must meet iptables (br_netfilter), or a reply between two pods
        on one bridge (a Service hop from one to the other, a hairpin) skips conntrack and
        is never un-DNATed. Built into this kernel (no modprobe) and on by default in a new
        namespace; set it anyway, as kube-proxy's installers do."""
        from knetlab import shell
        if not Path("/proc/sys/net/bridge").exists():
            log.warning("no br_netfilter in this kernel: replies between pods on one bridge "
                        "bypass the Service NAT")
            return
        shell.run(["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"], check=False)

    def _write_status(self) -> None:
        tmp = self.dir / "status.json.tmp"
        tmp.write_text(json.dumps({**self.status, "pid": os.getpid()}, indent=2))
        tmp.replace(self.dir / "status.json")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m knetlab.addons.kubeproxy",
                                description="knetlab's kube-proxy for one node")
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--node", required=True)
    p.add_argument("--netns", required=True, help="path of the node's network namespace")
    p.add_argument("--node-ip", action="append", required=True)
    p.add_argument("--cluster-cidr", required=True)
    p.add_argument("--service-cidr", required=True)
    p.add_argument("--mode", default="iptables")
    p.add_argument("--iptables-backend", default="legacy", choices=["legacy", "nft"])
    p.add_argument("--dir", required=True, help="status, ready and hook files")
    p.add_argument("--api-port", type=int, default=0,
                   help="the API server's port on 127.0.0.1: relay NODE_IP:6443 to it")
    p.add_argument("--min-sync-period", type=float, default=0.03)
    p.add_argument("--full-sync-period", type=float, default=300.0)
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["rules"]:
        return print_rules(argv[1:])
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    proxier = make_proxier(args.mode, args.node, args.iptables_backend,
                           str(Path(args.dir) / "xtables.lock"))
    agent = Agent(KubeClient.from_kubeconfig(args.kubeconfig), proxier, netns=args.netns,
                  node_ips=tuple(args.node_ip), cluster_cidr=args.cluster_cidr,
                  service_cidr=args.service_cidr, state_dir=Path(args.dir),
                  min_sync=args.min_sync_period, full_sync_period=args.full_sync_period)
    relay = None
    if args.api_port:
        relay = ApiServerRelay(args.netns, args.node_ip[0], args.api_port)
        try:
            relay.start()
        except OSError as exc:  # Services still work; only `kubernetes` lacks this node
            log.error("cannot relay the API server on %s:6443: %s", args.node_ip[0], exc)

    def on_term(_sig: int, _frame: object) -> None:
        agent.stop()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        agent.run()
    finally:
        if relay is not None:
            relay.stop()
    return 0


def make_proxier(mode: str, node: str, iptables_backend: str = "legacy",
                 lock_file: str | None = None) -> Proxier:
    """The mode's Proxier; modes that write iptables rules get the backend (and the node's
    xtables lock file) too."""
    cls = proxier_class(mode)
    params = inspect.signature(cls).parameters
    kwargs: dict[str, Any] = {}
    if "backend" in params:
        kwargs["backend"] = iptables_backend
    if "lock_file" in params and lock_file:
        kwargs["lock_file"] = lock_file
    return cls(node, log, **kwargs)


def print_rules(argv: list[str]) -> int:
    """``python -m knetlab.addons.kubeproxy rules MODE NODE [BACKEND]`` (run inside the
    node's namespace): the live ruleset of that mode, as ``knetlab proxy rules`` prints it."""
    mode, node = argv[0], argv[1]
    try:
        sys.stdout.write(make_proxier(mode, node, *argv[2:3]).rules())
    except KnetlabError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
