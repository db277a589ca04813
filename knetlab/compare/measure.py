"""The measurements, the same for every plane: iperf3 TCP at full speed (1 and several
streams, and across write sizes), CPU per GB at a fixed paced rate, TCP request/response
round trips across message sizes, connection setup rate, and the MTU the client sees.

Each function returns samples (``Sample`` rows: one number each); the caller records them
all, and the report is computed from nothing else.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from knetlab import shell
from knetlab.compare.cpu import LabCgroup
from knetlab.compare.planes import Pair
from knetlab.errors import KnetlabError
from knetlab.measure import Iperf3Result, detached_server, iperf3_client, iperf3_server

IPERF_PORT = 5231
RR_PORT = 5232


@dataclass(frozen=True)
class Sample:
    metric: str
    value: float
    unit: str
    size: int = 0            # message / write size in bytes (0: not size-specific)


def iperf_server(pair: Pair, tmp: Path) -> contextlib.AbstractContextManager[None]:
    return iperf3_server(pair.server.netns, IPERF_PORT, tmp / "iperf3.pid")


def rr_server(pair: Pair, tmp: Path) -> contextlib.AbstractContextManager[None]:
    return detached_server([sys.executable, "-m", "knetlab.compare.rr", "serve",
                            str(RR_PORT), str(tmp / "rr.pid")], pair.server.netns,
                           tmp / "rr.pid", RR_PORT, "knetlab.compare.rr")


def iperf(pair: Pair, seconds: int, streams: int = 1, length: int = 0,
          rate: str = "") -> Iperf3Result:
    """One iperf3 TCP run client -> server (the server of ``iperf_server``)."""
    return iperf3_client(pair.client.netns, pair.server_ip, IPERF_PORT, seconds, streams,
                         length, rate)


def throughput(pair: Pair, seconds: int, streams: int) -> Sample:
    return Sample(f"tcp{streams}_gbps", iperf(pair, seconds, streams).gbps, "Gbit/s")


def throughput_sizes(pair: Pair, seconds: int, sizes: list[int]) -> list[Sample]:
    return [Sample("tput_gbps", iperf(pair, seconds, 1, length=size).gbps, "Gbit/s", size)
            for size in sizes]


def _received(pair: Pair) -> tuple[int, float]:
    """TCP payload bytes the server's sockets on the iperf3 port have received so far
    (``ss -ti`` bytes_received), and when (the middle of the ``ss`` call)."""
    t0 = time.monotonic()
    out = shell.run(["ss", "-tinH", "state", "established", f"sport = :{IPERF_PORT}"],
                    netns=pair.server.netns).stdout
    t1 = time.monotonic()
    return sum(int(b) for b in re.findall(r"bytes_received:(\d+)", out)), (t0 + t1) / 2


def cpu_at_rate(pair: Pair, cg: LabCgroup, rate: str, seconds: int,
                tag: str = "") -> list[Sample]:
    """CPU seconds per GB (1e9 bytes received) moving a stream paced at ``rate``, net of
    the idle CPU of an equally long window just before (lab, and whole machine).

    Only the steady middle of the run is measured (from 1 s after the start, for
    ``seconds``): starting iperf3 (fork, exec, JSON) costs tens of ms, as much as moving
    the data at a low rate. The bytes are the server's TCP payload over the same window."""
    s0, t0 = cg.sample(), time.monotonic()
    time.sleep(seconds)
    s1, t1 = cg.sample(), time.monotonic()
    idle_lab = (s1.lab_ns - s0.lab_ns) / (t1 - t0)
    idle_machine = (s1.machine_ns - s0.machine_ns) / (t1 - t0)
    idle_softirqd = (s1.ksoftirqd_ns - s0.ksoftirqd_ns) / (t1 - t0)
    failure: list[BaseException] = []

    def client() -> None:
        try:
            iperf(pair, seconds + 2, 1, rate=rate)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            failure.append(exc)

    th = threading.Thread(target=client, daemon=True)
    th.start()
    time.sleep(1.0)
    b1, tb1 = _received(pair)
    s1, t1 = cg.sample(), time.monotonic()
    time.sleep(seconds)
    s2, t2 = cg.sample(), time.monotonic()
    b2, tb2 = _received(pair)
    th.join()
    if failure:
        raise failure[0]
    window = t2 - t1
    gb = (b2 - b1) / (tb2 - tb1) * window / 1e9  # bytes over exactly the CPU window
    if gb <= 0:
        raise KnetlabError(f"no bytes received at {rate}bit/s to {pair.server_ip}")
    lab = (s2.lab_ns - s1.lab_ns - idle_lab * window) / 1e9
    machine = (s2.machine_ns - s1.machine_ns - idle_machine * window) / 1e9
    softirqd = (s2.ksoftirqd_ns - s1.ksoftirqd_ns - idle_softirqd * window) / 1e9
    return [Sample(f"cpu_lab_s_per_gb{tag}", lab / gb, "cpu-s/GB"),
            Sample(f"cpu_ksoftirqd_s_per_gb{tag}", softirqd / gb, "cpu-s/GB"),
            Sample(f"cpu_machine_s_per_gb{tag}", machine / gb, "cpu-s/GB"),
            Sample(f"paced_gbps{tag}", gb * 8 / window, "Gbit/s"),
            Sample(f"idle_lab_cores{tag}", idle_lab / 1e9, "cores")]


def round_trips(pair: Pair, count: int, sizes: list[int]) -> tuple[list[Sample],
                                                                   dict[int, list[float]]]:
    """p50/p99 of ``count`` round trips per size, and the raw microseconds."""
    res = shell.run([sys.executable, "-m", "knetlab.compare.rr", "rr", pair.server_ip,
                     str(RR_PORT), str(count), *map(str, sizes)], netns=pair.client.netns,
                    timeout=120)
    raw = {int(k): v for k, v in json.loads(res.stdout).items()}
    out = []
    for size, us in raw.items():
        xs = sorted(us)
        out.append(Sample("rr_p50_us", xs[len(xs) // 2], "us", size))
        out.append(Sample("rr_p99_us", xs[min(len(xs) - 1, int(len(xs) * 0.99))], "us", size))
    return out, raw


def connect_rate(pair: Pair, seconds: float) -> Sample:
    res = shell.run([sys.executable, "-m", "knetlab.compare.rr", "crr", pair.server_ip,
                     str(RR_PORT), str(seconds)], netns=pair.client.netns,
                    timeout=seconds + 60)
    return Sample("crr_per_s", json.loads(res.stdout)["per_s"], "connects/s")


def mtu(pair: Pair) -> Sample:
    """The MTU of the client's route to the server (the pod's eth0 on pod planes)."""
    route = shell.run(["ip", "-o", "route", "get", pair.server_ip],
                      netns=pair.client.netns).stdout.split()
    dev = route[route.index("dev") + 1]
    link = shell.run(["ip", "-o", "link", "show", "dev", dev],
                     netns=pair.client.netns).stdout.split()
    value = int(route[route.index("mtu") + 1]) if "mtu" in route else int(
        link[link.index("mtu") + 1])
    return Sample("mtu_bytes", value, "bytes")


def offloads_off(pair: Pair) -> int:
    """Turn TSO, GSO and GRO off on every interface of every namespace on the path (nodes
    and pods/containers). Returns how many interfaces took it."""
    done = 0
    for ns in pair.namespaces:
        names = [line.split(": ")[1].split("@")[0] for line in
                 shell.run(["ip", "-o", "link", "show"], netns=ns).stdout.splitlines()]
        for dev in names:
            if dev != "lo" and shell.run(["ethtool", "-K", dev, "tso", "off", "gso", "off",
                                          "gro", "off"], netns=ns, check=False).ok:
                done += 1
    return done
