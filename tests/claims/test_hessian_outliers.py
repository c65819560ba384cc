"""hessian-outliers: the rule on synthetic evidence and one quick run."""

from __future__ import annotations

from normlab.claims.hessian_outliers import CLAIM

from ._e2e import quick_run


def _evidence(plain=(0.6, 0.7), bn=(0.2, 0.3), n_seeds=3):
    rows = []
    for s in range(n_seeds):
        for net, (mi, mt) in (("plain", plain), ("bn", bn)):
            rows.append(
                {
                    "seed": s,
                    "net": net,
                    "init": {"topk_mass": mi, "lmax_over_rms": 10 * mi},
                    "trained": {"topk_mass": mt, "lmax_over_rms": 10 * mt},
                }
            )
    return {"rows": rows, "k": 10, "n_seeds": n_seeds}


def test_rule_holds():
    v = CLAIM.verdict(_evidence())
    assert v.status == "holds", v.reason
    assert v.numbers["mass_bn_trained"] < v.numbers["mass_plain_trained"]


def test_rule_fails():
    assert CLAIM.verdict(_evidence(plain=(0.2, 0.3), bn=(0.6, 0.7))).status == "fails"


def test_rule_inconclusive_when_checkpoints_disagree():
    v = CLAIM.verdict(_evidence(plain=(0.6, 0.3), bn=(0.2, 0.7)))
    assert v.status == "inconclusive" and "one checkpoint" in v.reason


def test_rule_inconclusive_with_one_seed():
    assert CLAIM.verdict(_evidence(n_seeds=1)).status == "inconclusive"


def test_quick_run(tmp_path):
    result = quick_run("hessian-outliers", tmp_path)
    for row in result["evidence"]["rows"]:
        for phase in ("init", "trained"):
            assert 0 < row[phase]["topk_mass"] <= 1 + 1e-9  # deflated estimate: a share of tr(H^2)
