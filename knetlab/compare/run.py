"""``knetlab compare``: each plane in turn on the two-node layout, the same measurements,
teardown; every number recorded as a raw sample, then the report.

Order within a plane: MTU, TCP 1 stream and several, CPU at the fixed rate, round trips
across sizes, connect rate, throughput across write sizes; then, on the host baseline and
the kernel-VXLAN planes, TCP and CPU again with TSO/GSO/GRO off ("offloads off").
"""

from __future__ import annotations

import csv
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from knetlab.compare import measure, planes
from knetlab.compare.cpu import LabCgroup
from knetlab.compare.planes import Plane
from knetlab.errors import ConfigError

HIGH = "_high"  # metric suffix of the CPU figures at Settings.high_rate
SAMPLE_FIELDS = ["plane", "variant", "metric", "size", "repeat", "value", "unit"]
STATUS_FIELDS = ["plane", "dataplane", "status", "why", "seconds"]
ON, OFF = "offloads on", "offloads off"


@dataclass(frozen=True)
class Settings:
    repeats: int = 3           # TCP 1 stream
    repeats_small: int = 2     # TCP several streams, CPU, round trips, connects
    seconds: int = 2           # per iperf3 run (iperf3 -t takes whole seconds)
    streams: int = 4
    rate: str = "50M"          # the fixed rate of the CPU measurement
    high_rate: str = "1G"      # again at this rate, on planes that carry twice as much
    cpu_seconds: int = 3       # idle window, then as long paced
    rr_count: int = 400
    rr_sizes: tuple[int, ...] = (64, 256, 1024, 4096, 16384, 65536)
    tput_sizes: tuple[int, ...] = (64, 1024, 16384, 65536)
    tput_seconds: int = 1
    crr_seconds: float = 1.5


QUICK = Settings(repeats=2, repeats_small=1, seconds=1, cpu_seconds=1, rr_count=100,
                 rr_sizes=(64, 65536), tput_sizes=(64, 65536), tput_seconds=1,
                 crr_seconds=0.5)


def gbps(rate: str) -> float:
    """An iperf3 rate ("50M", "1G") in Gbit/s."""
    scale = {"K": 1e-6, "M": 1e-3, "G": 1.0}.get(rate[-1:], 1e-9)
    return float(rate.rstrip("KMG")) * scale


@dataclass
class Recorder:
    """Writes samples as they come (a crash keeps what was measured)."""
    out: Path
    samples: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._f = (self.out / "samples.csv").open("w", newline="")
        self._w = csv.DictWriter(self._f, SAMPLE_FIELDS)
        self._w.writeheader()
        self._rtt = (self.out / "rtt.csv").open("w", newline="")
        self._rw = csv.writer(self._rtt)
        self._rw.writerow(["plane", "variant", "size", "repeat", "us"])

    def add(self, plane: str, variant: str, repeat: int, samples: list[measure.Sample]) -> None:
        for s in samples:
            row = {"plane": plane, "variant": variant, "metric": s.metric, "size": s.size,
                   "repeat": repeat, "value": round(s.value, 6), "unit": s.unit}
            self.samples.append(row)
            self._w.writerow(row)
        self._f.flush()

    def raw_rtt(self, plane: str, variant: str, repeat: int, raw: dict[int, list[float]]) -> None:
        for size, us in raw.items():
            self._rw.writerows([plane, variant, size, repeat, round(u, 1)] for u in us)
        self._rtt.flush()

    def close(self) -> None:
        self._f.close()
        self._rtt.close()


class Progress:
    """One line per plane and step: ``[ 3/14 calico-bgp] 0:41 tcp 1 stream (2/3)``."""

    def __init__(self, total: int, out: TextIO | None = None) -> None:
        self.total, self.out, self.t0, self.i = total, out or sys.stderr, time.monotonic(), 0
        self.plane = ""

    def start(self, plane: str) -> None:
        self.i += 1
        self.plane = plane

    def step(self, what: str) -> None:
        el = int(time.monotonic() - self.t0)
        print(f"[{self.i:2}/{self.total} {self.plane:<16}] {el // 60}:{el % 60:02} {what}",
              file=self.out, flush=True)


def measure_plane(pair: planes.Pair, plane: Plane, cfg: Settings, cg: LabCgroup,
                  rec: Recorder, prog: Progress, tmp: Path) -> None:
    key = plane.key
    rec.add(key, ON, 0, [measure.mtu(pair)])
    with measure.iperf_server(pair, tmp):
        tcp1 = []
        for r in range(cfg.repeats):
            prog.step(f"tcp 1 stream ({r + 1}/{cfg.repeats})")
            tcp1.append(measure.throughput(pair, cfg.seconds, 1))
            rec.add(key, ON, r, [tcp1[-1]])
        for r in range(cfg.repeats_small):
            prog.step(f"tcp {cfg.streams} streams ({r + 1}/{cfg.repeats_small})")
            rec.add(key, ON, r, [measure.throughput(pair, cfg.seconds, cfg.streams)])
        for r in range(cfg.repeats_small):
            prog.step(f"cpu at {cfg.rate}bit/s ({r + 1}/{cfg.repeats_small})")
            rec.add(key, ON, r, measure.cpu_at_rate(pair, cg, cfg.rate, cfg.cpu_seconds))
        if statistics.median(s.value for s in tcp1) >= 2 * gbps(cfg.high_rate):
            for r in range(cfg.repeats_small):
                prog.step(f"cpu at {cfg.high_rate}bit/s ({r + 1}/{cfg.repeats_small})")
                rec.add(key, ON, r, measure.cpu_at_rate(pair, cg, cfg.high_rate,
                                                        cfg.cpu_seconds, HIGH))
        else:
            prog.step(f"cpu at {cfg.high_rate}bit/s: skipped (carries less than twice that)")
        prog.step("throughput across write sizes " + ",".join(map(str, cfg.tput_sizes)))
        rec.add(key, ON, 0, measure.throughput_sizes(pair, cfg.tput_seconds,
                                                     list(cfg.tput_sizes)))
    with measure.rr_server(pair, tmp):
        for r in range(cfg.repeats_small):
            prog.step(f"round trips x{cfg.rr_count} per size ({r + 1}/{cfg.repeats_small})")
            samples, raw = measure.round_trips(pair, cfg.rr_count, list(cfg.rr_sizes))
            rec.add(key, ON, r, samples)
            rec.raw_rtt(key, ON, r, raw)
            prog.step(f"connect rate ({r + 1}/{cfg.repeats_small})")
            rec.add(key, ON, r, [measure.connect_rate(pair, cfg.crr_seconds)])
    if plane.vxlan:
        prog.step(f"offloads off: ethtool -K tso/gso/gro off on "
                  f"{measure.offloads_off(pair)} interfaces")
        with measure.iperf_server(pair, tmp):
            for r in range(cfg.repeats):
                prog.step(f"offloads off: tcp 1 stream ({r + 1}/{cfg.repeats})")
                rec.add(key, OFF, r, [measure.throughput(pair, cfg.seconds, 1)])
            for r in range(cfg.repeats_small):
                prog.step(f"offloads off: cpu at {cfg.rate}bit/s ({r + 1}/{cfg.repeats_small})")
                rec.add(key, OFF, r, measure.cpu_at_rate(pair, cg, cfg.rate, cfg.cpu_seconds))


def machine() -> dict[str, str]:
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "nproc": str(os.cpu_count()), "kernel": platform.release(),
            "host": platform.node(),
            "load": " ".join(f"{x:.2f}" for x in os.getloadavg())}


def compare(keys: list[str], out: Path, cfg: Settings, kubeproxy: Path | None = None,
            progress: TextIO | None = None) -> Path:
    """Measure every plane in ``keys``; write samples, status, charts and report.md."""
    from knetlab.compare import report
    out.mkdir(parents=True, exist_ok=True)
    info = machine()
    rec = Recorder(out)
    status: list[dict[str, Any]] = []
    prog = Progress(len(keys), progress)
    t_all = time.monotonic()
    with LabCgroup(f"knetlab-cmp-{os.getpid()}") as cg, \
            tempfile.TemporaryDirectory(prefix="cmp-") as tmpdir:
        tmp = Path(tmpdir)
        for key in keys:
            plane = planes.BY_KEY[key]
            prog.start(key)
            t0 = time.monotonic()
            why = planes.unavailable(plane)
            row = {"plane": key, "dataplane": plane.dataplane, "status": "measured",
                   "why": "", "seconds": 0.0}
            if why:
                kind, _, reason = why.partition(": ")
                row.update(status=kind, why=reason)
                prog.step(f"skipped: {why}")
            else:
                try:
                    prog.step("bring-up")
                    name = f"cmp{prog.i}-{key}"[:15].rstrip("-")  # unique in the run, short
                    with planes.lab(plane, name, tmp) as pair:
                        planes.wait_reachable(pair)
                        measure_plane(pair, plane, cfg, cg, rec, prog, tmp)
                        prog.step("teardown")
                except ConfigError as exc:
                    row.update(status="not measurable", why=exc.message)
                    prog.step(f"not measurable: {row['why']}")
                except Exception as exc:  # noqa: BLE001 - one plane failing is a row
                    traceback.print_exc(file=progress or sys.stderr)
                    row.update(status="failed", why=str(exc).splitlines()[0][:300])
                    prog.step(f"failed: {row['why']}")
            row["seconds"] = round(time.monotonic() - t0, 1)
            status.append(row)
        info["cpu_method"] = cg.describe()
    rec.close()
    info["total_s"] = f"{time.monotonic() - t_all:.0f}"
    info["after_load"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    with (out / "planes.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, STATUS_FIELDS)
        w.writeheader()
        w.writerows(status)
    prog.step("report")
    return report.write(out, rec.samples, status, info, cfg, kubeproxy)
