"""Every CUDA claim in one script (not part of CI; a few minutes on one GPU). Prints one table.

    python benchmarks/gpu_check.py [--steps 3] [--only steps,adamp,plugins,nccl,bf16,channels_last]
    python benchmarks/gpu_check.py --device cpu --model resnet18 --image-size 32 --batch 8 --only steps,nccl

* ``steps``: for ERM and every training plugin (CutMix and Decoupled's per-sample and k-source
  paths too): the steps between log steps under ``torch.cuda.set_sync_debug_mode("error")`` (on
  CPU: ``mixhub.hostsync.HostSyncCounter`` must count 0); bf16 autocast + channels_last +
  torch.compile (inductor; aot_eager on CPU) train with a finite loss; the step time on
  ``--model`` (resnet50) at ``--image-size`` (224) px, batch ``--batch`` (64), as a ratio to
  ERM's step in the same run, with the peak memory.

* ``adamp``: AdamP/SGDP (mixhub-adamp) on timm resnet50 parameters with preset gradients: the
  default step (capturable: tensor step counts, branch-free projection) runs under
  ``torch.cuda.set_sync_debug_mode("error")``, so any host synchronisation raises; it equals the
  reference loop to rounding (1e-5 max relative after 3 steps); a CUDA graph of one step replays
  to the eager result; its step time is printed against torch's fused AdamW (target <= 1.5x).
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
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # host_syncs.py: the arms

from mixhub.testing import tiny_config as _tiny  # noqa: E402


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


def check_adamp(steps: int, device: str, rounds: int = 20) -> None:
    """AdamP/SGDP (mixhub-adamp) on CUDA: no host sync, equal to the reference, CUDA-graph replay, step time."""
    if device != "cuda":
        print("skip  adamp: needs CUDA")
        return
    try:
        import mixhub_adamp
        import timm
    except ImportError:
        print("skip  adamp: mixhub-adamp or timm not installed")
        return
    import statistics

    dev = torch.device("cuda")
    torch.manual_seed(0)
    init = [p.detach().to(dev) for p in timm.create_model("resnet50", num_classes=1000).parameters()]
    gen = torch.Generator(device=dev).manual_seed(0)
    grads = [torch.randn(p.shape, device=dev, generator=gen) for p in init]

    def fresh():
        ps = [p.clone().requires_grad_() for p in init]
        for p, g in zip(ps, grads):
            p.grad = g.clone()
        return ps

    failures = 0
    cases = [
        ("AdamP", mixhub_adamp.AdamP, dict(lr=1e-3, weight_decay=1e-2)),
        ("SGDP", mixhub_adamp.SGDP, dict(lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True)),
    ]
    for name, cls, kw in cases:
        ref_ps, ours_ps = fresh(), fresh()
        ref, ours = cls(ref_ps, impl="reference", **kw), cls(ours_ps, **kw)
        try:
            for _ in range(3):
                ref.step()
                torch.cuda.set_sync_debug_mode("error")
                try:
                    ours.step()
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            rel = max(
                float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)) for a, b in zip(ours_ps, ref_ps)
            )
            status = "ok  " if rel <= 1e-5 else "FAIL"
            failures += rel > 1e-5
            print(
                f"{status}  {name} default step: no host sync (sync debug mode 'error'), max rel diff {rel:.1e} vs reference"
            )
        except Exception:
            failures += 1
            print(f"FAIL  {name} default step under sync debug mode 'error'\n{traceback.format_exc()}")
        # one step captured in a CUDA graph replays to the eager result
        try:
            eager_ps, graph_ps = fresh(), fresh()
            eager, graphed = cls(eager_ps, **kw), cls(graph_ps, **kw)
            eager.step(), graphed.step()  # state exists before capture
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                graphed.step()  # warm-up on a side stream, as torch's graph docs ask
            torch.cuda.current_stream().wait_stream(stream)
            eager.step()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                graphed.step()
            graph.replay()
            eager.step()
            torch.cuda.synchronize()
            same = all(torch.allclose(a, b, rtol=1e-6, atol=1e-7) for a, b in zip(eager_ps, graph_ps))
            failures += not same
            print(f"{'ok  ' if same else 'FAIL'}  {name} CUDA graph of one step replays to the eager result")
        except Exception:
            failures += 1
            print(f"FAIL  {name} CUDA graph capture\n{traceback.format_exc()}")
    # step time against fused AdamW, interleaved
    makers = {
        "torch AdamW fused": lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=1e-2, fused=True),
        "ours AdamP default": lambda ps: mixhub_adamp.AdamP(ps, lr=1e-3, weight_decay=1e-2),
    }
    opts = {k: make(fresh()) for k, make in makers.items()}
    times: dict[str, list[float]] = {k: [] for k in opts}
    for k in opts:
        for _ in range(3):
            opts[k].step()
    for _ in range(rounds):
        for k, opt in opts.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            opt.step()
            end.record()
            torch.cuda.synchronize()
            times[k].append(start.elapsed_time(end))
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["ours AdamP default"] / med["torch AdamW fused"]
    print(
        f"time  resnet50 AdamP default {med['ours AdamP default']:.2f} ms, AdamW fused {med['torch AdamW fused']:.2f} ms: "
        f"{ratio:.2f}x (target <= 1.5x: {'met' if ratio <= 1.5 else 'MISSED'})"
    )
    if failures:
        raise AssertionError(f"adamp: {failures} check(s) failed")


# ------------------------------------------------------------------ per plugin: syncs, modes, time
#: the settings of the per-plugin checks (``--model``, ``--image-size``, ``--batch``, ``--compile-backend``)
SETTINGS: dict[str, Any] = {"model": "resnet50", "image_size": 224, "batch": 64, "compile_backend": "inductor", "timed": 10, "arms": None}
TABLE: list[tuple[str, str, str]] = []  # (plugin, check, result): printed as one table at the end


def _arm_trainer(label: str, overrides: dict[str, Any], device: str) -> Any:
    """A Trainer for one ``host_syncs`` arm (ERM, each training plugin, CutMix, Decoupled's paths)."""
    import host_syncs as hs

    from mixhub.config import apply_overrides
    from mixhub.trainer import Trainer

    plugin, arm_overrides = next((p, o) for name, p, o in hs.arms() if name == label)
    cfg = hs.arm_config(label, plugin, arm_overrides)
    cfg = apply_overrides(cfg, {"train": {"device": device, "checkpoint": False, "log_every": 1000, "amp": False}})
    cfg = apply_overrides(cfg, overrides)
    return Trainer(cfg, extra_plugins={"three-sources": hs.ThreeSources()}, write=False)


def _steps(trainer: Any, n: int, device: str) -> list[Any]:
    """``n`` batches on the device, through the replay slots in continual arms (``host_syncs.step_batches``)."""
    import host_syncs as hs

    return list(hs.step_batches(trainer, n))


def _no_sync_steps(trainer: Any, batches: list[Any], device: str) -> int:
    """Steps between log steps under CUDA's sync debug mode "error" (any sync raises); on CPU the
    host-sync counter's count. Returns the number of synchronisations (0 on CUDA, or it raised)."""
    if device == "cuda":
        torch.cuda.set_sync_debug_mode("error")
        try:
            for b in batches:
                trainer.train_step(b)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return 0
    from mixhub.hostsync import HostSyncCounter

    with HostSyncCounter() as counter:
        for b in batches:
            trainer.train_step(b)
    return counter.count


def check_plugin_steps(steps: int, device: str) -> None:
    """Per arm: (1) steps between log steps make no host synchronisation; (2) bf16 autocast +
    channels_last + torch.compile train finite; (3) the step time against ERM's, as a ratio, and
    the peak memory (CUDA), on ``--model`` at ``--image-size`` px, batch ``--batch``."""
    import host_syncs as hs

    size, model, bsz = SETTINGS["image_size"], SETTINGS["model"], SETTINGS["batch"]
    timing = {"data": {"image_size": size}, "model": {"name": model, "small_input": size <= 64}, "train": {"batch_size": bsz, "max_steps_per_epoch": 1000}}
    if model == "smallcnn":
        timing["model"] = {"name": "smallcnn"}
    erm_ms = None
    failures = []
    for label, _, _ in hs.arms():
        if label == "erm-regression" or (SETTINGS["arms"] and label not in SETTINGS["arms"]):
            continue
        try:  # (1) syncs, on the arm's own tiny config
            t = _arm_trainer(label, {"train": {"max_steps_per_epoch": 10}}, device)
            warm, counted = _steps(t, 1, device), _steps(t, max(steps, 2), device)
            t.train_step(warm[0])  # optimizer state, loss-name check
            n = _no_sync_steps(t, counted, device)
            TABLE.append((label, "syncs between log steps", f"{n}" + ("" if n == 0 else "  FAIL")))
            if n:
                failures.append(f"{label}: {n} syncs")
        except Exception as exc:
            failures.append(f"{label}: sync check: {exc!r}")
            TABLE.append((label, "syncs between log steps", f"FAIL {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"))
        try:  # (2) bf16 + channels_last + compile
            modes = {"train": {"amp": True, "amp_dtype": "bfloat16", "compile": True, "compile_backend": SETTINGS["compile_backend"], "max_steps_per_epoch": 10}, "data": {"channels_last": True}}
            t = _arm_trainer(label, modes, device)
            losses = [float(t.train_step(b)["loss"]) for b in _steps(t, steps, device)]
            ok = all(torch.isfinite(torch.tensor(losses)))
            TABLE.append((label, "bf16+channels_last+compile", f"{'finite' if ok else 'NON-FINITE'} loss {losses[-1]:.4f}"))
            if not ok:
                failures.append(f"{label}: non-finite loss under bf16+channels_last+compile")
        except Exception as exc:
            failures.append(f"{label}: modes: {exc!r}")
            TABLE.append((label, "bf16+channels_last+compile", f"FAIL {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"))
        try:  # (3) time and memory
            t = _arm_trainer(label, {**timing, "train": {**timing["train"], "amp": device == "cuda"}}, device)
            batches = _steps(t, 2, device)
            for b in batches:
                t.train_step(b)  # warm-up
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            for k in range(SETTINGS["timed"]):
                t.train_step(batches[k % 2])
            if device == "cuda":
                torch.cuda.synchronize()
            ms = (time.perf_counter() - t0) / SETTINGS["timed"] * 1000
            erm_ms = ms if label == "erm" else erm_ms
            peak = f", peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if device == "cuda" else ""
            ratio = f"{ms / erm_ms:.2f}x ERM" if erm_ms else "-"
            TABLE.append((label, f"step {model} {size}px b{bsz}", f"{ms:.1f} ms ({ratio}){peak}"))
        except Exception as exc:
            failures.append(f"{label}: timing: {exc!r}")
            TABLE.append((label, f"step {model} {size}px b{bsz}", f"FAIL {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"))
    if failures:
        raise AssertionError("; ".join(failures))


CHECKS: dict[str, Callable[[int, str], None]] = {
    "steps": check_plugin_steps,
    "adamp": check_adamp,
    "plugins": check_plugins,
    "nccl": check_nccl,
    "bf16": check_bf16,
    "channels_last": check_channels_last,
}


def print_table() -> None:
    if not TABLE:
        return
    w0, w1 = max(len(r[0]) for r in TABLE), max(len(r[1]) for r in TABLE)
    print(f"\n{'plugin':<{w0}}  {'check':<{w1}}  result")
    for plugin, check, result in TABLE:
        print(f"{plugin:<{w0}}  {check:<{w1}}  {result}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--model", default=SETTINGS["model"], help="timm model of the per-plugin step timing")
    p.add_argument("--image-size", type=int, default=SETTINGS["image_size"])
    p.add_argument("--batch", type=int, default=SETTINGS["batch"])
    p.add_argument("--timed", type=int, default=SETTINGS["timed"], help="timed steps per plugin")
    p.add_argument("--arms", default="", help="comma-separated arms of the steps check (default: ERM and every training plugin)")
    p.add_argument("--compile-backend", default=None, help="torch.compile backend of the modes check (default: inductor on CUDA, aot_eager on CPU)")
    p.add_argument("--only", default=",".join(CHECKS), help=f"comma-separated subset of {', '.join(CHECKS)}")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: run the checks that do not need CUDA (gloo instead of NCCL)")
    args = p.parse_args(argv)
    SETTINGS.update(model=args.model, image_size=args.image_size, batch=args.batch, timed=args.timed)
    SETTINGS["arms"] = [a.strip() for a in args.arms.split(",") if a.strip()] or None
    SETTINGS["compile_backend"] = args.compile_backend or ("inductor" if args.device == "cuda" else "aot_eager")
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
    print_table()
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
