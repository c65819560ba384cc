"""init-scale: the rule on synthetic rows (holds / fails / inconclusive) and its helpers."""

from __future__ import annotations

import math

import pytest

from normlab.claims.init_scale import CLAIM, improving, layer_slope, slope_tolerance, target_slope

P = CLAIM.settings()


def _row(c: float, seed: int, acc: float, diverged: bool = False, slope: float | None = None, depth=None) -> dict:
    row = {
        "c": c,
        "seed": seed,
        "depth": P["depth"] if depth is None else depth,
        "init_slope": target_slope(c) if slope is None else slope,
        "final_test_acc": math.nan if diverged else acc,
        "test_acc": [0.1, math.nan if diverged else acc],
        "diverged": diverged,
        "first_loss": 2.4 if not diverged else 120.0,
        "epoch_loss": [2.3, 2.0] if not diverged else [math.nan],
    }
    row["improving"] = improving(row, P["improve"])
    return row


def _rows(acc1=(0.09,) * 5, acc2=(0.4,) * 5, c3_diverged=True, slope1=None) -> list[dict]:
    rows = []
    for seed in range(5):
        rows += [
            _row(1.0, seed, acc1[seed], slope=slope1),
            _row(2.0, seed, acc2[seed]),
            _row(3.0, seed, 0.1, c3_diverged),
            _row(1.0, seed, 0.25, depth=P["side_depth"]),
        ]
    return rows


def test_rule_holds_and_reports_the_side_finding():
    v = CLAIM.verdict(P, _rows())
    assert v.status == "holds", v.reason
    assert v.numbers["acc_c2"] == pytest.approx(0.4)
    assert v.numbers["side_acc_c1"] == pytest.approx(0.25)
    assert "side finding" in v.reason


def test_rule_fails_on_each_part():
    assert CLAIM.verdict(P, _rows(acc1=(0.2,) * 5)).status == "fails"  # c=1 learns
    assert CLAIM.verdict(P, _rows(acc2=(0.15,) * 5)).status == "fails"  # c=2 does not
    assert CLAIM.verdict(P, _rows(slope1=-0.2)).status == "fails"  # |-0.2 - (-0.347)| > 0.3 * 0.347
    rows = _rows(c3_diverged=False)
    for r in rows:
        if r["c"] == 3.0:
            r["first_loss"], r["epoch_loss"], r["improving"] = 120.0, [3.0, 1.5], True  # finite and improving
    assert CLAIM.verdict(P, rows).status == "fails"


def test_rule_inconclusive_when_an_interval_straddles():
    v = CLAIM.verdict(P, _rows(acc2=(0.12, 0.3, 0.15, 0.28, 0.2)))  # mean ~0.21, interval around 0.2
    assert v.status == "inconclusive", v.reason
    v = CLAIM.verdict(P, _rows(acc1=(0.09, 0.25, 0.1, 0.2, 0.12)))  # c=1 interval straddles 0.15
    assert v.status == "inconclusive", v.reason


def test_missing_c_is_inconclusive():
    rows = [r for r in _rows() if r["c"] != 3.0]
    assert CLAIM.verdict(P, rows).status == "inconclusive"


def test_helpers():
    assert layer_slope([math.exp(0.5 * l) for l in range(1, 6)], 1.0) == pytest.approx(0.5)
    assert math.isnan(layer_slope([1.0, "nan", 2.0], 1.0))
    assert slope_tolerance(2.0, P["cs"], 0.3) == pytest.approx(0.3 * math.log(1.5) / 2)
    assert slope_tolerance(1.0, P["cs"], 0.3) == pytest.approx(0.3 * math.log(2) / 2)
    flat = {"diverged": False, "first_loss": 80.0, "epoch_loss": [2.3, 2.29]}
    assert not improving(flat, 0.9)  # below the start, not below a uniform guess
    assert improving({"diverged": False, "first_loss": 2.4, "epoch_loss": [2.0, 1.5]}, 0.9)
    assert not improving({"diverged": True, "first_loss": 2.4, "epoch_loss": [math.nan]}, 0.9)
