"""The lab's store: a claim (``Store.create``) is atomic across real processes."""

from __future__ import annotations

import multiprocessing
from collections import Counter
from pathlib import Path
from typing import Any

from knetlab.store import Store

RACERS, KEYS = 12, 150


def _racer(root: str, me: int, start: Any, out: Any) -> None:
    store = Store(Path(root))
    start.wait()  # every racer claims at once
    won = [k for k in range(KEYS) if store.create(f"claims/k{k}", {"owner": me})]
    out.put((me, won))


def test_racing_claims_have_one_winner_each(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Barrier(RACERS), ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(str(tmp_path), me, start, out))
             for me in range(RACERS)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    winners = Counter(k for won in results.values() for k in won)
    assert sorted(winners) == list(range(KEYS)), "every key is claimed"
    assert max(winners.values()) == 1, f"keys with several winners: {winners.most_common(5)}"
    store = Store(tmp_path)
    for me, won in results.items():  # the value stored is the winner's
        assert all(store.get(f"claims/k{k}") == {"owner": me} for k in won)


def test_expired_claim_can_be_taken(tmp_path: Path) -> None:
    store = Store(tmp_path)
    assert store.create("lease", {"owner": 1}, ttl=-1)  # already expired
    assert store.create("lease", {"owner": 2}, ttl=60)
    assert not store.create("lease", {"owner": 3})
    assert store.get("lease")["owner"] == 2  # type: ignore[index]
