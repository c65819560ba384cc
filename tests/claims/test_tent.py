"""tent: the rule on synthetic rows (holds / fails / inconclusive) and the adaptation on a copy."""

from __future__ import annotations

import math

import torch

from normlab.claims.tent import CLAIM, entropy, predict_error
from normlab.models import CNN

P = CLAIM.settings()
torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # torch's one-time optimizer import (seconds), not a test


def _rows(gain_a=0.2, gain_b=0.03, jitter_b=(0.0,) * 5, affine_gain=0.5) -> list[dict]:
    rows = []
    for s, jb in enumerate(jitter_b):
        for ds in P["datasets"]:
            for c in ("clean",) + tuple(P[f"{ds}_corruptions"]):
                affine = c in P["affine"]
                src = 0.6
                norm = src - (affine_gain if affine else gain_a)
                if c == "clean":
                    src = norm = 0.05
                rows.append(
                    {
                        "seed": s,
                        "dataset": ds,
                        "corruption": c,
                        "affine": affine,
                        "source": src,
                        "norm": norm,
                        "tent": norm - gain_b - jb,
                        "updates": 50,
                    }
                )
    return rows


def test_holds():
    v = CLAIM.verdict(P, _rows())
    assert v.status == "holds", v.reason
    assert math.isclose(v.numbers["gain_b"], 0.03)
    assert math.isclose(v.numbers["gain_a"], 0.2)  # the affine corruptions are not in (a)
    assert "gain_b[mnist1d/noise]" in v.numbers


def test_fails_when_tent_adds_nothing_or_norm_does_not_help():
    assert CLAIM.verdict(P, _rows(gain_b=0.0)).status == "fails"
    v = CLAIM.verdict(P, _rows(gain_a=-0.05))
    assert v.status == "fails" and "(a)" in v.reason


def test_affine_gain_alone_does_not_decide_a():
    v = CLAIM.verdict(P, _rows(gain_a=-0.05, affine_gain=0.5))
    assert v.status == "fails"


def test_inconclusive_when_b_straddles_the_margin():
    v = CLAIM.verdict(P, _rows(gain_b=0.01, jitter_b=(0.01, -0.01, 0.008, -0.009, 0.0)))
    assert v.status == "inconclusive", v.reason


def test_adaptation_works_on_a_copy_and_counts_updates():
    torch.manual_seed(0)
    model = CNN(1, 10, channels=(4, 4, 8), spatial=1, norm="bn")
    model.eval()
    before = [q.detach().clone() for q in model.parameters()]
    x, y = torch.randn(130, 1, 40), torch.randint(0, 10, (130,))
    order = torch.randperm(130)
    for method in ("source", "norm", "tent"):
        err, updates = predict_error(model, x, y, order, method, 64, 1e-3, (0.9, 0.999))
        assert 0.0 <= err <= 1.0
        assert updates == (3 if method == "tent" else 0)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert float(entropy(torch.zeros(2, 10))) > 2.3
