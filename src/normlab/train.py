"""A small, deterministic trainer for normlab's experiments.

``train(model, data, optimizer, ...)`` runs minibatch SGD-style training (or
full-batch gradient descent with ``batch_size=None``) with fixed seeds and
records metrics per step. Any torch optimizer works. Long runs show a
progress bar (tqdm) on a terminal.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import Dataset

StepCallback = Callable[[int, nn.Module, dict], None]


@dataclass
class History:
    """Metrics of a run: per-step training loss, periodic evaluations, wall time."""

    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    seconds: float = 0.0
    diverged: bool = False

    @property
    def final_test_acc(self) -> float:
        return self.test_acc[-1] if self.test_acc else math.nan

    @property
    def best_test_acc(self) -> float:
        finite = [a for a in self.test_acc if math.isfinite(a)]
        return max(finite) if finite else math.nan

    def steps_to_reach(self, acc: float) -> int | None:
        """First evaluation step whose test accuracy is >= ``acc`` (None if never)."""
        for s, a in zip(self.eval_steps, self.test_acc, strict=True):
            if a >= acc:
                return s
        return None

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's global RNG (initialization, dropout) and return a generator for data order."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@torch.no_grad()
def evaluate(
    model: nn.Module, x: Tensor, y: Tensor, loss_fn=F.cross_entropy, batch_size: int = 1000
) -> tuple[float, float]:
    """(accuracy, mean loss) of ``model`` in eval mode; restores the training flag."""
    was = model.training
    model.eval()
    correct, total_loss = 0, 0.0
    try:
        for i in range(0, len(x), batch_size):
            out = model(x[i : i + batch_size])
            total_loss += float(loss_fn(out, y[i : i + batch_size], reduction="sum"))
            if out.dim() == 2 and y.dtype == torch.int64:
                correct += int((out.argmax(1) == y[i : i + batch_size]).sum())
    finally:
        model.train(was)
    return correct / len(x), total_loss / len(x)


def train(
    model: nn.Module,
    data: Dataset,
    optimizer: torch.optim.Optimizer,
    *,
    steps: int | None = None,
    epochs: int | None = None,
    batch_size: int | None = 64,
    seed: int = 0,
    loss_fn=F.cross_entropy,
    eval_every: int = 100,
    callbacks: tuple[StepCallback, ...] = (),
    progress: bool | None = None,
    stop_on_divergence: bool = True,
) -> History:
    """Train ``model`` on ``data`` and return its :class:`History`.

    Give ``steps`` or ``epochs``. ``batch_size=None`` is full-batch gradient
    descent. Batches are drawn by a generator seeded with ``seed`` (the
    caller seeds the model's initialization, e.g. with :func:`seed_everything`).
    A non-finite loss stops the run (``history.diverged``) unless
    ``stop_on_divergence=False``. ``callbacks`` are called after every step
    as ``cb(step, model, {"loss": ...})``. Test accuracy is measured every
    ``eval_every`` steps and at the end.
    """
    n = len(data.x_train)
    bs = n if batch_size is None else batch_size
    per_epoch = max(1, n // bs)  # drop the last partial batch: equal batch sizes
    full_batch = bs >= n  # every step sees the whole training set, in its stored order
    if (steps is None) == (epochs is None):
        raise ValueError(f"give exactly one of steps and epochs, got steps={steps}, epochs={epochs}")
    total = steps if steps is not None else epochs * per_epoch
    gen = torch.Generator().manual_seed(seed)
    hist = History()
    show = progress if progress is not None else total >= 2000
    bar = None
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, leave=False, desc="train", mininterval=1.0)
    start = time.perf_counter()
    model.train()
    order = torch.randperm(n, generator=gen)
    pos = 0
    try:
        for step in range(1, total + 1):
            if full_batch:  # plain gradient descent: no shuffled copy of the data set
                xb, yb = data.x_train, data.y_train
            else:
                if pos + bs > n:
                    order, pos = torch.randperm(n, generator=gen), 0
                idx = order[pos : pos + bs]
                pos += bs
                xb, yb = data.x_train[idx], data.y_train[idx]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            optimizer.step()
            value = float(loss.detach())
            hist.steps.append(step)
            hist.loss.append(value)
            for cb in callbacks:
                cb(step, model, {"loss": value})
            if not math.isfinite(value):
                hist.diverged = True
                if stop_on_divergence:
                    break
            if step % eval_every == 0 or step == total:
                _record_eval(model, data, loss_fn, hist, step)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if hist.diverged and (not hist.eval_steps or hist.eval_steps[-1] != hist.steps[-1]):
        hist.eval_steps.append(hist.steps[-1])
        hist.train_acc.append(math.nan)
        hist.test_acc.append(math.nan)
        hist.test_loss.append(math.nan)
    hist.seconds = time.perf_counter() - start
    return hist


def _record_eval(model, data, loss_fn, hist: History, step: int) -> None:
    acc, loss = evaluate(model, data.x_test, data.y_test, loss_fn)
    train_acc, _ = evaluate(model, data.x_train, data.y_train, loss_fn)
    hist.eval_steps.append(step)
    hist.test_acc.append(acc)
    hist.test_loss.append(loss)
    hist.train_acc.append(train_acc)
