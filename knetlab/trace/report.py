"""A trace as text: one line per hop (time since the probe left, namespace, interface,
direction, headers as seen there), then what changed, the routing decision and the
netfilter verdicts under it; the request, then the reply, then the verdict."""

from __future__ import annotations

from knetlab.trace.hops import Hop, Trace


def format_trace(t: Trace) -> str:
    state = "delivered" if t.delivered else "NOT delivered"
    lines = [f"trace {t.src} -> {t.dst}: {t.probe}; {state}; sender: {t.sender}"]
    t0 = t.request[0].ts if t.request else (t.reply[0].ts if t.reply else 0.0)
    n = 0
    for title, hops in (("request", t.request), ("reply", t.reply)):
        lines.append(f"\n{title}:" if hops else f"\n{title}: not seen")
        if hops:
            width = max(len(h.where) for h in hops)
            iwidth = max(len(h.ifname) for h in hops)
        for hop in hops:
            n += 1
            lines += _hop(n, hop, hop.ts - t0, width, iwidth)
    if t.lost:
        lines.append(f"\n{'lost' if not t.delivered else 'note'}: {t.lost}")
    lines += [f"note: {note}" for note in t.notes]
    return "\n".join(lines)


def _hop(n: int, hop: Hop, dt: float, width: int, iwidth: int) -> list[str]:
    out = [f"{n:>3} {dt * 1000:>8.3f}ms  {hop.where:<{width}}  {hop.ifname:<{iwidth}}  "
           f"{hop.direction:<3}  {hop.headers}"]
    pad = " " * 16
    if hop.changes:
        out.append(f"{pad}{'; '.join(hop.changes)}")
    if hop.route:
        out.append(f"{pad}route: {hop.route}")
    out += [f"{pad}netfilter: {nf}" for nf in hop.netfilter]
    return out
