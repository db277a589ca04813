"""iptables-legacy (x_tables) rules the probe hit, from their packet counters.

``nft monitor trace`` sees nf_tables rules only (nftables', and iptables-nft's); rules
loaded through iptables-legacy (kube-proxy's default backend here) never report to it, and
their own TRACE target logs to the kernel log, which a namespace cannot read alone. So the
counters tell instead: ``iptables-legacy-save -c`` in each namespace before the probe and
after it; a rule that NATs, drops or rejects and counted packets meanwhile is reported,
with how many. Other traffic crossing the same rule in that second would count too, so the
report says "counted during the probe", not more.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

from knetlab import shell
from knetlab.trace.nftrace import NftEvent

TARGETS = ("DNAT", "SNAT", "MASQUERADE", "REJECT", "DROP")
_RULE = re.compile(r"^\[(\d+):\d+\] -A (\S+) (.*)$")
Counters = dict[tuple[str, str, str], int]  # (table, chain, rule) -> packets


def _read(netns: str) -> Counters:
    res = shell.run(["iptables-legacy-save", "-c"], netns=netns, check=False, timeout=20)
    out: Counters = {}
    table = ""
    for line in res.stdout.splitlines() if res.ok else []:
        if line.startswith("*"):
            table = line[1:].strip()
            continue
        m = _RULE.match(line)
        if m and re.search(rf"-j ({'|'.join(TARGETS)})\b", m.group(3)):
            out[(table, m.group(2), m.group(3))] = int(m.group(1))
    return out


class LegacyCounters:
    """Counters of the NAT/drop rules of iptables-legacy in each namespace, twice."""

    def __init__(self, points: dict[str, str]) -> None:
        self.points = points
        self.before: dict[str, Counters] = {}

    def _all(self) -> dict[str, Counters]:
        with ThreadPoolExecutor(4) as pool:
            return dict(zip(self.points, pool.map(_read, self.points.values()), strict=True))

    def start(self) -> None:
        self.before = self._all()

    def events(self) -> list[NftEvent]:
        """Rules that counted packets since ``start``, as trace events of the request."""
        out = []
        for where, after in self._all().items():
            before = self.before.get(where, {})
            for (table, chain, rule), packets in after.items():
                hit = packets - before.get((table, chain, rule), 0)
                if hit > 0:
                    target = re.search(rf"-j ({'|'.join(TARGETS)})\b", rule)
                    verdict = (target.group(1) if target else "").lower()
                    out.append(NftEvent(where, "legacy", "ip", f"{table} (iptables-legacy)",
                                        chain, "rule",
                                        f"{rule} [counted {hit} during the probe] "
                                        f"(verdict {verdict})", leg="request"))
        return out
