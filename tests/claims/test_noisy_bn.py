"""noisy-bn: the rule on synthetic evidence, the noise layer, and one quick run."""

from __future__ import annotations

import torch

from normlab.claims.noisy_bn import CLAIM, InjectedNoise, build

from ._e2e import quick_run


def _evidence(acc=None, ics=None, n_seeds=3):
    acc = acc or {"standard": 0.90, "bn": 0.95, "noisy_bn": 0.94}
    ics = ics or {"standard": 0.1, "bn": 0.05, "noisy_bn": 0.5}
    rows = [
        {"seed": s, "net": n, "final_acc": acc[n], "ics_median": ics[n], "cos_median": 0.9}
        for s in range(n_seeds)
        for n in acc
    ]
    return {"rows": rows, "n_seeds": n_seeds, "margin": 0.03}


def test_rule_holds():
    assert CLAIM.verdict(_evidence()).status == "holds"


def test_rule_fails_when_noise_hurts():
    v = CLAIM.verdict(_evidence(acc={"standard": 0.90, "bn": 0.95, "noisy_bn": 0.85}))
    assert v.status == "fails" and "below BN" in v.reason


def test_rule_fails_when_ics_is_low():
    v = CLAIM.verdict(_evidence(ics={"standard": 0.1, "bn": 0.05, "noisy_bn": 0.05}))
    assert v.status == "fails" and "ICS" in v.reason


def test_rule_inconclusive_with_one_seed():
    assert CLAIM.verdict(_evidence(n_seeds=1)).status == "inconclusive"


def test_noise_is_identity_at_inference_and_redrawn_in_training():
    noise = InjectedNoise(seed=0)
    x = torch.randn(8, 4, 5)
    noise.eval()
    assert torch.equal(noise(x), x)
    noise.force = True
    a, b = noise(x), noise(x)
    assert not torch.allclose(a, b)
    assert torch.equal(InjectedNoise(seed=3).train()(x), InjectedNoise(seed=3).train()(x))


def test_noisy_net_has_noise_after_every_bn():
    model = build("noisy_bn", 0)
    assert sum(isinstance(m, InjectedNoise) for m in model.modules()) == 3


def test_quick_run(tmp_path):
    quick_run("noisy-bn", tmp_path)
