"""``make bench``: run every benchmark and write results to a folder.

Each benchmark module exposes ``run(out_dir: Path) -> dict`` and writes its own CSV/Markdown;
this harness runs them in order (``--only NAME`` picks some), collects what they return in
``results.json`` and concatenates their Markdown into ``RESULTS.md``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import time
import traceback
from pathlib import Path

BENCHES = [  # modules, in run order
    "bringup", "flannel", "docker", "calico", "ovs", "kube",
    "cycles", "kubeproxy", "ingress", "dns", "weave", "netpolicy",
    "idle",
]


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m knetlab.bench")
    p.add_argument("--out", default="bench-results")
    p.add_argument("--only", action="append", help="run only these benchmarks")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out).resolve()  # benches hand paths to daemons that chdir to /
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, object] = {"date": time.strftime("%Y-%m-%d %H:%M:%S")}
    failed = 0
    for name in args.only or BENCHES:
        print(f"== bench {name}", flush=True)
        try:
            results[name] = importlib.import_module(f"knetlab.bench.{name}").run(out)
        except Exception as exc:  # noqa: BLE001 - one failed bench must not hide the others
            traceback.print_exc()
            results[name] = {"error": str(exc)}
            failed += 1
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    md = [f"# knetlab benchmark results ({results['date']})", ""]
    for name in args.only or BENCHES:
        part = out / f"{name}.md"
        if part.exists():
            md.append(part.read_text())
    (out / "RESULTS.md").write_text("\n".join(md))
    print(f"results in {out}/results.json and {out}/RESULTS.md")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
