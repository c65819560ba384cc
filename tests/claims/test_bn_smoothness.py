"""bn-smoothness: the rule on synthetic evidence and one quick run."""

from __future__ import annotations

import math

from normlab.claims.bn_smoothness import CLAIM

from ._e2e import quick_run


def _evidence(std=(0.5, 2.0, 10.0), bn=(0.05, 0.2, 2.0), n_seeds=3):
    rows = []
    for s in range(n_seeds):
        for net, (band, gband, beta) in (("standard", std), ("bn", bn)):
            rows.append({"seed": s, "net": net, "loss_band": band, "grad_band": gband, "beta_eff": beta})
    return {"rows": rows, "n_seeds": n_seeds}


def test_rule_holds():
    v = CLAIM.verdict(_evidence())
    assert v.status == "holds", v.reason
    assert abs(v.numbers["ratio_beta_eff"] - 5.0) < 1e-9


def test_rule_fails_when_beta_is_close():
    v = CLAIM.verdict(_evidence(bn=(0.05, 0.2, 6.0)))
    assert v.status == "fails" and "beta_eff" in v.reason


def test_an_exploding_standard_net_counts_as_an_infinite_band():
    v = CLAIM.verdict(_evidence(std=(math.inf, math.inf, math.inf)))
    assert v.status == "holds" and math.isinf(v.numbers["ratio_loss_band"])


def test_rule_inconclusive_with_one_seed():
    assert CLAIM.verdict(_evidence(n_seeds=1)).status == "inconclusive"


def test_quick_run(tmp_path):
    quick_run("bn-smoothness", tmp_path)
