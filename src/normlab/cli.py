"""The ``normlab`` command line: list, info, check, tour; claims, reproduce, runs, report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .registry import get_entry, list_norms


def _cmd_list(args: argparse.Namespace) -> int:
    width = max(len(n) for n in list_norms())
    for name in list_norms():
        e = get_entry(name)
        aliases = ", ".join(e.aliases) or "-"
        print(f"{name:<{width}}  {e.cls.__name__:<18} aliases: {aliases:<32} {e.summary}")
    return 0


def _oracle_name(e) -> str:
    if e.oracle is None:
        return "- (the module is its own generic composition)"
    name = getattr(e.oracle, "__qualname__", type(e.oracle).__name__)
    where = getattr(e.oracle, "__module__", "?")
    return f"a lambda in {where}" if name == "<lambda>" else f"{where}.{name}"


def _cmd_info(args: argparse.Namespace) -> int:
    try:
        e = get_entry(args.name)
    except ValueError as err:
        print(f"normlab info: {err}", file=sys.stderr)
        return 2
    defaults = ", ".join(f"{k}={v!r}" for k, v in e.signature_defaults().items() if k != e.features_arg)
    spec = f"{e.aliases[0] if e.aliases else e.name}" + (f":<{e.primary}>" if e.primary else "")
    features = f"num_features -> {e.features_arg}" if e.features_arg else "num_features unused"
    kinds = {
        "batch": "batch statistics in training, running statistics in eval",
        "sample": "per-sample statistics (train = eval)",
        "none": "no statistics",
    }
    variants = ", ".join(f"{r}D -> {v}" for r, v in sorted(e.rank_variants.items())) or "-"
    example = ", ".join(f"{k}={v!r}" for k, v in e.example.items())
    shapes = ", ".join(f"{n} {tuple(s)}" for n, s in zip(e.inputs, e.example_shapes, strict=True))
    create_example = f"create_norm({e.name!r}, {e.example_features()}{', ' + example if example else ''})"
    loads = f"{e.checkpoint_class} (its state_dict loads strictly, both ways)" if e.checkpoint_class else "-"
    print(
        f"{e.name}  (normlab.nn.{e.cls.__name__})\n"
        f"  {e.summary}\n"
        f"  formula:    {e.formula}\n"
        f"  reduces:    {e.reduces}\n"
        f"  statistics: {e.statistics} ({kinds[e.statistics]})\n"
        f"  ranks:      {', '.join(f'{r}D' for r in e.ranks)}  (other ranks: {variants})\n"
        f"  inputs:     forward({', '.join(e.inputs)})\n"
        f"  defaults:   {defaults}\n"
        f"  create:     normlab.create_norm({spec!r}, num_features)   ({features})\n"
        f"  example:    {create_example} on {shapes}\n"
        f"  aliases:    {', '.join(e.aliases) or '-'}\n"
        f"  torch twin: {e.torch_twin or '-'}\n"
        f"  loads from: {loads}\n"
        f"  oracle:     {_oracle_name(e)}\n"
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


DEFAULT_OUT = "normlab-out"


def _cmd_claims(args: argparse.Namespace) -> int:
    from .claims import CLAIMS, PENDING

    rows = [(c.id, c.title, c.source, "implemented") for c in CLAIMS.values()]
    rows += [(p.id, p.statement, p.source, f"pending (needs {p.needs})") for p in PENDING.values()]
    widths = [min(max(len(r[i]) for r in rows), cap) for i, cap in ((0, 30), (1, 60), (2, 40))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[3])
    print(f"\n{len(CLAIMS)} implemented, {len(PENDING)} pending; run one with `normlab reproduce ID --quick`")
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from .claims import CLAIMS, PENDING
    from .claims.runner import Interrupted, parse_seeds, parse_shard, reproduce, select_shard
    from .report import ReportError, format_text_table, write_report
    from .runs import IndexError_

    def usage(msg: str) -> int:
        print(f"normlab reproduce: {msg}", file=sys.stderr)
        return 2

    if args.all == bool(args.ids):
        return usage("give claim ids or --all (not both); see `normlab claims`")
    ids = list(CLAIMS) if args.all else list(dict.fromkeys(args.ids))
    pending = [i for i in ids if i in PENDING]
    unknown = [i for i in ids if i not in CLAIMS and i not in PENDING]
    if unknown:
        s = "s" if len(unknown) > 1 else ""
        return usage(f"unknown claim id{s} {', '.join(unknown)}; known claims: {', '.join(CLAIMS) or '(none)'}")
    if pending:
        return usage("; ".join(f"claim {i!r} is pending: it needs {PENDING[i].needs}" for i in pending))
    try:
        if args.seeds is not None:
            parse_seeds(args.seeds, 1)
        shard = parse_shard(args.shard)
    except ValueError as err:
        return usage(str(err))
    if args.jobs < 1:
        return usage(f"--jobs must be >= 1, got {args.jobs}")
    if args.threads is not None and args.threads < 1:
        return usage(f"--threads must be >= 1, got {args.threads}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        return usage(f"--out {args.out!r} is a file; give a directory (it is created if missing)")
    ids = select_shard(ids, shard)
    if not ids:
        return usage(f"shard {args.shard} of {len(CLAIMS) if args.all else len(args.ids)} claims selects none")
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    try:
        results = reproduce(
            ids, out, quick=args.quick, seeds=args.seeds, jobs=args.jobs, command=["normlab", *args.argv]
        )
        html_path, md_path = write_report(out)
    except Interrupted as err:
        where = ", ".join(p.name for p in err.runs) or "none started"
        print(f"\nnormlab reproduce: interrupted; unfinished runs recorded as interrupted: {where}", file=sys.stderr)
        return 130
    except (OSError, ReportError, IndexError_) as err:
        return usage(str(err))
    print("\n" + format_text_table(results))
    print(f"\nreport: {html_path}\nsummary: {md_path}")
    return 0  # a verdict, even `fails`, is a result, not an error


def _cmd_runs(args: argparse.Namespace) -> int:
    from .runs import IndexError_, RunIndex

    if not Path(args.out).is_dir():
        print(f"normlab runs: output directory {args.out!r} does not exist", file=sys.stderr)
        return 2
    index = RunIndex(args.out)
    if args.rebuild_index:
        n, moved = index.rebuild()
        kept = f"; the old index is kept as {moved}" if moved else ""
        print(f"rebuilt {index.path} from {n} run director{'y' if n == 1 else 'ies'}{kept}")
        return 0
    try:
        return _show_runs(index, args)
    except IndexError_ as err:
        print(f"normlab runs: {err}", file=sys.stderr)
        return 2


def _flat(d, prefix: str = "") -> dict:
    out = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def _show_runs(index, args: argparse.Namespace) -> int:
    import time

    from .runs import read_json

    if args.compare:
        try:
            a, b = (index.get(r) for r in args.compare)
        except KeyError as err:
            print(f"normlab runs: {err.args[0]}; list them with `normlab runs --out {args.out}`", file=sys.stderr)
            return 2
        rows = [("", a["run_id"], b["run_id"], "b - a", "b / a")]
        rows += [(k, str(a[k]), str(b[k]), "", "") for k in ("claim", "mode", "state", "status")]
        rows.append(("seeds", str(a["seeds"]), str(b["seeds"]), "", ""))
        rows.append(("seconds", _num(a["seconds"]), _num(b["seconds"]), "", ""))
        configs = []
        for r in (a, b):
            try:
                configs.append(_flat(read_json(Path(r["path"]) / "config.json").get("params")))
            except (OSError, ValueError):
                configs.append({})
        changed = [k for k in dict.fromkeys([*configs[0], *configs[1]]) if configs[0].get(k) != configs[1].get(k)]
        rows += [(f"param {k}", _num(configs[0].get(k)), _num(configs[1].get(k)), "", "") for k in changed]
        if not changed:
            rows.append(("params", "(identical)", "(identical)", "", ""))
        for k in dict.fromkeys([*a["numbers"], *b["numbers"]]):
            va, vb = a["numbers"].get(k), b["numbers"].get(k)
            diff = ratio = ""
            if isinstance(va, (int, float)) and isinstance(vb, (int, float)):
                diff = _num(vb - va)
                ratio = _num(vb / va) if va else ""
            rows.append((k, _num(va), _num(vb), diff, ratio))
        print(_table(rows))
        return 0
    problems: list[str] = []
    runs = index.list(args.claim, problems=problems)
    for p in problems:
        print(f"normlab runs: warning: {p}", file=sys.stderr)
    if not runs:
        print(f"no runs{f' of {args.claim}' if args.claim else ''} indexed in {args.out}")
        return 0
    rows = [("run", "claim", "mode", "seeds", "state", "verdict", "seconds", "started")]
    for r in runs:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["started"]))
        seeds = r["seeds"]
        rows.append(
            (
                r["run_id"],
                r["claim"],
                r["mode"],
                f"{seeds[0]}-{seeds[-1]}" if len(seeds) > 1 else str(seeds[0]) if seeds else "-",
                r["state"],
                r["status"] or "-",
                _num(r["seconds"]),
                started,
            )
        )
    print(_table(rows))
    return 0


def _num(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import ReportError, load_results, write_report

    try:
        html_path, md_path = write_report(args.dirs, args.out)
        results, problems = load_results(args.dirs)
    except ReportError as err:
        print(f"normlab report: {err}", file=sys.stderr)
        return 2
    for p in problems:
        print(f"normlab report: warning: {p}", file=sys.stderr)
    print(f"report: {html_path} ({len(results)} claim{'s' if len(results) != 1 else ''})\nsummary: {md_path}")
    return 0


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
    sub.add_parser("tour", help="list every norm and run the self-check").set_defaults(func=_cmd_tour)
    sub.add_parser("claims", help="every claim with its status (implemented / pending)").set_defaults(func=_cmd_claims)
    p = sub.add_parser("reproduce", help="run claims, write their evidence and the report (`make demo`)")
    p.add_argument("ids", nargs="*", metavar="ID", help="claim ids (see `normlab claims`)")
    p.add_argument("--all", action="store_true", help="every implemented claim")
    p.add_argument("--quick", action="store_true", help="seconds per claim: a pipeline check, not the verdict")
    p.add_argument(
        "--seeds",
        default=None,
        help="a count (5: seeds 0-4), an inclusive range (5-9) or a list (0,3,7); default: the claim's "
        "(5 or more in full mode, 1 with --quick); fewer than the claim's minimum gives inconclusive",
    )
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output root (default: ./{DEFAULT_OUT})")
    p.add_argument(
        "--jobs", type=int, default=1, help="parallel worker processes, one thread each (default 1: in this process)"
    )
    p.add_argument(
        "--shard", default=None, metavar="I/N", help="run only every N-th claim from the I-th (a job array's part)"
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads of this process (cells always use 1)"
    )
    p.set_defaults(func=_cmd_reproduce)
    p = sub.add_parser("runs", help="list the indexed runs, or compare two")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output root (default: ./{DEFAULT_OUT})")
    p.add_argument("--claim", default=None, help="only runs of this claim")
    p.add_argument(
        "--compare", nargs=2, metavar="RUN_ID", help="two runs (ids or unique prefixes): params that differ, numbers"
    )
    p.add_argument("--rebuild-index", action="store_true", help="re-create index.sqlite from the run directories")
    p.set_defaults(func=_cmd_runs)
    p = sub.add_parser("report", help="write report.html and summary.md from the latest runs under DIR...")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="output roots written by `normlab reproduce` (merged)")
    p.add_argument("--out", default=None, help="where to write the report (default: the first DIR)")
    p.set_defaults(func=_cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # the exact command, for the run's record
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"\nnormlab {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
