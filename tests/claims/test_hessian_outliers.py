"""hessian-outliers: the rule on synthetic rows and the top-k mass."""

from __future__ import annotations

import math

from normlab.claims.hessian_outliers import CLAIM, topk_mass

P = CLAIM.settings()


def _rows(plain=lambda s: (0.6, 0.9), bn=lambda s: (0.2, 0.7), seeds=range(5)):
    rows = []
    for s in seeds:
        for net, f in (("plain", plain), ("bn", bn)):
            mi, mt = f(s)
            rows.append(
                {
                    "seed": s,
                    "net": net,
                    "init": {"topk_mass": mi, "lmax_over_rms": 10 * mi},
                    "trained": {"topk_mass": mt, "lmax_over_rms": 10 * mt},
                }
            )
    return rows


def test_rule_holds():
    v = CLAIM.verdict(P, _rows())
    assert v.status == "holds", v.reason
    assert abs(v.numbers["ratio_init"] - 3.0) < 1e-9
    assert v.numbers["mass_bn_trained"] < v.numbers["mass_plain_trained"]


def test_rule_fails_when_bn_has_more_outlier_mass():
    v = CLAIM.verdict(P, _rows(plain=lambda s: (0.2, 0.3), bn=lambda s: (0.6, 0.7)))
    assert v.status == "fails"


def test_rule_fails_when_one_checkpoint_fails():
    v = CLAIM.verdict(P, _rows(plain=lambda s: (0.6, 0.3), bn=lambda s: (0.2, 0.7)))
    assert v.status == "fails" and "holds: init" in v.reason


def test_rule_inconclusive_when_the_interval_straddles_one():
    # trained ratios 0.8, 0.9, 1.0, 1.1, 1.2
    v = CLAIM.verdict(P, _rows(plain=lambda s: (0.6, 0.8 + 0.1 * s), bn=lambda s: (0.2, 1.0)))
    assert v.status == "inconclusive", v.reason
    assert v.numbers["ratio_trained_low"] < 1 < v.numbers["ratio_trained_high"]


def test_topk_mass():
    assert topk_mass([3.0, 1.0], 20.0) == 0.5
    assert math.isnan(topk_mass([1.0], 0.0))


def test_texts_render_from_params():
    for quick in (False, True):
        d = CLAIM.describe(quick)
        assert "{" not in d["protocol"] + d["rule"]
