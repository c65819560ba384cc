"""The claim runner: one seed policy for every claim, run directories, parallel = serial, interruption."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from normlab.claims import CLAIMS, get_claim
from normlab.claims.base import STATUSES, Verdict, render
from normlab.claims.runner import apply_policy, parse_seeds, parse_shard, reproduce, run_claim, select_shard
from normlab.report import load_results
from normlab.runs import RUNS_DIR, RunIndex, read_json, run_state

NORMLAB = [sys.executable, "-m", "normlab.cli"]
LONG_CLAIM = "where-to-normalize"  # its full mode trains for minutes: long enough to be interrupted


def test_parse_seeds():
    assert parse_seeds(None, 5) == [0, 1, 2, 3, 4]
    assert parse_seeds("3", 5) == [0, 1, 2] and parse_seeds(2, 5) == [0, 1]
    assert parse_seeds("5-9", 5) == [5, 6, 7, 8, 9] and parse_seeds("0,3,7", 5) == [0, 3, 7]
    for bad in ("0", "9-5", "a", "1,1", "-3"):
        with pytest.raises(ValueError, match="seed"):
            parse_seeds(bad, 5)


def test_shards_partition_the_claims():
    ids = list(CLAIMS)
    assert parse_shard(None) is None and parse_shard("2/3") == (2, 3)
    for bad in ("0/3", "4/3", "x", "1/0", "1-2"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)
    parts = [select_shard(ids, (i, 3)) for i in (1, 2, 3)]
    assert sorted(sum(parts, [])) == sorted(ids) and all(parts)


@pytest.mark.parametrize("claim_id", list(CLAIMS))
def test_header_is_complete_and_rendered(claim_id):
    """Every claim has the declarative header; its prose is rendered from its params (no stray fields)."""
    claim = get_claim(claim_id)
    for attr in ("id", "title", "source", "statement", "protocol", "rule"):
        assert isinstance(getattr(claim, attr), str) and getattr(claim, attr)
    assert claim.params, "every number of the protocol and rule lives in params"
    assert set(claim.quick) <= set(claim.params)
    assert claim.seeds >= claim.min_seeds >= 1
    for quick in (False, True):
        d = claim.describe(quick)
        assert "{" not in d["protocol"] and "{" not in d["rule"]
    assert render(claim.protocol, claim.settings()) == claim.describe()["protocol"]


@pytest.mark.parametrize("claim_id", list(CLAIMS))
def test_seed_policy_for_every_claim(claim_id):
    claim = get_claim(claim_id)
    decisive = Verdict("holds", "the rule holds", {"x": 1.0})
    enough = list(range(claim.min_seeds))
    assert apply_policy(claim, decisive, False, enough).status == "holds"
    for quick, seeds in ((True, enough), (False, enough[:-1])):
        if not seeds:
            continue
        v = apply_policy(claim, decisive, quick, seeds)
        assert v.status == "inconclusive" and "on it the full rule reads holds: the rule holds" in v.reason
        assert v.numbers == {"x": 1.0}


@pytest.fixture(scope="module")
def quick_all(tmp_path_factory):
    """Every claim's quick run, once, through the runner in this process."""
    import torch

    out = tmp_path_factory.mktemp("quick-all")
    before = torch.get_num_threads()
    try:
        results = reproduce(list(CLAIMS), out, quick=True, log=lambda s: None)
    finally:
        torch.set_num_threads(before)
    return out, {r["id"]: r for r in results}


@pytest.mark.parametrize("claim_id", list(CLAIMS))
def test_quick_run_of_every_claim(quick_all, claim_id):
    out, results = quick_all
    r = results[claim_id]
    assert r["error"] is None, r["error"]
    d = Path(r["_dir"])
    assert d.parent == out / RUNS_DIR and run_state(d) == "complete"
    for name in ("run.json", "config.json", "env.json", "rows.json", "result.json", "figure.png"):
        assert (d / name).is_file(), name
    saved = read_json(d / "result.json")
    assert saved["mode"] == "quick" and saved["verdict"]["status"] == "inconclusive"  # the policy
    assert saved["reading"] in STATUSES
    assert f"on it the full rule reads {saved['reading']}" in saved["verdict"]["reason"]
    config = read_json(d / "config.json")
    assert config["params"] and config["command"] and config["seeds"] == [0]
    env = read_json(d / "env.json")
    assert env["torch_threads"] == 1 and set(env["data"]) == set(get_claim(claim_id).data)
    assert read_json(d / "rows.json"), "a run's rows are its evidence"


def test_reruns_keep_every_run(tmp_path):
    """Two runs of a claim: two directories, both indexed with their evidence; the latest is the report's."""
    runs = [run_claim(get_claim("gn-ln-in"), tmp_path, quick=True, log=lambda s: None) for _ in range(2)]
    dirs = {r["_dir"] for r in runs}
    assert len(dirs) == 2 and all((d / "result.json").is_file() and (d / "figure.png").is_file() for d in dirs)
    indexed = RunIndex(tmp_path).list()
    assert [Path(r["path"]) for r in indexed] == [r["_dir"] for r in runs]
    results, _ = load_results(tmp_path)
    assert [r["_dir"] for r in results] == [runs[1]["_dir"]]


def test_parallel_run_equals_serial(tmp_path):
    ids = ["gn-ln-in", "where-to-normalize", "scale-invariance"]
    serial = reproduce(ids, tmp_path / "serial", quick=True, seeds=2, log=lambda s: None)
    parallel = reproduce(ids, tmp_path / "parallel", quick=True, seeds=2, jobs=2, log=lambda s: None)
    for a, b in zip(serial, parallel, strict=True):
        assert a["id"] == b["id"] and a["verdict"] == b["verdict"]
        assert read_json(a["_dir"] / "rows.json") == read_json(b["_dir"] / "rows.json")
        assert b["env"]["jobs"] == 2 and b["env"]["torch_threads"] == 1


# --------------------------------------------------------------------------- real processes, killed


def _start(out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [*NORMLAB, "reproduce", LONG_CLAIM, "--out", str(out), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # our signal reaches its process group only
    )


def _wait_running(out: Path, proc: subprocess.Popen, timeout: float = 90.0) -> Path:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        dirs = sorted((out / RUNS_DIR).glob(f"{LONG_CLAIM}-full-*")) if (out / RUNS_DIR).is_dir() else []
        for d in dirs:
            if (d / "env.json").is_file() and run_state(d) == "running":
                # Into the cells: past the first cell's one-time imports (the first optimizer imports
                # torch._dynamo, 5-10 s on a loaded machine), where a user's Ctrl-C usually lands.
                time.sleep(3.0)
                return d
        if proc.poll() is not None:
            pytest.fail(f"normlab exited early: {proc.communicate()}")
        time.sleep(0.2)
    proc.kill()
    pytest.fail("the run never started")


@pytest.fixture
def finished_run(tmp_path):
    """An output root with one complete (quick) run of the claim: its evidence must survive what follows."""
    out = tmp_path / "out"
    r = run_claim(get_claim(LONG_CLAIM), out, quick=True, log=lambda s: None)
    return out, r["_dir"]


def _survivor_checks(out: Path, kept: Path, killed: Path) -> None:
    assert (kept / "result.json").is_file() and (kept / "figure.png").is_file()
    states = {Path(r["path"]).name: r["state"] for r in RunIndex(out).list()}
    assert states[kept.name] == "complete" and states[killed.name] == "interrupted"
    results, _ = load_results(out)
    assert [r["_dir"] for r in results] == [kept]  # the interrupted run is never shown as a result
    assert not (killed / "result.json").exists()


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_ctrl_c_stops_cleanly(finished_run, jobs):
    out, kept = finished_run
    proc = _start(out, "--seeds", "5", "--jobs", jobs)
    killed = _wait_running(out, proc)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("normlab did not stop on SIGINT")
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "interrupted" in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1, err
    assert read_json(killed / "run.json")["state"] == "interrupted"
    _survivor_checks(out, kept, killed)


def test_sigkill_is_recorded_as_interrupted(finished_run):
    out, kept = finished_run
    proc = _start(out, "--seeds", "5")
    killed = _wait_running(out, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert read_json(killed / "run.json")["state"] == "running"  # nothing could mark it
    assert run_state(killed) == "interrupted"  # but its process is gone
    _survivor_checks(out, kept, killed)
    assert json.loads((kept / "result.json").read_text())["verdict"]
