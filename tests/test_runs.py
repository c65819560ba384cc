"""normlab.runs: atomic files, the run index under concurrent writers and corruption, states, the record."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import sqlite3
import threading

import numpy as np
import pytest
import torch

from normlab.runs import (
    INDEX_NAME,
    RUNS_DIR,
    IndexError_,
    RunIndex,
    _clean,
    environment,
    fingerprint_data,
    git_revision,
    read_json,
    run_state,
    write_json,
)


def _record(run_id, claim="gn-ln-in", started=1.0, numbers=None, **kw):
    return {
        "run_id": run_id,
        "claim": claim,
        "mode": "quick",
        "seeds": [0, 1],
        "started": started,
        "seconds": 2.5,
        "state": "complete",
        "status": "holds",
        "numbers": numbers if numbers is not None else {"acc": 0.9},
        "path": f"{RUNS_DIR}/{run_id}",
        **kw,
    }


def test_run_index_round_trip(tmp_path):
    index = RunIndex(tmp_path / "out")
    assert index.list() == [] and not (tmp_path / "out").exists()  # listing creates nothing
    numbers = {"acc": 0.91, "gap": math.nan, "ratio": math.inf, "n": 3, "curve": [0.1, math.nan]}
    index.add(_record("run-b", started=20.0, numbers=numbers))
    index.add(_record("run-a", claim="other", started=10.0, seeds=[7], status="fails"))
    assert (tmp_path / "out" / INDEX_NAME).exists()
    rows = index.list()
    assert [r["run_id"] for r in rows] == ["run-a", "run-b"]  # by start time
    row = index.get("run-b")
    assert row["numbers"] == {"acc": 0.91, "gap": "nan", "ratio": "inf", "n": 3, "curve": [0.1, "nan"]}
    assert row["path"] == tmp_path / "out" / RUNS_DIR / "run-b"  # relative paths resolve against the root
    assert index.get("run-a")["seeds"] == [7] and index.get("run-a")["status"] == "fails"
    assert [r["run_id"] for r in index.list("other")] == ["run-a"]
    with pytest.raises(KeyError, match="run-c"):
        index.get("run-c")


def test_get_by_unique_prefix(tmp_path):
    index = RunIndex(tmp_path)
    index.add(_record("bn-speed-full-1"))
    index.add(_record("bn-speed-full-2"))
    assert index.get("bn-speed-full-2")["run_id"] == "bn-speed-full-2"
    with pytest.raises(KeyError, match="matches 2 runs"):
        index.get("bn-speed")


def test_latest_is_the_last_complete_run(tmp_path):
    index = RunIndex(tmp_path)
    index.add(_record("a", started=1.0))
    index.add(_record("b", started=2.0))
    index.add(_record("c", started=3.0, state="interrupted"))
    assert index.latest()["gn-ln-in"]["run_id"] == "b"


def _write_many(args):
    path, k, n = args
    for i in range(n):
        write_json(path, {"writer": k, "i": i, "pad": "x" * 2000})
    return n


def test_write_json_concurrent_writers_never_fail(tmp_path):
    """Per-writer temp names: 4 processes x 150 writes to one file, no failure, a whole file at the end."""
    path = tmp_path / "r" / "result.json"
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        assert sum(pool.map(_write_many, [(path, k, 150) for k in range(4)])) == 600
    data = read_json(path)
    assert data["i"] == 149 and len(data["pad"]) == 2000
    assert sorted(p.name for p in path.parent.iterdir()) == ["result.json"]  # no temp file left


def _add_many(args):
    root, k, n = args
    index = RunIndex(root)
    for i in range(n):
        index.add(_record(f"w{k}-{i}", started=float(i)))
    return n


def test_index_concurrent_writers_lose_no_row(tmp_path):
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        assert sum(pool.map(_add_many, [(tmp_path, k, 60) for k in range(3)])) == 180
    assert len(RunIndex(tmp_path).list()) == 180


def test_corrupted_index_is_a_clear_error_and_rebuilds(tmp_path):
    index = RunIndex(tmp_path)
    for i, state in enumerate(("complete", "running")):
        d = tmp_path / RUNS_DIR / f"run-{i}"
        write_json(
            d / "run.json",
            {
                "run_id": f"run-{i}",
                "claim": "gn-ln-in",
                "mode": "full",
                "seeds": [0],
                "started": float(i),
                "state": state,
                "pid": 2**22 + 17,
                "host": None,
            },
        )
        write_json(
            d / "result.json", {"verdict": {"status": "holds", "reason": "", "numbers": {"x": 1.0}}, "seconds": 1.0}
        )
    (tmp_path / INDEX_NAME).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(IndexError_, match="--rebuild-index"):
        index.list()
    with pytest.raises(IndexError_, match="--rebuild-index"):
        index.add(_record("x"))
    n, moved = index.rebuild()
    assert n == 2 and moved is not None and moved.exists()
    rows = {r["run_id"]: r for r in index.list()}
    assert rows["run-0"]["state"] == "complete" and rows["run-0"]["numbers"] == {"x": 1.0}
    assert rows["run-1"]["state"] == "interrupted"  # 'running' with a pid that does not exist


def test_index_of_another_schema_and_malformed_rows(tmp_path):
    con = sqlite3.connect(tmp_path / INDEX_NAME)
    con.execute("CREATE TABLE runs (a TEXT)")
    con.commit()
    con.close()
    with pytest.raises(IndexError_, match="not a normlab run index"):
        RunIndex(tmp_path / "").list()
    other = tmp_path / "o"
    index = RunIndex(other)
    index.add(_record("good"))
    index.add(_record("bad"))
    con = sqlite3.connect(index.path)
    con.execute("UPDATE runs SET numbers = '{not json' WHERE run_id = 'bad'")
    con.commit()
    con.close()
    problems = []
    assert [r["run_id"] for r in index.list(problems=problems)] == ["good"]
    assert "malformed row for run 'bad'" in problems[0]


def test_run_state(tmp_path):
    d = tmp_path / "r"
    assert run_state(d) == "unreadable"
    write_json(d / "run.json", {"state": "running", "pid": os.getpid(), "host": None})
    assert run_state(d) == "running"
    write_json(d / "run.json", {"state": "running", "pid": 2**22 + 17, "host": None})
    assert run_state(d) == "interrupted"
    write_json(d / "run.json", {"state": "complete"})
    assert run_state(d) == "complete"


def test_clean():
    obj = {
        1: (math.nan, [math.inf, {"x": -math.inf}]),
        "ok": [1, 2.5, "s", None, True],
        "np": np.float64(math.nan),
        "arr": np.arange(3),
        "tensor": torch.tensor([[0.5, math.inf]]),
    }
    out = _clean(obj)
    assert out == {
        "1": ["nan", ["inf", {"x": "-inf"}]],
        "ok": [1, 2.5, "s", None, True],
        "np": "nan",
        "arr": [0, 1, 2],
        "tensor": [[0.5, "inf"]],
    }
    assert type(out["arr"][0]) is int
    json.dumps(out, allow_nan=False)  # strict JSON


def test_write_and_read_json(tmp_path):
    path = tmp_path / "run" / "result.json"
    write_json(path, {"loss": [1.0, math.nan], "w": torch.ones(2)})
    assert read_json(path) == {"loss": [1.0, "nan"], "w": [1.0, 1.0]}
    assert sorted(p.name for p in path.parent.iterdir()) == ["result.json"]  # no temp file left


def test_write_json_failure_leaves_the_old_file(tmp_path):
    path = tmp_path / "result.json"
    write_json(path, {"a": 1})

    class Boom:
        pass

    with pytest.raises(TypeError):
        write_json(path, {"a": Boom()})
    assert read_json(path) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_environment_records_what_a_rerun_needs():
    env = environment(seeds=[0, 1, 2], cell_threads=1, jobs=2)
    assert env["torch"] == torch.__version__ and env["packages"]["numpy"] == np.__version__
    for name in ("scikit-learn", "mnist1d", "torch", "matplotlib"):
        assert env["packages"][name], name  # installed with normlab: every data generator's version
    assert env["torch_threads"] == 1 and env["jobs"] == 2 and env["cores"] == os.cpu_count()
    assert env["seeds"] == [0, 1, 2]
    assert isinstance(env["cpu_flags"], list) and env["torch_config"]["cpu_capability"]
    assert env["git"] is None or isinstance(env["git"], str)
    json.dumps(env)


def test_fingerprint_data_is_stable():
    a, b = fingerprint_data(("digits",)), fingerprint_data(["digits"])
    assert a == b and len(a["digits"]["sha256"]) == 64 and a["digits"]["train"] > 0
    assert "generated" in fingerprint_data(("synthetic",))["synthetic"]


def test_git_revision_outside_a_checkout(tmp_path):
    assert git_revision(tmp_path) is None


def test_threads_writing_the_index_at_once(tmp_path):
    index = RunIndex(tmp_path)
    errors = []

    def work(k):
        try:
            for i in range(40):
                index.add(_record(f"t{k}-{i}"))
        except Exception as err:  # pragma: no cover - the assertion below reports it
            errors.append(err)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(index.list()) == 160


def test_fresh_index_opened_by_readers_and_writers_at_once(tmp_path):
    # The first connections to a new index race: switching it to WAL needs an exclusive lock, which SQLite
    # refuses at once (no busy wait) while another connection holds any lock. Seen in CI as "database is locked".
    errors = []
    for trial in range(25):
        index = RunIndex(tmp_path / f"t{trial}")
        start = threading.Barrier(6)

        def work(k, index=index, start=start):
            try:
                start.wait()
                for i in range(5):
                    if k % 2:
                        index.list()
                    else:
                        index.add(_record(f"t{k}-{i}"))
            except Exception as err:  # pragma: no cover - the assertion below reports it
                errors.append(err)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(index.list()) == 15
    assert not errors, errors[:3]
