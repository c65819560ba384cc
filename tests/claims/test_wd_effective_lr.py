"""wd-effective-lr: the rule on synthetic rows (holds / fails / inconclusive), the theory, the exact control."""

from __future__ import annotations

import math

import torch

from normlab.claims.wd_effective_lr import CLAIM, relative_loss_change, tau_steps, theory
from normlab.models import MLP

P = CLAIM.settings()


def _rows(late=(1.0,) * 5, recovered=(0.95,) * 5, shrink=90.0, loss_change=0.0) -> list[dict]:
    rows = []
    for eta in P["etas"]:
        for lam in P["lams"]:
            th = theory(eta, lam, P["momentum"])
            for s, (a, b) in enumerate(zip(late, recovered, strict=True)):
                rows.append(
                    {
                        "seed": s,
                        "eta": eta,
                        "lam": lam,
                        "theory": th,
                        "late": a * th,
                        "recovered": b * th,
                        "shrink": shrink,
                        "loss_change": loss_change,
                        "loss_change_eps": 4e-5,
                    }
                )
    return rows


def test_theory_and_tau():
    assert math.isclose(theory(0.1, 5e-3, m=0.0), math.sqrt(1e-3))
    assert tau_steps(0.1, 5e-3, 0.9) == 100


def test_holds():
    v = CLAIM.verdict(P, _rows())
    assert v.status == "holds", v.reason
    assert math.isclose(v.numbers["late_over_theory_eta0.1_lam0.005"], 1.0)
    assert not v.checks or all(c.passed for c in v.checks)


def test_fails_off_theory():
    assert CLAIM.verdict(P, _rows(late=(1.4, 1.45, 1.5, 1.42, 1.38))).status == "fails"


def test_inconclusive_when_interval_straddles_the_band():
    v = CLAIM.verdict(P, _rows(late=(1.1, 1.4, 1.2, 1.35, 1.25)))
    assert v.status == "inconclusive", v.reason


def test_a_moving_loss_is_a_failed_check():
    v = CLAIM.verdict(P, _rows(loss_change=4e-5))
    assert v.status == "fails" and "CHECK FAILED" in v.reason
    v = CLAIM.verdict(P, _rows(shrink=3.0))
    assert v.status == "fails" and "CHECK FAILED" in v.reason


def test_exact_control_is_scale_invariant_and_eps_is_not():
    torch.manual_seed(0)
    model = MLP(40, 10, width=16, depth=2, norm="bn", bias=False)
    names = [n for n, q in model.named_parameters() if q.dim() == 2][:-1]
    with torch.no_grad():
        for n, q in model.named_parameters():
            if n in names:
                q.mul_(0.01)  # small weights: eps / Var matters
    batch = (torch.randn(64, 40), torch.randint(0, 10, (64,)))
    assert relative_loss_change(model, batch, names, 10.0, exact=True) <= 1e-12
    assert relative_loss_change(model, batch, names, 10.0, exact=False) > 1e-6
