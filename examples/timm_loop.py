"""A plain timm training loop (no mixhub trainer) using the methods' functional APIs.

Three small jobs, each a few steps on bundled data, to show how the pure functions drop into
your own loop:

1. classification on digits with a timm ResNet, once with the Decoupled Mixup loss on a mixup
   batch and once with the RankMixup loss on an extra mixed copy; both with AdamP through timm's
   optimizer factory, and UnMix-TNS norm layers for a test-time pass;
2. regression on the generated tanh set with an MLP: C-Mixup partners from the whole training set.

    python examples/timm_loop.py [--steps 20]
"""

from __future__ import annotations

import argparse

import timm
import torch
import torch.nn.functional as F
from mixhub_adamp import register_timm
from mixhub_cmixup import cmixup_batch, sample_partners
from mixhub_cmixup import sample_lam as cmixup_lam
from mixhub_decoupled import decoupled_mixup_loss
from mixhub_mixup import mixup_batch
from mixhub_rankmixup import make_mixed_views, rankmixup_loss
from mixhub_unmixtns import replace_batchnorm, restore_batchnorm

from mixhub.config import DataConfig
from mixhub.data import build_data


def decoupled_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Decoupled Mixup on a mixup batch: the plan keeps y_a, y_b and lam for the loss."""
    x_mix, plan = mixup_batch(x, y, alpha=1.0, generator=g)
    return decoupled_mixup_loss(model(x_mix), plan.y_a, plan.y_b, float(plan.lam[0]), eta=0.1)


def rankmixup_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """RankMixup: CE on the raw batch + the ranking term on a mixed copy (separate forward)."""
    views, view_targets, _, _ = make_mixed_views(x, y, 10, num_mixup=1, alpha=1.0, generator=g)
    return rankmixup_loss(model(x), y, model(views), view_targets, variant="mrl", weight=0.1)


STEPS = {"decoupled": decoupled_step, "rankmixup": rankmixup_step}


def classification(steps: int, method: str = "decoupled", seed: int = 0) -> dict[str, float]:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    data = build_data(DataConfig(name="digits", image_size=16), seed)
    loader = torch.utils.data.DataLoader(data.train, batch_size=32, shuffle=True, drop_last=True, generator=g)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=10)
    register_timm()  # AdamP / SGDP as `mixhubadamp` / `mixhubsgdp` in timm's factory
    opt = timm.optim.create_optimizer_v2(model, "mixhubadamp", lr=1e-3, weight_decay=1e-4)
    model.train()
    losses = []
    it = iter(loader)
    for _ in range(steps):
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, y = next(it)
        loss = STEPS[method](model, x, y, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    # test-time: swap BatchNorm for UnMix-TNS layers, predict a stream batch, restore
    model.eval()
    x_test = torch.stack([data.test[i][0] for i in range(64)])
    y_test = torch.stack([data.test[i][1] for i in range(64)])
    replace_batchnorm(model, num_components=16, generator=torch.Generator().manual_seed(seed))
    try:
        with torch.no_grad():
            acc_tta = float((model(x_test).argmax(1) == y_test).float().mean())
    finally:
        restore_batchnorm(model)
    with torch.no_grad():
        acc = float((model(x_test).argmax(1) == y_test).float().mean())
    return {"first_loss": losses[0], "last_loss": losses[-1], "acc": acc, "acc_unmixtns": acc_tta}


def regression(steps: int, seed: int = 0) -> dict[str, float]:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    data = build_data(DataConfig(name="synthetic-regression", options={"kind": "tanh"}), seed)
    x_all = torch.stack([data.train[i][0] for i in range(len(data.train))])
    y_all = data.train_targets
    model = torch.nn.Sequential(torch.nn.Linear(5, 64), torch.nn.LeakyReLU(0.1), torch.nn.Linear(64, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        idx = torch.randint(len(x_all), (16,), generator=g)
        x, y = x_all[idx], y_all[idx]
        partners = sample_partners(y, y_all, bandwidth=0.2, generator=g)  # whole training set as the bank
        lam = cmixup_lam(2.0, 16, generator=g)
        x_mix, y_mix = cmixup_batch(x, y, x_all[partners], y_all[partners], lam)
        loss = F.mse_loss(model(x_mix).squeeze(1), y_mix)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return {"first_loss": losses[0], "last_loss": sum(losses[-5:]) / 5}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()
    for method in STEPS:
        print(f"classification ({method}, AdamP, UnMix-TNS at test time):", classification(args.steps, method))
    print("regression:", regression(args.steps))


if __name__ == "__main__":
    main()
