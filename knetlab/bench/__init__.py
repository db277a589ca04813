"""knetlab's benchmarks (``python -m knetlab.bench``): one module per subject, each with a
``run(out_dir)`` that writes its CSV and Markdown part and returns its results."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any


def write_csv(path: Path, rows: list[dict[str, Any]], fields: list[str] | None = None) -> None:
    """One row per dict; columns are the first row's keys unless ``fields`` are given."""
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields or list(rows[0]), restval="")
        w.writeheader()
        w.writerows(rows)
