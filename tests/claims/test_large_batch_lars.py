"""large-batch-lars: LR tuning, the schedule and the rule on synthetic rows (holds / fails / inconclusive)."""

from __future__ import annotations

import pytest
import torch

from normlab.claims.large_batch_lars import ARMS, CLAIM, make_optimizer, tuned_lrs, warmup_poly
from normlab.optim import LAMB, LARS

P = CLAIM.settings()
GRID_KEY = {arm: gkey for arm, _, _, gkey in ARMS}
BEST = {arm: P[gkey][2] for arm, gkey in GRID_KEY.items()}  # the middle of each grid wins the tuning


def _row(arm: str, seed: int, lr: float, test_acc: float, val_acc: float = 0.9) -> dict:
    return {
        "arm": arm,
        "seed": seed,
        "lr": lr,
        "val_acc": val_acc,
        "test_acc": test_acc,
        "test_curve": [test_acc] * P["epochs"],
        "diverged": False,
    }


def _rows(acc: dict[str, list[float]]) -> list[dict]:
    """Tuning rows on seed 0 (the middle LR best), then each seed's run at the tuned LR with ``acc[arm][seed]``."""
    rows = []
    for arm, gkey in GRID_KEY.items():
        for lr in P[gkey]:
            if lr != BEST[arm]:
                rows.append(_row(arm, 0, lr, 0.5, val_acc=0.5))
        for s, a in enumerate(acc[arm]):
            rows.append(_row(arm, s, BEST[arm], a))
    return rows


def _acc(sgd_small: float, lars: float, lamb: float, sgd_large: float, n: int = 6) -> dict[str, list[float]]:
    jitter = [0.001 * ((3 * s) % 5 - 2) for s in range(n)]  # a small, seed-dependent spread
    return {
        "sgd-small": [sgd_small + j for j in jitter],
        "lars-large": [lars + 0.5 * j for j in jitter],
        "lamb-large": [lamb - 0.5 * j for j in jitter],
        "sgd-large": [sgd_large + j for j in reversed(jitter)],
    }


def test_tuning_picks_the_best_validation_lr_and_ties_go_low():
    rows = _rows(_acc(0.98, 0.97, 0.97, 0.93))
    assert tuned_lrs(P, rows, 0) == BEST
    lo = P["lars_lrs"][0]
    rows = [r for r in rows if not (r["arm"] == "lars-large" and r["lr"] == lo)]
    rows.append(_row("lars-large", 0, lo, 0.5, val_acc=0.9))  # ties BEST's 0.9
    assert tuned_lrs(P, rows, 0)["lars-large"] == lo
    assert tuned_lrs(P, rows[1:], 0) is None  # a missing tuning run: no tuned LRs


def test_rule_holds_when_lars_and_lamb_stay_within_and_sgd_loses():
    v = CLAIM.verdict(P, _rows(_acc(0.98, 0.97, 0.965, 0.93)))
    assert v.status == "holds", v.reason
    assert v.numbers["gap_lars"] == pytest.approx(1.0, abs=0.2)
    assert v.numbers["gap_sgd"] == pytest.approx(5.0, abs=0.2)
    assert v.numbers["tuned_lr[lars-large]"] == BEST["lars-large"]


def test_rule_fails_when_lars_loses_more_than_the_margin():
    v = CLAIM.verdict(P, _rows(_acc(0.98, 0.90, 0.97, 0.93)))
    assert v.status == "fails", v.reason
    assert v.numbers["gap_lars_low"] > P["within"]


def test_rule_fails_when_large_batch_sgd_loses_nothing():
    v = CLAIM.verdict(P, _rows(_acc(0.98, 0.97, 0.97, 0.99)))
    assert v.status == "fails", v.reason


def test_rule_inconclusive_when_the_gap_straddles_the_margin():
    acc = _acc(0.98, 0.95, 0.97, 0.93)
    acc["lars-large"] = [0.98 - 0.03 + d for d in (-0.02, 0.02, -0.02, 0.02, -0.02, 0.02)]
    v = CLAIM.verdict(P, _rows(acc))
    assert v.status == "inconclusive", v.reason
    assert v.numbers["gap_lars_low"] < P["within"] < v.numbers["gap_lars_high"]


def test_missing_tuning_runs_are_inconclusive_and_grid_edges_are_reported():
    assert CLAIM.verdict(P, []).status == "inconclusive"
    rows = [r for r in _rows(_acc(0.98, 0.97, 0.97, 0.93)) if not (r["arm"] == "sgd-small" and r["seed"] == 0)]
    edge = P["sgd_small_lrs"][-1]
    rows += [_row("sgd-small", 0, lr, 0.5, val_acc=0.95 if lr == edge else 0.5) for lr in P["sgd_small_lrs"]]
    for r in rows:  # the later seeds ran at the edge LR
        if r["arm"] == "sgd-small" and r["seed"] > 0:
            r["lr"] = edge
    v = CLAIM.verdict(P, rows)
    assert "grid edge: sgd-small" in v.reason


def test_schedule_warms_up_linearly_then_decays_to_zero():
    f = warmup_poly(100, 10)
    assert [f(t) for t in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert f(10) == 1.0 and f(55) == pytest.approx(0.25) and f(100) == 0.0


def test_arms_share_param_groups_and_differ_in_the_update_rule():
    model = torch.nn.Sequential(torch.nn.Conv1d(1, 4, 3), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    kinds = {name: make_optimizer(name, model, 0.1, P) for name in ("sgd", "lars", "lamb")}
    assert type(kinds["sgd"]) is torch.optim.SGD and isinstance(kinds["lars"], LARS) and isinstance(kinds["lamb"], LAMB)
    sizes = {name: [len(g["params"]) for g in o.param_groups] for name, o in kinds.items()}
    assert sizes["sgd"] == sizes["lars"] == sizes["lamb"]
    assert all("trust_adaptation" not in g for g in kinds["sgd"].param_groups)
    assert [g["weight_decay"] for g in kinds["sgd"].param_groups] == [
        g["weight_decay"] for g in kinds["lars"].param_groups
    ]
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("adam", model, 0.1, P)
