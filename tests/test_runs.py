"""normlab.runs: the SQLite run index, JSON cleaning, run files, the environment record."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from normlab.runs import INDEX_NAME, RunIndex, _clean, environment, git_revision, read_json, write_json


def _add(index, run_id, claim="gn-ln-in", started=1.0, numbers=None, **kw):
    args = {
        "mode": "quick",
        "seeds": [0, 1],
        "seconds": 2.5,
        "status": "supported",
        "numbers": numbers if numbers is not None else {"acc": 0.9},
        "path": index.root / run_id,
    }
    index.add(run_id, claim, started=started, **{**args, **kw})


def test_run_index_round_trip(tmp_path):
    index = RunIndex(tmp_path / "out")
    assert index.list() == [] and not (tmp_path / "out").exists()  # listing creates nothing
    numbers = {"acc": 0.91, "gap": math.nan, "ratio": math.inf, "low": -math.inf, "n": 3, "curve": [0.1, math.nan]}
    _add(index, "run-b", started=20.0, numbers=numbers)
    _add(index, "run-a", claim="other", started=10.0, seeds=[7], status="refuted")
    assert (tmp_path / "out" / INDEX_NAME).exists()
    rows = index.list()
    assert [r["run_id"] for r in rows] == ["run-a", "run-b"]  # by start time
    row = index.get("run-b")
    assert row == {
        "run_id": "run-b",
        "claim": "gn-ln-in",
        "mode": "quick",
        "seeds": [0, 1],
        "started": 20.0,
        "seconds": 2.5,
        "status": "supported",
        "numbers": {"acc": 0.91, "gap": "nan", "ratio": "inf", "low": "-inf", "n": 3, "curve": [0.1, "nan"]},
        "path": str(tmp_path / "out" / "run-b"),
    }
    assert index.get("run-a")["seeds"] == [7] and index.get("run-a")["status"] == "refuted"
    assert [r["run_id"] for r in index.list("other")] == ["run-a"]
    assert index.list("absent") == []
    with pytest.raises(KeyError, match="run-c"):
        index.get("run-c")


def test_run_index_replace_and_reopen(tmp_path):
    _add(RunIndex(tmp_path), "r1", numbers={"acc": 0.5})
    _add(RunIndex(tmp_path), "r1", numbers={"acc": 0.6}, status="inconclusive")
    rows = RunIndex(tmp_path).list()
    assert len(rows) == 1 and rows[0]["numbers"] == {"acc": 0.6} and rows[0]["status"] == "inconclusive"


def test_run_index_tensor_and_numpy_numbers(tmp_path):
    index = RunIndex(tmp_path)
    numbers = {
        "t": torch.tensor([1.0, float("nan")]),
        "scalar": torch.tensor(2.5),
        "a": np.array([[1.0, np.inf]]),
        "f32": np.float32("nan"),
        "i": np.int64(4),
    }
    _add(index, "r", numbers=numbers)
    assert index.get("r")["numbers"] == {"t": [1.0, "nan"], "scalar": 2.5, "a": [[1.0, "inf"]], "f32": "nan", "i": 4}


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
    json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


def test_environment():
    env = environment(seeds=[0, 1, 2])
    for key in ("torch", "cpu", "cores", "torch_threads", "git", "seeds", "python", "numpy", "normlab", "date"):
        assert key in env
    assert env["torch"] == torch.__version__ and env["numpy"] == np.__version__
    assert env["cores"] == os.cpu_count() and env["torch_threads"] == torch.get_num_threads()
    assert env["seeds"] == [0, 1, 2] and environment()["seeds"] is None
    assert isinstance(env["cpu"], str) and env["cpu"]
    assert env["git"] is None or isinstance(env["git"], str)
    json.dumps(env)


def test_git_revision_outside_a_checkout(tmp_path):
    assert git_revision(tmp_path) is None
