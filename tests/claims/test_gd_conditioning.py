"""gd-conditioning: the rule on synthetic evidence, and one quick run."""

from __future__ import annotations

import math

import pytest

from normlab.claims.gd_conditioning import CLAIM, KAPPAS, PREPS, _preprocess

from ._e2e import quick_run


def _evidence(raw_per_kappa: float, exponent: float, whitened: int, diverged: bool) -> dict:
    rows = []
    for seed in (0, 1, 2):
        for k in KAPPAS:
            for p in PREPS:
                its = whitened if p == "whitened" else raw_per_kappa * k**exponent
                rows.append({"seed": seed, "kappa": k, "prep": p, "iterations": its, "diverged_2.1": diverged})
    return {"rows": rows, "kappas": list(KAPPAS), "preps": list(PREPS), "tolerance": 1e-6}


def test_rule_holds():
    v = CLAIM.verdict(_evidence(14.0, 1.0, 1, True))
    assert v.status == "holds"
    assert v.numbers["raw_slope"] == pytest.approx(1.0)


def test_rule_fails_on_slope():
    v = CLAIM.verdict(_evidence(14.0, 0.5, 1, True))
    assert v.status == "fails"
    assert v.numbers["raw_slope"] == pytest.approx(0.5)


def test_rule_fails_on_whitened_or_divergence():
    assert CLAIM.verdict(_evidence(14.0, 1.0, 6, True)).status == "fails"
    assert CLAIM.verdict(_evidence(14.0, 1.0, 1, False)).status == "fails"


def test_rule_fails_when_raw_never_converges():
    ev = _evidence(14.0, 1.0, 1, True)
    ev["rows"][-3]["iterations"] = "inf"  # raw at the largest kappa, JSON-encoded infinity
    v = CLAIM.verdict(ev)
    assert v.status == "fails" and math.isnan(v.numbers["raw_slope"])


def test_rule_inconclusive_with_one_kappa():
    ev = _evidence(14.0, 1.0, 1, True)
    ev["kappas"] = [10.0]
    assert CLAIM.verdict(ev).status == "inconclusive"


def test_whitening_gives_identity_hessian():
    import torch

    x = torch.randn(500, 6, dtype=torch.float64) @ torch.randn(6, 6, dtype=torch.float64) + 3.0
    xw, _ = _preprocess(x, torch.zeros(500, dtype=torch.float64), "whitened")
    assert torch.allclose(xw.T @ xw / 500, torch.eye(6, dtype=torch.float64), atol=1e-10)


def test_quick_run(tmp_path):
    quick_run("gd-conditioning", tmp_path)
