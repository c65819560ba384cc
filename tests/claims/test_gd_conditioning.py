"""gd-conditioning: the rule on synthetic rows (holds / fails / inconclusive) and the GD helpers."""

from __future__ import annotations

import math

import torch

from normlab.claims.gd_conditioning import CLAIM, gd, log_points, preprocess

P = CLAIM.settings()


def _rows(exponents=(1.0,) * 5, whitened=(3,) * 5, diverged=True) -> list[dict]:
    rows = []
    for s, (e, w) in enumerate(zip(exponents, whitened, strict=True)):
        for k in P["kappas"]:
            for prep in P["preps"]:
                its = w if prep == "whitened" else 14.0 * k**e
                rows.append(
                    {"seed": s, "kappa": k, "prep": prep, "iterations": its, "hessian_kappa": 1.5, "diverged": diverged}
                )
    return rows


def test_rule_holds():
    v = CLAIM.verdict(P, _rows(exponents=(0.98, 1.0, 1.02, 0.99, 1.01)))
    assert v.status == "holds", v.reason
    assert math.isclose(v.numbers["raw_slope"], 1.0, abs_tol=1e-9)
    assert v.numbers["whitened_iterations_high"] == 3


def test_rule_fails():
    assert CLAIM.verdict(P, _rows(exponents=(0.5,) * 5)).status == "fails"  # slope 0.5
    assert CLAIM.verdict(P, _rows(whitened=(14,) * 5)).status == "fails"  # whitened needs 14 iterations
    v = CLAIM.verdict(P, _rows(diverged=False))  # eta = 2.1/lambda_max converging: a bug
    assert v.status == "fails" and "CHECK FAILED" in v.reason
    rows = _rows()
    rows[-3]["iterations"] = "inf"  # raw at the largest kappa never converged (JSON-encoded infinity)
    assert rows[-3]["prep"] == "raw"
    v = CLAIM.verdict(P, rows)
    assert v.status == "fails" and math.isnan(v.numbers["raw_slope"])


def test_rule_inconclusive():
    v = CLAIM.verdict(P, _rows(whitened=(4, 6, 5, 4, 6)))  # interval around the 5-iteration limit
    assert v.status == "inconclusive", v.reason
    assert v.numbers["whitened_iterations_low"] < P["whitened_max"] < v.numbers["whitened_iterations_high"]
    v = CLAIM.verdict(P, _rows(exponents=(1.1, 1.3, 1.15, 1.25, 1.2)))  # slopes around the band's edge 1.2
    assert v.status == "inconclusive", v.reason
    assert CLAIM.verdict({**P, "kappas": (10.0,)}, _rows()).status == "inconclusive"


def test_whitening_is_exact_on_its_own_sample_and_approximate_on_a_held_out_one():
    gen = torch.Generator().manual_seed(0)
    mix = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    x = torch.randn(500, 6, generator=gen, dtype=torch.float64) @ mix + 3.0
    ref = torch.randn(500, 6, generator=gen, dtype=torch.float64) @ mix + 3.0
    y = torch.zeros(500, dtype=torch.float64)
    xw, _ = preprocess(x, y, x, y, "whitened")
    assert torch.allclose(xw.T @ xw / 500, torch.eye(6, dtype=torch.float64), atol=1e-10)
    xh, _ = preprocess(x, y, ref, y, "whitened")
    h = xh.T @ xh / 500
    ev = torch.linalg.eigvalsh(h)
    assert not torch.allclose(h, torch.eye(6, dtype=torch.float64), atol=1e-3)
    assert float(ev[-1] / ev[0]) < 3.0
    xs, _ = preprocess(x, y, ref, y, "standardized")
    assert xs.shape == x.shape


def test_gd_on_identity_converges_in_one_step_and_diverges_beyond_two():
    h = torch.eye(4, dtype=torch.float64)
    b = torch.arange(1.0, 5.0, dtype=torch.float64)
    its, errs = gd(h, b, b.clone(), 1.0, 100, 1e-6, None)
    assert its == 1 and errs[0] == 1.0
    its, errs = gd(h, b, b.clone(), 2.1, 200, None, 1e6)
    assert its is None and errs[-1] >= 1e6


def test_log_points():
    pts = log_points(1000)
    assert pts[0] == 0 and pts[-1] == 1000 and pts == sorted(set(pts))
    assert log_points(0) == [0]
