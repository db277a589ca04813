"""The comparison's report: summary statistics from the raw samples, Markdown tables, PNG
charts, the course's ranking beside the measured one, and the published benchmark.

Every number in a table comes from ``summary.csv``, which is computed from ``samples.csv``
alone; each table is preceded by an HTML comment naming the metric behind each column
(``<!-- columns: ... -->``), so a reader (and tests/test_compare.py) can trace any cell
back to its samples.
"""

from __future__ import annotations

import csv
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from knetlab.compare import planes
from knetlab.compare.ranking import course_pairs, explanations, published
from knetlab.compare.run import HIGH, OFF, ON, Settings

SUMMARY_FIELDS = ["plane", "variant", "metric", "size", "median", "min", "max", "n",
                  "vs_host"]
Key = tuple[str, str, str, int]  # plane, variant, metric, size


def summarize(samples: list[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    groups: dict[Key, list[float]] = defaultdict(list)
    for s in samples:
        groups[(s["plane"], s["variant"], s["metric"], int(s["size"]))].append(float(s["value"]))
    out: dict[Key, dict[str, Any]] = {}
    for (plane, variant, metric, size), xs in groups.items():
        out[(plane, variant, metric, size)] = {
            "plane": plane, "variant": variant, "metric": metric, "size": size,
            "median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}
    for (_plane, variant, metric, size), row in out.items():
        base = out.get(("host", variant, metric, size))
        row["vs_host"] = (row["median"] / base["median"]
                          if base and base["median"] else None)
    return out


def _fmt(x: float) -> str:
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}" if abs(x) >= 0.1 else f"{x:.3f}"


def cell(summary: dict[Key, dict[str, Any]], key: Key, ratio: bool = False) -> str:
    row = summary.get(key)
    if row is None:
        return ""
    if ratio:
        ratio_ = row["vs_host"]
        return "" if ratio_ is None else f"{ratio_:.2f}" if abs(ratio_) >= 0.1 else f"{ratio_:.3f}"
    text = _fmt(row["median"])
    if row["n"] > 1:
        text += f" ({_fmt(row['min'])}–{_fmt(row['max'])})"
    return text


def table(summary: dict[Key, dict[str, Any]], rows: list[str], columns: list[tuple[str, str]],
          variant: str = ON, status: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """``columns``: (header, spec); spec is ``metric[@size]`` or ``x:metric[@size]`` (its
    ratio to the host baseline) or ``-`` (text, not a number)."""
    specs = [s for _, s in columns]
    lines = [f"<!-- columns: plane,{','.join(specs)} variant: {variant} -->",
             "| plane | " + " | ".join(h for h, _ in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for plane in rows:
        st = (status or {}).get(plane)
        if st and st["status"] != "measured":
            lines.append(f"| {plane} | **{st['status']}**: {st['why']} |"
                         + " |" * (len(columns) - 1))
            continue
        cells = []
        for _, spec in columns:
            if spec == "-":
                cells.append(planes.BY_KEY[plane].what if plane in planes.BY_KEY else "")
                continue
            ratio = spec.startswith("x:")
            metric, _, size = spec.removeprefix("x:").partition("@")
            cells.append(cell(summary, (plane, variant, metric, int(size or 0)), ratio))
        lines.append(f"| {plane} | " + " | ".join(cells) + " |")
    return lines


def write(out: Path, samples: list[dict[str, Any]], status: list[dict[str, Any]],
          info: dict[str, str], cfg: Settings, kubeproxy: Path | None) -> Path:
    from knetlab.compare import charts
    summary = summarize(samples)
    with (out / "summary.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, SUMMARY_FIELDS)
        w.writeheader()
        for row in summary.values():
            w.writerow({k: (round(v, 6) if isinstance(v, float) else v)
                        for k, v in row.items()})
    by_plane = {s["plane"]: s for s in status}
    order = [s["plane"] for s in status]
    measured = [p for p in order if by_plane[p]["status"] == "measured"]
    pngs = charts.draw(out, summary, measured, cfg, kubeproxy)
    md = _header(info, cfg, status, _slowest(summary, measured))
    md += ["## Results (offloads on; each cell: median (min–max) over repeats; ×host: the "
           "median's ratio to the host baseline of this run)", ""]
    md += table(summary, order, [
        ("mechanism", "-"), ("MTU", "mtu_bytes"),
        ("TCP 1 stream Gbit/s", "tcp1_gbps"), ("×host", "x:tcp1_gbps"),
        (f"TCP {cfg.streams} streams Gbit/s", f"tcp{cfg.streams}_gbps"),
        ("×host", f"x:tcp{cfg.streams}_gbps"),
        (f"CPU s/GB at {cfg.rate}bit/s (lab)", "cpu_lab_s_per_gb"),
        ("×host", "x:cpu_lab_s_per_gb"),
        ("CPU s/GB (machine)", "cpu_machine_s_per_gb"),
        ("RR 64 B p50 µs", "rr_p50_us@64"), ("RR 64 B p99 µs", "rr_p99_us@64"),
        ("×host (p50)", "x:rr_p50_us@64"),
        ("connects/s", "crr_per_s"), ("×host", "x:crr_per_s")], status=by_plane)
    md += ["", f"The CPU runs at {cfg.rate}bit/s in detail: the rate actually received "
           "(a plane below it could not carry it), the lab's idle CPU that was subtracted, "
           "and the part of the lab figure that ksoftirqd ran (softirq work deferred to the "
           "kernel threads, which on a shared machine also carry other work's packets):", ""]
    md += table(summary, measured, [("paced Gbit/s", "paced_gbps"),
                                    ("lab idle, cores", "idle_lab_cores"),
                                    ("of which ksoftirqd s/GB", "cpu_ksoftirqd_s_per_gb")])
    high = [p for p in measured if (p, ON, f"cpu_lab_s_per_gb{HIGH}", 0) in summary]
    md += ["", f"### CPU at {cfg.high_rate}bit/s", "",
           f"At {cfg.rate}bit/s the traffic is light, and iperf3's own per-send cost at both "
           "ends weighs as much as the kernel path, so kernel planes land within noise of "
           f"each other. The same measurement at {cfg.high_rate}bit/s, on the planes whose "
           "single stream carries at least twice that in this run:", ""]
    md += (table(summary, high, [
        (f"CPU s/GB at {cfg.high_rate}bit/s (lab)", f"cpu_lab_s_per_gb{HIGH}"),
        ("×host", f"x:cpu_lab_s_per_gb{HIGH}"),
        ("of which ksoftirqd", f"cpu_ksoftirqd_s_per_gb{HIGH}"),
        ("paced Gbit/s", f"paced_gbps{HIGH}"), ("lab idle, cores", f"idle_lab_cores{HIGH}")])
        if high else ["(no plane carried twice the rate in this run)"])
    md += _sizes(summary, measured, cfg)
    md += _offloads(summary, measured)
    md += course_ranking(summary, by_plane, "cpu_lab_s_per_gb", f"{cfg.rate}bit/s")
    if high:
        md += course_ranking(summary, by_plane, f"cpu_lab_s_per_gb{HIGH}",
                             f"{cfg.high_rate}bit/s (planes that carry it)")
    md += mechanisms(summary, by_plane)
    md += published()
    md += [f"![{name}]({name})" for name in pngs if not name.startswith("kubeproxy")]
    md += _kubeproxy(kubeproxy, pngs)
    md += ["", "## Files", "", "`samples.csv` every measured number (plane, variant, "
           "metric, size, repeat, value, unit); `rtt.csv` every round trip; `summary.csv` "
           "median/min/max/n and ratio to host per (plane, variant, metric, size), from "
           "which every table cell is printed; `planes.csv` each plane's status and time.", ""]
    path = out / "report.md"
    path.write_text("\n".join(md))
    return path


def _slowest(summary: dict[Key, dict[str, Any]], measured: list[str]) -> str:
    speeds = [(summary[(p, ON, "tcp1_gbps", 0)]["median"], p) for p in measured
              if (p, ON, "tcp1_gbps", 0) in summary]
    if not speeds:
        return "no plane measured"
    gbps, plane = min(speeds)
    return f"the slowest plane of this run is {plane}, {_fmt(gbps)} Gbit/s at full speed"


def _header(info: dict[str, str], cfg: Settings, status: list[dict[str, Any]],
            slowest: str) -> list[str]:
    measured = sum(1 for s in status if s["status"] == "measured")
    return [
        "# knetlab compare: data planes side by side", "",
        f"Run {info['date']} on `{info['host']}`: {info['nproc']} CPUs, Linux "
        f"{info['kernel']}; load average {info['load']} at the start, {info['after_load']} "
        f"at the end (other work shared the machine); {measured} of {len(status)} planes "
        f"measured in {info['total_s']} s.", "",
        "Layout, the same for every plane: two nodes on one L2 segment (Linux bridge "
        "underlay), one pod per node, no Kubernetes control plane (`kubernetes: false`); "
        "client pod-1-0 -> server pod-2-0 (host: node-1 -> node-2's node IP; docker-vxlan: "
        "two containers on a Docker overlay network). Every ratio is to the host baseline "
        "measured in this run.", "",
        f"Method: iperf3 TCP {cfg.seconds:g} s per run, {cfg.repeats} runs of 1 stream, "
        f"{cfg.repeats_small} of {cfg.streams} streams. CPU: {cfg.repeats_small} runs of a "
        f"stream paced at `iperf3 -b {cfg.rate}` (and `-b {cfg.high_rate}` where the plane "
        f"carries twice that), measured over {cfg.cpu_seconds:g} s of its steady middle, "
        "after an idle window as long; CPU seconds of runtime (exact scheduler accounting, "
        "not /proc/stat) in that window minus the idle window's rate times its length, per "
        "GB (1e9 bytes) the server's TCP sockets received in the same window. "
        + info["cpu_method"] + ". The lab figure counts only the "
        "lab's processes (and the softirq work done in their context, which is where the "
        "kernel's encapsulation runs); the machine figure also counts whatever else the "
        "machine did, so on a shared machine it is noise (even negative when other work "
        "dropped between the idle window and the run). The rate is fixed for every plane, "
        f"chosen below the slowest plane ({slowest}). Request/response: "
        f"{cfg.rr_count} TCP round trips per message size on one connection "
        "(knetlab/compare/rr.py, TCP_NODELAY, Python on both ends: a constant the ratio "
        f"cancels), sizes {', '.join(map(str, cfg.rr_sizes))} B; connect rate: connect + "
        "4 bytes + server close, in a loop. Throughput across write sizes: iperf3 `-l`.", ""]


def _sizes(summary: dict[Key, dict[str, Any]], measured: list[str], cfg: Settings) -> list[str]:
    md = ["", "## Across message sizes", "", "Round trip p50 (µs), median over repeats:", ""]
    md += table(summary, measured, [(f"{s} B", f"rr_p50_us@{s}") for s in cfg.rr_sizes])
    md += ["", "Round trip p50 as a ratio to host:", ""]
    md += table(summary, measured, [(f"{s} B", f"x:rr_p50_us@{s}") for s in cfg.rr_sizes])
    md += ["", "TCP throughput (Gbit/s) by iperf3 write size (`-l`), one run:", ""]
    md += table(summary, measured, [(f"{s} B", f"tput_gbps@{s}") for s in cfg.tput_sizes])
    md += ["", "Throughput as a ratio to host:", ""]
    md += table(summary, measured, [(f"{s} B", f"x:tput_gbps@{s}") for s in cfg.tput_sizes])
    return md


def _offloads(summary: dict[Key, dict[str, Any]], measured: list[str]) -> list[str]:
    rows = [p for p in measured if (p, OFF, "tcp1_gbps", 0) in summary]
    md = ["", "## VXLAN with and without segmentation offloads", "",
          "The claim under test: VXLAN reaches about 55 % of bare metal because the "
          "encapsulated packets lose the segmentation offloads. Here there is no NIC: "
          "TSO/GSO/GRO are software features of veth, bridge and vxlan devices. Offloads off "
          "= `ethtool -K DEV tso off gso off gro off` on every interface of both nodes and "
          "both pods; the host baseline gets the same treatment, so ×host compares like "
          "with like.", ""]
    if not rows:
        return md + ["(no VXLAN plane measured in this run)", ""]
    md += ["Offloads on:", ""]
    md += table(summary, rows, [("TCP 1 stream Gbit/s", "tcp1_gbps"), ("×host", "x:tcp1_gbps"),
                                ("CPU s/GB (lab)", "cpu_lab_s_per_gb"),
                                ("×host", "x:cpu_lab_s_per_gb")], variant=ON)
    md += ["", "Offloads off:", ""]
    md += table(summary, rows, [("TCP 1 stream Gbit/s", "tcp1_gbps"), ("×host", "x:tcp1_gbps"),
                                ("CPU s/GB (lab)", "cpu_lab_s_per_gb"),
                                ("×host", "x:cpu_lab_s_per_gb")], variant=OFF)
    notes = []
    for p in rows:
        on = summary.get((p, ON, "tcp1_gbps", 0))
        off = summary.get((p, OFF, "tcp1_gbps", 0))
        if on and off and on["median"]:
            notes.append(f"{p}: offloads off keep {100 * off['median'] / on['median']:.0f} % "
                         "of its offloads-on throughput")
    md += ["", "; ".join(notes) + ".", ""]
    return md


def course_ranking(summary: dict[Key, dict[str, Any]], by_plane: dict[str, dict[str, Any]],
                   metric: str, at: str) -> list[str]:
    ranked = sorted((p for p in by_plane if (p, ON, metric, 0) in summary),
                    key=lambda p: summary[(p, ON, metric, 0)]["median"])
    md = ["", f"## The course's ranking beside the measured one, CPU at {at}", "",
          "Course (CPU cost at the same bandwidth): host < calico-bgp < calico-ipip = "
          "flannel-vxlan = docker-vxlan < flannel-udp < weave-udp (weave-udp = weave-sleeve "
          "here).", "",
          f"Measured (lab CPU s/GB at {at}, lowest first): " + " < ".join(
              f"{p} {_fmt(summary[(p, ON, metric, 0)]['median'])}" for p in ranked), "",
          "| course claim | measured (lab CPU s/GB, median (min–max)) | verdict |",
          "|---|---|---|"]
    failed = []
    for claim, a, b, verdict in course_pairs(summary, by_plane, metric):
        md.append(f"| {claim} | {a} ; {b} | {verdict} |")
        if verdict.startswith("does not hold"):
            failed.append(claim)
    md += ["", ("Claims that do not hold at this rate: " + "; ".join(failed) + "."
                if failed else "Every claim that could be tested holds at this rate."), ""]
    return md


def mechanisms(summary: dict[Key, dict[str, Any]],
               by_plane: dict[str, dict[str, Any]]) -> list[str]:
    md = ["", "## Why the order deviates: the mechanism behind each plane here", "",
          "A claim that does not hold points at a difference between the mechanism the "
          "course describes and the one built here (userspace OVS, Python forwarders, no "
          "NIC), or at noise: see the spread in the tables.", ""]
    md += [f"- **{p}**: {text}" for p, text in explanations(summary, by_plane)]
    return md + [""]


def _kubeproxy(results: Path | None, pngs: list[str]) -> list[str]:
    md = ["", "## kube-proxy scaling (iptables vs nftables)", ""]
    if results is None:
        return md + ["Not included: pass `--kubeproxy-results DIR` (a directory holding "
                     "`kubeproxy.csv` from `python -m knetlab.bench.kubeproxy --out DIR`).", ""]
    if not (results / "kubeproxy.csv").exists():
        return md + [f"No `kubeproxy.csv` in {results}.", ""]
    rows = list(csv.DictReader((results / "kubeproxy.csv").open()))
    when = time.strftime("%Y-%m-%d %H:%M UTC",
                         time.gmtime((results / "kubeproxy.csv").stat().st_mtime))
    md += [f"From `{results}/kubeproxy.csv` (knetlab/bench/kubeproxy.py, its own run, "
           f"written {when}):", "",
           "| mode | Services | full sync s | one-change sync ms p50 | first-packet µs p50 "
           "| p95 |", "|---|---|---|---|---|---|"]
    md += [f"| {r['mode']} | {r['services']} | {r['full_sync_s']} | {r['change_ms_p50']} | "
           f"{r['first_us_p50']} | {r['first_us_p95']} |" for r in rows]
    md += [""] + [f"![{n}]({n})" for n in pngs if n.startswith("kubeproxy")]
    return md + [""]
