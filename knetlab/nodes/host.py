"""The Mininet host knetlab builds on: a shell in its own network namespace.

Adds what every knetlab host needs: the namespace path, ``run()`` through knetlab's one
subprocess wrapper (exit codes and stderr, not scraped shell text), and ownership
recording, so ``knetlab clean`` can find the shell and the namespace after a crash.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mininet.node import Host

from knetlab import shell

if TYPE_CHECKING:
    from knetlab.rundir import RunDir


class NetnsHost(Host):
    """A Mininet host that knows its lab's run dir and records what it owns."""

    def __init__(self, name: str, rundir: RunDir, **params: Any) -> None:
        self.rundir = rundir
        super().__init__(name, **params)
        # Right after the shell exists: a crash from here on still leaves a record.
        rundir.record_process(self.pid, f"mininet:{name}", name)
        rundir.record_netns(self.netns, name)

    @property
    def netns(self) -> str:
        return f"/proc/{self.pid}/ns/net"

    def run(self, argv: list[str], check: bool = True, **kw: Any) -> shell.Result:
        return shell.run(argv, netns=self.netns, check=check,
                         context=kw.pop("context", f"{' '.join(argv)} in {self.name}"), **kw)

    def ip_batch(self, lines: list[str], context: str = "", force: bool = False) -> None:
        shell.ip_batch(lines, netns=self.netns, force=force,
                       context=context or f"ip -batch in {self.name}")

    def sysctl(self, key: str, value: str) -> None:
        """Write a per-namespace sysctl (the file is resolved in this host's namespace)."""
        self.run(["sysctl", "-qw", f"{key}={value}"])


class Router(NetnsHost):
    """An underlay router (ToR, spine, VPC router): forwarding on, no ICMP redirects."""

    def __init__(self, name: str, rundir: RunDir, **params: Any) -> None:
        super().__init__(name, rundir, **params)
        self.run(["sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.send_redirects=0",
                  "net.ipv4.conf.default.send_redirects=0", "net.ipv4.fib_multipath_hash_policy=1",
                  "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"])
        self.cmd("ip link set lo up")
