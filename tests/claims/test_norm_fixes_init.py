"""norm-fixes-init: the staged grid, the rule on synthetic rows (holds / fails / inconclusive), its helpers."""

from __future__ import annotations

import math

import pytest

from normlab.claims.norm_fixes_init import CLAIM, chosen_lr, late_gain, norm_ratio, steps_to, variants

P = CLAIM.settings()
SEEDS = list(range(5))


def _row(norm, c, lr, seed, acc, val=0.5, ratio=1.1) -> dict:
    return {
        "norm": norm,
        "c": c,
        "lr": lr,
        "seed": seed,
        "val_acc": val,
        "final_test_acc": acc,
        "test_acc": [0.1, acc / 2, acc],
        "eval_steps": [0, 30, 60],
        "init_ratio": ratio,
    }


def _rows(diffs=None, ref=0.4, ratio=1.1) -> list[dict]:
    """The reference at its fixed lr; tuning rows (first seed, the smaller lr loses on validation); seeds at max lr."""
    lo, hi = min(P["lrs"]), max(P["lrs"])
    rows = [_row("none", 2.0, P["ref_lr"], s, ref) for s in SEEDS]
    for i, (norm, c) in enumerate(variants(P)[1:]):
        d = diffs[i] if diffs else [0.0] * 5
        rows.append(_row(norm, c, lo, 0, 0.2, val=0.2, ratio=ratio))
        rows += [_row(norm, c, hi, s, ref + d[s], val=0.5, ratio=ratio) for s in SEEDS]
    return rows


def test_grid_tunes_on_the_first_seed_then_runs_every_seed():
    first = CLAIM.grid(P, SEEDS, [])
    assert [c for c in first if c["norm"] == "none"] == [
        {"norm": "none", "c": 2.0, "lr": P["ref_lr"], "seed": s} for s in SEEDS
    ]  # the reference is not tuned
    tuning = [c for c in first if c["norm"] != "none"]
    assert {c["seed"] for c in tuning} == {0}
    assert len(tuning) == (len(variants(P)) - 1) * len(P["lrs"])
    rows = _rows()
    second = CLAIM.grid(P, SEEDS, [r for r in rows if r["seed"] == 0])
    assert {(c["seed"], c["lr"]) for c in second if c not in first} == {(s, max(P["lrs"])) for s in SEEDS[1:]}


def test_rule_holds():
    v = CLAIM.verdict(P, _rows())
    assert v.status == "holds", v.reason
    assert v.numbers["reference_acc"] == pytest.approx(0.4)
    assert v.numbers["lr_ln_c1"] == max(P["lrs"])
    assert v.checks and all(c.passed for c in v.checks)


def test_rule_fails_when_a_variant_is_short_or_diverges():
    diffs = [[0.0] * 5] * 5 + [[-0.1] * 5]  # ln c=3 ten points below the reference
    assert CLAIM.verdict(P, _rows(diffs)).status == "fails"
    diffs = [[0.0] * 5] * 5 + [[0.0, 0.0, math.nan, 0.0, 0.0]]  # a diverged seed counts against
    assert CLAIM.verdict(P, _rows(diffs)).status == "fails"


def test_rule_inconclusive_when_the_interval_straddles():
    diffs = [[0.0] * 5] * 5 + [[-0.1, 0.0, -0.08, -0.01, -0.06]]  # mean -0.05, interval across ref - 0.05
    v = CLAIM.verdict(P, _rows(diffs))
    assert v.status == "inconclusive", v.reason


def test_broken_norm_ratio_check_fails_the_verdict():
    v = CLAIM.verdict(P, _rows(ratio=3.0))
    assert v.status == "fails"
    assert v.reason.startswith("CHECK FAILED")


def test_helpers():
    assert norm_ratio([1.0, 2.0, 4.0]) == 4.0
    assert norm_ratio([1.0, "nan"]) == math.inf
    rows = [_row("bn", 1.0, 0.01, 0, 0.5, val=0.6), _row("bn", 1.0, 0.1, 0, 0.5, val=0.6)]
    assert chosen_lr(rows, "bn", 1.0) == 0.01  # a tie goes to the smaller rate
    assert chosen_lr(rows, "ln", 1.0) is None
    row = _row("bn", 1.0, 0.1, 0, 0.6)
    assert steps_to(row, 0.3) == 30.0 and math.isnan(steps_to(row, 0.7))
    assert late_gain(row, 1) == pytest.approx(0.3) and late_gain(row, 5) == pytest.approx(0.5)
