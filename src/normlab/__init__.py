"""normlab: normalization in deep networks, on PyTorch.

- :mod:`normlab.nn`: drop-in normalization modules (torch.nn's contract).
- :mod:`normlab.functional`: the partition -> operation -> recovery framework
  and the functional form of every norm.
- :func:`create_norm`, :func:`get_norm`, :func:`list_norms`: the registry.
"""

from . import functional, nn, optim
from .registry import (
    NORMS,
    OPTIMIZERS,
    WEIGHT_NORMS,
    NormEntry,
    apply_weight_norm,
    create_norm,
    create_optimizer,
    get_entry,
    get_norm,
    list_norms,
    mode_dependent,
    parse_spec,
    register_norm,
    statistics_kind,
)

__version__ = "0.1.0"

__all__ = [
    "NORMS",
    "OPTIMIZERS",
    "WEIGHT_NORMS",
    "apply_weight_norm",
    "create_optimizer",
    "mode_dependent",
    "statistics_kind",
    "NormEntry",
    "__version__",
    "create_norm",
    "functional",
    "get_entry",
    "get_norm",
    "list_norms",
    "nn",
    "optim",
    "parse_spec",
    "register_norm",
]
