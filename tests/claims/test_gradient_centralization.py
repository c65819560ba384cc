"""gradient-centralization: the rule on synthetic rows (holds / fails / inconclusive) and its helpers."""

from __future__ import annotations

import math

from normlab.claims.gradient_centralization import CLAIM, steps_ratio, window_means

P = CLAIM.settings()
N = P["steps"] // P["window"]  # windows per run


def _curve(final: float, reach_at: int | None = None) -> list[float]:
    """A falling window-loss curve ending at ``final``; ``reach_at``: the window where it first gets to 0.3."""
    c = [2.0 - 1.5 * i / (N - 1) for i in range(N)]
    c[-1] = final
    if reach_at is not None:
        c = [max(v, 0.3) if i < reach_at else 0.3 for i, v in enumerate(c)]
        c[:reach_at] = [max(v, 0.31) for v in c[:reach_at]]
    return c


def _rows(gc_reach: list[int | None]) -> list[dict]:
    rows = []
    for s, reach in enumerate(gc_reach):
        rows.append({"arm": "sgd", "seed": s, "window_loss": _curve(0.3), "final_test_acc": 0.9, "diverged": False})
        gc = _curve(0.25, reach) if reach is not None else [v + 0.2 for v in _curve(0.3)]
        rows.append({"arm": "sgd+gc", "seed": s, "window_loss": gc, "final_test_acc": 0.9, "diverged": False})
    return rows


def test_helpers():
    assert window_means([1.0, 3.0, 5.0, 7.0, 9.0], 2) == [2.0, 6.0]  # the partial window is dropped
    base = {"window_loss": [3.0, 2.0, 1.0]}
    assert steps_ratio(base, {"window_loss": [2.5, 0.9, 0.5]}, 10, 30) == 20 / 30
    assert steps_ratio(base, {"window_loss": [2.5, 1.5, 1.1]}, 10, 30) == 1.0  # never: no speed-up
    assert steps_ratio(base, {"window_loss": [math.nan, 1.0, 1.0]}, 10, 30) == 20 / 30


def test_rule_holds_when_gc_gets_there_early_in_every_seed():
    v = CLAIM.verdict(P, _rows([8, 9, 10, 8, 11]))
    assert v.status == "holds", v.reason
    assert v.numbers["steps_ratio_high"] < 1


def test_rule_fails_when_gc_never_gets_there():
    v = CLAIM.verdict(P, _rows([None] * 5))
    assert v.status == "fails", v.reason
    assert "5 never reached it" in v.reason


def test_rule_inconclusive_when_seeds_disagree():
    v = CLAIM.verdict(P, _rows([3, None, None, 14, None]))
    assert v.status == "inconclusive", v.reason


def test_diverged_seed_is_not_a_speed_up():
    rows = _rows([8, 9, 10, 8, 11])
    rows[1]["diverged"] = True
    assert CLAIM.verdict(P, rows).status == "inconclusive"
