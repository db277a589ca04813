"""CPU accounting for the comparison: exact runtime, never /proc/stat.

Why not /proc/stat: this kernel samples it at the tick (CONFIG_TICK_CPU_ACCOUNTING, HZ=250),
and paced traffic's softirq work falls between ticks (issue 16 measured 0.01 cpu-s in
/proc/stat against 0.46 in cpuacct for the same 5 s over one veth at 1 Gbit/s).

Two meters, both in nanoseconds of runtime (the scheduler's ``sum_exec_runtime``):

- ``lab``: a cpuacct cgroup (v1 ``cpuacct.usage``; v2 ``cpu.stat usage_usec``) that the
  compare process moves itself into before it builds anything, so every lab process it
  starts (Mininet hosts, data plane daemons, forwarders, iperf3, probes) is charged there,
  plus the ``ksoftirqd`` threads (by ``/proc/PID/schedstat``) that take over softirq work
  under load. Without CONFIG_IRQ_TIME_ACCOUNTING (the case here), softirq time is charged
  to the task it interrupts; on veths the packet is processed in the sender's context, so
  the kernel's encapsulation work lands in the lab's cgroup. Other work on the machine is
  outside it: this is the figure the report ranks by.
- ``machine``: the root cpuacct cgroup (every task's runtime); where only cgroup v2 exists,
  the sum of every task's schedstat. It includes whatever else the machine is doing, so it
  is reported beside the lab figure, net of an idle window, as a cross-check.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

V1 = Path("/sys/fs/cgroup/cpuacct")
V2 = Path("/sys/fs/cgroup")


def _schedstat_ns(pid: str) -> int:
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _ksoftirqd_pids() -> list[str]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "comm").read_text().startswith("ksoftirqd/"):
                    pids.append(d.name)
            except OSError:
                continue
    return pids


def _all_tasks_ns() -> int:
    total = 0
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                tasks = list((d / "task").iterdir())
            except OSError:
                continue
            total += sum(_schedstat_ns(f"{d.name}/task/{t.name}") for t in tasks)
    return total


@dataclass(frozen=True)
class Sample:
    """Cumulative counters at one instant (ns of runtime)."""
    lab_ns: int              # the lab's cgroup + ksoftirqd
    machine_ns: int
    ksoftirqd_ns: int = 0    # the ksoftirqd part of lab_ns


class LabCgroup:
    """The cgroup the compare run lives in while it measures (a context manager)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.kind = "cpuacct-v1" if (V1 / "cpuacct.usage").exists() else "cgroup-v2"
        self.path = (V1 if self.kind == "cpuacct-v1" else V2) / name
        self._home: Path | None = None
        self._softirqd = _ksoftirqd_pids()

    def __enter__(self) -> LabCgroup:
        if self.path.exists():
            self.path.rmdir()  # left by an earlier run that died: empty, so removable
        self.path.mkdir()
        self._home = self.path.parent
        (self.path / "cgroup.procs").write_text(f"{os.getpid()}\n")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._home is not None
        (self._home / "cgroup.procs").write_text(f"{os.getpid()}\n")
        try:
            self.path.rmdir()
        except OSError:
            pass  # a lab process still in it (should not happen: labs are down by now)

    def _cgroup_ns(self) -> int:
        if self.kind == "cpuacct-v1":
            return int((self.path / "cpuacct.usage").read_text())
        stat = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines())
        return int(stat["usage_usec"]) * 1000

    def _machine_ns(self) -> int:
        if self.kind == "cpuacct-v1":
            return int((V1 / "cpuacct.usage").read_text())
        return _all_tasks_ns()

    def sample(self) -> Sample:
        softirqd = sum(_schedstat_ns(p) for p in self._softirqd)
        return Sample(self._cgroup_ns() + softirqd, self._machine_ns(), softirqd)

    def describe(self) -> str:
        if self.kind == "cpuacct-v1":
            return (f"lab: cgroup v1 `{self.path}/cpuacct.usage` + ksoftirqd schedstat; "
                    f"machine: `{V1}/cpuacct.usage` (root)")
        return (f"lab: cgroup v2 `{self.path}/cpu.stat` usage_usec + ksoftirqd schedstat; "
                "machine: sum of every task's /proc/PID/task/TID/schedstat")
