"""Run directories and the index of runs.

A run directory holds ``config.json``, ``result.json`` (verdict, numbers,
evidence), ``env.json`` (versions, CPU, threads, seeds, git revision) and
figures. ``index.sqlite`` in the output root lists every run (standard
library sqlite3) so ``normlab runs`` can list and compare them.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import torch

INDEX_NAME = "index.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    claim TEXT NOT NULL,
    mode TEXT NOT NULL,
    seeds TEXT NOT NULL,
    started REAL NOT NULL,
    seconds REAL NOT NULL,
    status TEXT NOT NULL,
    numbers TEXT NOT NULL,
    path TEXT NOT NULL
)
"""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_revision(path: Path | None = None) -> str | None:
    """The git revision of normlab's source tree, if it is a checkout."""
    here = path or Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment(seeds: list[int] | None = None) -> dict:
    """What a reader needs to trust (and repeat) a run."""
    import numpy

    from . import __version__

    return {
        "normlab": __version__,
        "git": git_revision(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "seeds": seeds,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def _clean(obj):
    """JSON-safe: tensors and arrays to lists, non-finite floats to strings."""
    if isinstance(obj, torch.Tensor):
        return _clean(obj.detach().cpu().tolist())
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy arrays and scalars
        return _clean(obj.tolist())
    return obj


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(_clean(obj), indent=2, sort_keys=False))
    os.replace(tmp, path)


def read_json(path: Path):
    return json.loads(Path(path).read_text())


class RunIndex:
    """The SQLite index of the runs under an output root."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.path = self.root / INDEX_NAME

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection that commits on success, rolls back on error, and is always closed."""
        self.root.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path)
        try:
            with con:
                con.execute(_SCHEMA)
                yield con
        finally:
            con.close()

    def add(
        self,
        run_id: str,
        claim: str,
        mode: str,
        seeds: list[int],
        started: float,
        seconds: float,
        status: str,
        numbers: dict,
        path: Path,
    ) -> None:
        with self._connect() as con:
            con.execute(
                "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    claim,
                    mode,
                    json.dumps(seeds),
                    started,
                    seconds,
                    status,
                    json.dumps(_clean(numbers)),
                    str(path),
                ),
            )

    def list(self, claim: str | None = None) -> list[dict]:
        if not self.path.exists():
            return []
        with self._connect() as con:
            con.row_factory = sqlite3.Row
            q = "SELECT * FROM runs" + (" WHERE claim = ?" if claim else "") + " ORDER BY started"
            rows = con.execute(q, (claim,) if claim else ()).fetchall()
        out = []
        for r in rows:
            d = dict(r)
            d["seeds"] = json.loads(d["seeds"])
            d["numbers"] = json.loads(d["numbers"])
            out.append(d)
        return out

    def get(self, run_id: str) -> dict:
        for r in self.list():
            if r["run_id"] == run_id:
                return r
        raise KeyError(f"no run {run_id!r} in {self.path}")
