"""Run under torchrun: train each case of a JSON list (argv[1]) in turn on one process group and
write ``<argv[2]>/<case>.rank<k>.json`` per rank: a checksum and a hash of every tensor of the model
and the plugin modules, the final summary, and, for cases with ``"count": true``, the collectives
issued from the start of each training step to the start of the next (steps 3 onwards: DDP
rebuilds its buckets after the first iterations).

A case is ``{"name": str, "config": {...}, "count": bool, "out": str | None}``; with ``out`` the
run writes its folder there (rank 0) and resumes it when ``"resume": true``. A single config
(a JSON object) instead of a list trains it and writes ``rank<k>.txt`` (weight checksums).
"""

import hashlib
import json
import sys
from contextlib import ExitStack
from pathlib import Path

import torch

from mixhub.distributed import count_collectives
from mixhub.testing import model_fingerprint
from mixhub.trainer import Trainer


def fingerprint(trainer: Trainer) -> dict:
    from torch.distributed.tensor import DTensor

    tensors = {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in model_fingerprint(trainer).items()}
    flat = torch.cat([v.detach().double().reshape(-1) for _, v in sorted(tensors.items()) if v.is_floating_point()])
    h = hashlib.sha256()
    for key, v in sorted(tensors.items()):
        h.update(key.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return {"sum": float(flat.sum()), "abs": float(flat.abs().sum()), "hash": h.hexdigest(), "flat": flat.tolist() if flat.numel() <= 20000 else None}


def counted(trainer: Trainer, counts: list) -> None:
    """Count collectives from the start of one training step to the start of the next."""
    step = trainer.train_step
    stack = ExitStack()
    calls = [0]

    def wrapped(batch):
        stack.close()
        calls[0] += 1
        if calls[0] > 3:
            counts.append(dict(current[0]))
        current[0] = stack.enter_context(count_collectives())
        return step(batch)

    current = [{}]
    trainer.train_step = wrapped  # type: ignore[method-assign]
    trainer._close_count = stack  # type: ignore[attr-defined]


def main() -> None:
    cases = json.loads(sys.argv[1])
    out = Path(sys.argv[2])
    if isinstance(cases, dict):  # one config: ``rank<k>.txt`` holds the weight checksums
        trainer = Trainer(cases, write=False)
        trainer.fit()
        fp = fingerprint(trainer)
        (out / f"rank{trainer.rank}.txt").write_text(f"{fp['sum']:.12e} {fp['abs']:.12e} {fp['hash']}")
        return
    for case in cases:
        write = case.get("out") is not None
        trainer = Trainer(case["config"], write=write, out=case.get("out"))
        if case.get("resume"):
            trainer.resume()
        counts: list = []
        if case.get("count"):
            counted(trainer, counts)
        if case.get("eval_only"):
            bs = case.get("eval_batch")
            summary = {"val": trainer.evaluate(trainer.bundle.val, "val", batch_size=bs), "test": trainer.evaluate(trainer.bundle.test, "test", batch_size=bs)}
        else:
            summary = trainer.fit()
        if case.get("count"):
            trainer._close_count.close()
        rec = {"fingerprint": fingerprint(trainer), "counts": counts, "summary": {k: summary.get(k) for k in ("val", "test", "continual", "steps")}}
        (out / f"{case['name']}.rank{trainer.rank}.json").write_text(json.dumps(rec, default=str))


if __name__ == "__main__":
    main()
