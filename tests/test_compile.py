"""Every distiller compiles once per run: per-epoch state enters the graph as tensor data, not Python values.

The trainer's fast path compiles the distiller (``torch.compile(dynamic=False)``, :class:`kdlib.fast.
CompiledOrEager`). A Python number read inside ``forward`` is specialised and guarded, so a value that changes
per epoch (CD's EDT weights) would recompile every epoch until dynamo's recompile limit, after which that
frame runs eagerly for the rest of the run. ``Distiller.set_epoch`` writes such state into buffers instead.

Here each method is compiled with a counting backend (the graphs run as traced, no code generation). It must
give one graph (a graph break would also mean a host sync per step on the GPU), is trained for four epochs of
a four-epoch schedule (CD's EDT warm-up ends after epoch 1 and its CD weight decays twice), and is compared
with an eager deep copy trained on the same batches.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from kdlib.distill import Distiller
from kdlib.methods import available_methods, build_distiller
from kdlib.models import create_model

EPOCHS = 4
TEACHER, STUDENT = "resnet14", "resnet8"


@functools.lru_cache(maxsize=2)
def _cached_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name)


def _distiller(method: str) -> Distiller:
    torch.manual_seed(1)
    teacher = copy.deepcopy(_cached_model(TEACHER)) if method != "ce" else None
    d = build_distiller(method, copy.deepcopy(_cached_model(STUDENT)), teacher)
    d.total_epochs = EPOCHS
    return d


def _batch(epoch: int, teacher: torch.nn.Module | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Four CIFAR-shaped images; the teacher is right on the first ``epoch % 3`` labels (1, 2, 0, 1), so CD's
    GKD sees a different number of correct samples from batch to batch, none included: one graph for all."""
    g = torch.Generator().manual_seed(epoch)
    x = torch.randn(4, 3, 32, 32, generator=g)
    y = torch.randint(0, 100, (4,), generator=g)
    if teacher is not None:
        with torch.no_grad():
            predicted = teacher(x).argmax(dim=1)
        right = epoch % 3
        y = torch.cat([predicted[:right], (predicted[right:] + 1) % 100])
    return x, y


def _step(module: torch.nn.Module, optimizer: torch.optim.Optimizer, x, y) -> dict[str, torch.Tensor]:
    _, losses = module(x, y)
    optimizer.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    optimizer.step()
    return {name: value.detach() for name, value in losses.items()}


@pytest.mark.parametrize("method", available_methods())
def test_one_compilation_for_every_epoch(method: str) -> None:
    torch._dynamo.reset()
    distiller = _distiller(method)
    eager = copy.deepcopy(distiller)
    counter = CompileCounter()
    compiled = torch.compile(distiller, backend=counter, dynamic=False)
    opt_compiled = torch.optim.SGD(distiller.trainable_parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    opt_eager = torch.optim.SGD(eager.trainable_parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    frames = None
    for epoch in range(1, EPOCHS + 1):
        distiller.set_epoch(epoch)
        eager.set_epoch(epoch)
        x, y = _batch(epoch, distiller.teacher)
        got = _step(compiled, opt_compiled, x, y)
        expected = _step(eager, opt_eager, x, y)
        assert got.keys() == expected.keys(), epoch
        for name in expected:  # the graph reads this epoch's weights, not those it was traced with
            torch.testing.assert_close(got[name], expected[name], msg=f"epoch {epoch}, term {name}")
        if frames is None:
            frames = counter.frame_count
            # one graph: no graph break (boolean indexing, .item(), int(tensor)), no host sync per step
            assert frames == 1, f"{method}: {frames} graphs"
        assert counter.frame_count == frames, f"recompiled at epoch {epoch}"


def test_cd_weights_change_within_the_schedule() -> None:
    """Control for the test above: the four epochs do exercise CD's EDT warm-up and decay."""
    d = _distiller("cd")
    weights = [d.edt_weights(e) for e in range(1, EPOCHS + 1)]
    assert [w["ce"] for w in weights] == [0.0, 1.0, 1.0, 1.0]
    assert [w["gkd"] for w in weights] == [0.0, 1.0, 1.0, 1.0]
    assert len({w["cd"] for w in weights}) == 3
