"""normlab: normalization in deep networks, on PyTorch.

- :mod:`normlab.nn`: drop-in normalization modules (torch.nn's contract).
- :mod:`normlab.functional`: the partition -> operation -> recovery framework
  and the functional form of every norm.
- :func:`create_norm`, :func:`get_norm`, :func:`list_norms`: the registry.
"""

from . import functional, nn
from .registry import NormEntry, create_norm, get_entry, get_norm, list_norms, parse_spec, register_norm

__version__ = "0.1.0"

__all__ = [
    "NormEntry",
    "__version__",
    "create_norm",
    "functional",
    "get_entry",
    "get_norm",
    "list_norms",
    "nn",
    "parse_spec",
    "register_norm",
]
