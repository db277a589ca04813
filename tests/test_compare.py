"""``knetlab compare``: a --quick run over two planes (plus calico-ipip, which this kernel
cannot carry and which must appear as a row saying why) makes the report, the charts and
the raw samples, and every number in the report's tables traces back to CSV rows.

Runtime: one compare run, ~30-60 s on a loaded 2-core machine.
"""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from knetlab.compare.commands import parse_planes
from knetlab.compare.ranking import course_pairs
from knetlab.compare.report import summarize
from knetlab.errors import ConfigError
from tests.conftest import ROOT, needs_root

PLANES = "host,host-gw,calico-ipip"
PNGS = ["throughput.png", "cpu.png", "latency_sizes.png", "throughput_sizes.png",
        "offloads.png"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("compare")
    res = subprocess.run([sys.executable, "-m", "knetlab.cli", "compare", "--quick",
                          "--planes", PLANES, "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return out, res.stderr


def _csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


@needs_root
def test_report_charts_and_raw_samples_are_written(run: tuple[Path, str]) -> None:
    out, progress = run
    assert (out / "report.md").stat().st_size > 2000
    for png in PNGS:
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
        assert f"![{png}]({png})" in (out / "report.md").read_text()
    for name in ("samples.csv", "summary.csv", "rtt.csv", "planes.csv"):
        assert len(_csv(out / name)) >= 3, name
    # a progress line per plane and step
    for i, plane in enumerate(PLANES.split(","), 1):
        assert re.search(rf"\[ ?{i}/3 {re.escape(plane)}\s*\]", progress), plane
    assert "tcp 1 stream" in progress and "cpu at 50Mbit/s" in progress
    assert "cpu at 1Gbit/s" in progress


@needs_root
def test_planes_that_cannot_run_are_rows_saying_why(run: tuple[Path, str]) -> None:
    out, _ = run
    status = {r["plane"]: r for r in _csv(out / "planes.csv")}
    assert status["host"]["status"] == status["host-gw"]["status"] == "measured"
    assert status["calico-ipip"]["status"] == "not measurable"
    assert "ipip" in status["calico-ipip"]["why"].lower()
    report = (out / "report.md").read_text()
    assert "| calico-ipip | **not measurable**:" in report


@needs_root
def test_every_table_cell_has_csv_rows_behind_it(run: tuple[Path, str]) -> None:
    """Each table names its columns' metrics in an HTML comment; every numeric cell must
    be the summary's median (or ratio) of exactly the samples recorded for that key."""
    out, _ = run
    summary = {(r["plane"], r["variant"], r["metric"], r["size"]): r
               for r in _csv(out / "summary.csv")}
    counts = Counter((r["plane"], r["variant"], r["metric"], r["size"])
                     for r in _csv(out / "samples.csv"))
    lines = (out / "report.md").read_text().splitlines()
    checked = 0
    for i, line in enumerate(lines):
        m = re.match(r"<!-- columns: (\S+) variant: (.+) -->", line)
        if not m:
            continue
        specs, variant = m.group(1).split(",")[1:], m.group(2)
        for row in lines[i + 3:]:
            if not row.startswith("|"):
                break
            cells = [c.strip() for c in row.strip("|").split("|")]
            plane = cells[0]
            if "**" in row:  # a plane that could not run: no numbers claimed
                continue
            for spec, text in zip(specs, cells[1:], strict=True):
                if spec == "-":
                    continue
                metric, _, size = spec.removeprefix("x:").partition("@")
                key = (plane, variant, metric, size or "0")
                assert text, f"empty cell {key} in a measured row"
                assert key in summary, f"no summary row for {key}"
                assert counts[key] == int(summary[key]["n"]) >= 1, key
                shown = float(text.split()[0])
                want = float(summary[key]["vs_host" if spec.startswith("x:") else "median"])
                assert shown == pytest.approx(want, rel=0.01, abs=0.006), (key, text)
                checked += 1
    assert checked > 40


@needs_root
def test_measurements_are_plausible(run: tuple[Path, str]) -> None:
    out, _ = run
    s = {(r["plane"], r["variant"], r["metric"], r["size"]): float(r["median"])
         for r in _csv(out / "summary.csv")}
    for plane in ("host", "host-gw"):
        assert s[(plane, "offloads on", "mtu_bytes", "0")] == 1500
        assert s[(plane, "offloads on", "tcp1_gbps", "0")] > 0.1
        assert s[(plane, "offloads on", "paced_gbps", "0")] == pytest.approx(0.05, rel=0.2)
        assert s[(plane, "offloads on", "cpu_lab_s_per_gb", "0")] > 0
        assert 0 < s[(plane, "offloads on", "rr_p50_us", "64")] < 100_000
        assert s[(plane, "offloads on", "crr_per_s", "0")] > 10
    assert ("host", "offloads off", "tcp1_gbps", "0") in s  # the baseline of the VXLAN test


def test_plane_list_is_checked_and_always_has_the_baseline() -> None:
    assert parse_planes("host-gw", False) == ["host", "host-gw"]
    assert parse_planes(None, True) == ["host", "host-gw"]
    with pytest.raises(ConfigError, match="--planes.*unknown plane.*bogus.*fix: use"):
        parse_planes("host-gw,bogus", False)


def test_course_ranking_verdicts() -> None:
    def rows(plane: str, xs: list[float]) -> list[dict[str, object]]:
        return [{"plane": plane, "variant": "offloads on", "metric": "cpu_lab_s_per_gb",
                 "size": 0, "value": x} for x in xs]
    summary = summarize(rows("host", [1, 1.1]) + rows("calico-bgp", [2, 2.1])
                        + rows("flannel-vxlan", [1.5, 1.6]) + rows("docker-vxlan", [4, 4.2]))
    status = {p: {"status": "measured"} for p in ("host", "calico-bgp", "flannel-vxlan",
                                                   "docker-vxlan")}
    status["calico-ipip"] = {"status": "not measurable"}
    verdicts = {claim: v for claim, _, _, v in
                course_pairs(summary, status, "cpu_lab_s_per_gb")}
    assert verdicts["host < calico-bgp"] == "holds"
    assert verdicts["calico-bgp < flannel-vxlan"].startswith("does not hold")
    assert verdicts["flannel-vxlan = docker-vxlan"].startswith("does not hold")
    assert verdicts["calico-bgp < docker-vxlan"] == "holds"
    assert verdicts["calico-bgp < calico-ipip"] == "cannot test: calico-ipip not measurable"
