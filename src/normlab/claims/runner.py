"""Run claims: the seed policy, a directory per run, the record, the verdict, the figure, the index.

- **One quick/seed policy** for every claim (:func:`apply_policy`): quick mode,
  or fewer seeds than the claim's ``min_seeds``, gives ``inconclusive``, and
  the reason carries what the full rule reads on that run.
- **Each run its own directory** (see :mod:`normlab.runs`), marked
  ``complete`` only at the end; Ctrl-C or SIGTERM marks it ``interrupted``.
- **Parallel**: ``jobs > 1`` runs the cells of every claim in a pool of
  single-threaded processes (claims run side by side, each stage's cells
  spread over the pool); rows, verdicts and numbers equal a serial run's.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import replace
from pathlib import Path

from ..runs import RUNS_DIR, RunIndex, environment, fingerprint_data, read_json, run_state, write_json
from .base import Claim, Verdict
from .sweep import collect_rows

CELL_THREADS = 1  # every cell runs with one intra-op thread (sweep.run_cell)


class Interrupted(Exception):
    """The run was stopped (Ctrl-C, SIGTERM) before it finished; its directories are marked interrupted."""

    def __init__(self, runs: list[Path]) -> None:
        super().__init__(f"interrupted; {len(runs)} run(s) recorded as interrupted")
        self.runs = runs


# --------------------------------------------------------------------------- arguments


def parse_seeds(spec: str | int | list[int] | None, default: int) -> list[int]:
    """Seeds from ``5`` (0..4), ``"5-9"`` (inclusive range) or ``"0,3,7"``; ``None`` gives ``range(default)``."""
    if spec is None:
        return list(range(default))
    if isinstance(spec, int):
        seeds = list(range(spec))
    elif isinstance(spec, (list, tuple)):
        seeds = [int(s) for s in spec]
    else:
        text = str(spec).strip()
        try:
            if "," in text:
                seeds = [int(s) for s in text.split(",") if s.strip()]
            elif "-" in text.lstrip("-"):
                a, b = text.split("-", 1)
                seeds = list(range(int(a), int(b) + 1))
            else:
                seeds = list(range(int(text)))
        except ValueError:
            raise ValueError(
                f"seeds must be a count (5), an inclusive range (5-9) or a list (0,3,7); got {spec!r}"
            ) from None
    if not seeds:
        raise ValueError(f"seeds {spec!r} select no seed; give a count >= 1, a range a-b with a <= b, or a list")
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and >= 0, got {seeds}")
    return seeds


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """``"i/n"`` (1 <= i <= n) -> (i, n); None -> None."""
    if spec is None:
        return None
    try:
        i, n = (int(v) for v in str(spec).split("/"))
    except ValueError:
        raise ValueError(f"shard must look like i/n (for example 2/4), got {spec!r}") from None
    if not (n >= 1 and 1 <= i <= n):
        raise ValueError(f"shard i/n needs n >= 1 and 1 <= i <= n, got {spec!r}")
    return i, n


def select_shard(ids: list[str], shard: tuple[int, int] | None) -> list[str]:
    """The claims of shard i of n: every n-th claim starting at the i-th (round robin in registry order)."""
    if shard is None:
        return list(ids)
    i, n = shard
    return list(ids)[i - 1 :: n]


# --------------------------------------------------------------------------- the policy


def apply_policy(claim: Claim, verdict: Verdict, quick: bool, seeds: list[int]) -> Verdict:
    """Quick mode or fewer seeds than ``claim.min_seeds``: ``inconclusive``, with the full rule's reading."""
    if not quick and len(seeds) >= claim.min_seeds:
        return verdict
    why = "quick mode" if quick else f"{len(seeds)} seed(s), the rule needs >= {claim.min_seeds}"
    return replace(
        verdict,
        status="inconclusive",
        reason=f"{why} is too small to decide; on it the full rule reads {verdict.status}: {verdict.reason}",
    )


# --------------------------------------------------------------------------- one run


def _new_run_id(claim: Claim, mode: str, started: float) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    return f"{claim.id}-{mode}-{stamp}-{uuid.uuid4().hex[:6]}"


def _mark(run_dir: Path, info: dict, state: str, index: RunIndex, row: dict) -> None:
    write_json(run_dir / "run.json", {**info, "state": state, "finished": time.time()})
    index.add({**row, "state": state})


def run_claim(
    claim: Claim,
    out_root: str | Path,
    quick: bool = False,
    seeds: int | str | list[int] | None = None,
    log=print,
    executor: Executor | None = None,
    command: list[str] | None = None,
    jobs: int = 1,
    stop: threading.Event | None = None,
    started_runs: list[Path] | None = None,
    progress=None,
) -> dict:
    """Run one claim into its own ``out_root/runs/<run-id>/``, index it, return its result record.

    An experiment that raises gives a ``failed`` run whose verdict is
    ``inconclusive`` with the error (and the traceback in result.json), so one
    broken claim does not hide the others. KeyboardInterrupt marks the run
    ``interrupted`` and propagates.
    """
    seed_list = parse_seeds(seeds, claim.seeds if not quick else 1)
    mode = "quick" if quick else "full"
    params = claim.settings(quick)
    root = Path(out_root)
    index = RunIndex(root)
    started = time.time()
    run_id = _new_run_id(claim, mode, started)
    run_dir = root / RUNS_DIR / run_id
    run_dir.mkdir(parents=True, exist_ok=False)
    info = {
        "run_id": run_id,
        "claim": claim.id,
        "mode": mode,
        "seeds": seed_list,
        "started": started,
        "pid": os.getpid(),
        "host": socket.gethostname(),
    }
    row = {**info, "seconds": None, "status": None, "numbers": {}, "path": os.path.join(RUNS_DIR, run_id)}
    write_json(run_dir / "run.json", {**info, "state": "running"})
    if started_runs is not None:
        started_runs.append(run_dir)
    described = claim.describe(quick)
    config = {
        **described,
        "mode": mode,
        "seeds": seed_list,
        "min_seeds": claim.min_seeds,
        "params": params,
        "command": command if command is not None else ["python-api", "normlab.claims.runner.run_claim"],
        "cwd": os.getcwd(),
        "jobs": jobs,
    }
    write_json(run_dir / "config.json", config)
    try:
        env = {**environment(seed_list, cell_threads=CELL_THREADS, jobs=jobs), "data": fingerprint_data(claim.data)}
        write_json(run_dir / "env.json", env)
        index.add({**row, "state": "running"})
        t0 = time.perf_counter()
        cell_seconds = 0.0
        error = None
        rows: list[dict] = []

        def on_cell(cfg: dict, seconds: float, done: int, known: int) -> None:
            nonlocal cell_seconds
            cell_seconds += seconds
            if stop is not None and stop.is_set():
                raise KeyboardInterrupt
            if progress is not None:
                progress(f"[{claim.id}] cell {done}/{known}+ done ({seconds:.1f}s): {_short(cfg)}")

        try:
            rows = collect_rows(claim, params, seed_list, executor=executor, on_cell=on_cell)
            write_json(run_dir / "rows.json", rows)
            reading = claim.verdict(params, rows)
            verdict = apply_policy(claim, reading, quick, seed_list)
        except KeyboardInterrupt:
            raise
        except Exception as err:  # the report shows the failure; the other claims still run
            if stop is not None and stop.is_set():
                raise KeyboardInterrupt from err
            error = "".join(traceback.format_exception(err))
            reading = verdict = Verdict("inconclusive", f"the experiment raised {type(err).__name__}: {err}")
        seconds = time.perf_counter() - t0
        figure = None
        if error is None:
            try:
                figure = _save_figure(claim, params, rows, run_dir / "figure.png")
            except Exception as err:
                error = "figure: " + "".join(traceback.format_exception(err))
        result = {
            **config,
            "run_id": run_id,
            "verdict": verdict.to_dict(),
            "reading": reading.status,  # what the full rule says before the seed policy
            "seconds": seconds,
            "cell_seconds": cell_seconds,
            "cells": len(rows),
            "started": started,
            "figure": figure,
            "error": error,
            "env": env,
        }
        write_json(run_dir / "result.json", result)
        state = "failed" if error is not None and figure is None and not rows else "complete"
        _mark(
            run_dir,
            info,
            state,
            index,
            {**row, "seconds": seconds, "status": verdict.status, "numbers": verdict.numbers},
        )
        result["_dir"] = run_dir
        return result
    except BaseException:
        if run_state(run_dir) != "complete":
            _mark(run_dir, info, "interrupted", index, row)
        raise


def _short(cfg: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in cfg.items())[:80]


def _save_figure(claim: Claim, params: dict, rows: list[dict], path: Path) -> str:
    from matplotlib.figure import Figure

    with _MPL_LOCK:  # matplotlib is not thread-safe; claims may finish side by side
        fig = Figure(figsize=(9, 3.6), constrained_layout=True)
        claim.plot(params, rows, fig)
        fig.suptitle(f"{claim.id}: {claim.title}", fontsize=10)
        fig.savefig(path, dpi=100)
    return path.name


_MPL_LOCK = threading.Lock()


# --------------------------------------------------------------------------- many runs


def _worker_init() -> None:
    # Ctrl-C reaches the whole process group: the parent decides, workers stay quiet.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch
    import torch._dynamo  # noqa: F401  (a first optimizer imports it: 5-10 s, paid here, not in a cell's time)

    torch.set_num_threads(CELL_THREADS)


def _kill_pool(pool: ProcessPoolExecutor) -> None:
    procs = list(getattr(pool, "_processes", {}).values())  # no public API to stop running workers
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=5)


def _status_line(log):
    """(log, progress): progress rewrites one status line on a terminal and is silent otherwise."""
    tty = log is print and sys.stdout.isatty()

    def progress(msg: str) -> None:
        if tty:
            print("\x1b[2K" + msg[:150], end="\r", flush=True)

    def say(msg: str) -> None:
        if tty:
            print("\x1b[2K", end="")
        log(msg)

    return say, progress


def reproduce(
    ids: list[str],
    out_root: str | Path,
    quick: bool = False,
    seeds: int | str | list[int] | None = None,
    log=print,
    jobs: int = 1,
    command: list[str] | None = None,
) -> list[dict]:
    """Run the claims ``ids`` (serially, or their cells on ``jobs`` processes); their result records in order.

    Raises :class:`Interrupted` (after marking the unfinished runs) on Ctrl-C or SIGTERM.
    """
    from . import get_claim

    claims = [get_claim(i) for i in ids]  # unknown ids fail before anything runs
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    say, progress = _status_line(log)
    started_runs: list[Path] = []

    def one(claim: Claim, executor: Executor | None, stop: threading.Event | None) -> dict:
        say(f"[{claim.id}] {claim.title} ({'quick' if quick else 'full'})")
        result = run_claim(claim, out_root, quick, seeds, say, executor, command, jobs, stop, started_runs, progress)
        v = result["verdict"]
        say(f"[{claim.id}] {v['status'].upper()} in {result['seconds']:.1f}s: {v['reason']}")
        return result

    previous = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    if previous is not None:
        signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        if jobs == 1:
            return [one(c, None, None) for c in claims]
        stop = threading.Event()
        ctx = multiprocessing.get_context("spawn")  # no fork of a process that holds threads
        pool = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_init)
        threads = ThreadPoolExecutor(max_workers=len(claims), thread_name_prefix="claim")
        try:
            futures = [threads.submit(one, c, pool, stop) for c in claims]
            wait_futures(futures)
            return [f.result() for f in futures]
        except BaseException:
            stop.set()
            _kill_pool(pool)
            threads.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
            pool.shutdown(wait=True)
            threads.shutdown(wait=True)
    except KeyboardInterrupt:
        unfinished = []
        for run_dir in started_runs:
            if run_state(run_dir) in ("running", "interrupted"):
                info = read_json(run_dir / "run.json")
                if info.get("state") == "running":
                    write_json(run_dir / "run.json", {**info, "state": "interrupted", "finished": time.time()})
                    _reindex(Path(out_root), info)
                unfinished.append(run_dir)
        raise Interrupted(unfinished) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _reindex(root: Path, info: dict) -> None:
    RunIndex(root).add(
        {
            **info,
            "seconds": None,
            "status": None,
            "numbers": {},
            "state": "interrupted",
            "path": os.path.join(RUNS_DIR, info["run_id"]),
        }
    )


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
