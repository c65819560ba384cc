"""Run a claim's cells: the grid's stages, one thread per cell, in this process or a pool of processes.

Every cell runs through :func:`run_cell` with one intra-op thread, wherever
it runs, and seeds itself from its config: a serial run and a parallel run
give the same rows (tested). Rows come back in the grid's order.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import Executor

from .base import Claim
from .recipes import single_thread


def cell_key(config: dict) -> str:
    return json.dumps(config, sort_keys=True, default=str)


def run_cell(claim_id: str, params: dict, config: dict) -> tuple[list[dict], float]:
    """One cell of claim ``claim_id``: its rows (config keys added) and its seconds. Picklable for a pool."""
    from . import CLAIMS

    claim = CLAIMS[claim_id]
    t0 = time.perf_counter()
    with single_thread():
        out = claim.cell(params, dict(config))
    seconds = time.perf_counter() - t0
    rows = out if isinstance(out, list) else [out]
    return [{**config, **row} for row in rows], seconds


def collect_rows(
    claim: Claim,
    params: dict,
    seeds: list[int],
    executor: Executor | None = None,
    on_cell: Callable[[dict, float, int, int], None] | None = None,
) -> list[dict]:
    """Every row of ``claim`` under ``params`` and ``seeds``: the grid's stages until no new cell is asked for.

    ``executor`` (a process pool) runs a stage's cells in parallel; ``None``
    runs them here. ``on_cell(config, seconds, done, total_so_far)`` is
    called as each cell finishes (progress).
    """
    rows: list[dict] = []
    seen: set[str] = set()
    done = 0
    while True:
        cells = []
        for c in claim.grid(params, seeds, rows):
            k = cell_key(c)
            if k not in seen:
                seen.add(k)
                cells.append(c)
        if not cells:
            return rows
        if executor is None:
            results = []
            for c in cells:
                results.append(run_cell(claim.id, params, c))
                done += 1
                if on_cell:
                    on_cell(c, results[-1][1], done, len(seen))
        else:
            futures = [executor.submit(run_cell, claim.id, params, c) for c in cells]
            results = []
            for c, f in zip(cells, futures, strict=True):
                results.append(f.result())
                done += 1
                if on_cell:
                    on_cell(c, results[-1][1], done, len(seen))
        for cell_rows, _ in results:
            rows.extend(cell_rows)
