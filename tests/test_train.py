"""normlab.train: determinism, full-batch GD, step counting, divergence, evaluation, callbacks."""

from __future__ import annotations

import copy
import math
import time
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normlab.data import Dataset, digits
from normlab.models import MLP
from normlab.train import History, evaluate, seed_everything, train


@pytest.fixture(scope="module")
def digits_data():
    return digits()


def regression(n=64, dim=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    y = x @ torch.randn(dim, generator=g) + 0.1 * torch.randn(n, generator=g)
    return Dataset("toy", x, y, x[:8], y[:8])


def linear(dim=5):
    return nn.Sequential(nn.Linear(dim, 1), nn.Flatten(0))


class Recorder(nn.Module):
    """A linear model that remembers the rows it was trained on."""

    def __init__(self, dim):
        super().__init__()
        self.lin = nn.Linear(dim, 1)
        self.seen = []

    def forward(self, x):
        if self.training:
            self.seen.append(x[:, 0].clone())
        return self.lin(x).flatten()


def _run(data, seed, steps=30, **kw):
    seed_everything(seed)
    model = MLP(64, 10, width=32, norm="bn")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    hist = train(model, data, opt, steps=steps, batch_size=32, seed=seed, eval_every=10, **kw)
    return hist, model


def test_deterministic(digits_data):
    (h1, m1), (h2, m2) = _run(digits_data, 0), _run(digits_data, 0)
    assert h1.loss == h2.loss and h1.test_acc == h2.test_acc and h1.train_acc == h2.train_acc
    assert all(torch.equal(p, q) for p, q in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True))
    h3, _ = _run(digits_data, 1)
    assert h3.loss != h1.loss
    assert h1.steps == list(range(1, 31)) and h1.eval_steps == [10, 20, 30]
    assert len(h1.test_acc) == len(h1.train_acc) == len(h1.test_loss) == 3
    assert not h1.diverged and h1.seconds > 0


def test_seed_everything():
    gen = seed_everything(5)
    a = torch.randn(3)
    assert torch.equal(
        torch.randperm(10, generator=gen), torch.randperm(10, generator=torch.Generator().manual_seed(5))
    )
    seed_everything(5)
    assert torch.equal(torch.randn(3), a)


def test_full_batch_is_gradient_descent():
    data = regression()
    torch.manual_seed(0)
    model = linear()
    manual = copy.deepcopy(model)
    hist = train(
        model, data, torch.optim.SGD(model.parameters(), lr=0.05), steps=20, batch_size=None, loss_fn=F.mse_loss
    )
    opt = torch.optim.SGD(manual.parameters(), lr=0.05)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = F.mse_loss(manual(data.x_train), data.y_train)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert hist.loss == losses  # bit for bit
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), manual.parameters(), strict=True))
    assert hist.loss[-1] < hist.loss[0]


def test_full_batch_by_hand():
    """One GD step on a 1-parameter model, written out: w <- w - lr * d/dw mean((w x - y)^2)."""
    x = torch.tensor([[1.0], [2.0], [3.0]])
    y = torch.tensor([2.0, 4.0, 6.0])
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Flatten(0))
    with torch.no_grad():
        model[0].weight.fill_(0.5)
    data = Dataset("line", x, y, x, y)
    hist = train(model, data, torch.optim.SGD(model.parameters(), lr=0.1), steps=1, batch_size=None, loss_fn=F.mse_loss)
    w = 0.5
    grad = sum(2 * (w * xi - yi) * xi for xi, yi in ((1, 2), (2, 4), (3, 6))) / 3
    assert math.isclose(hist.loss[0], sum((w * xi - yi) ** 2 for xi, yi in ((1, 2), (2, 4), (3, 6))) / 3)
    assert math.isclose(model[0].weight.item(), w - 0.1 * grad, rel_tol=1e-6)


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({"steps": 7, "batch_size": 32}, 7),
        ({"epochs": 2, "batch_size": 32}, 6),  # 100 // 32 = 3 full batches an epoch
        ({"epochs": 1, "batch_size": 50}, 2),
        ({"epochs": 3, "batch_size": None}, 3),
        ({"epochs": 2, "batch_size": 500}, 2),  # larger than the data: full batch
    ],
)
def test_steps_and_epochs(kw, expected):
    data = regression(n=100)
    model = Recorder(5)
    hist = train(model, data, torch.optim.SGD(model.parameters(), lr=0.01), loss_fn=F.mse_loss, eval_every=1000, **kw)
    assert hist.steps == list(range(1, expected + 1)) and hist.eval_steps == [expected]
    bs = kw["batch_size"]
    assert all(len(rows) == (min(bs, 100) if bs else 100) for rows in model.seen)


def test_epoch_batches_do_not_repeat():
    data = regression(n=100)
    data.x_train[:, 0] = torch.arange(100.0)  # a row id
    model = Recorder(5)
    train(model, data, torch.optim.SGD(model.parameters(), lr=0.0), epochs=2, batch_size=25, loss_fn=F.mse_loss)
    first, second = torch.cat(model.seen[:4]), torch.cat(model.seen[4:])
    assert sorted(first.tolist()) == list(range(100)) and sorted(second.tolist()) == list(range(100))
    assert not torch.equal(first, second)  # reshuffled every epoch


def test_divergence_stops():
    data = regression()
    model = linear()
    hist = train(
        model, data, torch.optim.SGD(model.parameters(), lr=1e6), steps=500, batch_size=None, loss_fn=F.mse_loss
    )
    assert hist.diverged and len(hist.loss) < 500
    assert not math.isfinite(hist.loss[-1]) and all(math.isfinite(v) for v in hist.loss[:-1])
    assert hist.eval_steps[-1] == hist.steps[-1] and math.isnan(hist.test_acc[-1])
    model = linear()
    opt = torch.optim.SGD(model.parameters(), lr=1e6)
    hist = train(model, data, opt, steps=60, batch_size=None, loss_fn=F.mse_loss, stop_on_divergence=False)
    assert hist.diverged and len(hist.loss) == 60 and hist.eval_steps == [60]


def test_diverging_classifier(digits_data):
    seed_everything(0)
    model = MLP(64, 10, width=32)
    hist = train(model, digits_data, torch.optim.SGD(model.parameters(), lr=1e6), steps=300, batch_size=64)
    assert hist.diverged and len(hist.loss) < 300 and math.isnan(hist.final_test_acc)


def test_evaluate_restores_training_flag(digits_data):
    model = MLP(64, 10, width=16, norm="bn")
    x, y = digits_data.x_test, digits_data.y_test
    model.train()
    evaluate(model, x, y)
    assert model.training and all(m.training for m in model.modules())
    model.eval()
    evaluate(model, x, y)
    assert not any(m.training for m in model.modules())
    model.train()

    def broken(out, target, reduction):
        assert not model.training  # evaluation runs in eval mode
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        evaluate(model, x, y, loss_fn=broken)
    assert model.training


def test_evaluate_values():
    """A fixed linear classifier: argmax picks column 0 for x > 0, else column 1."""
    model = nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0], [-1.0]]))
    x = torch.tensor([[1.0], [-2.0], [3.0], [-4.0], [5.0]])
    y = torch.tensor([0, 1, 1, 1, 0])
    acc, loss = evaluate(model, x, y, batch_size=2)
    assert acc == 4 / 5
    assert math.isclose(loss, F.cross_entropy(model(x), y).item(), rel_tol=1e-6)


def test_callbacks_every_step(digits_data):
    calls = []
    hist, _ = _run(digits_data, 0, steps=12, callbacks=(lambda step, model, m: calls.append((step, m["loss"])),))
    assert calls == list(zip(hist.steps, hist.loss, strict=True))


def test_digits_mlp_learns(digits_data):
    start = time.perf_counter()
    seed_everything(0)
    model = MLP(64, 10, width=64, depth=1, norm="bn")
    hist = train(model, digits_data, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), steps=300)
    assert time.perf_counter() - start < 5
    assert hist.final_test_acc > 0.8 and hist.best_test_acc >= hist.final_test_acc
    assert hist.eval_steps == [100, 200, 300]
    assert hist.steps_to_reach(0.8) in (100, 200, 300) and hist.steps_to_reach(1.01) is None


def test_no_requires_grad_warning():
    data = regression()
    model = linear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(model, data, torch.optim.SGD(model.parameters(), lr=0.01), steps=3, loss_fn=F.mse_loss)


def test_progress_bar(capsys):
    data = regression()
    model = linear()
    hist = train(model, data, torch.optim.SGD(model.parameters(), lr=0.01), steps=5, loss_fn=F.mse_loss, progress=True)
    assert len(hist.loss) == 5


def test_bad_arguments():
    data = regression()
    model = linear()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(ValueError, match="exactly one"):
        train(model, data, opt, steps=3, epochs=1, loss_fn=F.mse_loss)
    with pytest.raises(ValueError, match="exactly one"):
        train(model, data, opt, loss_fn=F.mse_loss)


def test_history_helpers():
    h = History(eval_steps=[10, 20, 30], test_acc=[0.5, math.nan, 0.7])
    assert h.final_test_acc == 0.7 and h.best_test_acc == 0.7
    assert h.steps_to_reach(0.6) == 30 and h.steps_to_reach(0.5) == 10
    assert math.isnan(History().final_test_acc) and math.isnan(History().best_test_acc)
    d = h.to_dict()
    assert set(d) == {"steps", "loss", "eval_steps", "train_acc", "test_acc", "test_loss", "seconds", "diverged"}
