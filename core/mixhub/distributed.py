"""Multi-process training on torch's own engines: process groups, DDP, FSDP2, BatchNorm, sharded
evaluation and sharded checkpoints.

A run launched by ``torchrun`` (``WORLD_SIZE`` > 1) gets one process per device:

* ``init_distributed``: ``LOCAL_RANK`` picks the GPU (``torch.cuda.set_device``), NCCL on CUDA and
  gloo on CPU; the process group is torn down at exit.
* ``wrap_ddp``: ``DistributedDataParallel`` around the module whose ``forward`` is the whole
  training forward (all forward and loss hooks), so DDP sees exactly one forward per backward and
  overlaps its bucketed gradient all-reduces with the backward pass. Buffers are synced once at
  construction, never per step (``dist_bn`` takes care of BatchNorm statistics before evaluation).
* ``apply_fsdp``: FSDP2 (``fully_shard``) on every block of the model and then the root, with the
  forward methods plugins call (``forward_features``, ...) registered so they gather parameters.
* ``convert_sync_bn`` / ``distribute_bn``: SyncBatchNorm (``CpuSyncBatchNorm`` on CPU) and timm's ``reduce | broadcast``
  synchronisation of BatchNorm statistics, for any number of modules (the EMA copy included).
* ``ShardedEval``: each rank predicts whole evaluation batches (the same batches one process would
  see, batch ``k`` on rank ``k % world``); ``gather`` puts every row back in dataset order, so any
  metric computed from the gathered outputs equals the single-process metric.
* ``save_sharded`` / ``load_sharded`` / ``full_model_state_dict``: ``torch.distributed.checkpoint``
  for sharded (FSDP2) runs and the export of a plain, unsharded state dict.
* ``count_collectives``: the collectives that reach the process groups (``c10d::*`` ops recorded by
  the torch profiler), used to check that a training step issues DDP's gradient all-reduces only.

Length: the multi-process parts of a run (DDP, FSDP2, BatchNorm, sharded evaluation and
checkpoints) share the process-group context and are tested together.
"""

from __future__ import annotations

import atexit
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .errors import CheckpointError, ConfigError

__all__ = [
    "DistContext",
    "init_distributed",
    "shutdown_distributed",
    "resolve_device",
    "per_rank_batch",
    "wrap_ddp",
    "unwrap",
    "FORWARD_METHODS",
    "find_blocks",
    "apply_fsdp",
    "is_sharded",
    "convert_sync_bn",
    "CpuSyncBatchNorm",
    "distribute_bn",
    "any_rank",
    "needs_unused_parameter_detection",
    "ShardedEval",
    "save_sharded",
    "load_sharded",
    "full_model_state_dict",
    "count_collectives",
]

#: Methods of a model that plugins call besides ``forward``; FSDP2 registers each one a model has
#: so that calling it gathers the root's parameters (the blocks gather their own).
FORWARD_METHODS = ("forward_features", "forward_head", "forward_intermediates")

#: Attribute names under which models keep their repeated blocks (timm and the core models).
_BLOCK_CONTAINERS = ("blocks", "stages", "layers", "features")

_OWNED_GROUP = False


@dataclass(frozen=True)
class DistContext:
    """The process layout of a run (``world_size == 1``: no process group)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """A process group exists (normally ``world_size > 1``; a caller may start one of size 1)."""
        return self.backend is not None


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer (set by torchrun)") from None


def resolve_device(spec: str, local_rank: int = 0, world_size: int = 1) -> torch.device:
    """``train.device`` to a device: ``auto`` and ``cuda`` take ``cuda:LOCAL_RANK`` when CUDA exists."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"train.device: {spec!r} is not a device (auto, cpu, cuda, cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device: {spec!r} requested but CUDA is not available")
        if dev.index is None:
            count = torch.cuda.device_count()
            if world_size > 1 and local_rank >= count:
                raise ConfigError(f"LOCAL_RANK {local_rank} has no GPU: this node has {count}; start at most {count} processes per node")
            dev = torch.device("cuda", local_rank % count)
        elif world_size > 1:
            raise ConfigError(f"train.device: {spec!r} pins one GPU, but {world_size} processes run; use train.device=cuda (each process takes cuda:LOCAL_RANK)")
    return dev


def init_distributed(device_spec: str = "auto") -> DistContext:
    """The run's process layout, from torchrun's environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``).

    With more than one process, or a process group the caller started (e.g. NCCL with one process): sets the CUDA device to ``LOCAL_RANK`` before the process group
    exists, then starts NCCL (CUDA) or gloo (CPU) unless a group is already initialised; a group
    started here is destroyed at interpreter exit.
    """
    global _OWNED_GROUP
    world = dist.get_world_size() if dist.is_initialized() else _env_int("WORLD_SIZE", 1)
    if world <= 1 and not dist.is_initialized():
        return DistContext(device=resolve_device(device_spec))
    local_rank = _env_int("LOCAL_RANK", 0)
    device = resolve_device(device_spec, local_rank, world)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
        _OWNED_GROUP = True
        atexit.register(shutdown_distributed)
    backend = dist.get_backend()
    if device.type == "cuda" and backend == "gloo":
        raise ConfigError("train.device: CUDA tensors with a gloo process group; use the NCCL backend for GPUs")
    if device.type == "cpu" and backend == "nccl":
        raise ConfigError("train.device=cpu with an NCCL process group; NCCL needs CUDA tensors (use gloo on CPU)")
    return DistContext(dist.get_world_size(), dist.get_rank(), local_rank, device, backend)


def shutdown_distributed() -> None:
    """Destroy the process group if ``init_distributed`` created it."""
    global _OWNED_GROUP
    if _OWNED_GROUP and dist.is_initialized():
        dist.destroy_process_group()
    _OWNED_GROUP = False


def per_rank_batch(batch_size: int, world_size: int, field: str = "train.batch_size") -> int:
    """The per-process batch; a global batch the processes cannot share evenly is an error."""
    if batch_size % world_size:
        lower, upper = batch_size - batch_size % world_size, batch_size + world_size - batch_size % world_size
        raise ConfigError(
            f"{field} ({batch_size}) is the global batch and must be divisible by the number of processes ({world_size}); "
            f"use {lower or upper} or {upper}"
        )
    return batch_size // world_size


# ---------------------------------------------------------------------------------------- DDP
def wrap_ddp(module: nn.Module, ctx: DistContext, *, find_unused_parameters: bool = False, static_graph: bool = False) -> nn.Module:
    """``DistributedDataParallel`` around ``module`` (a no-op for one process).

    ``module`` must run the whole training forward in its ``forward`` (one forward per backward).
    Parameters and buffers are broadcast from rank 0 once, here; buffers are not re-broadcast
    every forward (``forward_sync_buffers=False``): BatchNorm statistics are agreed before
    evaluation by ``distribute_bn``, or per batch by SyncBatchNorm.
    """
    if not ctx.enabled:
        return module
    if not any(p.requires_grad for p in module.parameters()):
        raise ConfigError("DDP: the training module has no trainable parameters")
    from torch.nn.parallel import DistributedDataParallel as DDP

    kwargs: dict[str, Any] = {"find_unused_parameters": find_unused_parameters, "static_graph": static_graph}
    if ctx.device.type == "cuda":
        kwargs.update(device_ids=[ctx.device.index], output_device=ctx.device.index)
    import inspect

    if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters:
        kwargs["forward_sync_buffers"] = False
    else:  # older torch
        kwargs["broadcast_buffers"] = False
    return DDP(module, **kwargs)


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside DDP and ``torch.compile`` wrappers."""
    while True:
        inner = getattr(module, "module", None) or getattr(module, "_orig_mod", None)
        if isinstance(inner, nn.Module) and type(module).__name__ in ("DistributedDataParallel", "OptimizedModule"):
            module = inner
        else:
            return module


# ---------------------------------------------------------------------------------------- FSDP2
def find_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a model, each one FSDP2 unit.

    timm models and the core models keep them in ``blocks`` / ``stages`` / ``layers`` /
    ``features`` (a ``Sequential`` or ``ModuleList``), torchvision-style ResNets in
    ``layer1..layerN``. A model without such containers gives ``[]`` (sharded as one unit).
    """
    for name in _BLOCK_CONTAINERS:
        container = getattr(model, name, None)
        if isinstance(container, (nn.Sequential, nn.ModuleList)) and len(container) > 0:
            return [b for b in container if any(True for _ in b.parameters())]
    numbered = [getattr(model, f"layer{i}") for i in range(1, 10) if isinstance(getattr(model, f"layer{i}", None), nn.Module)]
    return [b for b in numbered if any(True for _ in b.parameters())]


def apply_fsdp(
    model: nn.Module,
    ctx: DistContext,
    *,
    blocks: Sequence[nn.Module] | None = None,
    mp_dtype: torch.dtype | None = None,
    reshard_after_forward: bool = True,
) -> nn.Module:
    """Shard ``model`` with FSDP2: ``fully_shard`` on each block, then on the root (in place).

    Every method in ``FORWARD_METHODS`` that the model has is registered with
    ``register_fsdp_forward_method``, so a plugin calling ``model.forward_features(x)`` gathers
    the root's parameters as ``model(x)`` would. Build the optimizer after this call (the
    parameters become ``DTensor`` shards). ``mp_dtype`` turns on mixed-precision parameters.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    mesh = init_device_mesh(ctx.device.type, (ctx.world_size,))
    kwargs: dict[str, Any] = {"mesh": mesh, "reshard_after_forward": reshard_after_forward}
    if mp_dtype is not None:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=mp_dtype, reduce_dtype=torch.float32)
    for block in find_blocks(model) if blocks is None else blocks:
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    for name in FORWARD_METHODS:
        if callable(getattr(model, name, None)):
            register_fsdp_forward_method(model, name)
    return model


def is_sharded(module: nn.Module) -> bool:
    """Whether FSDP2 manages ``module`` (its parameters are ``DTensor`` shards)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in module.parameters())


# ---------------------------------------------------------------------------------------- BatchNorm
class CpuSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm with statistics over every process's batch, for CPU (gloo) runs.

    torch's ``SyncBatchNorm`` accepts only accelerator tensors (and DDP refuses a CPU module that
    holds one), so CPU runs get this equivalent: per-channel sum, sum of squares and count are
    summed across processes with ``torch.distributed.nn``'s differentiable all-reduce (its
    backward sums the gradients, as torch's SyncBatchNorm backward does), in float64. Running
    statistics follow ``nn.BatchNorm`` (unbiased variance, ``momentum=None`` = cumulative).
    Evaluation and single-process runs use the plain BatchNorm path.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(input)
        from torch.distributed.nn.functional import all_reduce

        self._check_input_dim(input)
        c = input.shape[1]
        dims = [0, *range(2, input.dim())]
        x = input.double()
        count = torch.tensor([input.numel() / c], dtype=torch.float64, device=input.device)
        stats = all_reduce(torch.cat([x.sum(dims), (x * x).sum(dims), count]))
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            assert self.num_batches_tracked is not None
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * n / (n - 1).clamp_min(1)
                self.running_mean.mul_(1 - m).add_(mean.to(self.running_mean.dtype), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        shape = [1, c] + [1] * (input.dim() - 2)
        y = ((x - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)).to(input.dtype)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_sync_bn(module: nn.Module, device: torch.device | None = None) -> nn.Module:
    """Every BatchNorm layer as a synchronised one: torch's ``SyncBatchNorm`` (timm's fused
    norm-act layers included, through timm's converter) on accelerators, ``CpuSyncBatchNorm``
    on the CPU."""
    device = device or next((p.device for p in module.parameters()), torch.device("cpu"))
    if device.type != "cpu":
        from timm.layers import convert_sync_batchnorm

        return convert_sync_batchnorm(module)
    plain = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, CpuSyncBatchNorm):
        if type(module) not in plain:
            raise ConfigError(f"train.sync_bn on CPU: {type(module).__name__} is not a plain BatchNorm layer; use a GPU (torch's SyncBatchNorm) or sync_bn=false")
        new = CpuSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        new.to(device)
        if module.affine:
            with torch.no_grad():
                new.weight = module.weight
                new.bias = module.bias
        if module.track_running_stats:
            new.running_mean, new.running_var, new.num_batches_tracked = module.running_mean, module.running_var, module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        converted = convert_sync_bn(child, device)
        if converted is not child:
            setattr(module, name, converted)
    return module


def distribute_bn(modules: Iterable[nn.Module], ctx: DistContext, mode: str) -> None:
    """Agree on BatchNorm running statistics across processes (timm's ``distribute_bn``).

    ``reduce`` averages them, ``broadcast`` gives every process rank 0's, ``none`` leaves them.
    Pass the EMA copy among ``modules`` so its buffers agree too.
    """
    if mode not in ("reduce", "broadcast", "none"):
        raise ConfigError(f"train.dist_bn: {mode!r} is not one of reduce, broadcast, none")
    if not ctx.enabled or mode == "none":
        return
    from timm.utils import distribute_bn as timm_distribute_bn

    for module in modules:
        timm_distribute_bn(unwrap(module), ctx.world_size, reduce=mode == "reduce")


def needs_unused_parameter_detection(host: Any, modules: dict[str, Any]) -> bool:
    """Whether DDP must look for parameters without a gradient (``find_unused_parameters``).

    The core's own forward and loss use every parameter of the model. A plugin that owns the
    forward or the loss, adds aux losses (a second head, a generator) or trains a module of its
    own may leave some parameters without a gradient in a step; DDP then has to find them.
    """
    if host.owner("forward") != "core" or host.owner("compute_loss") != "core":
        return True
    if any(impl.plugin_name != "core" for impl in host.pm.hook.mixhub_aux_losses.get_hookimpls()):
        return True
    return any(spec.trainable and any(p.requires_grad for p in spec.module.parameters()) for spec in modules.values())


def any_rank(flag: bool, ctx: DistContext) -> bool:
    """``flag`` on any process: one host-synchronised all-reduce (call it every ``train.sync_every`` steps, not every step)."""
    if not ctx.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


# ---------------------------------------------------------------------------------------- evaluation
class ShardedEval:
    """Evaluation batches shared out across processes, and the rows put back in dataset order.

    The dataset is cut into the batches one process would use (``[k*B, (k+1)*B)``); batch ``k``
    is predicted by rank ``k % world``. Each batch is therefore the same as in a single-process
    run (batch-dependent evaluation, e.g. test-time normalisation, is unchanged) and ``gather``
    reassembles the full outputs in dataset order on every rank.
    """

    def __init__(self, n: int, batch_size: int, ctx: DistContext) -> None:
        if batch_size < 1:
            raise ValueError("evaluation batch size must be >= 1")
        self.n, self.batch_size, self.ctx = n, batch_size, ctx
        self.num_batches = (n + batch_size - 1) // batch_size

    def batch_rows(self, k: int) -> range:
        return range(k * self.batch_size, min(self.n, (k + 1) * self.batch_size))

    def batches(self, rank: int | None = None) -> list[range]:
        """Row ranges this process (or ``rank``) predicts, in order."""
        r = self.ctx.rank if rank is None else rank
        return [self.batch_rows(k) for k in range(r, self.num_batches, self.ctx.world_size)]

    def indices(self, rank: int | None = None) -> list[int]:
        return [i for rows in self.batches(rank) for i in rows]

    def rows_of(self, rank: int) -> int:
        return sum(len(rows) for rows in self.batches(rank))

    def missing_batches(self) -> int:
        """How many batches fewer than rank 0 this process predicts (0 or 1). Under FSDP every
        forward is a collective, so such a process runs that many extra (discarded) forwards."""
        return len(self.batches(0)) - len(self.batches())

    def batch_sampler(self) -> list[list[int]]:
        """This process's batches as index lists, for ``DataLoader(batch_sampler=...)``."""
        return [list(rows) for rows in self.batches()]

    def gather(self, local: dict[str, Tensor], batch_rows: Sequence[int] | None = None) -> dict[str, Tensor]:
        """Every rank's rows of each tensor (concatenated in its batch order) to the full tensors.

        ``batch_rows``: the rows each of this process's batches actually produced (fewer than
        ``batch_rows(k)`` when a loader skips unreadable samples; default: all of them).
        Processes that predicted rows must return the same keys (a process without rows may
        return anything). One small object all-gather agrees on keys, shapes, dtypes and row
        counts, then one tensor all-gather per key. Results are on the CPU.
        """
        if not self.ctx.enabled:
            return {k: v.cpu() for k, v in local.items()}
        world = self.ctx.world_size
        sizes = [len(r) for r in self.batches()] if batch_rows is None else [int(n) for n in batch_rows]
        if len(sizes) != len(self.batches()):
            raise RuntimeError(f"sharded evaluation: {len(sizes)} batch sizes for {len(self.batches())} batches on rank {self.ctx.rank}")
        mine_rows = sum(sizes)
        meta = {k: (tuple(v.shape[1:]), str(v.dtype)) for k, v in local.items()} if mine_rows else {}
        metas: list[Any] = [None] * world
        dist.all_gather_object(metas, (meta, sizes))
        shapes: dict[str, tuple[tuple[int, ...], str]] = {}
        for m, rows in metas:
            if sum(rows) and shapes and set(m) != set(shapes):
                raise RuntimeError(f"sharded evaluation: processes returned different outputs: {sorted(shapes)} and {sorted(m)}")
            for k, v in m.items():
                if shapes.setdefault(k, v) != v:
                    raise RuntimeError(f"sharded evaluation: output {k!r} has shape/dtype {v} on one process and {shapes[k]} on another")
        per_rank = [rows for _, rows in metas]
        width = max(sum(rows) for rows in per_rank)
        comm = self.ctx.device if self.ctx.backend == "nccl" else torch.device("cpu")
        out: dict[str, Tensor] = {}
        for k in sorted(shapes):
            trailing, dtype_name = shapes[k]
            dtype = getattr(torch, dtype_name.removeprefix("torch."))
            mine = local[k].to(comm, dtype) if mine_rows else torch.zeros((0, *trailing), dtype=dtype, device=comm)
            if mine.shape[0] != mine_rows:
                raise RuntimeError(f"sharded evaluation: output {k!r} has {mine.shape[0]} rows on rank {self.ctx.rank}, its batches {mine_rows}")
            padded = torch.zeros((width, *trailing), dtype=dtype, device=comm)
            padded[:mine_rows] = mine.reshape(-1, *trailing)
            parts = [torch.empty_like(padded) for _ in range(world)]
            dist.all_gather(parts, padded)
            offsets = [0] * world
            taken = [0] * world
            pieces = []
            for b in range(self.num_batches):
                r = b % world
                size = per_rank[r][taken[r]]
                taken[r] += 1
                pieces.append(parts[r][offsets[r] : offsets[r] + size])
                offsets[r] += size
            out[k] = torch.cat(pieces).cpu() if pieces else padded[:0].cpu()
        return out


# ---------------------------------------------------------------------------------------- checkpoints
def save_sharded(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> Path:
    """Model (and optimizer) state through ``torch.distributed.checkpoint``: every rank writes its
    own shards into the folder ``path`` (a collective: all processes call it)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if optimizer is not None:
        msd, osd = get_state_dict(model, optimizer)
        state: dict[str, Any] = {"model": msd, "optimizer": osd}
    else:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        state = {"model": get_model_state_dict(model)}
    dcp.save(state, checkpoint_id=str(path))
    return path


def load_sharded(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Restore what ``save_sharded`` wrote, resharded to this run's layout (a collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_state_dict,
        set_model_state_dict,
        set_state_dict,
    )

    path = Path(path)
    if not (path / ".metadata").is_file():
        raise CheckpointError(f"sharded checkpoint {str(path)!r} does not exist or is incomplete (no .metadata)")
    if optimizer is not None:
        msd, osd = get_state_dict(model, optimizer)
        state: dict[str, Any] = {"model": msd, "optimizer": osd}
    else:
        state = {"model": get_model_state_dict(model)}
    try:
        dcp.load(state, checkpoint_id=str(path))
    except Exception as exc:  # DCP raises CheckpointException / RuntimeError with per-rank details
        raise CheckpointError(f"sharded checkpoint {str(path)!r} does not match this run: {exc}") from exc
    if optimizer is not None:
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    else:
        set_model_state_dict(model, state["model"])


def full_model_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """A plain, unsharded state dict on the CPU, e.g. for an export file.

    For an FSDP2 model the shards are gathered (a collective: all ranks call it) and only rank 0
    receives the tensors (the others get ``{}``); for a plain model this is its state dict.
    """
    if not is_sharded(model):
        return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return dict(get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------- counting
@contextmanager
def count_collectives() -> Iterator[Counter[str]]:
    """Count the collectives that reach any process group inside the block.

    The torch profiler records each ``c10d::*`` op (``allreduce_``, ``broadcast_``,
    ``allgather_``, ``barrier``, ...) once per call at the process-group level, whichever
    caller issued it: DDP's reducer, FSDP, SyncBatchNorm or Python code. The counter is filled
    when the block exits.
    """
    from torch.profiler import ProfilerActivity, profile

    counts: Counter[str] = Counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        yield counts
    for event in prof.events():
        if event.name.startswith("c10d::"):
            counts[event.name.removeprefix("c10d::")] += 1
