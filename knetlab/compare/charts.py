"""PNG charts of the comparison (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from knetlab.compare.run import HIGH, OFF, ON, Settings

Summary = dict[tuple[str, str, str, int], dict[str, Any]]


def _bars(ax: Any, summary: Summary, planes: list[str], metric: str, variant: str,
          offset: float, width: float, label: str) -> None:
    xs, ys, lo, hi = [], [], [], []
    for i, p in enumerate(planes):
        row = summary.get((p, variant, metric, 0))
        if row:
            xs.append(i + offset)
            ys.append(row["median"])
            lo.append(row["median"] - row["min"])
            hi.append(row["max"] - row["median"])
    ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=label)


def _plane_axis(ax: Any, planes: list[str]) -> None:
    ax.set_xticks(range(len(planes)))
    ax.set_xticklabels(planes, rotation=35, ha="right", fontsize=8)


def draw(out: Path, summary: Summary, planes: list[str], cfg: Settings,
         kubeproxy: Path | None) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names: list[str] = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        names.append(name)

    fig, ax = plt.subplots(figsize=(9, 4))
    _bars(ax, summary, planes, "tcp1_gbps", ON, -0.2, 0.4, "1 stream")
    _bars(ax, summary, planes, f"tcp{cfg.streams}_gbps", ON, 0.2, 0.4, f"{cfg.streams} streams")
    _plane_axis(ax, planes)
    ax.set_ylabel("Gbit/s (median, min-max)")
    ax.set_title("TCP throughput pod to pod (iperf3)")
    ax.legend()
    save(fig, "throughput.png")

    fig, ax = plt.subplots(figsize=(9, 4))
    _bars(ax, summary, planes, "cpu_lab_s_per_gb", ON, -0.2, 0.4, f"at {cfg.rate}bit/s")
    _bars(ax, summary, planes, f"cpu_lab_s_per_gb{HIGH}", ON, 0.2, 0.4,
          f"at {cfg.high_rate}bit/s (planes that carry it)")
    _plane_axis(ax, planes)
    ax.set_yscale("log")
    ax.set_ylabel("lab CPU seconds per GB, net of idle")
    ax.set_title("CPU cost at a fixed rate (the lab's cgroup + ksoftirqd)")
    ax.legend()
    save(fig, "cpu.png")

    for metric, sizes, title, ylabel, name in (
            ("rr_p50_us", cfg.rr_sizes, "TCP round trip p50 by message size", "µs",
             "latency_sizes.png"),
            ("tput_gbps", cfg.tput_sizes, "TCP throughput by write size", "Gbit/s",
             "throughput_sizes.png")):
        fig, ax = plt.subplots(figsize=(8, 4.5))
        ax.set_prop_cycle(color=[plt.get_cmap("tab20")(i) for i in range(20)],
                          marker=["o", "s", "^", "v", "D"] * 4)
        for p in planes:
            pts = [(s, summary[(p, ON, metric, s)]["median"]) for s in sizes
                   if (p, ON, metric, s) in summary]
            if pts:
                ax.plot(*zip(*pts, strict=True), label=p)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("bytes")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(fontsize=7, ncol=2)
        save(fig, name)

    vx = [p for p in planes if (p, OFF, "tcp1_gbps", 0) in summary]
    if vx:
        fig, ax = plt.subplots(figsize=(7, 4))
        _bars(ax, summary, vx, "tcp1_gbps", ON, -0.2, 0.4, "offloads on")
        _bars(ax, summary, vx, "tcp1_gbps", OFF, 0.2, 0.4, "tso/gso/gro off")
        _plane_axis(ax, vx)
        ax.set_ylabel("Gbit/s, 1 stream")
        ax.set_title("VXLAN with and without segmentation offloads")
        ax.legend()
        save(fig, "offloads.png")

    if kubeproxy and (kubeproxy / "kubeproxy.csv").exists():
        rows = list(csv.DictReader((kubeproxy / "kubeproxy.csv").open()))
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        for mode in sorted({r["mode"] for r in rows}):
            rs = sorted((r for r in rows if r["mode"] == mode), key=lambda r: int(r["services"]))
            n = [int(r["services"]) for r in rs]
            a1.plot(n, [float(r["full_sync_s"]) for r in rs], marker="o", label=mode)
            a2.plot(n, [float(r["first_us_p50"]) for r in rs], marker="o", label=f"{mode} p50")
            a2.plot(n, [float(r["first_us_p95"]) for r in rs], marker="x", linestyle="--",
                    label=f"{mode} p95")
        a1.set_xlabel("Services")
        a1.set_ylabel("full sync, s")
        a1.set_title("kube-proxy sync time")
        a2.set_xlabel("Services")
        a2.set_ylabel("first-packet connect, µs")
        a2.set_yscale("log")
        a2.set_title("first-packet latency")
        a1.legend()
        a2.legend(fontsize=7)
        save(fig, "kubeproxy.png")
    return names
