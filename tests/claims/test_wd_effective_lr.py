"""wd-effective-lr: the rule on synthetic evidence, the theory, and one quick run."""

from __future__ import annotations

import math

from normlab.claims.wd_effective_lr import CLAIM, theory

from ._e2e import quick_run

CONFIGS = [[0.05, 1e-3], [0.1, 5e-3]]


def _evidence(late=1.0, shrink=90.0, recovered=0.95, loss_change=1e-8, n_seeds=3):
    rows = []
    for eta, lam in CONFIGS:
        th = theory(eta, lam)
        for s in range(n_seeds):
            rows.append(
                {
                    "seed": s,
                    "eta": eta,
                    "lam": lam,
                    "late": late * th,
                    "recovered": recovered * th,
                    "shrink": shrink,
                    "loss_change": loss_change,
                    "loss_change_eps0": 0.0,
                }
            )
    return {"rows": rows, "configs": CONFIGS, "momentum": 0.9, "n_seeds": n_seeds}


def test_theory_without_momentum_is_sqrt_2_eta_lambda():
    assert math.isclose(theory(0.1, 5e-3, m=0.0), math.sqrt(1e-3))


def test_rule_holds():
    v = CLAIM.verdict(_evidence())
    assert v.status == "holds", v.reason
    assert math.isclose(v.numbers["late_over_theory_eta0.1_lam0.005"], 1.0)


def test_rule_fails_off_theory():
    assert CLAIM.verdict(_evidence(late=1.4)).status == "fails"


def test_rule_fails_when_the_loss_moves():
    v = CLAIM.verdict(_evidence(loss_change=4e-5))
    assert v.status == "fails" and "loss changed" in v.reason


def test_rule_fails_without_the_100x_shrink():
    assert CLAIM.verdict(_evidence(shrink=10.0)).status == "fails"


def test_rule_inconclusive_with_one_seed():
    assert CLAIM.verdict(_evidence(n_seeds=1)).status == "inconclusive"


def test_quick_run(tmp_path):
    quick_run("wd-effective-lr", tmp_path)
