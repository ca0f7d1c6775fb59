"""Two forward calls before one backward in a two-process run (gloo, CPU): replicas stay identical."""

from __future__ import annotations

import os
import socket
import sys

import pytest
import torch
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(__file__))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(
    rank: int, world: int, port: int, variant: str, options: dict, queue
) -> None:  # pragma: no cover - child process
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(world),
        RANK=str(rank),
        OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)
    import torch.distributed as dist
    from test_rankmixup_plugin import cfg

    from mixhub.trainer import Trainer

    try:
        raw = cfg(rankmixup={"variant": variant, **options})
        raw["train"] = {**raw["train"], "device": "cpu"}
        trainer = Trainer(raw, write=False)
        assert trainer.world_size == 2
        for batch in list(trainer.loader)[:2]:
            out = trainer.train_step(batch)
        flat = torch.cat([p.detach().reshape(-1) for p in trainer.model.parameters()])
        gathered = [torch.zeros_like(flat) for _ in range(world)]
        dist.all_gather(gathered, flat)
        queue.put((rank, float((gathered[0] - gathered[1]).abs().max()), out[f"rankmixup_{variant}"]))
    except Exception as exc:
        queue.put((rank, repr(exc), None))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes: ~13 s of CPU, but slow to start on a loaded machine
@pytest.mark.parametrize("variant, options", [("mrl", {}), ("mrl", {"layer_mix": "blocks.0"})])
def test_two_forward_calls_under_ddp(variant, options):
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("gloo is not available")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, variant, options, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    for rank, diff, term in results:
        assert not isinstance(diff, str), f"rank {rank} failed: {diff}"
        assert diff == 0.0  # gradients were all-reduced: replicas stay identical
        assert term is not None and term >= 0
