"""The published claims about normalization, each a seeded experiment with a verdict.

``CLAIMS`` maps claim ids to implemented claims; ``PENDING`` lists claims of
CLAIMS.md that wait for a family normlab does not have yet.
"""

from __future__ import annotations

import importlib

from .base import Claim, Context, PendingClaim, Verdict, loglog_slope, mean_std

# One module per claim: normlab.claims.<module> defines CLAIM (an instance).
_MODULES: tuple[str, ...] = (
    "gn_ln_in",
    "scale_invariance",
    "gd_conditioning",
    "snd",
    "bn_speed",
    "edge_of_stability",
    "hessian_outliers",
    "noisy_bn",
    "bn_smoothness",
    "tent",
    "wd_effective_lr",
    "init_scale",
    "norm_fixes_init",
    "where_to_normalize",
    "depth_limit",
    "bn_small_batch",
)

PENDING: dict[str, PendingClaim] = {
    p.id: p
    for p in (
        PendingClaim(
            "wn-geometry",
            "Salimans & Kingma 2016",
            "weight-norm SGD steps are orthogonal to w; ||w|| grows",
            "weight normalization (weight-side family)",
        ),
        PendingClaim(
            "swn-propagation",
            "Arpit, Campos & Bengio 2019",
            "scaled weight norm keeps ||f(x)|| ~ ||x|| with depth",
            "scaled weight normalization",
        ),
        PendingClaim(
            "whitening-conditioning",
            "Huang et al. survey",
            "whitening gives better-conditioned layer inputs than standardization",
            "whitening family",
        ),
        PendingClaim(
            "pca-fails", "Huang et al. 2018 (DBN)", "PCA whitening does not train while ZCA does", "whitening family"
        ),
        PendingClaim(
            "large-batch-lars",
            "You et al. (LARS/LAMB)",
            "layer-wise adaptive rates keep accuracy at large batch",
            "gradient-side family (LARS, LAMB)",
        ),
        PendingClaim(
            "gradient-centralization",
            "Yong et al. 2020",
            "centralizing gradients speeds up convergence",
            "gradient-side family (gradient centralization)",
        ),
        PendingClaim(
            "ln-sequences", "Ba et al. 2016", "LayerNorm helps recurrent nets", "recurrent models with LayerNorm cells"
        ),
    )
}


def _load() -> dict[str, Claim]:
    table: dict[str, Claim] = {}
    for name in _MODULES:
        claim = importlib.import_module(f"{__name__}.{name}").CLAIM
        table[claim.id] = claim
    return table


CLAIMS: dict[str, Claim] = _load()


def get_claim(claim_id: str) -> Claim:
    if claim_id in CLAIMS:
        return CLAIMS[claim_id]
    if claim_id in PENDING:
        raise ValueError(f"claim {claim_id!r} is pending: it needs {PENDING[claim_id].needs}, not built yet")
    raise ValueError(f"unknown claim {claim_id!r}; known claims: {', '.join(sorted(CLAIMS)) or '(none)'}")


__all__ = ["CLAIMS", "PENDING", "Claim", "Context", "PendingClaim", "Verdict", "get_claim", "loglog_slope", "mean_std"]
