"""Traffic measurements shared by the benchmarks (knetlab/bench) and the plane comparison
(knetlab/compare): one iperf3 TCP runner, ping RTT, CPU seconds of a process, CPU per GB.

The iperf3 server is started detached (``-D``) in the server's netns with a pid file and
stopped by that pid afterwards, so no iperf3 outlives its measurement even when the client
fails. The server is persistent (not ``-1``) so a retried client finds it still there:
iperf3 can exit 0 with only an "error" in its JSON on a busy host.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from knetlab import shell
from knetlab.daemon import stop_pid
from knetlab.errors import KnetlabError

CLK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Iperf3Result:
    """The summary of one iperf3 TCP run, from its receiver's side."""
    gbps: float             # bits_per_second of sum_received, in Gbit/s
    bytes: int              # bytes the receiver counted
    seconds: float          # how long the receiver counted them
    sender_cpu_s: float     # utime+stime of the iperf3 client over the run
    receiver_cpu_s: float   # utime+stime of the iperf3 server over the run


@contextlib.contextmanager
def detached_server(argv: list[str], netns: str, pidfile: Path, port: int,
                    match: str) -> Iterator[None]:
    """A server that detaches once started and writes ``pidfile``: wait until it listens
    on TCP ``port``, stop it by its pid (while its command line carries ``match``) after."""
    pidfile.unlink(missing_ok=True)
    shell.run(argv, netns=netns)
    try:
        deadline = time.monotonic() + 10
        while f":{port} " not in shell.run(["ss", "-Hltn", f"sport = :{port}"],
                                           netns=netns).stdout:
            if time.monotonic() > deadline:
                raise KnetlabError(f"{argv[0]} did not listen on {port} in {netns}")
            time.sleep(0.05)
        yield
    finally:
        # -D forks before the pid file is written: give it a moment
        deadline = time.monotonic() + 3
        while not pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        if pidfile.exists():
            stop_pid(int(pidfile.read_text().split()[0]), match, 2)


def iperf3_server(netns: str, port: int, pidfile: Path) -> contextlib.AbstractContextManager[None]:
    """A persistent iperf3 server on ``port`` in ``netns`` for the ``with`` block."""
    return detached_server(["iperf3", "-s", "-D", "-p", str(port), "-I", str(pidfile)],
                           netns, pidfile, port, "iperf3")


def iperf3_client(netns: str, server_ip: str, port: int, seconds: int, streams: int = 1,
                  length: int = 0, rate: str = "", tries: int = 2) -> Iperf3Result:
    """One iperf3 TCP run from ``netns`` to a server already listening: ``streams``
    parallel streams, write size ``length`` (0: iperf3's default), paced at ``rate``
    (iperf3 ``-b`` syntax, "": full speed). Up to ``tries`` runs until one has a summary."""
    argv = ["iperf3", "-c", server_ip, "-p", str(port), "-t", str(seconds),
            "-P", str(streams), "-J", "--connect-timeout", "3000"]
    if length:
        argv += ["-l", str(length)]
    if rate:
        argv += ["-b", rate]
    problem = ""
    for _ in range(tries):
        res = shell.run(argv, netns=netns, check=False, timeout=seconds + 30)
        try:
            end = json.loads(res.stdout)["end"]
            got = end["sum_received"]
            cpu = end.get("cpu_utilization_percent", {})
            secs = float(got["seconds"])
            return Iperf3Result(gbps=got["bits_per_second"] / 1e9, bytes=int(got["bytes"]),
                                seconds=secs,
                                sender_cpu_s=cpu.get("host_total", 0.0) / 100 * secs,
                                receiver_cpu_s=cpu.get("remote_total", 0.0) / 100 * secs)
        except (ValueError, KeyError):
            problem = (res.stderr or res.stdout).strip()[-300:]
            time.sleep(0.5)
    raise KnetlabError(f"iperf3 from {netns} to {server_ip}:{port} failed {tries} times: "
                       f"{problem}")


def iperf3(server_ns: str, server_ip: str, client_ns: str, port: int, pidfile: Path,
           seconds: int, streams: int = 1, length: int = 0, rate: str = "",
           tries: int = 2) -> Iperf3Result:
    """Start a server in ``server_ns``, run one client from ``client_ns``, stop the server."""
    with iperf3_server(server_ns, port, pidfile):
        return iperf3_client(client_ns, server_ip, port, seconds, streams, length, rate,
                             tries)


def rtt(netns: str, ip: str, count: int = 50, interval: float = 0.01) -> float:
    """Average ping RTT in ms of ``count`` pings ``interval`` seconds apart."""
    out = shell.run(["ping", "-q", "-c", str(count), "-i", str(interval), "-W", "1", ip],
                    netns=netns, timeout=count * interval + 30).stdout
    m = re.search(r"= [\d.]+/([\d.]+)/", out)  # rtt min/avg/max/mdev = a/b/c/d ms
    return float(m.group(1)) if m else float("nan")


def process_cpu_seconds(pid: int | None) -> float:
    """utime + stime of a process, all its threads, in seconds (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, TypeError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK


def cpu_per_gb(cpu_s: float, received_bytes: int) -> float | None:
    """CPU seconds per GB (1e9 bytes) actually moved: the bytes iperf3's receiver counted,
    not the rate times the nominal duration (which misses ramp-up and the last interval)."""
    return round(cpu_s / (received_bytes / 1e9), 2) if received_bytes else None
