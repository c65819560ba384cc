"""where-to-normalize: the rule on synthetic rows (holds / fails / inconclusive) and the LR schedule."""

from __future__ import annotations

import math

from normlab.claims.where_to_normalize import CLAIM, cosine

P = CLAIM.settings()


def _rows(acc_before: dict, acc_after: dict) -> list[dict]:
    rows = []
    for n in P["norms"]:
        for pl, accs in (("before", acc_before), ("after", acc_after)):
            for s, a in enumerate(accs[n]):
                rows.append(
                    {
                        "norm": n,
                        "placement": pl,
                        "seed": s,
                        "eval_steps": [0, P["steps"]],
                        "test_acc": [0.1, a],
                        "train_acc": [0.1, a],
                        "final_test_acc": a,
                        "diverged": False,
                    }
                )
    return rows


BASE = (0.95, 0.96, 0.94, 0.95, 0.955)


def _shift(d: float) -> tuple:
    return tuple(a - d for a in BASE)


def test_rule_holds():
    v = CLAIM.verdict(P, _rows({"bn": BASE, "ln": BASE}, {"bn": _shift(0.005), "ln": _shift(-0.01)}))
    assert v.status == "holds", v.reason
    assert math.isclose(v.numbers["gap[bn]"], 0.005, abs_tol=1e-12)
    assert math.isclose(v.numbers["gap[ln]"], -0.01, abs_tol=1e-12)


def test_rule_fails():
    v = CLAIM.verdict(P, _rows({"bn": BASE, "ln": BASE}, {"bn": _shift(0.0), "ln": _shift(0.10)}))
    assert v.status == "fails", v.reason
    rows = _rows({"bn": BASE, "ln": BASE}, {"bn": _shift(0.0), "ln": _shift(0.0)})
    rows[0]["final_test_acc"] = math.nan  # a diverged seed
    assert CLAIM.verdict(P, rows).status == "fails"


def test_rule_inconclusive():
    after = tuple(a - d for a, d in zip(BASE, (0.01, 0.05, 0.02, 0.04, 0.03), strict=True))  # gaps around 3 points
    v = CLAIM.verdict(P, _rows({"bn": BASE, "ln": BASE}, {"bn": _shift(0.0), "ln": after}))
    assert v.status == "inconclusive", v.reason
    assert v.numbers["gap_low[ln]"] < P["gap"] < v.numbers["gap_high[ln]"]
    chance = (0.1, 0.11, 0.09, 0.1, 0.1)  # neither placement of LN trains: the equal accuracies say nothing
    v = CLAIM.verdict(P, _rows({"bn": BASE, "ln": chance}, {"bn": _shift(0.0), "ln": chance}))
    assert v.status == "inconclusive" and "chance" in v.reason
    rows = [r for r in _rows({"bn": BASE, "ln": BASE}, {"bn": BASE, "ln": BASE}) if r["placement"] == "before"]
    assert CLAIM.verdict(P, rows).status == "inconclusive"


def test_cosine():
    assert cosine(0.05, 0, 600) == 0.05
    assert math.isclose(cosine(0.05, 300, 600), 0.025)
    assert abs(cosine(0.05, 600, 600)) < 1e-15
