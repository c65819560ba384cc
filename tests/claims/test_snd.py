"""snd: the rule on synthetic evidence, the reference whitening, and one quick run."""

from __future__ import annotations

import torch

from normlab import nn as nlnn
from normlab.claims.snd import BATCH_SIZES, CLAIM, GROUP_SIZES, GroupZCA

from ._e2e import quick_run


def _evidence(slope: float, group_factor: float, quick: bool = False) -> dict:
    rows = []
    for seed in (0, 1, 2):
        for name in ("gaussian", "mnist1d"):
            snd = [[(1 + group_factor * gi) * m**slope for m in BATCH_SIZES] for gi in range(len(GROUP_SIZES))]
            rows.append({"seed": seed, "data": name, "snd": snd, "stderr": snd, "bn_slope": slope})
    return {
        "rows": rows,
        "batch_sizes": list(BATCH_SIZES),
        "group_sizes": list(GROUP_SIZES),
        "num_batches": 64,
        "num_samples": 8,
        "quick": quick,
    }


def test_rule_holds():
    v = CLAIM.verdict(_evidence(-0.5, 0.5))
    assert v.status == "holds"
    assert v.numbers["bn_slope[gaussian]"] == -0.5


def test_rule_fails_on_slope_or_group_order():
    assert CLAIM.verdict(_evidence(-0.3, 0.5)).status == "fails"
    assert CLAIM.verdict(_evidence(-0.5, -0.1)).status == "fails"  # SND falls with group size


def test_rule_fails_when_one_batch_size_is_out_of_order():
    ev = _evidence(-0.5, 0.5)
    for r in ev["rows"]:
        r["snd"][-1][0] = 0.01  # d = 64 at m = 16 below d = 16
    v = CLAIM.verdict(ev)
    assert v.status == "fails"
    assert v.numbers["increasing_where_m_gt_d[gaussian]"] == 1.0  # m = 16 < d = 64 is outside the full-rank check


def test_rule_quick_is_inconclusive():
    assert CLAIM.verdict(_evidence(-0.5, 0.5, quick=True)).status == "inconclusive"


def test_group_zca_whitens_and_d1_is_batchnorm():
    x = torch.randn(256, 16, dtype=torch.float64) @ torch.randn(16, 16, dtype=torch.float64)
    y = GroupZCA(16, 16, eps=0.0)(x)
    assert torch.allclose(y.T @ y / 256, torch.eye(16, dtype=torch.float64), atol=1e-8)
    y4 = GroupZCA(16, 4, eps=0.0)(x)
    assert torch.allclose(y4[:, :4].T @ y4[:, :4] / 256, torch.eye(4, dtype=torch.float64), atol=1e-8)
    bn = nlnn.BatchNorm1d(16, affine=False).double()
    assert torch.allclose(GroupZCA(16, 1)(x), bn(x), atol=1e-10)


def test_quick_run(tmp_path):
    quick_run("snd", tmp_path)
