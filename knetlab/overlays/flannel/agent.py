"""flanneld for one node: ``python -m knetlab.overlays.flannel.agent --run-dir DIR ...``.

Runs inside the node's network namespace (started by the backend as a ``Daemon``). It
claims the node's lease in the lab's etcd, writes ``subnet.env``, then loops
level-triggered: reconcile the kernel against all leases on start, whenever a lease
changes (an etcd watch of ``/coreos.com/network/subnets/``), and every ``RESYNC`` seconds
(which repairs anything deleted by hand); it keeps its lease alive on the way.
Each pass records the peers it programmed in ``applied.json`` (the backend waits on it).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

from knetlab.overlays.flannel import kernel, subnet
from knetlab.store import Store, StoreError

log = logging.getLogger("flannel.agent")
RESYNC = 10.0  # seconds between unconditional reconciles (repairs), as flanneld's route check


def write_subnet_env(path: Path, local: kernel.Local, mtu: int) -> None:
    """The equivalent of /run/flannel/subnet.env, which flannel's CNI plugin reads."""
    net = ipaddress.ip_network(local.subnet)
    text = (f"FLANNEL_NETWORK={local.config['Network']}\n"
            f"FLANNEL_SUBNET={net.network_address + 1}/{net.prefixlen}\n"
            f"FLANNEL_MTU={mtu}\nFLANNEL_IPMASQ=true\n")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def backend_data(local: kernel.Local) -> dict[str, Any]:
    if local.btype == "vxlan":
        return {"VNI": local.config["Backend"]["VNI"], "VtepMAC": kernel.vtep_mac(local.ip)}
    return {}


def pod_mtu(local: kernel.Local) -> int:
    return local.underlay_mtu - {"vxlan": 50, "udp": 28}.get(local.btype, 0)


def run(args: argparse.Namespace) -> None:
    store = Store.from_arg(args.store)
    run_dir = Path(args.run_dir)
    local = kernel.Local(args.node, args.subnet, args.public_ip, args.iface,
                         subnet.get_config(store))
    lease = subnet.acquire(store, local.subnet, local.ip, local.btype, backend_data(local))
    log.info("acquired lease %s (%s backend, etcd lease %x)", local.subnet, local.btype,
             lease["lease"])
    write_subnet_env(run_dir / "subnet.env", local, pod_mtu(local))
    renewed, applied, masq_due = time.monotonic(), None, True
    while True:
        seen = 0
        try:
            if time.monotonic() - renewed > subnet.RENEW_EVERY:
                lease = subnet.renew(store, lease)
                renewed = time.monotonic()
            seen, leases = subnet.read_leases(store)
            if masq_due:  # at start and on the periodic repair pass, not on every change:
                kernel.reconcile_masq(local)  # the rules depend on no other node
                masq_due = False
            peers = kernel.reconcile(local, leases)
        except Exception:  # noqa: BLE001 - log and retry next pass: an agent must not die
            log.exception("reconcile failed; retrying")
            peers = None
        if peers is not None and peers != applied:
            log.info("programmed peers %s", ", ".join(peers) or "(none)")
        if peers is not None:
            _write_applied(run_dir / "applied.json", seen, peers)
            applied = peers
        try:
            if not seen:
                time.sleep(1.0)  # the store did not answer: try again soon
            elif store.wait(subnet.SUBNETS, seen, RESYNC) != seen:
                _settle(store, seen)
            else:
                masq_due = True
        except StoreError:
            log.exception("watching the leases failed; retrying")
            time.sleep(1.0)


def _settle(store: Store, rev: int, quiet: float = 0.1, limit: float = 0.5) -> None:
    """Let a burst of changes (a hundred nodes joining) land, then reconcile once: without
    this every agent reconciles once per joining node, O(N^2) passes at bring-up."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        now = store.wait(subnet.SUBNETS, rev, quiet)
        if now == rev:
            return
        rev = now


def _write_applied(path: Path, revision: int, peers: list[str]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"revision": revision, "peers": peers, "time": time.time()}))
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="flannel-agent")
    p.add_argument("--run-dir", required=True, help="this daemon's run dir")
    p.add_argument("--store", required=True, help="the lab's etcd (Store.to_arg)")
    p.add_argument("--node", required=True)
    p.add_argument("--subnet", required=True, help="the node's lease (its pod CIDR)")
    p.add_argument("--public-ip", required=True, help="node IP with prefix length")
    p.add_argument("--iface", required=True, help="the underlay uplink")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # flanneld keeps its lease on exit
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
