"""Run claims: seeds, a directory per claim, the verdict, the figure, the index."""

from __future__ import annotations

import time
import traceback
import uuid
from pathlib import Path

from ..runs import RunIndex, environment, write_json
from .base import Claim, Context, Verdict


def run_claim(claim: Claim, out_root: str | Path, quick: bool = False, seeds: int | None = None, log=print) -> dict:
    """Run one claim, write ``out_root/<id>/`` and index it; return its result record.

    An experiment that raises gives an ``inconclusive`` verdict carrying the
    error (and the traceback in the result file), so one broken claim does not
    hide the others.
    """
    n_seeds = seeds if seeds is not None else (claim.quick_seeds if quick else claim.default_seeds)
    if n_seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {n_seeds}")
    seed_list = list(range(n_seeds))
    out_dir = Path(out_root) / claim.id
    out_dir.mkdir(parents=True, exist_ok=True)
    mode = "quick" if quick else "full"
    config = {**claim.describe(), "mode": mode, "seeds": seed_list}
    write_json(out_dir / "config.json", config)
    env = environment(seed_list)
    write_json(out_dir / "env.json", env)
    started = time.time()
    t0 = time.perf_counter()
    error = None
    evidence: dict = {}
    try:
        evidence = claim.run(Context(quick=quick, seeds=seed_list, out_dir=out_dir, log=log))
        verdict = claim.verdict(evidence)
    except Exception as err:  # the report shows the failure; the other claims still run
        error = "".join(traceback.format_exception(err))
        verdict = Verdict("inconclusive", f"the experiment raised {type(err).__name__}: {err}")
    seconds = time.perf_counter() - t0
    figure = None
    if error is None:
        try:
            figure = _save_figure(claim, evidence, out_dir / "figure.png")
        except Exception as err:
            error = "figure: " + "".join(traceback.format_exception(err))
    result = {
        **config,
        "verdict": verdict.to_dict(),
        "evidence": evidence,
        "seconds": seconds,
        "started": started,
        "figure": figure,
        "error": error,
        "env": env,
    }
    write_json(out_dir / "result.json", result)
    # Second-resolution time plus a random suffix: two runs in the same second stay distinct.
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    run_id = f"{claim.id}-{mode}-{stamp}-{uuid.uuid4().hex[:6]}"
    RunIndex(out_root).add(
        run_id, claim.id, mode, seed_list, started, seconds, verdict.status, verdict.numbers, out_dir
    )
    return result


def _save_figure(claim: Claim, evidence: dict, path: Path) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6), constrained_layout=True)
    claim.plot(evidence, fig)
    fig.suptitle(f"{claim.id}: {claim.title}", fontsize=10)
    fig.savefig(path, dpi=100)
    return path.name


def reproduce(
    ids: list[str], out_root: str | Path, quick: bool = False, seeds: int | None = None, log=print
) -> list[dict]:
    """Run the claims ``ids`` in order; returns their result records."""
    from . import get_claim

    claims = [get_claim(i) for i in ids]  # unknown ids fail before anything runs
    results = []
    for claim in claims:
        log(f"[{claim.id}] {claim.title} ({'quick' if quick else 'full'})")
        result = run_claim(claim, out_root, quick, seeds, log)
        v = result["verdict"]
        log(f"[{claim.id}] {v['status'].upper()} in {result['seconds']:.1f}s: {v['reason']}")
        results.append(result)
    return results
