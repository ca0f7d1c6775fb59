"""Short CUDA check (not part of CI), for a machine with a GPU.

    python benchmarks/gpu_check.py [--steps 3] [--only plugins,nccl,bf16,channels_last]
    python benchmarks/gpu_check.py --device cpu --only nccl     # the process-group checks on gloo

* ``plugins``: a few AMP steps on ``cuda`` with every installed plugin that trains: the loss is
  finite and checkpoints round-trip; one line per plugin with the step time.
* ``nccl``: an NCCL process group with one process (world size 1), so the multi-process code
  runs for real: DDP around the training forward with torch's SyncBatchNorm, sharded evaluation
  through NCCL all-gathers, ``dist_bn``; then FSDP2 with a sharded checkpoint that resumes and a
  plain export. Each must give the same test metrics as the plain single-process run.
* ``bf16``: ``train.amp=true`` picks bfloat16 autocast where the GPU supports it; the model's
  logits are bfloat16 inside the step and the loss is finite.
* ``channels_last``: ``data.channels_last=true`` puts the convolution weights and the batches
  in channels_last; the first-step loss matches the contiguous run.

Without CUDA (and without ``--device cpu``) it prints that there is nothing to check and exits 0.
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch

from mixhub.testing import tiny_config as _tiny


def tiny_config(model: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """``mixhub.testing.tiny_config``, with ``model`` replacing the smallcnn entirely."""
    cfg = _tiny(**extra)
    if model is not None:
        cfg["model"] = model
    return cfg


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check_plugins(steps: int, device: str) -> None:
    from mixhub.doctor import smoke_config
    from mixhub.plugins import discover, load_plugin
    from mixhub.trainer import Trainer, train

    cases = [("core", {"plugins": []})]
    for name, info in sorted(discover().items()):
        cfg = smoke_config(load_plugin(info).spec)
        if cfg is not None:
            cases.append((name, cfg))
    failures = []
    for name, cfg in cases:
        base = smoke_config(load_plugin(discover()["mixup"]).spec) if name == "core" else cfg
        base = dict(base, plugins=cfg["plugins"])
        base.setdefault("train", {}).update({"device": device, "amp": True, "max_steps_per_epoch": steps})
        try:
            with tempfile.TemporaryDirectory() as d:
                t0 = time.time()
                r = train(base, out=d)
                if device == "cuda":
                    torch.cuda.synchronize()
                dt = (time.time() - t0) / max(1, r.summary.get("steps", 1))
                Trainer.from_checkpoint(f"{d}/checkpoints/last.pt")
            print(f"ok    plugin {name:12s} {dt * 1000:8.1f} ms/step (incl. eval)")
        except Exception:
            failures.append(name)
            print(f"FAIL  plugin {name}\n{traceback.format_exc()}")
    if failures:
        raise AssertionError(f"plugins failed: {failures}")


def _close(a: dict[str, float], b: dict[str, float], keys: tuple[str, ...], tol: float) -> None:
    for k in keys:
        if abs(a[k] - b[k]) > tol * max(1.0, abs(b[k])):
            raise AssertionError(f"{k}: {a[k]} against {b[k]}")


def check_nccl(steps: int, device: str) -> None:
    """World size 1 through a real process group (NCCL on CUDA, gloo with --device cpu)."""
    import torch.distributed as dist

    from mixhub.checkpoint import load_checkpoint
    from mixhub.trainer import Trainer

    base = tiny_config(train={"device": device, "amp": False, "max_steps_per_epoch": steps, "epochs": 2, "sched": "none"})
    with tempfile.TemporaryDirectory() as d:
        plain = Trainer(base, write=True, out=f"{d}/plain").fit()  # before the process group exists
        backend = "nccl" if device == "cuda" else "gloo"
        dev = torch.device("cuda", 0) if device == "cuda" else None
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", world_size=1, rank=0, device_id=dev)
        try:
            from torch.nn.parallel import DistributedDataParallel

            ddp = Trainer({**base, "train": {**base["train"], "sync_bn": device == "cuda"}}, write=True, out=f"{d}/ddp")
            assert ddp.dist.enabled and ddp.dist.backend == backend, ddp.dist
            assert isinstance(ddp.train_module, DistributedDataParallel), type(ddp.train_module)
            if device == "cuda":
                assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in ddp.model.modules()), "train.sync_bn did not convert"
            got = ddp.fit()
            _close(got["test"], plain["test"], ("acc", "nll"), 1e-3)
            print(f"ok    {backend} world size 1: DDP{' + SyncBatchNorm' if device == 'cuda' else ''}, sharded evaluation: test acc {got['test']['acc']:.4f} = {plain['test']['acc']:.4f}")
            fs_cfg = {**base, "train": {**base["train"], "strategy": "fsdp", "epochs": 1}}
            fs = Trainer(fs_cfg, write=True, out=f"{d}/fsdp")
            assert fs.sharded
            fs.fit()
            last = load_checkpoint(f"{d}/fsdp/checkpoints/last.pt")
            assert last["sharded"] == "last.dcp", sorted(last)
            resumed = Trainer({**fs_cfg, "train": {**fs_cfg["train"], "epochs": 2}}, write=True, out=f"{d}/fsdp")
            resumed.resume()
            summary = resumed.fit()
            _close(summary["test"], plain["test"], ("acc", "nll"), 1e-3)
            export = load_checkpoint(f"{d}/fsdp/checkpoints/export.pt")
            check = Trainer({**base, "train": {**base["train"], "device": device}}, write=False)
            check.model.load_state_dict(export["state_dict"])
            print(f"ok    {backend} world size 1: FSDP2 sharded checkpoint resumed (test acc {summary['test']['acc']:.4f}), export loads into a plain model")
        finally:
            dist.destroy_process_group()


def _logits_dtype(trainer: Any) -> torch.dtype:
    seen: list[torch.dtype] = []
    handle = trainer.model.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    try:
        trainer.train_step(next(iter(trainer.loader)))
    finally:
        handle.remove()
    return seen[0]


def check_bf16(steps: int, device: str) -> None:
    from mixhub.trainer import Trainer

    if device != "cuda":
        print("skip  bf16: autocast is used on CUDA only")
        return
    trainer = Trainer(tiny_config(model={"name": "resnet10t"}, train={"device": "cuda", "amp": True, "max_steps_per_epoch": steps}), write=False)
    want = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert trainer.amp_dtype == want, (trainer.amp_dtype, want)
    dtype = _logits_dtype(trainer)
    assert dtype == want, f"logits are {dtype} under autocast, expected {want}"
    summary = trainer.fit()
    assert torch.isfinite(torch.tensor(summary["test"]["nll"])), summary["test"]
    print(f"ok    autocast {want}: logits {dtype}, test nll {summary['test']['nll']:.4f}")


def check_channels_last(steps: int, device: str) -> None:
    from mixhub.trainer import Trainer

    def first_loss(channels_last: bool) -> tuple[float, Any]:
        cfg = tiny_config(model={"name": "resnet10t"}, data={"channels_last": channels_last}, train={"device": device, "amp": False, "max_steps_per_epoch": steps})
        trainer = Trainer(cfg, write=False)
        batch = next(iter(trainer.loader))
        out = trainer.train_step(batch)
        assert out is not None
        return out["loss"], trainer

    loss_cl, trainer = first_loss(True)
    convs = [m.weight for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs), "conv weights are not channels_last"
    batch = next(iter(trainer.loader))
    assert batch.inputs.is_contiguous(memory_format=torch.channels_last), "batches are not channels_last"
    loss_plain, _ = first_loss(False)
    assert abs(loss_cl - loss_plain) <= 1e-3 * max(1.0, abs(loss_plain)), (loss_cl, loss_plain)
    print(f"ok    channels_last: weights and batches channels_last, first-step loss {loss_cl:.5f} = {loss_plain:.5f}")


CHECKS: dict[str, Callable[[int, str], None]] = {"plugins": check_plugins, "nccl": check_nccl, "bf16": check_bf16, "channels_last": check_channels_last}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--only", default=",".join(CHECKS), help=f"comma-separated subset of {', '.join(CHECKS)}")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: run the checks that do not need CUDA (gloo instead of NCCL)")
    args = p.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(CHECKS))
    if unknown:
        p.error(f"--only: unknown check(s) {unknown} (known: {', '.join(CHECKS)})")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 0
    if "WORLD_SIZE" in os.environ:
        p.error("run gpu_check.py directly, not under torchrun (the nccl check starts its own process group)")
    if args.device == "cuda":
        print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    failures = 0
    for name in names:
        try:
            CHECKS[name](args.steps, args.device)
        except Exception:
            failures += 1
            print(f"FAIL  {name}\n{traceback.format_exc()}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
