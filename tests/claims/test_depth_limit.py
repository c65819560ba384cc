"""depth-limit: the rule on synthetic evidence, and one quick run."""

from __future__ import annotations

from normlab.claims.depth_limit import CLAIM, DEPTHS, VARIANTS, deepest, variant_name


def _evidence(best: dict[str, int], quick: bool = False) -> dict:
    rows = []
    for n, c in VARIANTS:
        name = variant_name(n, c)
        for d in DEPTHS:
            rows.append({"variant": name, "depth": d, "trainable": d <= best[n + str(c)], "run": True, "lrs": []})
    return {
        "rows": rows,
        "variants": [variant_name(n, c) for n, c in VARIANTS],
        "depths": list(DEPTHS),
        "steps": 1000,
        "target": 0.9,
        "n_seeds": 3,
        "quick": quick,
    }


def test_rule_holds():
    v = CLAIM.verdict(_evidence({"none1.0": 4, "none2.0": 16, "bn1.0": 16, "ln1.0": 8}))
    assert v.status == "holds", v.reason
    assert v.numbers["deepest[bn (c=1)]"] == 16
    assert v.numbers["bn_hits_limit"] == 1.0


def test_rule_fails_when_one_norm_is_short():
    v = CLAIM.verdict(_evidence({"none1.0": 8, "none2.0": 16, "bn1.0": 16, "ln1.0": 8}))
    assert v.status == "fails"
    assert v.numbers["ln_over_none_c1"] == 1.0


def test_rule_quick_is_inconclusive():
    ev = _evidence({"none1.0": 4, "none2.0": 16, "bn1.0": 16, "ln1.0": 8}, quick=True)
    assert CLAIM.verdict(ev).status == "inconclusive"


def test_deepest_ignores_untrainable_and_unrun():
    rows = [
        {"variant": "a", "depth": 2, "trainable": True},
        {"variant": "a", "depth": 4, "trainable": False},
        {"variant": "b", "depth": 2, "trainable": False},
    ]
    assert deepest(rows, "a") == 2 and deepest(rows, "b") == 0


def test_quick_run(tmp_path):
    from ._e2e import quick_run

    quick_run("depth-limit", tmp_path)
