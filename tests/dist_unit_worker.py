"""Run under torchrun (2 gloo processes): checks of ``mixhub.distributed`` on small tensors and
models. Each rank writes ``<argv[1]>/unit<rank>.json`` with what it measured; the test compares
them with independent single-process computations."""

import json
import sys
from pathlib import Path

import torch
from torch import nn

from mixhub import distributed as D

OUT = Path(sys.argv[1])


def ddp_counts(ctx):
    """Collectives per DDP step after the first two (bucket rebuild) steps."""
    torch.manual_seed(ctx.rank)  # different initial weights per rank: DDP must broadcast rank 0's
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    ddp = D.wrap_ddp(model, ctx)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(100 + ctx.rank)
    counts = []
    for step in range(5):
        x = torch.randn(8, 6, generator=g)
        with D.count_collectives() as c:
            ddp(x).square().mean().backward()
            opt.step()
            opt.zero_grad()
        if step >= 2:
            counts.append(dict(c))
    weight = [float(p.detach().double().sum()) for p in model.parameters()]
    bn = model[1].running_mean.tolist()
    return {"counts": counts, "weight": weight, "bn_local": bn, "model": model}


def main():
    ctx = D.init_distributed("cpu")
    assert ctx.world_size == 2 and ctx.backend == "gloo", ctx
    res = {}
    d = ddp_counts(ctx)
    res["ddp_counts"], res["ddp_weight"], res["bn_local"] = d["counts"], d["weight"], d["bn_local"]
    # dist_bn on the trained DDP model: reduce averages, broadcast copies rank 0's
    model = d["model"]
    mean0 = model[1].running_mean.clone()
    D.distribute_bn([model], ctx, "broadcast")
    res["bn_broadcast"] = model[1].running_mean.tolist()
    model[1].running_mean.copy_(mean0)
    D.distribute_bn([model], ctx, "reduce")
    res["bn_reduce"] = model[1].running_mean.tolist()
    model[1].running_mean.copy_(mean0)
    D.distribute_bn([model], ctx, "none")
    res["bn_none"] = model[1].running_mean.tolist()
    res["any_rank"] = [D.any_rank(ctx.rank == 1, ctx), D.any_rank(False, ctx)]
    # SyncBatchNorm on CPU: conv -> BN -> conv under DDP, 2 steps
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 2, 1))
    net = D.convert_sync_bn(net)
    res["sync_bn_type"] = type(net[1]).__name__
    ddp = D.wrap_ddp(net, ctx)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    g = torch.Generator().manual_seed(11 + ctx.rank)
    for _ in range(2):
        x = torch.randn(3, 2, 6, 6, generator=g) * 2 + 1
        ddp(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
    res["sync_bn_state"] = {k: v.double().flatten().tolist() for k, v in net.state_dict().items() if v.is_floating_point()}
    # sharded evaluation: 23 rows in batches of 4 (6 batches, rank 0 has 3, rank 1 has 3)
    full = torch.arange(23 * 3, dtype=torch.float32).reshape(23, 3)
    labels = torch.arange(23) % 5
    for n, bs in ((23, 4), (3, 4), (5, 2)):
        sh = D.ShardedEval(n, bs, ctx)
        idx = sh.indices()
        local = {"logits": full[:n][idx], "targets": labels[:n][idx]}
        got = sh.gather(local)
        res[f"gather_{n}_{bs}"] = bool(torch.equal(got["logits"], full[:n]) and torch.equal(got["targets"], labels[:n]))
    # FSDP2: train an MLP with a plugin-style forward_features path, save, export, reload
    torch.manual_seed(0)
    from mixhub.models import MLP

    mlp = MLP(6, 3, hidden=[8, 8])
    D.apply_fsdp(mlp, ctx)
    res["fsdp_sharded"] = D.is_sharded(mlp)
    opt = torch.optim.SGD(mlp.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(7 + ctx.rank)
    for _ in range(3):
        x = torch.randn(4, 6, generator=g)
        (mlp.forward_head(mlp.forward_features(x)).square().mean() + mlp(x).mean()).backward()
        opt.step()
        opt.zero_grad()
    ckpt_dir = OUT / "dcp"
    D.save_sharded(ckpt_dir, mlp, opt)
    probe = torch.randn(5, 6, generator=torch.Generator().manual_seed(3))
    before = mlp(probe).detach().tolist()
    full_sd = D.full_model_state_dict(mlp)
    if ctx.rank == 0:
        torch.save(full_sd, OUT / "export.pt")
    res["export_keys"] = sorted(full_sd)
    # perturb, then resume from the sharded checkpoint (model and optimizer)
    with torch.no_grad():
        for p in mlp.parameters():
            p.add_(1.0)
    D.load_sharded(ckpt_dir, mlp, opt)
    res["fsdp_restored"] = mlp(probe).detach().tolist() == before
    res["fsdp_out"] = before
    try:
        D.load_sharded(OUT / "missing", mlp)
    except Exception as exc:
        res["missing_error"] = f"{type(exc).__name__}: {exc}"
    (OUT / f"unit{ctx.rank}.json").write_text(json.dumps(res))


if __name__ == "__main__":
    main()
