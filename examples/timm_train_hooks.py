"""timm's train.py shape, with composed mixhub plugins through ``MixhubTask``.

This script keeps the structure of timm's ``train.py`` (``main`` -> ``train_one_epoch`` ->
``validate``, ``CheckpointSaver(task=task)``, ``resume_task_checkpoint``, gradient accumulation
under ``task.no_sync()``, the task's EMA) on bundled digits, so it runs anywhere in seconds. The
only mixhub lines are the three ``train.py`` needs:

    from mixhub.timm_task import MixhubTask
    task = MixhubTask(model, MIXHUB_CONFIG, num_classes=10, device=device, criterion=train_loss_fn)  # was ClassificationTask(...)
    task.after_step(num_updates, num_updates_total)                                                  # after task.update_ema(...)

The model EMA's decay suits the run's length: by default ``1 - 4 / num_updates_total`` (an
average over about the last quarter of the updates) with timm's decay warm-up. A fixed decay
made for long runs (0.9 here, 0.9998 by default in ``train.py``) averages this 16-update run
back to its first updates and, with them, to BatchNorm statistics from the untrained network:
its EMA scored far below the model although it was updated and evaluated exactly as timm does.

    python examples/timm_train_hooks.py [--epochs 2] [--accum-steps 2] [--output runs/timm-hooks] [--resume PATH]
"""

from __future__ import annotations

import argparse
import os
from contextlib import nullcontext
from typing import Any

import timm
import torch
from timm.loss import LabelSmoothingCrossEntropy
from timm.optim import create_optimizer_v2
from timm.task import resume_task_checkpoint
from timm.utils import CheckpointSaver, dispatch_clip_grad
from torch.utils.data import DataLoader

from mixhub.config import DataConfig
from mixhub.data import build_data
from mixhub.timm_task import MixhubTask

#: mixup pairs and mixes, Decoupled Mixup adds its loss on top: two plugins composed.
MIXHUB_CONFIG: dict[str, Any] = {
    "seed": 0,
    "plugins": ["mixup", "decoupled"],
    "mixup": {"alpha": 1.0},
    "decoupled": {"eta": 0.1},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet10t")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps-per-epoch", type=int, default=8)
    p.add_argument("--accum-steps", type=int, default=2)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--clip-grad", type=float, default=1.0)
    p.add_argument("--smoothing", type=float, default=0.1, help="label smoothing (train.py's --smoothing)")
    p.add_argument("--model-ema-decay", type=float, default=None, help="default: 1 - 4 / (epochs * steps per epoch)")
    p.add_argument("--model-ema-warmup", action=argparse.BooleanOptionalAction, default=True, help="timm's EMA decay warm-up")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast (timm's --amp --amp-dtype bfloat16)")
    p.add_argument("--output", default="runs/timm-train-hooks")
    p.add_argument("--resume", default="")
    return p.parse_args(argv)


def ema_decay_for(num_updates_total: int) -> float:
    """An EMA averaging over about the last quarter of the run (``1 - 4 / T``, at most timm's 0.9998)."""
    return min(max(1.0 - 4.0 / max(num_updates_total, 1), 0.0), 0.9998)


def train_one_epoch(epoch: int, task: MixhubTask, loader: DataLoader, optimizer: torch.optim.Optimizer, args: argparse.Namespace,
                    num_updates: int, amp_autocast: Any, num_updates_total: int) -> tuple[dict[str, float], int]:
    """timm's ``train_one_epoch``: forward through the task, accumulation, clip, step, EMA, then ``after_step``."""
    task.train()
    sums: dict[str, float] = {}
    updates = 0
    it = iter(loader)
    for _ in range(args.steps_per_epoch):
        for micro in range(args.accum_steps):
            input, target = next(it)
            need_update = micro == args.accum_steps - 1
            with task.no_sync() if not need_update else nullcontext():
                with amp_autocast():
                    result = task(input, target)
                    loss = result["loss"] / args.accum_steps
                loss.backward()
        if args.clip_grad is not None:
            dispatch_clip_grad(task.get_clip_parameters(), value=args.clip_grad)
        optimizer.step()
        optimizer.zero_grad()
        num_updates += 1
        updates += 1
        task.update_ema(step=num_updates)
        task.after_step(num_updates, num_updates_total)  # <- the added line: the plugins' after-step work
        for k, v in result.items():  # the optional edit: log the aux losses too
            if k != "output":
                sums[k] = sums.get(k, 0.0) + float(v.detach())
    return {k: v / max(updates, 1) for k, v in sums.items()}, num_updates


@torch.no_grad()
def validate(model: torch.nn.Module, loader: DataLoader, amp_autocast: Any) -> dict[str, float]:
    """timm's ``validate``: ``model(input)`` in eval mode (here the task's eval model)."""
    model.eval()
    correct = total = 0
    for input, target in loader:
        with amp_autocast():
            output = model(input)
        correct += int((output.argmax(1) == target).sum())
        total += len(target)
    return {"top1": 100.0 * correct / max(total, 1)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.manual_seed(0)
    device = torch.device("cpu")
    data = build_data(DataConfig(name="digits", image_size=16), 0)
    loader_train = DataLoader(data.train, batch_size=args.batch_size, shuffle=True, drop_last=True,
                              generator=torch.Generator().manual_seed(0))
    loader_eval = DataLoader(data.val, batch_size=128)
    model = timm.create_model(args.model, pretrained=False, num_classes=10)
    train_loss_fn = LabelSmoothingCrossEntropy(smoothing=args.smoothing)  # train.py's criterion
    # <- was ClassificationTask(model, criterion=train_loss_fn, ...)
    task = MixhubTask(model, MIXHUB_CONFIG, num_classes=10, device=device, criterion=train_loss_fn)
    optimizer = create_optimizer_v2(task.get_trainable_module(), opt="sgd", lr=args.lr, weight_decay=1e-4, momentum=0.9)
    amp_autocast: Any = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if args.amp else nullcontext
    num_updates_total = args.epochs * args.steps_per_epoch
    ema_decay = args.model_ema_decay if args.model_ema_decay is not None else ema_decay_for(num_updates_total)
    task.setup_ema(decay=ema_decay, use_warmup=args.model_ema_warmup)
    start_epoch, num_updates = 0, 0
    if args.resume:
        start_epoch = resume_task_checkpoint(task, args.resume, optimizer=optimizer) or 0
        num_updates = task.session.state.step
    os.makedirs(args.output, exist_ok=True)
    saver = CheckpointSaver(model=model, optimizer=optimizer, task=task, checkpoint_dir=args.output, recovery_dir=args.output, max_history=2)
    history = []
    for epoch in range(start_epoch, args.epochs):
        train_metrics, num_updates = train_one_epoch(epoch, task, loader_train, optimizer, args, num_updates, amp_autocast, num_updates_total)
        eval_metrics = validate(task.get_eval_model(), loader_eval, amp_autocast)
        ema_metrics = validate(task.get_eval_model(ema=True), loader_eval, amp_autocast)
        best, _ = saver.save_checkpoint(epoch, metric=eval_metrics["top1"])
        history.append({"epoch": epoch, **train_metrics, "val_top1": eval_metrics["top1"], "ema_top1": ema_metrics["top1"]})
        print(history[-1])
    return {"history": history, "num_updates": num_updates, "task": task, "output": args.output, "ema_decay": ema_decay}


if __name__ == "__main__":
    main()
