"""tent: the rule on synthetic evidence, the adaptation leaves the source model alone, and one quick run."""

from __future__ import annotations

import torch

from normlab.claims.tent import CLAIM, predict_error
from normlab.models import CNN

from ._e2e import quick_run


def _evidence(source=0.6, norm=0.3, tent=0.25, n_seeds=3):
    rows = []
    for s in range(n_seeds):
        rows.append({"seed": s, "dataset": "mnist1d", "corruption": "clean", "source": 0.1, "norm": 0.1, "tent": 0.1})
        for c in ("shift", "noise"):
            rows.append(
                {"seed": s, "dataset": "mnist1d", "corruption": c, "source": source, "norm": norm, "tent": tent}
            )
    return {"rows": rows, "severity": 5, "n_seeds": n_seeds, "margin_b": 0.01}


def test_rule_holds():
    v = CLAIM.verdict(_evidence())
    assert v.status == "holds", v.reason
    assert abs(v.numbers["gain_b_points"] - 5.0) < 1e-9


def test_rule_fails_when_tent_adds_nothing():
    v = CLAIM.verdict(_evidence(tent=0.298))
    assert v.status == "fails" and "(a) holds" in v.reason and "(b) fails" in v.reason


def test_rule_fails_when_batch_statistics_do_not_help():
    v = CLAIM.verdict(_evidence(norm=0.7, tent=0.5))
    assert v.status == "fails" and "(a) fails" in v.reason


def test_rule_inconclusive_with_one_seed():
    assert CLAIM.verdict(_evidence(n_seeds=1)).status == "inconclusive"


def test_adaptation_works_on_a_copy():
    torch.manual_seed(0)
    model = CNN(1, 10, channels=(4, 4), spatial=1, norm="bn").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(70, 1, 12), torch.randint(0, 10, (70,))
    for method in ("source", "norm", "tent"):
        err = predict_error(model, x, y, torch.arange(70), method)
        assert 0.0 <= err <= 1.0
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.requires_grad for p in model.parameters())


def test_quick_run(tmp_path):
    quick_run("tent", tmp_path)
