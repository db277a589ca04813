"""The os-ken OpenFlow 1.3 application programming every node's ``br-int``.

Design notes:
- Membership comes from the lab's etcd (``/knetlab/ovs/nodes/*`` written by the backend,
  ``/knetlab/ovs/pods/*``, one per pod attachment, by the ``ovs`` CNI plugin), never from
  flooding or packet-ins.
- Level-triggered: on every switch (re)connect the controller dumps the switch's flows
  and makes them exactly ``pipeline.desired_flows`` (delete cookies not desired, add
  cookies missing). On a change under ``/knetlab/ovs/`` (an etcd watch) it diffs against
  what it last made the switch hold;
  every ``RESYNC_SECONDS`` it dumps again to repair drift. A restart therefore never
  duplicates a flow, and while it is down the switches (fail_mode=secure) keep forwarding.
- After each sync a barrier; its reply marks the switch synced to the etcd revision read in
  ``status.json``, which ``knetlab status`` and the CNI plugin (waiting for its pod's
  flows) read.
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
from knetlab.overlays.ovs.pipeline import Flow, NodeInfo, PodInfo, desired_flows
from knetlab.store import Store

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
    adds: int = 0
    deletes: int = 0
    connected_at: float = field(default_factory=time.time)


def membership(store: Store) -> tuple[int, dict[int, NodeInfo], list[NodeInfo], list[PodInfo]]:
    """(revision of the read, nodes by dpid, nodes, pods): one read of the registry."""
    rev, kvs = store.range(REGISTRY, prefix=True)
    nodes = [NodeInfo(v["name"], v["ip"], v["podCIDR"], v["gateway"], int(v["dpid"]))
             for k, v, _r, _l in kvs if k.startswith(OVS_NODES)]
    pods = [PodInfo(f"{v['namespace']}/{v['name']}" if v.get("namespace") else v["name"],
                    v["node"], v["ip"]) for k, v, _r, _l in kvs if k.startswith(OVS_PODS)]
    return rev, {n.dpid: n for n in nodes}, nodes, pods


class OvsController(app_manager.OSKenApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.store = Store.from_arg(CONFIG["store"])
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
            self._reconcile(sw)

    @set_ev_cls(ofp_event.EventOFPBarrierReply, MAIN_DISPATCHER)
    def _barrier(self, ev: Any) -> None:
        with self.lock:
            dpid, rev = self.pending.pop(ev.msg.xid, (None, -1))
            sw = self.switches.get(dpid) if dpid is not None else None
            if sw is not None:
                sw.synced_rev = max(sw.synced_rev, rev)
                self._write_status()

    @set_ev_cls(ofp_event.EventOFPErrorMsg, MAIN_DISPATCHER)
    def _error(self, ev: Any) -> None:
        LOG.error("switch %016x refused a message: type %s code %s", ev.msg.datapath.id,
                  ev.msg.type, ev.msg.code)

    # -- reconciliation ------------------------------------------------------------
    def _reconcile(self, sw: Switch) -> None:
        rev, by_dpid, nodes, pods = membership(self.store)
        me = by_dpid.get(sw.dp.id)
        if me is None:
            LOG.warning("switch %016x belongs to no node in the store (yet, or any more); "
                        "not programming it",
                        sw.dp.id)
            return
        sw.node = me.name
        desired = {f.cookie: f for f in desired_flows(me, nodes, pods, self.vni)}
        for cookie in sorted(sw.installed - desired.keys()):
            self._delete(sw, cookie)
        for cookie in sorted(desired.keys() - sw.installed):
            self._add(sw, desired[cookie])
        sw.installed = set(desired)
        barrier = sw.dp.ofproto_parser.OFPBarrierRequest(sw.dp)
        sw.dp.set_xid(barrier)
        self.pending[barrier.xid] = (sw.dp.id, rev)
        sw.dp.send_msg(barrier)

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
        seen, last_full = -1, time.monotonic()
        while True:
            try:
                left = RESYNC_SECONDS - (time.monotonic() - last_full)
                rev = (self.store.revision() if seen < 0 else
                       self.store.wait(REGISTRY, seen, max(left, 0.05)))
                full = time.monotonic() - last_full > RESYNC_SECONDS
                if rev != seen or full:
                    with self.lock:
                        for sw in list(self.switches.values()):
                            if full:
                                self._request_dump(sw)
                            elif sw.dumped:
                                self._reconcile(sw)
                    seen = rev
                    if full:
                        last_full = time.monotonic()
            except Exception:  # noqa: BLE001 - os-ken would swallow it silently
                LOG.exception("store watch failed; retrying")
                time.sleep(1.0)

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
