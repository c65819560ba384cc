"""bn-small-batch: the rule on synthetic evidence, the stacked network, and one quick run."""

from __future__ import annotations

import torch

from normlab.claims.bn_small_batch import (
    BATCH_SIZES,
    CLAIM,
    NORMS,
    StackedCNN,
    stacked_cross_entropy,
    stacked_data,
)
from normlab.data import Dataset
from normlab.models import CNN, init_weights

from ._e2e import quick_run


def _evidence(bn: dict[int, float], gn: dict[int, float], quick: bool = False) -> dict:
    runs = []
    for n, errs in zip(NORMS, (bn, gn), strict=True):
        for b in BATCH_SIZES:
            e = errs.get(b, 0.1)
            runs.append({"norm": n, "batch": b, "test_error": [e] * 3, "train_error": [e / 2] * 3})
    return {
        "runs": runs,
        "batch_sizes": list(BATCH_SIZES),
        "norms": list(NORMS),
        "epochs": 15,
        "n_seeds": 3,
        "quick": quick,
    }


def test_rule_holds():
    v = CLAIM.verdict(_evidence({2: 0.2, 128: 0.1}, {2: 0.11, 128: 0.1}))
    assert v.status == "holds", v.reason
    assert abs(v.numbers["bn_gap_2_vs_128"] - 0.1) < 1e-12


def test_rule_fails():
    assert CLAIM.verdict(_evidence({2: 0.13, 128: 0.1}, {})).status == "fails"  # BN gap 3 points
    assert CLAIM.verdict(_evidence({2: 0.2, 128: 0.1}, {2: 0.15})).status == "fails"  # GN spread 5 points
    ev = _evidence({2: 0.2, 128: 0.1}, {})
    ev["runs"][0]["test_error"][0] = "nan"  # a diverged BN batch-2 seed
    assert CLAIM.verdict(ev).status == "fails"


def test_rule_inconclusive():
    assert CLAIM.verdict(_evidence({2: 0.2, 128: 0.1}, {}, quick=True)).status == "inconclusive"
    ev = _evidence({2: 0.2, 128: 0.1}, {})
    ev["batch_sizes"] = [2, 32]
    assert CLAIM.verdict(ev).status == "inconclusive"


def test_stacked_cnn_is_the_separate_networks():
    torch.manual_seed(0)
    for norm in NORMS:
        nets = [init_weights(CNN(1, 10, channels=(8, 8, 16), spatial=1, norm=norm)) for _ in range(3)]
        stacked = StackedCNN(nets)
        x = torch.randn(4, 3, 40)
        y = torch.randint(0, 10, (4, 3))
        out = stacked(x)
        ref = torch.stack([n(x[:, s : s + 1]) for s, n in enumerate(nets)], 1)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
        # the summed loss gives each network its own gradient
        stacked_cross_entropy(out, y).backward()
        loss1 = torch.nn.functional.cross_entropy(ref[:, 1], y[:, 1])
        (g1,) = torch.autograd.grad(loss1, [nets[1].features[0].weight])
        torch.testing.assert_close(stacked.features[0].weight.grad[8:16], g1, rtol=1e-4, atol=1e-6)


def test_stacked_data_gives_each_seed_a_permutation():
    x = torch.arange(10, dtype=torch.float32).view(10, 1, 1).expand(10, 1, 40).contiguous()
    d = stacked_data(Dataset("t", x, torch.arange(10), x[:4], torch.arange(4), 10), [0, 1])
    assert d.x_train.shape == (10, 2, 40) and d.y_train.shape == (10, 2)
    for s in range(2):
        assert sorted(d.y_train[:, s].tolist()) == list(range(10))
        assert torch.equal(d.x_train[:, s, 0], d.y_train[:, s].float())
    assert not torch.equal(d.y_train[:, 0], d.y_train[:, 1])


def test_quick_run(tmp_path):
    quick_run("bn-small-batch", tmp_path)
