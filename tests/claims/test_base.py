"""The claim shape's shared pieces: intervals over seeds, decisions, combined verdicts, sweeps, rendering."""

from __future__ import annotations

import math
import statistics

import pytest

from normlab.claims.base import (
    Check,
    Claim,
    Part,
    Verdict,
    band_part,
    bootstrap_ci,
    decide,
    exact_part,
    group,
    interval_part,
    paired,
    per_seed,
    render,
    seed_mean,
    select,
    sweep,
)


def test_bootstrap_ci_is_seeded_and_brackets_the_mean():
    vals = [0.51, 0.62, 0.55, 0.70, 0.58]
    a, b = bootstrap_ci(vals), bootstrap_ci(vals)
    assert a == b  # the same values give the same interval
    est, lo, hi = a
    assert est == pytest.approx(statistics.fmean(vals))
    assert min(vals) <= lo < est < hi <= max(vals)
    assert bootstrap_ci([0.3]) == (0.3, 0.3, 0.3)
    assert all(math.isnan(v) for v in bootstrap_ci([0.1, float("nan")]))
    assert all(math.isnan(v) for v in bootstrap_ci([]))
    # a wider spread gives a wider interval
    _, lo2, hi2 = bootstrap_ci([0.2, 0.9, 0.4, 1.0, 0.6])
    assert hi2 - lo2 > hi - lo


def test_bootstrap_coverage_of_a_known_mean():
    """~95% nominal; with 8 draws the percentile bootstrap under-covers a little: require >= 85%."""
    import random

    rng = random.Random(1)
    hits = 0
    for _ in range(200):
        vals = [rng.gauss(1.0, 0.5) for _ in range(8)]
        _, lo, hi = bootstrap_ci(vals, resamples=500)
        hits += lo <= 1.0 <= hi
    assert hits / 200 >= 0.85


@pytest.mark.parametrize(
    "low,high,op,expected",
    [
        (0.6, 0.8, ">=", "holds"),
        (0.1, 0.3, ">=", "fails"),
        (0.4, 0.6, ">=", "inconclusive"),
        (0.1, 0.3, "<=", "holds"),
        (0.6, 0.8, "<=", "fails"),
        (0.5, 0.8, ">", "inconclusive"),
        (0.2, 0.5, "<", "inconclusive"),
        (math.nan, 0.8, ">=", "inconclusive"),
    ],
)
def test_decide(low, high, op, expected):
    assert decide(low, high, 0.5, op) == expected


def test_decide_rejects_an_unknown_operator():
    with pytest.raises(ValueError, match="op must be"):
        decide(0, 1, 0.5, "==")


def test_interval_part():
    assert interval_part("r", [0.3, 0.35, 0.4, 0.32, 0.38], "<=", 0.5).status == "holds"
    p = interval_part("r", [0.3, 0.7, 0.4, 0.65, 0.5], "<=", 0.5, what="step ratio")
    assert p.status == "inconclusive" and "step ratio" in p.text and "need <= 0.5" in p.text
    assert p.low < 0.5 < p.high
    assert interval_part("r", [0.8, 0.9, 0.85, 0.95, 0.9], "<=", 0.5).status == "fails"
    assert interval_part("r", [0.3, float("nan")], "<=", 0.5).status == "inconclusive"
    assert interval_part("r", [0.3, float("inf")], "<=", 0.5, nonfinite="fails").status == "fails"


def test_band_part():
    assert band_part("b", [1.0, 1.05, 1.02, 0.98, 1.01], 0.9, 1.2).status == "holds"
    assert band_part("b", [1.3, 1.4, 1.35, 1.32, 1.38], 0.9, 1.2).status == "fails"
    assert band_part("b", [0.85, 0.95, 0.9, 0.88, 0.93], 0.9, 1.2).status == "inconclusive"
    assert band_part("b", [1.0, float("nan")], 0.9, 1.2).status == "fails"


def test_combine_is_conjunctive_and_checks_are_apart():
    h, f, i = (Part(n, s, f"{n} text") for n, s in (("h", "holds"), ("f", "fails"), ("i", "inconclusive")))
    ok, broken = Check("alg", True, "algebra ok"), Check("alg2", False, "algebra broke")
    assert Verdict.combine([h, h], [ok]).status == "holds"
    assert Verdict.combine([h, i]).status == "inconclusive"
    assert Verdict.combine([h, i, f]).status == "fails"
    v = Verdict.combine([h], [ok, broken], {"x": 1.0}, note="reported")
    assert v.status == "fails" and v.reason.startswith("CHECK FAILED") and v.reason.endswith("reported")
    assert v.to_dict()["checks"][1] == {"name": "alg2", "passed": False, "text": "algebra broke"}
    assert "checks pass (alg)" in Verdict.combine([h], [ok]).reason
    with pytest.raises(ValueError, match="at least one"):
        Verdict.combine([])
    assert exact_part("e", None, "t").status == "inconclusive" and exact_part("e", True, "t").status == "holds"


def test_rows_helpers():
    rows = [
        {"norm": n, "seed": s, "acc": 0.5 + 0.1 * s + (0.2 if n == "bn" else 0)}
        for n in ("bn", "none")
        for s in (2, 0, 1)
    ]
    assert per_seed(select(rows, norm="bn"), "acc") == pytest.approx([0.7, 0.8, 0.9])
    assert paired(select(rows, norm="bn"), select(rows, norm="none"), "acc") == pytest.approx([0.2] * 3)
    assert list(group(rows, "norm")) == [("bn",), ("none",)]
    assert seed_mean(select(rows, norm="none"), "acc") == pytest.approx(0.6)
    assert math.isnan(seed_mean([{"seed": 0, "acc": "nan"}], "acc"))


def test_sweep_and_render():
    cells = sweep([0, 1], norm=("bn", "ln"), lr=(0.1,))
    assert cells[0] == {"norm": "bn", "lr": 0.1, "seed": 0} and len(cells) == 4
    assert render("lr {lr:g} over {grid}", {"lr": 0.10, "grid": (1, 2, 3)}) == "lr 0.1 over 1, 2, 3"
    with pytest.raises(KeyError):
        render("{missing}", {})


def test_quick_overrides_must_be_params():
    class Bad(Claim):
        id = "bad"
        params = {"steps": 10}
        quick = {"stpes": 2}

    with pytest.raises(KeyError, match="stpes"):
        Bad().settings(quick=True)
    ok = type("Ok", (Claim,), {"id": "ok", "params": {"steps": 10}, "quick": {"steps": 2}})()
    assert ok.settings() == {"steps": 10} and ok.settings(quick=True) == {"steps": 2}
