"""bn-small-batch: the rule on synthetic rows (holds / fails / inconclusive) and the claim's helpers."""

from __future__ import annotations

import math

import torch

from normlab.claims.bn_small_batch import CLAIM, batch_dependence, cosine_lr, norm_spec
from normlab.models import CNN

P = CLAIM.settings()
SEEDS = range(5)


def _rows(bn2, bnref=(0.05,) * 5, mid=0.08, gn=0.06, dependence=1e-7) -> list[dict]:
    rows = []
    for s in SEEDS:
        for b in P["stat_batches"]:
            e = bn2[s] if b == 2 else bnref[s] if b == P["b_ref"] else mid
            rows.append({"norm": "bn", "stat_batch": b, "seed": s, "test_error": e, "train_error": e / 3})
        rows.append({"norm": "gn", "seed": s, "test_error": gn, "train_error": gn / 3, "batch_dependence": dependence})
    return rows


def test_rule_holds():
    v = CLAIM.verdict(P, _rows((0.15, 0.16, 0.14, 0.15, 0.17)))
    assert v.status == "holds", v.reason
    assert math.isclose(v.numbers["bn_gap"], 0.104, abs_tol=1e-12)
    assert v.numbers["bn_gap_low"] >= P["bn_gap"]
    assert v.numbers["gn_spread"] == 0.0


def test_rule_fails():
    assert CLAIM.verdict(P, _rows((0.06, 0.07, 0.06, 0.05, 0.07))).status == "fails"  # BN gap ~1 point
    v = CLAIM.verdict(P, _rows((0.15,) * 5, dependence=1e-2))  # GN depends on the batch: a bug
    assert v.status == "fails" and "CHECK FAILED" in v.reason
    rows = _rows((0.15,) * 5)
    rows[0]["test_error"] = "nan"  # a diverged BN b=2 seed counts against the rule
    assert CLAIM.verdict(P, rows).status == "fails"


def test_rule_inconclusive():
    v = CLAIM.verdict(P, _rows((0.07, 0.13, 0.08, 0.12, 0.10)))  # gaps 2..8 points around the 5-point threshold
    assert v.status == "inconclusive", v.reason
    assert v.numbers["bn_gap_low"] < P["bn_gap"] < v.numbers["bn_gap_high"]
    rows = [r for r in _rows((0.15,) * 5) if r.get("stat_batch") != P["b_ref"]]
    assert CLAIM.verdict(P, rows).status == "inconclusive"


def test_grid_is_bn_per_statistics_batch_and_one_gn_per_seed():
    cells = CLAIM.grid(P, [0, 1], [])
    assert len(cells) == 2 * len(P["stat_batches"]) + 2
    assert {norm_spec(P, c) for c in cells} == {f"gbn:{b}" for b in P["stat_batches"]} | {f"gn:{P['gn_groups']}"}
    cells = CLAIM.grid(P, list(range(10)), [])  # GN (reported, not judged) on the first gn_seeds seeds only
    assert sorted(c["seed"] for c in cells if c["norm"] == "gn") == list(range(P["gn_seeds"]))


def test_cosine_lr():
    assert cosine_lr(0.1, 0, 10) == 0.1
    assert math.isclose(cosine_lr(0.1, 5, 10), 0.05)
    assert abs(cosine_lr(0.1, 10, 10)) < 1e-15


def test_batch_dependence_separates_gn_from_ghost_bn():
    torch.manual_seed(0)
    x = torch.randn(8, 1, 40)
    gn = CNN(1, 10, channels=(8, 8, 16), spatial=1, norm="gn:4")
    bn = CNN(1, 10, channels=(8, 8, 16), spatial=1, norm="gbn:4")
    assert batch_dependence(gn, x) < 1e-12  # float64: no rounding noise
    assert gn.training
    try:
        dep = batch_dependence(bn, x)
    except ValueError:  # a ghost batch of one example cannot be normalized: batch-dependent by construction
        dep = math.inf
    assert dep > 1e-2
