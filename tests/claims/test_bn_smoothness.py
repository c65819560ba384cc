"""bn-smoothness: the rule on synthetic rows and the helpers."""

from __future__ import annotations

import math

from normlab.claims.bn_smoothness import CLAIM, median_inf, ratio

P = CLAIM.settings()


def _rows(std=lambda s: (0.5, 2.0, 10.0), bn=lambda s: (0.05, 0.2, 2.0), seeds=range(5)):
    rows = []
    for s in seeds:
        for net, f in (("standard", std), ("bn", bn)):
            band, gband, beta = f(s)
            rows.append({"seed": s, "net": net, "loss_band": band, "grad_band": gband, "beta_eff": beta})
    return rows


def test_rule_holds():
    v = CLAIM.verdict(P, _rows())
    assert v.status == "holds", v.reason
    assert abs(v.numbers["ratio_beta_eff"] - 5.0) < 1e-9
    assert abs(v.numbers["ratio_loss_band"] - 10.0) < 1e-9


def test_rule_fails_when_beta_is_close():
    v = CLAIM.verdict(P, _rows(bn=lambda s: (0.05, 0.2, 6.0)))
    assert v.status == "fails" and "beta_eff" in v.reason


def test_rule_inconclusive_when_the_interval_straddles_the_factor():
    # beta ratios 1.2, 1.7, 2.2, 2.7, 3.2: mean 2.2, interval around 2
    v = CLAIM.verdict(P, _rows(std=lambda s: (0.5, 2.0, 1.2 + 0.5 * s), bn=lambda s: (0.05, 0.2, 1.0)))
    assert v.status == "inconclusive", v.reason
    assert v.numbers["ratio_beta_eff_low"] < P["factor"] < v.numbers["ratio_beta_eff_high"]


def test_ratios_are_paired_by_seed():
    v = CLAIM.verdict(P, _rows(std=lambda s: (1.0 + s, 1.0, 10.0), bn=lambda s: ((1.0 + s) / 3, 1.0, 1.0)))
    assert abs(v.numbers["ratio_loss_band"] - 3.0) < 1e-9
    assert v.numbers["ratio_loss_band_low"] == v.numbers["ratio_loss_band_high"]


def test_helpers():
    assert median_inf([1.0, math.inf, 3.0]) == 3.0
    assert median_inf([1.0, math.nan, 3.0]) == 2.0
    assert math.isnan(median_inf([math.nan]))
    assert ratio(2.0, 0.5) == 4.0 and math.isinf(ratio(1.0, 0.0)) and math.isnan(ratio(0.0, 0.0))


def test_texts_render_from_params():
    for quick in (False, True):
        d = CLAIM.describe(quick)
        assert "{" not in d["protocol"] + d["rule"]
