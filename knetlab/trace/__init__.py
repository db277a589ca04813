"""See every hop: ``knetlab trace``, ``knetlab capture`` and the pieces they are built of.

    probe.py      the marked probe packet and its sender (a socket in the source namespace)
    capture.py    capture points: AF_PACKET sockets in every namespace of the lab
    packets.py    frames decoded to headers, tunnels peeled (VXLAN, GRE, IPIP, UDP)
    nftrace.py    ``nft monitor trace`` with a rule that marks only the probe
    legacy.py     iptables-legacy rules the probe hit (their counters; nft cannot see them)
    routing.py    ``ip route get`` in a namespace
    hops.py       hop assembly: order, changes (NAT, encapsulation), where it was lost
    report.py     the text report
    tracer.py     one trace, start to end
    pcap.py       pcapng files for ``knetlab capture``
    commands.py   the CLI: ``trace``, ``capture``, ``graph``

Python: ``from knetlab.trace import trace; print(format_trace(trace(c.state(), "pod-1-0",
"pod-2-0")))``.
"""

from __future__ import annotations

from knetlab.trace.hops import Hop, Trace
from knetlab.trace.report import format_trace
from knetlab.trace.tracer import trace

__all__ = ["Hop", "Trace", "format_trace", "trace"]
