"""bn-speed: the rule on synthetic rows (holds / fails / inconclusive), the staged grid, the curve helpers."""

from __future__ import annotations

import math

from normlab.claims.bn_speed import CLAIM, first_reach, smoothed, target, tuned_lr

P = CLAIM.settings()
LR = 0.1
STEPS = list(range(P["eval_every"], P["steps"] + 1, P["eval_every"]))


def _curve(reach: int, top: float, length: int | None = None) -> list[float]:
    """Linear rise to ``top`` at step ``reach``, flat after; ``length`` evaluations (default: the whole budget)."""
    steps = STEPS[: length or len(STEPS)]
    return [top * min(1.0, s / reach) for s in steps]


def _row(net, mult, seed, curve, val=None, diverged=False, **extra) -> dict:
    return {
        "net": net,
        "mult": mult,
        "lr": mult * LR,
        "seed": seed,
        "eval_steps": STEPS[: len(curve)],
        "test_acc": curve,
        "val_acc": val if val is not None else [],
        "diverged": diverged,
        **extra,
    }


def _rows(bn_reach=(400,) * 5, base_reach=1500, base5_top=0.8, bn5_reach=300) -> list[dict]:
    rows = [
        _row("baseline", 1, 0, _curve(base_reach, 0.9), val=_curve(base_reach, 0.9)),
        _row("baseline", 1, 0, _curve(base_reach, 0.5), val=_curve(base_reach, 0.5)) | {"lr": 0.03},
        _row("baseline", 1, 0, _curve(base_reach, 0.6), val=_curve(base_reach, 0.6)) | {"lr": 0.3},
    ]
    for s, r in enumerate(bn_reach):
        if s:
            rows.append(_row("baseline", 1, s, _curve(base_reach, 0.9)))
        rows.append(_row("baseline", 5, s, _curve(base_reach, base5_top)))
        level = 0.9 - P["reach_tol"]
        for m, reach in ((1, r), (5, bn5_reach), (30, 10_000)):
            curve = _curve(reach, 0.95)
            n = next((i + 1 for i, a in enumerate(smoothed(curve, P["smooth"])) if a >= level), len(curve))
            rows.append(_row("bn", m, s, curve[:n], stop_at=level))
    return rows


def test_holds():
    v = CLAIM.verdict(P, _rows())
    assert v.status == "holds", v.reason
    assert v.numbers["tuned_lr"] == LR
    assert v.numbers["step_ratio_bn_1x"] < 0.5


def test_fails_when_bn_is_not_twice_as_fast():
    v = CLAIM.verdict(P, _rows(bn_reach=(1200,) * 5))
    assert v.status == "fails" and "BN-1x" in v.reason


def test_fails_when_baseline_5x_is_as_good_or_bn_5x_misses():
    assert CLAIM.verdict(P, _rows(base5_top=0.9)).status == "fails"
    v = CLAIM.verdict(P, _rows(bn5_reach=10_000))
    assert v.status == "fails" and "BN 5x reaches the target in 0/5" in v.reason


def test_inconclusive_when_the_ratio_straddles_the_limit():
    v = CLAIM.verdict(P, _rows(bn_reach=(500, 900, 600, 850, 700)))
    assert v.status == "inconclusive", v.reason


def test_diverged_baseline_5x_counts_at_chance():
    rows = [r for r in _rows(base5_top=0.9) if not (r["net"] == "baseline" and r["mult"] == 5)]
    rows += [_row("baseline", 5, s, _curve(1500, 0.9, length=3), diverged=True) for s in range(5)]
    v = CLAIM.verdict(P, rows)
    assert v.numbers["baseline_5x_diverged_frac"] == 1.0
    assert v.numbers["baseline_5x_gap"] > 0.5


def test_grid_stages():
    seeds = [0, 1]
    first = CLAIM.grid(P, seeds, [])
    assert {c["lr"] for c in first} == set(P["lr_grid"]) and all(c["seed"] == 0 for c in first)
    rows = [r for r in _rows() if r["seed"] == 0 and r["net"] == "baseline" and r["mult"] == 1]
    second = CLAIM.grid(P, seeds, rows)
    assert {"net": "baseline", "mult": 5, "lr": 5 * LR, "seed": 1} in second
    assert any(c["net"] == "bn" and c["seed"] == 0 and "stop_at" in c for c in second)
    assert not any(c["net"] == "bn" and c["seed"] == 1 for c in second)  # its baseline has not run yet


def test_helpers():
    assert smoothed([0.0, 1.0, 1.0], 2) == [0.0, 0.5, 1.0]
    assert smoothed([0.5, math.nan], 1)[1] == 0.1  # non-finite counts as chance
    assert first_reach([10, 20, 30], [0.1, 0.5, 0.9], 0.5) == 20
    assert first_reach([10], [0.1], 0.5) is None
    rows = _rows()
    assert tuned_lr(P, rows, 0) == LR
    assert math.isclose(target(P, rows[0]), 0.9 - P["reach_tol"])
