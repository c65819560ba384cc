"""init-scale: the rule on synthetic evidence, its helpers, and one quick run."""

from __future__ import annotations

import math

import pytest

from normlab.claims.init_scale import CLAIM, CS, improving, layer_slope, target_slope

from ._e2e import quick_run


def _run(c: float, seed: int, acc: float, diverged: bool = False, slope: float | None = None) -> dict:
    return {
        "c": c,
        "seed": seed,
        "init_slope": target_slope(c) if slope is None else slope,
        "final_test_acc": math.nan if diverged else acc,
        "diverged": diverged,
        "first_loss": 2.4 if not diverged else 120.0,
        "epoch_loss": [2.3, 2.0] if not diverged else [math.nan],
    }


def _evidence(acc1=0.09, acc2=0.4, c3_diverged=True, slope1=None, quick=False) -> dict:
    runs = []
    for seed in (0, 1, 2):
        runs += [_run(1.0, seed, acc1, slope=slope1), _run(2.0, seed, acc2), _run(3.0, seed, 0.1, c3_diverged)]
    return {"runs": runs, "cs": list(CS), "epochs": 10, "chance": 0.1, "quick": quick}


def test_rule_holds():
    v = CLAIM.verdict(_evidence())
    assert v.status == "holds", v.reason
    assert v.numbers["test_acc[c=2]"] == pytest.approx(0.4)


def test_rule_fails_on_each_part():
    assert CLAIM.verdict(_evidence(acc1=0.2)).status == "fails"  # c=1 learns
    assert CLAIM.verdict(_evidence(acc2=0.15)).status == "fails"  # c=2 does not
    assert CLAIM.verdict(_evidence(slope1=-0.2)).status == "fails"  # |-0.2 - (-0.347)| > 0.3 * 0.347
    ev = _evidence(c3_diverged=False)
    for r in ev["runs"]:
        if r["c"] == 3.0:
            r["first_loss"], r["epoch_loss"] = 120.0, [3.0, 1.5]  # finite and improving
    assert CLAIM.verdict(ev).status == "fails"


def test_rule_quick_and_missing_c_are_inconclusive():
    assert CLAIM.verdict(_evidence(quick=True)).status == "inconclusive"
    ev = _evidence()
    ev["runs"] = [r for r in ev["runs"] if r["c"] != 3.0]
    assert CLAIM.verdict(ev).status == "inconclusive"


def test_helpers():
    assert layer_slope([math.exp(0.5 * l) for l in range(1, 6)], 1.0) == pytest.approx(0.5)
    assert math.isnan(layer_slope([1.0, "nan", 2.0], 1.0))
    flat = {"diverged": False, "first_loss": 80.0, "epoch_loss": [2.3, 2.29]}
    assert not improving(flat)  # no better than a uniform guess
    assert improving({"diverged": False, "first_loss": 80.0, "epoch_loss": [2.3, 1.2]})
    assert not improving({"diverged": True, "first_loss": 2.3, "epoch_loss": [1.0]})


def test_quick_run(tmp_path):
    saved = quick_run("init-scale", tmp_path)
    assert saved["verdict"]["status"] == "inconclusive"
    assert len(saved["evidence"]["runs"][0]["init_act"]) == 20
