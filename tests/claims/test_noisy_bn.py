"""noisy-bn: the rule on synthetic rows (holds / fails / inconclusive), the noise layer and its frozen mode."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from normlab.claims.noisy_bn import CLAIM, InjectedNoise, build, measure_ics

P = CLAIM.settings()


def _rows(acc=None, ics=None, jitter=(0.0, 0.0, 0.0, 0.0, 0.0), tiny=0.0) -> list[dict]:
    acc = acc or {"standard": 0.90, "bn": 0.95, "noisy_bn": 0.94}
    ics = ics or {"standard": 0.1, "bn": 0.05, "noisy_bn": 0.5}
    return [
        {
            "seed": s,
            "net": n,
            "final_acc": acc[n] + (j if n == "noisy_bn" else 0.0),
            "ics_median": ics[n],
            "cos_median": 0.9,
            "ics_tiny_ratio": tiny,
        }
        for s, j in enumerate(jitter)
        for n in acc
    ]


def test_holds():
    v = CLAIM.verdict(P, _rows())
    assert v.status == "holds", v.reason
    assert abs(v.numbers["noisy_minus_standard"] - 0.04) < 1e-9


def test_fails_when_noise_hurts_or_ics_is_low():
    v = CLAIM.verdict(P, _rows(acc={"standard": 0.90, "bn": 0.95, "noisy_bn": 0.85}))
    assert v.status == "fails" and "noisy-BN - BN" in v.reason
    v = CLAIM.verdict(P, _rows(ics={"standard": 0.1, "bn": 0.05, "noisy_bn": 0.05}))
    assert v.status == "fails" and "ICS" in v.reason


def test_inconclusive_when_the_gain_over_standard_straddles_zero():
    v = CLAIM.verdict(
        P, _rows(acc={"standard": 0.94, "bn": 0.95, "noisy_bn": 0.943}, jitter=(0.01, -0.01, 0.008, -0.009, 0.0))
    )
    assert v.status == "inconclusive", v.reason


def test_unfrozen_noise_is_a_failed_check():
    v = CLAIM.verdict(P, _rows(tiny=0.9))
    assert v.status == "fails" and "CHECK FAILED" in v.reason


def test_noise_is_identity_at_inference_and_redrawn_in_training():
    noise = InjectedNoise(0)
    x = torch.randn(8, 4, 10)
    noise.eval()
    assert torch.equal(noise(x), x)
    noise.train()
    assert not torch.allclose(noise(x), noise(x))


def test_frozen_noise_repeats_and_restores_the_generator():
    noise = InjectedNoise(0)
    x = torch.randn(8, 4, 10)
    state = noise.generator.get_state()
    with noise.frozen():
        a, b = noise(x), noise(x)
    assert torch.equal(a, b)
    assert torch.equal(noise.generator.get_state(), state)


def test_noisy_net_has_noise_after_every_bn_and_frozen_ics_vanishes_at_tiny_lr():
    p = {**P, "channels": (4, 4, 8)}
    model = build("noisy_bn", 0, p)
    assert sum(isinstance(m, InjectedNoise) for m in model.modules()) == 3
    batch = (torch.randn(16, 1, 40), torch.randint(0, 10, (16,)))
    tiny = measure_ics(model, batch, 1e-9)["l2_mean"]
    real = measure_ics(model, batch, 0.05)["l2_mean"]
    assert tiny <= 1e-3 * real
    assert F.cross_entropy(model(batch[0]), batch[1]).isfinite()
