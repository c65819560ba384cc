"""snd: the rule on synthetic rows (holds / fails / inconclusive) and the reference whitening."""

from __future__ import annotations

import math

import torch

from normlab import nn as nlnn
from normlab.claims.snd import CLAIM, GroupZCA, judged_pairs, min_log_ratio

P = CLAIM.settings()
BATCHES, GROUPS = list(P["batch_sizes"]), list(P["group_sizes"])


def _rows(slopes, factors, singular_drop: bool = True) -> list[dict]:
    """One row per (data, seed): SND = (1 + factor * group index) * m ** slope; d' >= m cells collapse."""
    rows = []
    for seed, (slope, factor) in enumerate(zip(slopes, factors, strict=True)):
        for name in P["datasets"]:
            snd = [[(1 + factor * gi) * m**slope for m in BATCHES] for gi in range(len(GROUPS))]
            if singular_drop:
                for gi, g in enumerate(GROUPS):
                    for bi, m in enumerate(BATCHES):
                        if m <= g:
                            snd[gi][bi] = 0.01  # the rank-deficient cells: not judged
            rows.append({"seed": seed, "data": name, "snd": snd, "stderr": snd, "bn_slope": slope})
    return rows


def test_holds_and_ignores_singular_cells():
    v = CLAIM.verdict(P, _rows([-0.5] * 5, [0.5] * 5))
    assert v.status == "holds", v.reason
    assert math.isclose(v.numbers["bn_slope[gaussian]"], -0.5)
    assert v.numbers["min_log_ratio_singular[mnist1d]"] < 0  # reported, not judged


def test_fails_on_slope_or_group_order():
    assert CLAIM.verdict(P, _rows([-0.3] * 5, [0.5] * 5)).status == "fails"
    assert CLAIM.verdict(P, _rows([-0.5] * 5, [-0.1] * 5)).status == "fails"  # SND falls with group size


def test_inconclusive_when_interval_straddles():
    # the slope interval straddles -0.4 (seeds around the boundary), the ordering holds
    v = CLAIM.verdict(P, _rows([-0.45, -0.35, -0.42, -0.38, -0.41], [0.5] * 5))
    assert v.status == "inconclusive", v.reason
    # the ordering straddles 0 (log-ratios of both signs), the slope holds
    v = CLAIM.verdict(P, _rows([-0.5] * 5, [0.3, -0.2, 0.25, -0.15, 0.05]))
    assert v.status == "inconclusive", v.reason


def test_judged_pairs_need_full_rank():
    pairs = judged_pairs(BATCHES, GROUPS)
    assert all(BATCHES[bi] > GROUPS[b] for bi, _, b in pairs)
    assert (0, 2, 3) not in pairs and (2, 2, 3) not in pairs  # m = 16, 64 vs d' = 64
    assert (3, 2, 3) in pairs  # m = 128 > 64
    snd = [[1.0] * len(BATCHES), [2.0] * len(BATCHES), [4.0] * len(BATCHES), [8.0] * len(BATCHES)]
    assert math.isclose(min_log_ratio(snd, BATCHES, GROUPS), math.log(2))


def test_group_zca_whitens_and_d1_is_batchnorm():
    x = torch.randn(256, 16, dtype=torch.float64) @ torch.randn(16, 16, dtype=torch.float64)
    y = GroupZCA(16, 16, eps=0.0)(x)
    assert torch.allclose(y.T @ y / 256, torch.eye(16, dtype=torch.float64), atol=1e-8)
    y4 = GroupZCA(16, 4, eps=0.0)(x)
    assert torch.allclose(y4[:, :4].T @ y4[:, :4] / 256, torch.eye(4, dtype=torch.float64), atol=1e-8)
    bn = nlnn.BatchNorm1d(16, affine=False).double()
    assert torch.allclose(GroupZCA(16, 1)(x), bn(x), atol=1e-10)


def test_singular_batch_output_norm_is_sqrt_m_minus_1():
    m, d = 8, 16
    x = torch.randn(m, d, dtype=torch.float64)
    y = GroupZCA(d, d, eps=1e-12)(x)
    assert torch.allclose(y.norm(dim=1), torch.full((m,), math.sqrt(m - 1), dtype=torch.float64), atol=1e-4)
