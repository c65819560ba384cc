"""bn-speed: the rule on synthetic evidence (holds, fails, inconclusive) and one quick run."""

from __future__ import annotations

import math

from normlab.claims.bn_speed import CLAIM

from ._e2e import quick_run

STEPS = list(range(100, 1100, 100))


def _curve(reach_step: int, top: float) -> list[float]:
    """Accuracy rising linearly to ``top`` at ``reach_step``, flat after."""
    return [top * min(1.0, s / reach_step) for s in STEPS]


def _evidence(bn1_reach=300, base5_top=0.8, n_seeds=3, base5_diverged=False) -> dict:
    def runs(curve, diverged=False):
        return [{"test_acc": list(curve), "diverged": diverged, "best": max(curve)} for _ in range(n_seeds)]

    base5 = _curve(500, base5_top)
    if base5_diverged:
        base5 = base5[:3] + [math.nan]
    return {
        "tuned_lr": 0.1,
        "eval_steps": STEPS,
        "runs": {
            "baseline": runs(_curve(1000, 0.9)),
            "baseline_5x": runs(base5, base5_diverged),
            "bn_1x": runs(_curve(bn1_reach, 0.95)),
            "bn_5x": runs(_curve(400, 0.93)),
            "bn_30x": runs(_curve(1000, 0.5)),
        },
        "n_seeds": n_seeds,
        "chance": 0.1,
    }


def test_rule_holds():
    v = CLAIM.verdict(_evidence())
    assert v.status == "holds", v.reason
    assert v.numbers["steps_baseline"] == 1000
    assert v.numbers["step_ratio_bn_1x"] <= 0.5


def test_rule_fails_when_bn_is_not_twice_as_fast():
    v = CLAIM.verdict(_evidence(bn1_reach=900))
    assert v.status == "fails" and "not 2x faster" in v.reason


def test_rule_fails_when_baseline_5x_is_as_good():
    assert CLAIM.verdict(_evidence(base5_top=0.9)).status == "fails"


def test_rule_counts_divergence_as_worse():
    v = CLAIM.verdict(_evidence(base5_top=0.95, base5_diverged=True))
    assert v.status == "holds", v.reason
    assert v.numbers["baseline_5x_diverged_frac"] == 1.0


def test_rule_inconclusive_with_one_seed():
    v = CLAIM.verdict(_evidence(n_seeds=1))
    assert v.status == "inconclusive" and "would be holds" in v.reason


def test_quick_run(tmp_path):
    quick_run("bn-speed", tmp_path)
