"""edge-of-stability: the rule on synthetic rows, the loss, the late median and the BN placement."""

from __future__ import annotations

import math

import torch

from normlab.claims.base import render
from normlab.claims.edge_of_stability import CLAIM, NETS, build_net, late_median, square_loss

P = CLAIM.settings()


def _row(net, factor, seed, level, diverged=False):
    lam0 = 7.0 if net == "fc-tanh" else 90.0
    eta = factor * 2 / lam0
    steps = int(round(P["budget"] / factor))
    every = steps // P["measurements"]
    ms = list(range(0, steps + 1, every))
    lam = [2 / eta * (factor + (level - factor) * min(1.0, 2 * s / steps)) for s in ms]
    if diverged:
        ms, lam = ms[:3], lam[:3]
    row = {"net": net, "factor": factor, "seed": seed, "lambda0": lam0, "eta": eta, "steps": steps}
    row.update({"measure_steps": ms, "lambda_max": lam, "diverged": diverged})
    row["late"] = late_median(row)
    return row


def _rows(levels=lambda net, f, s: 1.05, diverge=None, seeds=range(5)):
    return [
        _row(net, f, s, levels(net, f, s), diverged=bool(diverge and diverge(net, f, s)))
        for net in NETS
        for f in P["factors"]
        for s in seeds
    ]


def test_grid_is_one_cell_per_net_factor_seed():
    cells = CLAIM.grid(P, [0, 1], [])
    assert len(cells) == len(NETS) * len(P["factors"]) * 2
    assert CLAIM.grid(P, [0, 1], [{"seed": 0}]) == []


def test_late_median_uses_the_second_half():
    row = {"eta": 0.2, "steps": 100, "measure_steps": [0, 40, 50, 60, 70], "lambda_max": [1, 1, 10, 10, 20]}
    row["diverged"] = False
    assert late_median(row) == 10 * 0.2 / 2
    assert math.isnan(late_median({**row, "diverged": True}))


def test_rule_holds():
    v = CLAIM.verdict(P, _rows(levels=lambda net, f, s: 1.0 + 0.02 * s))
    assert v.status == "holds", v.reason
    assert abs(v.numbers["fc-tanh_x0.7"] - 1.04) < 1e-9
    assert v.numbers["fc-tanh_x0.7_low"] <= 1.04 <= v.numbers["fc-tanh_x0.7_high"]


def test_rule_fails_below_the_band():
    v = CLAIM.verdict(P, _rows(levels=lambda net, f, s: 0.5 if net == "fc-tanh-bn" and f == 0.35 else 1.05))
    assert v.status == "fails" and "fc-tanh-bn eta=0.35" in v.reason


def test_rule_fails_on_divergence():
    v = CLAIM.verdict(P, _rows(diverge=lambda net, f, s: net == "fc-tanh-bn" and f == 0.9 and s == 2))
    assert v.status == "fails" and "diverged" in v.reason
    assert v.numbers["fc-tanh-bn_x0.9_diverged"] == 1


def test_rule_inconclusive_when_the_interval_straddles_the_band_edge():
    v = CLAIM.verdict(P, _rows(levels=lambda net, f, s: 0.8 + 0.05 * s if f == 0.7 else 1.05))
    assert v.status == "inconclusive", v.reason
    assert v.numbers["fc-tanh_x0.7_low"] < P["band"][0] < v.numbers["fc-tanh_x0.7_high"]


def test_square_loss_is_half_the_summed_square_error():
    out, t = torch.tensor([[1.0, 0.0], [0.0, 3.0]]), torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    assert float(square_loss(out, t)) == (0.5 * 1 + 0.5 * 4) / 2


def test_bn_net_puts_batchnorm_after_tanh():
    kinds = [type(m).__name__ for m in build_net("fc-tanh-bn", 8, 2)]
    assert kinds[1:4] == ["Linear", "Tanh", "BatchNorm1d"]
    assert "BatchNorm1d" not in [type(m).__name__ for m in build_net("fc-tanh", 8, 2)]


def test_texts_render_from_params():
    for quick in (False, True):
        d = CLAIM.describe(quick)
        assert "{" not in d["protocol"] + d["rule"]
    assert "0.35, 0.7, 0.9" in render(CLAIM.protocol, P)
