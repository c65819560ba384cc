"""The published claims about normalization, each a seeded experiment with a verdict.

``CLAIMS`` maps claim ids to implemented claims; ``PENDING`` lists claims of
CLAIMS.md that wait for a family normlab does not have yet.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping

from .base import Claim, PendingClaim, Verdict, loglog_slope, mean_std

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
    "gradient_centralization",
    "large_batch_lars",
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
            "ln-sequences", "Ba et al. 2016", "LayerNorm helps recurrent nets", "recurrent models with LayerNorm cells"
        ),
    )
}


class _Claims(Mapping):
    """Claim id -> claim, in the order above; a claim's module is imported when it is first looked up.

    The id is the module name with ``-`` for ``_`` (checked on import), so
    listing ids imports nothing and a worker process running one claim's
    cells imports only that claim.
    """

    def __init__(self, modules: tuple[str, ...]) -> None:
        self._modules = {m.replace("_", "-"): m for m in modules}
        self._loaded: dict[str, Claim] = {}

    def __getitem__(self, claim_id: str) -> Claim:
        if claim_id not in self._loaded:
            module = self._modules[claim_id]  # KeyError for an unknown id, as a dict
            claim = importlib.import_module(f"{__name__}.{module}").CLAIM
            if claim.id != claim_id:
                raise RuntimeError(f"normlab.claims.{module} defines claim {claim.id!r}, expected {claim_id!r}")
            self._loaded[claim_id] = claim
        return self._loaded[claim_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._modules)

    def __len__(self) -> int:
        return len(self._modules)


CLAIMS: Mapping[str, Claim] = _Claims(_MODULES)


def get_claim(claim_id: str) -> Claim:
    if claim_id in CLAIMS:
        return CLAIMS[claim_id]
    if claim_id in PENDING:
        raise ValueError(f"claim {claim_id!r} is pending: it needs {PENDING[claim_id].needs}, not built yet")
    raise ValueError(f"unknown claim {claim_id!r}; known claims: {', '.join(sorted(CLAIMS)) or '(none)'}")


__all__ = ["CLAIMS", "PENDING", "Claim", "PendingClaim", "Verdict", "get_claim", "loglog_slope", "mean_std"]
