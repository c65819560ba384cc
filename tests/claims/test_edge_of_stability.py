"""edge-of-stability: the rule on synthetic evidence, the loss, and one quick run."""

from __future__ import annotations

import torch

from normlab.claims.edge_of_stability import CLAIM, square_loss

from ._e2e import quick_run


def _run(net, lr, level, diverged=False):
    steps = int(round(120 / lr))
    ms = list(range(0, steps + 1, steps // 24))
    lam = [2 / lr * (0.3 + (level - 0.3) * min(1.0, 2 * s / steps)) for s in ms]
    if diverged:
        ms, lam = ms[:3], lam[:3]
    return {"net": net, "lr": lr, "steps": steps, "measure_steps": ms, "lambda_max": lam, "diverged": diverged}


def _evidence(level=1.05, bn_level=None, diverge_bn=False, n_seeds=3):
    lrs = (0.1, 0.2, 0.25)
    runs = []
    for _ in range(n_seeds):
        for lr in lrs:
            runs.append(_run("fc-tanh", lr, level))
            runs.append(_run("fc-tanh-bn", lr, bn_level or level, diverged=diverge_bn and lr > 0.1))
    return {"runs": runs, "lrs": list(lrs), "nets": ["fc-tanh", "fc-tanh-bn"], "time": 120.0, "n_seeds": n_seeds}


def test_rule_holds():
    v = CLAIM.verdict(_evidence())
    assert v.status == "holds", v.reason
    assert abs(v.numbers["fc-tanh_lr0.2"] - 1.05) < 1e-9


def test_rule_fails_below_the_band():
    assert CLAIM.verdict(_evidence(bn_level=0.6)).status == "fails"


def test_rule_fails_on_divergence():
    v = CLAIM.verdict(_evidence(diverge_bn=True))
    assert v.status == "fails" and "diverged" in v.reason
    assert v.numbers["fc-tanh-bn_lr0.25_diverged"] == 3


def test_rule_inconclusive_with_one_seed():
    assert CLAIM.verdict(_evidence(n_seeds=1)).status == "inconclusive"


def test_square_loss_is_half_the_summed_square_error():
    out, t = torch.tensor([[1.0, 0.0], [0.0, 3.0]]), torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    assert float(square_loss(out, t)) == (0.5 * 1 + 0.5 * 4) / 2


def test_quick_run(tmp_path):
    quick_run("edge-of-stability", tmp_path)
