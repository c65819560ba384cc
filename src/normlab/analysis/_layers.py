"""Choosing the layers an analysis tool hooks (conditioning, probes, ICS).

``layers`` is given the same way to every tool that hooks layers:

- ``None``: the tool's default (a predicate over modules, e.g. every
  ``nn.Linear``/``nn.Conv*``);
- a module type or a tuple of types: every submodule that is an instance;
- an iterable of submodule names (as in ``model.named_modules()``),
  submodule objects and/or module types.

Layers are returned as ``(name, module)`` pairs in ``model.named_modules()``
order when chosen by type or default, in the given order otherwise. The
model itself (named ``""`` by torch) is reported as ``"(model)"``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import nn

ROOT_NAME = "(model)"

LINEAR_CONV = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def display_name(name: str) -> str:
    return name or ROOT_NAME


def is_linear_or_conv(m: nn.Module) -> bool:
    return isinstance(m, LINEAR_CONV)


def select_layers(
    model: nn.Module,
    layers,
    default: Callable[[nn.Module], bool],
    what: str = "default layers",
) -> list[tuple[str, nn.Module]]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected model to be a torch.nn.Module, got {type(model).__name__}")
    named = list(model.named_modules())
    if layers is None:
        chosen = [(n, m) for n, m in named if default(m)]
        if not chosen:
            raise ValueError(f"the model has none of the {what}; pass layers= (names, modules or types)")
    elif isinstance(layers, type) or (
        isinstance(layers, tuple) and layers and all(isinstance(t, type) for t in layers)
    ):
        chosen = [(n, m) for n, m in named if isinstance(m, layers)]
        if not chosen:
            raise ValueError(f"the model has no submodule of type {layers}")
    elif isinstance(layers, (str, nn.Module)) or not isinstance(layers, Iterable):
        raise TypeError(
            "layers must be None, a module type (or tuple of types), or an iterable of submodule names/modules; "
            f"got {type(layers).__name__} (wrap a single layer in a list)"
        )
    else:
        by_name = dict(named)
        by_id = {id(m): n for n, m in named}
        chosen = []
        for item in layers:
            if isinstance(item, str):
                key = "" if item == ROOT_NAME else item
                if key not in by_name:
                    names = [n for n, _ in named if n][:10]
                    raise ValueError(f"no submodule named {item!r} in the model; some names: {names}")
                chosen.append((key, by_name[key]))
            elif isinstance(item, type) and issubclass(item, nn.Module):
                of_type = [(n, m) for n, m in named if isinstance(m, item)]
                if not of_type:
                    raise ValueError(f"the model has no submodule of type {item.__name__}")
                chosen.extend(of_type)
            elif isinstance(item, nn.Module):
                if id(item) not in by_id:
                    raise ValueError(f"layer {type(item).__name__} is not a submodule of the model")
                chosen.append((by_id[id(item)], item))
            else:
                raise TypeError(f"layers entries must be submodule names, modules or types, got {type(item).__name__}")
        if not chosen:
            raise ValueError("layers is empty: pass at least one layer (or None for the default)")
    seen: set[int] = set()
    unique = []
    for n, m in chosen:
        if id(m) not in seen:
            seen.add(id(m))
            unique.append((display_name(n), m))
    return unique
