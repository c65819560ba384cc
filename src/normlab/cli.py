"""The ``normlab`` command line: list, info, check, tour."""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .registry import get_entry, list_norms


def _cmd_list(args: argparse.Namespace) -> int:
    width = max(len(n) for n in list_norms())
    for name in list_norms():
        e = get_entry(name)
        aliases = ", ".join(e.aliases) or "-"
        print(f"{name:<{width}}  {e.cls.__name__:<18} aliases: {aliases:<32} {e.summary}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    try:
        e = get_entry(args.name)
    except ValueError as err:
        print(f"normlab info: {err}", file=sys.stderr)
        return 2
    defaults = ", ".join(f"{k}={v!r}" for k, v in e.signature_defaults().items() if k != e.features_arg)
    spec = f"{e.aliases[0] if e.aliases else e.name}" + (f":<{e.primary}>" if e.primary else "")
    features = f"num_features -> {e.features_arg}" if e.features_arg else "num_features unused"
    print(
        f"{e.name}  (normlab.nn.{e.cls.__name__})\n"
        f"  {e.summary}\n"
        f"  formula:    {e.formula}\n"
        f"  reduces:    {e.reduces}\n"
        f"  defaults:   {defaults}\n"
        f"  create:     normlab.create_norm({spec!r}, num_features)   ({features})\n"
        f"  aliases:    {', '.join(e.aliases) or '-'}\n"
        f"  torch twin: {e.torch_twin or '-'}\n"
        f"  paper:      {e.paper}"
    )
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from .check import check_all, check_norm, format_table

    rows = [check_norm(n, args.seed) for n in args.names] if args.names else check_all(args.seed)
    print(format_table(rows))
    bad = [r.name for r in rows if not r.ok]
    print(f"\n{len(rows) - len(bad)} of {len(rows)} norms match their references" + (f"; FAILED: {bad}" if bad else ""))
    return 1 if bad else 0


def _cmd_tour(args: argparse.Namespace) -> int:
    import torch

    print(f"normlab {__version__} (torch {torch.__version__}, {torch.get_num_threads()} threads)\n")
    print(f"Registered norms ({len(list_norms())}):")
    _cmd_list(args)
    print("\nSelf-check: every norm against its reference (torch.nn twin or formula) and the generic")
    print("partition -> operation -> recovery composition, float64 and float32, outputs and input gradients:\n")
    args.names, args.seed = [], 0
    return _cmd_check(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="normlab", description="Normalization in deep networks, on PyTorch.")
    parser.add_argument("--version", action="version", version=f"normlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every registered norm, one line each").set_defaults(func=_cmd_list)
    p = sub.add_parser("info", help="formula, reduced dims, defaults and paper of one norm")
    p.add_argument("name", help="a registered name or alias (see `normlab list`)")
    p.set_defaults(func=_cmd_info)
    p = sub.add_parser("check", help="run norms against their references, print max errors")
    p.add_argument("names", nargs="*", help="norms to check (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_check)
    sub.add_parser("tour", help="list every norm and run the self-check (`make demo`)").set_defaults(func=_cmd_tour)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
