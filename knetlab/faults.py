"""Faults injected into a running lab: ``knetlab fault ...`` and ``cluster.faults``.

Owns what a fault changes, and undoing it (``clear``):

- ``link_down`` / ``link_up``: ``ip link set`` on one end of a Mininet link (the named
  host's end), in that host's namespace (a switch's ports are in the root namespace);
- ``kill``: SIGKILL to a daemon by its pid file (what heals it is the owner's watchdog);
- ``loss``: this kernel has no netem, so packet loss is nftables ``numgen random mod 100 <
  P drop`` on the interface's ingress hook (packets arriving on it; a drop verdict at the
  egress hook is not honoured for veths here: the rule counts, nothing is lost), in a
  ``netdev`` table of its own, ``knetlab-fault``, in the interface's namespace;
- ``rate``: a ``tbf`` root qdisc on the interface.

The fabric's reaction (rerouting, healing) is the underlay's reconciler, not this module.
"""

from __future__ import annotations

import os
import re
import signal
from typing import TYPE_CHECKING, Any

from knetlab import shell
from knetlab.errors import KnetlabError, NotFoundError
from knetlab.nodes.host import NetnsHost
from knetlab.rundir import pid_alive

if TYPE_CHECKING:
    from knetlab.cluster import Cluster

FAULT_TABLE = "knetlab-fault"
_RATE = re.compile(r"^(\d+(?:\.\d+)?)([kmg]?)(bit|bps)$")
_UNITS = {"": 1, "k": 1_000, "m": 1_000_000, "g": 1_000_000_000}


class End:
    """One end of a link: its interface and the namespace it lives in (None: root)."""

    def __init__(self, host: Any, iface: str) -> None:
        self.host, self.iface = host, iface
        self.netns: str | None = host.netns if isinstance(host, NetnsHost) else None

    @property
    def key(self) -> str:
        return f"{self.host.name}:{self.iface}"

    def run(self, argv: list[str], check: bool = True, **kw: Any) -> shell.Result:
        return shell.run(argv, netns=self.netns, check=check, timeout=20,
                         context=f"{' '.join(argv)} on {self.key}", **kw)


class Faults:
    """The faults of one lab, remembered so that ``clear`` undoes exactly them."""

    ACTIONS = ("link-down", "link-up", "kill", "loss", "rate", "clear", "list")

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.active: dict[tuple[str, str], dict[str, Any]] = {}  # (kind, host:iface) -> fault

    def run(self, action: str, args: dict[str, Any]) -> Any:
        """One fault by its CLI name (``link-down``...), for the supervisor's RPC."""
        if action not in self.ACTIONS:
            raise KnetlabError(f"unknown fault {action!r} (one of {', '.join(self.ACTIONS)})")
        method = "describe" if action == "list" else action.replace("-", "_")
        return getattr(self, method)(**args)

    # -- links -----------------------------------------------------------------------
    def link_end(self, name: str, peer: str | None = None) -> End:
        """``name``'s end of its link to ``peer`` (or of its only link)."""
        net = self.cluster.net
        if net is None:
            raise KnetlabError(f"cluster {self.cluster.spec.name} is not up")
        found, peers = [], []
        for link in net.links:
            for mine, other in ((link.intf1, link.intf2), (link.intf2, link.intf1)):
                if mine.node.name == name:
                    peers.append(other.node.name)
                    if peer is None or other.node.name == peer:
                        found.append(End(mine.node, mine.name))
        if not peers:
            raise NotFoundError(f"{name!r} has no link in cluster {self.cluster.spec.name} "
                                "(name a node, router or switch)")
        if not found:
            raise NotFoundError(f"{name} has no link to {peer!r} (its peers: "
                                f"{', '.join(sorted(peers))})")
        if len(found) > 1:
            raise KnetlabError(f"{name} has {len(found)} links ({', '.join(sorted(peers))}): "
                               "name the peer")
        return found[0]

    def link_down(self, name: str, peer: str | None = None) -> str:
        end = self.link_end(name, peer)
        end.run(["ip", "link", "set", end.iface, "down"])
        self.active[("link-down", end.key)] = {"kind": "link-down", "at": end.key,
                                               "peer": peer or ""}
        return f"{end.key} down"

    def link_up(self, name: str, peer: str | None = None) -> str:
        end = self.link_end(name, peer)
        end.run(["ip", "link", "set", end.iface, "up"])
        self.active.pop(("link-down", end.key), None)
        return f"{end.key} up"

    # -- daemons ---------------------------------------------------------------------
    def kill(self, node: str, daemon: str) -> str:
        """SIGKILL a daemon of ``node`` (or of ``control-plane``) by its pid file."""
        owner_dir = self.cluster.rundir.path / "daemons" / node
        pid_file = owner_dir / daemon / f"{daemon}.pid"
        try:
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            known = sorted(d.name for d in owner_dir.iterdir()) if owner_dir.is_dir() else []
            raise NotFoundError(f"no running daemon {daemon!r} on {node}"
                                + (f" (its daemons: {', '.join(known)})" if known else "")
                                ) from None
        # The pid must still be that daemon: its command line names its dir or its name.
        if not (pid_alive(pid, str(owner_dir / daemon)) or pid_alive(pid, daemon)):
            raise NotFoundError(f"daemon {daemon} on {node} is not running (pid {pid})")
        os.kill(pid, signal.SIGKILL)
        return f"killed {daemon} on {node} (pid {pid})"

    # -- loss and rate ---------------------------------------------------------------
    def interface(self, iface: str) -> End:
        """``HOST:IFACE``, or an interface name that is one end of a lab link."""
        if ":" in iface:
            name, _, dev = iface.partition(":")
            host = self.cluster.host(name)
            end = End(host, dev)
            if not end.run(["ip", "link", "show", "dev", dev], check=False).ok:
                raise NotFoundError(f"{name} has no interface {dev!r}")
            return end
        net = self.cluster.net
        assert net is not None
        for link in net.links:
            for intf in (link.intf1, link.intf2):
                if intf.name == iface:
                    return End(intf.node, intf.name)
        raise NotFoundError(f"no link end named {iface!r} in cluster {self.cluster.spec.name} "
                            "(use HOST:IFACE for other interfaces, e.g. pod-1-0:eth0)")

    def loss(self, iface: str, percent: int) -> str:
        percent = int(percent)
        if not 0 < percent <= 100:
            raise KnetlabError(f"loss {percent}% is not between 1 and 100")
        end = self.interface(iface)
        chain = f"loss-{end.iface}"
        script = (f"add table netdev {FAULT_TABLE}\n"
                  f"add chain netdev {FAULT_TABLE} {chain} {{ type filter hook ingress device "
                  f'"{end.iface}" priority 0 ; }}\n'
                  f"flush chain netdev {FAULT_TABLE} {chain}\n"
                  f"add rule netdev {FAULT_TABLE} {chain} numgen random mod 100 < {percent} "
                  f'counter drop comment "knetlab fault: loss {percent}%"\n')
        end.run(["nft", "-f", "-"], input=script)
        self.active[("loss", end.key)] = {"kind": "loss", "at": end.key, "percent": percent,
                                          "netns": end.netns}
        return f"{end.key}: {percent}% of received packets dropped"

    def rate(self, iface: str, rate: str) -> str:
        m = _RATE.match(rate.lower())
        if not m:
            raise KnetlabError(f"rate {rate!r} is not like 10mbit, 512kbit or 1gbit")
        bits = float(m.group(1)) * _UNITS[m.group(2)] * (8 if m.group(3) == "bps" else 1)
        burst = max(16_000, int(bits / 8 / 100))  # 10 ms of traffic, at least 16 kB
        end = self.interface(iface)
        end.run(["tc", "qdisc", "replace", "dev", end.iface, "root", "tbf", "rate", rate,
                 "burst", str(burst), "latency", "100ms"])
        self.active[("rate", end.key)] = {"kind": "rate", "at": end.key, "rate": rate}
        return f"{end.key}: rate limited to {rate}"

    # -- all of them -----------------------------------------------------------------
    def describe(self) -> list[dict[str, Any]]:
        return [{k: v for k, v in f.items() if k != "netns"} for f in self.active.values()]

    def clear(self) -> str:
        """Undo every fault this lab made: links up, loss tables and rate qdiscs removed.
        Each is tried whatever the others did; the first failure is raised at the end."""
        errors: list[str] = []
        done = 0
        for kind, key in list(self.active):
            name, _, dev = key.partition(":")
            try:
                host = self.cluster.net.nameToNode[name] if self.cluster.net else None
                if host is None:
                    raise NotFoundError(f"{name} is gone")
                end = End(host, dev)
                if kind == "link-down":
                    end.run(["ip", "link", "set", dev, "up"])
                elif kind == "rate":
                    end.run(["tc", "qdisc", "del", "dev", dev, "root"], check=False)
                elif kind == "loss":
                    end.run(["nft", "delete", "table", "netdev", FAULT_TABLE], check=False)
                done += 1
            except (KnetlabError, KeyError) as exc:
                errors.append(f"{kind} on {key}: {exc}")
            del self.active[(kind, key)]
        if errors:
            raise KnetlabError("fault clear: " + "; ".join(errors))
        return f"cleared {done} fault(s)"
