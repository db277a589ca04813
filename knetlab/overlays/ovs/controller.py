"""The os-ken OpenFlow 1.3 application programming every node's ``br-int``.

Design notes:
- Membership comes from the lab's etcd (``/knetlab/ovs/nodes/*`` written by the backend,
  ``/knetlab/ovs/pods/*``, one per pod attachment, by the ``ovs`` CNI plugin), never from
  flooding or packet-ins.
- Level-triggered: on every switch (re)connect the controller dumps the switch's flows
  and makes them exactly ``pipeline.desired_flows`` (delete cookies not desired, add
  cookies missing). On a change under ``/knetlab/ovs/`` (one etcd watch stream, kept
  open) it diffs against what it last made the switch hold; every ``RESYNC_SECONDS`` it
  reads the registry whole and dumps every switch again to repair drift. A restart therefore never
  duplicates a flow, and while it is down the switches (fail_mode=secure) keep forwarding.
- After each sync that sent a flow-mod, a barrier; its reply marks the switch synced to
  the etcd revision read in ``status.json``, which ``knetlab status`` and the CNI plugin
  (waiting for its pod's flows) read. A switch with nothing to change and no barrier
  outstanding is synced at once (a new pod changes only its own node's switch).
- The registry is read whole on start, re-dump and reconnect, and kept current in between
  from the watch's events (``Registry``): a new pod costs etcd a put and one event, no
  range read; the desired flows are computed from the whole registry every time.
- os-ken swallows errors of its threads: every loop here logs its own exceptions.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import DEAD_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from os_ken.lib import hub
from os_ken.ofproto import ofproto_v1_3

from knetlab.cni.plugins.ovs import OVS_NODES, OVS_PODS
from knetlab.cni.types import loads
from knetlab.overlays.ovs.pipeline import Flow, NodeInfo, PodInfo, desired_flows
from knetlab.store import Store, StoreError, prefix_end
from knetlab.storewire import b64, unb64

LOG = logging.getLogger("knetlab.ovs.controller")
RESYNC_SECONDS = 10.0
REGISTRY = "/knetlab/ovs/"  # OVS_NODES and OVS_PODS
#: set by knetlab.overlays.ovs.controllerd before os-ken instantiates the app
CONFIG: dict[str, Any] = {}


@dataclass
class Switch:
    dp: Any
    node: str = ""
    installed: set[int] = field(default_factory=set)  # cookies the switch holds
    dump: list[Any] = field(default_factory=list)
    dumped: bool = False  # the first dump arrived: ``installed`` is the switch's truth
    synced_rev: int = -1
    barriers: int = 0  # sent, not answered yet
    adds: int = 0
    deletes: int = 0
    connected_at: float = field(default_factory=time.time)


class Registry:
    """The controller's copy of the registry (``/knetlab/ovs/``): read whole, then kept
    current from the watch's events (each carries the key and its new value), so that a
    new pod costs etcd no range read; read whole again on every re-dump and reconnect."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.values: dict[str, dict[str, Any]] = {}
        self.rev = -1  # not read yet

    def load(self) -> int:
        self.rev, kvs = self.store.range(REGISTRY, prefix=True)
        self.values = {k: v for k, v, _r, _l in kvs}
        return self.rev

    def apply(self, result: dict[str, Any]) -> None:
        """One watch response's events (etcd JSON: PUT is the default type)."""
        for event in result.get("events", []):
            kv = event.get("kv", {})
            key = unb64(kv.get("key", "")).decode()
            if event.get("type") == "DELETE":
                self.values.pop(key, None)
            else:
                self.values[key] = loads(unb64(kv.get("value", "")))
        self.rev = int(result["header"]["revision"])

    def membership(self) -> tuple[int, dict[int, NodeInfo], list[NodeInfo], list[PodInfo]]:
        """(revision, nodes by dpid, nodes, pods)."""
        if self.rev < 0:
            self.load()
        kvs = sorted(self.values.items())
        nodes = [NodeInfo(v["name"], v["ip"], v["podCIDR"], v["gateway"], int(v["dpid"]))
                 for k, v in kvs if k.startswith(OVS_NODES)]
        pods = [PodInfo(f"{v['namespace']}/{v['name']}" if v.get("namespace") else v["name"],
                        v["node"], v["ip"]) for k, v in kvs if k.startswith(OVS_PODS)]
        return self.rev, {n.dpid: n for n in nodes}, nodes, pods


class OvsController(app_manager.OSKenApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.store = Store.from_arg(CONFIG["store"])
        self.registry = Registry(self.store)
        self.vni = int(CONFIG["vni"])
        self.status_file = Path(CONFIG["status"])
        self.switches: dict[int, Switch] = {}
        self.lock = threading.RLock()
        self.pending: dict[int, tuple[int, int]] = {}  # barrier xid -> (dpid, revision)
        self._write_status()
        hub.spawn(self._watch_loop)

    # -- switch life cycle -------------------------------------------------------
    @set_ev_cls(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER, DEAD_DISPATCHER])
    def _state_change(self, ev: Any) -> None:
        dp = ev.datapath
        with self.lock:
            if ev.state == MAIN_DISPATCHER:
                LOG.info("switch %016x connected", dp.id)
                # No asynchronous messages: nothing here reads packet-ins, flow removals
                # or port status, and the last came for every pod port added, removed or
                # changed (the switch composing it, this process parsing it).
                dp.send_msg(dp.ofproto_parser.OFPSetAsync(dp, [0, 0], [0, 0], [0, 0]))
                self.switches[dp.id] = Switch(dp)
                self._request_dump(self.switches[dp.id])
            elif dp.id in self.switches and self.switches[dp.id].dp is dp:
                LOG.info("switch %016x (%s) disconnected", dp.id, self.switches[dp.id].node)
                del self.switches[dp.id]
            self._write_status()

    def _request_dump(self, sw: Switch) -> None:
        dp = sw.dp
        ofp, parser = dp.ofproto, dp.ofproto_parser
        sw.dump = []
        dp.send_msg(parser.OFPFlowStatsRequest(dp, 0, ofp.OFPTT_ALL, ofp.OFPP_ANY,
                                               ofp.OFPG_ANY, 0, 0, parser.OFPMatch()))

    @set_ev_cls(ofp_event.EventOFPFlowStatsReply, MAIN_DISPATCHER)
    def _flow_stats(self, ev: Any) -> None:
        with self.lock:
            sw = self.switches.get(ev.msg.datapath.id)
            if sw is None:
                return
            sw.dump.extend(ev.msg.body)
            if ev.msg.flags & ev.msg.datapath.ofproto.OFPMPF_REPLY_MORE:
                return
            cookies = [s.cookie for s in sw.dump]
            # A cookie seen twice (someone added a copy by hand) is deleted and re-added.
            dupes = {c for c in cookies if cookies.count(c) > 1}
            sw.installed = set(cookies) - dupes
            for cookie in dupes:
                self._delete(sw, cookie)
            sw.dumped = True
            self._reconcile([sw])

    @set_ev_cls(ofp_event.EventOFPBarrierReply, MAIN_DISPATCHER)
    def _barrier(self, ev: Any) -> None:
        with self.lock:
            dpid, rev = self.pending.pop(ev.msg.xid, (None, -1))
            sw = self.switches.get(dpid) if dpid is not None else None
            if sw is not None:
                sw.synced_rev = max(sw.synced_rev, rev)
                sw.barriers -= 1
                self._write_status()

    @set_ev_cls(ofp_event.EventOFPErrorMsg, MAIN_DISPATCHER)
    def _error(self, ev: Any) -> None:
        LOG.error("switch %016x refused a message: type %s code %s", ev.msg.datapath.id,
                  ev.msg.type, ev.msg.code)

    # -- reconciliation ------------------------------------------------------------
    def _reconcile(self, switches: list[Switch]) -> None:
        if not switches:
            return
        rev, by_dpid, nodes, pods = self.registry.membership()
        synced_now = False
        for sw in switches:
            me = by_dpid.get(sw.dp.id)
            if me is None:
                LOG.warning("switch %016x belongs to no node in the store (yet, or any more); "
                            "not programming it", sw.dp.id)
                continue
            sw.node = me.name
            desired = {f.cookie: f for f in desired_flows(me, nodes, pods, self.vni)}
            stale, missing = sw.installed - desired.keys(), desired.keys() - sw.installed
            if not stale and not missing and not sw.barriers:
                sw.synced_rev = max(sw.synced_rev, rev)  # holds the desired set already
                synced_now = True
                continue
            for cookie in sorted(stale):
                self._delete(sw, cookie)
            for cookie in sorted(missing):
                self._add(sw, desired[cookie])
            sw.installed = set(desired)
            barrier = sw.dp.ofproto_parser.OFPBarrierRequest(sw.dp)
            sw.dp.set_xid(barrier)
            self.pending[barrier.xid] = (sw.dp.id, rev)
            sw.barriers += 1
            sw.dp.send_msg(barrier)
        if synced_now and not any(sw.barriers for sw in self.switches.values()):
            self._write_status()  # else the last barrier reply writes it

    def _delete(self, sw: Switch, cookie: int) -> None:
        dp = sw.dp
        ofp, parser = dp.ofproto, dp.ofproto_parser
        dp.send_msg(parser.OFPFlowMod(dp, cookie=cookie, cookie_mask=0xFFFFFFFFFFFFFFFF,
                                      table_id=ofp.OFPTT_ALL, command=ofp.OFPFC_DELETE,
                                      out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY,
                                      match=parser.OFPMatch()))
        sw.deletes += 1

    def _add(self, sw: Switch, flow: Flow) -> None:
        dp = sw.dp
        ofp, parser = dp.ofproto, dp.ofproto_parser
        dp.send_msg(parser.OFPFlowMod(dp, cookie=flow.cookie, table_id=flow.table.id,
                                      command=ofp.OFPFC_ADD, priority=flow.priority,
                                      match=parser.OFPMatch(**dict(flow.match)),
                                      instructions=instructions(dp, flow)))
        sw.adds += 1

    def _watch_loop(self) -> None:
        # A native thread (controllerd runs os-ken's native hub): it may block in the watch.
        # One etcd watch stream, kept open: a new watch per change cost etcd and this
        # process a connection and a watch set-up per pod.
        seen = -1
        while True:
            try:
                seen = self._watch(seen)
            except Exception:  # noqa: BLE001 - os-ken would swallow it silently
                LOG.exception("store watch failed; retrying")
                time.sleep(1.0)

    def _watch(self, seen: int) -> int:
        """Reconcile on every change under REGISTRY for RESYNC_SECONDS, then re-dump every
        switch; the last revision reconciled (-1: read everything again)."""
        if seen < 0:
            with self.lock:
                seen = self.registry.load()
            self._sync(full=False)
        conn = self.store._connect(RESYNC_SECONDS)  # noqa: SLF001 - the store's transport
        try:
            conn.send("/v3/watch", {"create_request": {
                "key": b64(REGISTRY), "range_end": b64(prefix_end(REGISTRY)),
                "start_revision": str(seen + 1)}})
            status, headers = conn.response_head()
            if status != 200 or "chunked" not in headers.get("transfer-encoding", ""):
                raise StoreError(f"etcd watch {REGISTRY}: HTTP {status}")
            pending, deadline = b"", time.monotonic() + RESYNC_SECONDS
            while True:
                left = deadline - time.monotonic()
                try:
                    if left <= 0:
                        raise TimeoutError
                    conn.settimeout(left)
                    chunk = conn.chunk()
                except TimeoutError:  # time for a re-dump; then a new stream from here
                    with self.lock:
                        seen = self.registry.load()
                    self._sync(full=True)
                    return seen
                if chunk is None:
                    raise StoreError(f"etcd watch {REGISTRY}: the stream ended")
                pending += chunk
                while b"\n" in pending:  # one JSON message per line
                    line, pending = pending.split(b"\n", 1)
                    res = loads(line).get("result", {}) if line.strip() else {}
                    if int(res.get("compact_revision", 0) or 0) or res.get("canceled"):
                        return -1  # events lost: start over from a full read
                    if res.get("events"):
                        with self.lock:
                            self.registry.apply(res)
                        seen = self.registry.rev
                        self._sync(full=False)
        finally:
            conn.close()

    def _sync(self, full: bool) -> None:
        """Re-dump every switch (repairs drift), or reconcile the dumped ones to the store."""
        with self.lock:
            if full:
                for sw in list(self.switches.values()):
                    self._request_dump(sw)
            else:
                self._reconcile([sw for sw in self.switches.values() if sw.dumped])

    # -- status ----------------------------------------------------------------------
    def _write_status(self) -> None:
        status = {"pid": os.getpid(), "time": time.time(), "switches": {
            sw.node or f"{dpid:016x}": {"dpid": f"{dpid:016x}", "flows": len(sw.installed),
                                        "synced_rev": sw.synced_rev, "adds": sw.adds,
                                        "deletes": sw.deletes, "since": sw.connected_at}
            for dpid, sw in self.switches.items()}}
        tmp = self.status_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(status, indent=1))
        tmp.replace(self.status_file)


def instructions(dp: Any, flow: Flow) -> list[Any]:
    """The os-ken instructions for a pipeline flow (apply-actions, then goto-table)."""
    ofp, parser = dp.ofproto, dp.ofproto_parser
    actions, goto = [], []
    for act in flow.actions:
        kind = act[0]
        if kind == "set":
            actions.append(parser.OFPActionSetField(**{act[1]: act[2]}))
        elif kind == "move":
            actions.append(parser.NXActionRegMove(src_field=act[1], dst_field=act[2],
                                                  n_bits=act[3], src_ofs=0, dst_ofs=0))
        elif kind == "output":
            port = ofp.OFPP_IN_PORT if act[1] == "in_port" else act[1]
            actions.append(parser.OFPActionOutput(port))
        elif kind == "goto":
            goto.append(parser.OFPInstructionGotoTable(act[1].id))
        else:
            raise ValueError(f"unknown pipeline action {act!r}")
    out = [parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, actions)] if actions else []
    return out + goto
