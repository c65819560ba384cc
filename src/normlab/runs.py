"""Run directories and the index of runs: nothing a run wrote is lost or shown for what it is not.

Layout of an output root::

    OUT/index.sqlite              one row per run (claim, mode, seeds, state, verdict, numbers, directory)
    OUT/runs/<run-id>/run.json    state: running -> complete | interrupted | failed; pid, host, times
    OUT/runs/<run-id>/config.json the exact command, the structured params, seeds, mode, rendered protocol
    OUT/runs/<run-id>/env.json    versions (also of the packages that generate or ship data), threads,
                                  CPU model and flags, data fingerprints, git revision
    OUT/runs/<run-id>/rows.json   every cell's row (the tidy evidence)
    OUT/runs/<run-id>/result.json the verdict (parts, checks, numbers), seconds, figure name, error
    OUT/runs/<run-id>/figure.png

Decisions:

- Every run has its own directory; a claim's *latest* run is found through
  the index (or, when rebuilding it, through the run directories), never by
  overwriting an earlier run's files.
- Files are written atomically with a temp name unique to the writer
  (``tempfile.mkstemp`` in the same directory, then ``os.replace``).
- ``run.json`` says ``running`` from the start; it says ``complete`` only
  after every other file is written. An interrupted run (Ctrl-C, SIGTERM)
  is marked ``interrupted``; one killed outright keeps ``running`` with a
  pid that no longer exists, which readers report as ``interrupted``.
  Only complete runs are shown as results.
- The index uses SQLite's WAL journal and ``BEGIN IMMEDIATE`` write
  transactions with a busy timeout, so concurrent writers wait instead of
  failing, and cannot deadlock (one lock, taken up front). An index that is
  not a readable normlab index raises :class:`IndexError_` naming the fix:
  ``normlab runs --out OUT --rebuild-index`` rebuilds it from the run
  directories (the broken file is kept aside).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import socket
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

INDEX_NAME = "index.sqlite"
RUNS_DIR = "runs"
STATES = ("running", "complete", "interrupted", "failed")
_BUSY_TIMEOUT_S = 60.0
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    claim TEXT NOT NULL,
    mode TEXT NOT NULL,
    seeds TEXT NOT NULL,
    started REAL NOT NULL,
    seconds REAL,
    state TEXT NOT NULL,
    status TEXT,
    numbers TEXT NOT NULL,
    path TEXT NOT NULL
)
"""
_COLUMNS = ("run_id", "claim", "mode", "seeds", "started", "seconds", "state", "status", "numbers", "path")


class IndexError_(RuntimeError):
    """The index of an output root cannot be read or written; the message says how to rebuild it."""


# --------------------------------------------------------------------------- files


def _clean(obj):
    """JSON-safe: tensors and arrays to lists, non-finite floats to strings, tuples to lists."""
    if isinstance(obj, torch.Tensor):
        return _clean(obj.detach().cpu().tolist())
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy arrays and scalars
        return _clean(obj.tolist())
    return obj


def write_json(path: str | Path, obj) -> None:
    """Write ``obj`` as JSON to ``path`` atomically: a temp file of this writer's own, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_clean(obj), indent=2)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_json(path: str | Path):
    return json.loads(Path(path).read_text())


def pid_alive(pid: int | None, host: str | None) -> bool:
    """Whether process ``pid`` of this host still exists (on another host: assumed alive)."""
    if host is not None and host != socket.gethostname():
        return True
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_state(run_dir: str | Path) -> str:
    """The state of a run directory: ``complete``, ``interrupted`` (also for a killed run), ``failed``,
    ``running`` (its process is alive), or ``unreadable``."""
    try:
        info = read_json(Path(run_dir) / "run.json")
    except (OSError, ValueError):
        return "unreadable"
    state = info.get("state")
    if state == "running" and not pid_alive(info.get("pid"), info.get("host")):
        return "interrupted"
    return state if state in STATES else "unreadable"


# --------------------------------------------------------------------------- the record of a run


def _cpu_info() -> tuple[str, list[str]]:
    model, flags = "", []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            elif line.startswith(("flags", "Features")) and not flags:
                flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    return model or platform.processor() or platform.machine(), flags


def git_revision(path: Path | None = None) -> str | None:
    """The git revision of normlab's source tree, if it is a checkout (``-dirty`` with local changes)."""
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


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


# Packages whose version can change what a run computes: the engine, and what generates or ships data.
RECORDED_PACKAGES = ("torch", "numpy", "scikit-learn", "mnist1d", "matplotlib", "scipy")


def environment(seeds: list[int] | None = None, cell_threads: int | None = None, jobs: int | None = None) -> dict:
    """What a reader needs to trust (and repeat) a run."""
    from . import __version__

    cpu, flags = _cpu_info()
    return {
        "normlab": __version__,
        "git": git_revision(),
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in RECORDED_PACKAGES},
        "torch": torch.__version__,
        "numpy": _version("numpy"),
        "torch_config": {
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "mkldnn": torch.backends.mkldnn.is_available(),
            "aten_cpu_capability_env": os.environ.get("ATEN_CPU_CAPABILITY"),
        },
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_flags": flags,
        "cores": os.cpu_count(),
        # The threads the experiments ran with (cells pin one intra-op thread), not the process default.
        "torch_threads": cell_threads if cell_threads is not None else torch.get_num_threads(),
        "process_threads": torch.get_num_threads(),
        "jobs": jobs,
        "seeds": seeds,
        "host": socket.gethostname(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def fingerprint_data(names: tuple[str, ...] | list[str]) -> dict:
    """A sha256 of every array of each built-in dataset in ``names`` (``synthetic`` is generated per cell)."""
    import hashlib

    from . import data

    out = {}
    for name in names:
        if name == "synthetic":
            out[name] = "generated in each cell from its seed (normlab.data synthetic generators)"
            continue
        ds = {"mnist1d": data.mnist1d, "digits": data.digits}[name]()
        h = hashlib.sha256()
        for t in (ds.x_train, ds.y_train, ds.x_test, ds.y_test):
            h.update(str(tuple(t.shape)).encode())
            h.update(t.contiguous().numpy().tobytes())
        out[name] = {"sha256": h.hexdigest(), "train": len(ds.x_train), "test": len(ds.x_test)}
    return out


# --------------------------------------------------------------------------- the index


def _ensure_wal(con: sqlite3.Connection) -> None:
    """Put the index in WAL mode (a persistent property of the file: set once, by its first writer).

    Switching needs an exclusive lock, and SQLite answers ``database is
    locked`` at once, without its busy wait, while another connection holds
    any lock: the first connections to a new index race for it. So the mode
    is read first (no lock), and the switch retried until the busy timeout.
    """
    deadline = time.monotonic() + _BUSY_TIMEOUT_S
    while True:
        try:
            if con.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                con.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.005)


class RunIndex:
    """The SQLite index of the runs under an output root (WAL, immediate write transactions)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.path = self.root / INDEX_NAME

    def _fix(self) -> str:
        return f"rebuild it from the run directories with `normlab runs --out {self.root} --rebuild-index`"

    @contextlib.contextmanager
    def _connect(self, write: bool) -> Iterator[sqlite3.Connection]:
        if write:
            self.root.mkdir(parents=True, exist_ok=True)
        try:
            con = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as err:
            raise IndexError_(f"cannot open the run index {self.path}: {err}; {self._fix()}") from err
        try:
            try:
                if write:
                    _ensure_wal(con)
                    con.execute("BEGIN IMMEDIATE")  # take the write lock up front: waits, never deadlocks
                    con.execute(_SCHEMA)
                else:
                    con.execute("BEGIN")
                cols = [r[1] for r in con.execute("PRAGMA table_info(runs)")]
                if not cols and not write:  # created by a writer that has not committed its schema yet
                    yield None
                    con.execute("COMMIT")
                    return
                if tuple(cols) != _COLUMNS:
                    raise IndexError_(
                        f"{self.path} is not a normlab run index of this version (columns {cols}); {self._fix()}"
                    )
                yield con
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
        except sqlite3.DatabaseError as err:
            raise IndexError_(f"cannot read the run index {self.path} ({err}); {self._fix()}") from err
        finally:
            con.close()

    def add(self, record: dict) -> None:
        """Insert or replace one run's row; ``record`` has the columns' keys."""
        values = (
            record["run_id"],
            record["claim"],
            record["mode"],
            json.dumps(_clean(record["seeds"])),
            float(record["started"]),
            None if record.get("seconds") is None else float(record["seconds"]),
            record["state"],
            record.get("status"),
            json.dumps(_clean(record.get("numbers") or {})),
            str(record["path"]),
        )
        with self._connect(write=True) as con:
            con.execute(f"INSERT OR REPLACE INTO runs VALUES ({', '.join('?' * len(_COLUMNS))})", values)

    def list(self, claim: str | None = None, problems: list[str] | None = None) -> list[dict]:
        """Every indexed run (oldest first), with the state read from its directory.

        A row that cannot be parsed is left out and described in ``problems``
        (if given); an index that cannot be read raises :class:`IndexError_`.
        """
        if not self.path.exists():
            return []
        with self._connect(write=False) as con:
            if con is None:
                return []
            con.row_factory = sqlite3.Row
            q = "SELECT * FROM runs" + (" WHERE claim = ?" if claim else "") + " ORDER BY started, run_id"
            rows = con.execute(q, (claim,) if claim else ()).fetchall()
        out = []
        for r in rows:
            d = dict(r)
            try:
                d["seeds"] = json.loads(d["seeds"])
                d["numbers"] = json.loads(d["numbers"])
                d["started"] = float(d["started"])
            except (TypeError, ValueError) as err:
                if problems is not None:
                    problems.append(f"{self.path}: malformed row for run {d.get('run_id')!r} ({err}); skipped")
                continue
            path = Path(d["path"])
            d["path"] = path if path.is_absolute() else self.root / path
            if d["state"] == "running":
                d["state"] = run_state(d["path"])
            out.append(d)
        return out

    def get(self, run_id: str) -> dict:
        """One run by its id or a unique prefix of it."""
        rows = self.list()
        exact = [r for r in rows if r["run_id"] == run_id]
        if exact:
            return exact[0]
        hits = [r for r in rows if r["run_id"].startswith(run_id)]
        if len(hits) == 1:
            return hits[0]
        if hits:
            raise KeyError(f"run id prefix {run_id!r} matches {len(hits)} runs in {self.path}; give more of it")
        raise KeyError(f"no run {run_id!r} in {self.path}")

    def latest(self, claim: str | None = None) -> dict[str, dict]:
        """Claim id -> its latest complete run."""
        out: dict[str, dict] = {}
        for r in self.list(claim):
            if r["state"] == "complete":
                out[r["claim"]] = r  # rows are oldest first
        return out

    def rebuild(self) -> tuple[int, Path | None]:
        """Re-create the index from ``OUT/runs/*``; the old file (if any) is kept as ``index.sqlite.broken-*``.

        Returns (runs indexed, where the old index was moved).
        """
        moved = None
        if self.path.exists():
            moved = self.path.with_name(f"{INDEX_NAME}.broken-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
            os.replace(self.path, moved)
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(str(self.path) + suffix, str(moved) + suffix)
        n = 0
        runs_dir = self.root / RUNS_DIR
        for d in sorted(runs_dir.iterdir()) if runs_dir.is_dir() else []:
            record = record_from_dir(d, self.root)
            if record is not None:
                self.add(record)
                n += 1
        if n == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            with self._connect(write=True):
                pass
        return n, moved


def record_from_dir(run_dir: Path, root: Path) -> dict | None:
    """The index row of a run directory, from its own files (None if it is not a run directory)."""
    try:
        info = read_json(run_dir / "run.json")
    except (OSError, ValueError):
        return None
    result = {}
    with contextlib.suppress(OSError, ValueError):
        result = read_json(run_dir / "result.json")
    verdict = result.get("verdict") or {}
    return {
        "run_id": info.get("run_id", run_dir.name),
        "claim": info.get("claim", "?"),
        "mode": info.get("mode", "?"),
        "seeds": info.get("seeds", []),
        "started": info.get("started", 0.0),
        "seconds": result.get("seconds"),
        "state": run_state(run_dir),
        "status": verdict.get("status"),
        "numbers": verdict.get("numbers", {}),
        "path": os.path.relpath(run_dir, root),
    }
