"""One trace, start to end: resolve, listen everywhere, send one probe, assemble the path.

Order matters: captures and netfilter monitors are up (and subscribed: checked, not
slept on) before the probe leaves; after the answer (or the wait), a short grace lets
the last frames reach the sockets; then the trace's nft tables go and the hops are
assembled from what was seen. Works on any running lab, from its state (``knetlab
status``'s, or ``Cluster.state()`` in Python), with nothing but the lab's namespaces.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

from knetlab.errors import KnetlabError
from knetlab.trace import probe as probes
from knetlab.trace.capture import Capture, Frame
from knetlab.trace.endpoints import Lab
from knetlab.trace.hops import Trace, add_netfilter, add_routes, hops_of, loss
from knetlab.trace.legacy import LegacyCounters
from knetlab.trace.nftrace import NftTrace
from knetlab.trace.packets import decode

log = logging.getLogger("knetlab.trace")
GRACE = 0.05  # seconds for frames still in flight once the sender is done
PROTOS = ("icmp", "tcp", "udp")


def trace(state: dict[str, Any], src: str, dst: str, proto: str | None = None,
          port: int | None = None, wait: float = 1.5) -> Trace:
    """Trace one probe from ``src`` to ``dst`` (pod, node, router, svc/NAME, address)."""
    lab = Lab(state)
    source = lab.source(src)
    target = lab.destination(dst)
    proto = (proto or target.proto or ("tcp" if port else "icmp")).lower()
    if proto not in PROTOS:
        raise KnetlabError(f"protocol {proto!r} is not one of {', '.join(PROTOS)}")
    port = port or target.port
    if proto != "icmp" and not port:
        raise KnetlabError(f"a {proto} trace needs --port")
    probe = probes.Probe.make(proto, target.ip, port or 0)
    points = lab.points()
    netns_of = {p.where: p.netns for p in points if p.netns}
    # Netfilter is traced where rules live: nodes and routers, and the two ends.
    nft_points = {h: ns for h, ns in netns_of.items()
                  if lab.kind(h) != "pod" or h in (source.host, target.host)}

    def keep(frame: Frame) -> bool:
        return probe.candidate(decode(frame.data, frame.hatype))

    nft = NftTrace(nft_points, probe, secrets.token_hex(3))
    legacy = LegacyCounters(nft_points)  # iptables-legacy rules: invisible to nft's trace
    legacy.start()
    with Capture(points, keep) as capture, nft:
        t0 = time.monotonic()
        sender = probes.send(probe, source.netns, wait=wait)
        log.debug("probe %s: %s in %.3fs", probe.describe(), sender, time.monotonic() - t0)
        time.sleep(GRACE)  # frames the kernel already queued on our sockets
    request, reply = hops_of(capture.frames, probe)
    add_routes(request, netns_of)
    add_routes(reply, netns_of)
    events = nft.events + legacy.events()
    add_netfilter(request + reply, events)
    pods = {h for h in lab.hosts if lab.kind(h) == "pod"}
    delivered, lost = loss(request, reply, target.host, events, netns_of, pods)
    result = Trace(src, dst, probe.describe(), request, reply, sender, delivered, lost)
    if nft.unavailable:
        result.notes.append(f"no netfilter trace in: {', '.join(sorted(set(nft.unavailable)))}")
    return result
