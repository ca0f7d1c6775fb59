"""ER: the loss against an independent computation, Mai's two-backward step, and a short run."""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from mixhub_replay import er_loss
from mixhub_replay import plugin as er_plugin

from mixhub import Batch, MixPlan, replay_forward, replay_loss


def _data() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(6, 4, generator=g),
        torch.randint(0, 5, (6,), generator=g),
        torch.randn(3, 4, generator=g),
        torch.randint(0, 5, (3,), generator=g),
    )


def test_er_loss_is_the_sum_of_two_cross_entropies() -> None:
    _, y, _, ym = _data()
    g = torch.Generator().manual_seed(1)
    z, zm = torch.randn(6, 5, generator=g), torch.randn(3, 5, generator=g)
    manual = (
        -torch.log_softmax(z, 1)[torch.arange(6), y].mean()
        - torch.log_softmax(zm, 1)[torch.arange(3), ym].mean()
    )
    assert torch.allclose(er_loss(z, y, zm, ym), manual)
    assert torch.allclose(er_loss(z, y), F.cross_entropy(z, y))
    assert torch.allclose(er_loss(z, y, zm[:0], ym[:0]), F.cross_entropy(z, y))


def test_one_step_equals_mai_two_backward_calls() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 5)
    xs, y, xm, ym = _data()
    mem = Batch(inputs=xm, targets=ym, index=torch.arange(3))
    batch = Batch(inputs=xs, targets=y, index=torch.arange(6), extras={"memory": mem})
    plan = MixPlan.identity(6).resolve(batch)
    out = er_plugin.mixhub_forward(model, batch, plan, None)  # type: ignore[arg-type]
    assert set(out) == {"logits", "memory_logits"}
    state: Any = type(
        "S", (), {"config": type("C", (), {"train": type("T", (), {"label_smoothing": 0.0})})}
    )()
    er_plugin.mixhub_compute_loss(out, batch, plan, state).backward()
    ours = model.weight.grad.clone()
    model.zero_grad()
    F.cross_entropy(model(xs), y).backward()  # agents/exp_replay.py: loss.backward()
    F.cross_entropy(model(xm), ym).backward()  # then loss_mem.backward(), one opt.step()
    assert torch.allclose(ours, model.weight.grad, atol=1e-6)
    assert torch.allclose(
        replay_loss(replay_forward(model, batch), batch, plan), er_loss(model(xs), y, model(xm), ym)
    )


def test_er_beats_fine_tune_on_split_digits() -> None:
    from mixhub.trainer import train

    base: dict[str, Any] = {
        "seed": 1,
        "data": {"name": "split-digits", "image_size": 8},
        "model": {"name": "smallcnn", "kwargs": {"widths": [4, 8, 8]}},
        "train": {"lr": 0.1, "sched": "none", "amp": False},
        "optimizer": {"name": "momentum", "momentum": 0.0},
        "continual": {"memory_size": 20},
    }
    ft = train({**copy.deepcopy(base), "plugins": []}, write=False).summary["test"]
    er = train({**copy.deepcopy(base), "plugins": ["replay"]}, write=False).summary
    assert er["test"]["avg_acc"] > ft["avg_acc"] + 0.1
    assert er["test"]["avg_forgetting"] < ft["avg_forgetting"]
    assert er["continual"]["buffer_class_counts"] and sum(er["continual"]["buffer_class_counts"]) == 20


def test_er_loss_with_one_memory_sample_and_its_errors() -> None:
    import re

    import pytest

    g = torch.Generator().manual_seed(1)
    z, y = torch.randn(4, 3, generator=g), torch.tensor([0, 1, 2, 0])
    zm, ym = torch.randn(1, 3, generator=g), torch.tensor([2])
    expected = F.cross_entropy(z, y) + F.cross_entropy(zm, ym)
    assert torch.allclose(er_loss(z, y, zm, ym), expected)
    assert torch.allclose(er_loss(z, y, torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)), F.cross_entropy(z, y))
    with pytest.raises(ValueError, match="^" + re.escape("er_loss: memory_logits given without memory_targets") + "$"):
        er_loss(z, y, zm, None)
