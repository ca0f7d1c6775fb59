"""Two CPU processes with gloo through torchrun give the same training as one process with the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARGS = [
    "data.name=synthetic-regression", "data.options.n=400", "model.name=mlp", "optimizer.name=momentum", "optimizer.momentum=0.0",
    "train.epochs=3", "train.batch_size=32", "train.lr=0.05", "train.sched=none", "train.plots=false", "train.device=cpu", "train.log_every=5", "train.log_seconds=0", "--quiet",
]


def run(cmd, out):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd + [f"out={out}"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert p.stdout.count("run folder:") == 1, p.stdout  # under torchrun only rank 0 prints
    return recs


@pytest.mark.skipif(sys.platform != "linux", reason="gloo multi-process test runs on Linux")
def test_two_process_gloo_matches_single_process(tmp_path):
    single = run([sys.executable, "-m", "mixhub", "train", *ARGS], tmp_path / "single")
    ddp = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "mixhub", "train", *ARGS], tmp_path / "ddp")
    for split in ("train", "val"):
        a = [r["loss"] for r in single if r["split"] == split]
        b = [r["loss"] for r in ddp if r["split"] == split]
        assert len(a) == len(b) == 3
        for x, y in zip(a, b):
            assert abs(x - y) <= 1e-4 * max(1.0, abs(x)), (split, a, b)
    assert not (tmp_path / "ddp" / "rank1").exists()
    # step records are means over the global batch (averaged over processes at log steps)
    steps = [[json.loads(line) for line in (tmp_path / name / "steps.jsonl").read_text().splitlines()] for name in ("single", "ddp")]
    assert [r["step"] for r in steps[0]] == [r["step"] for r in steps[1]] and steps[0]
    for a, b in zip(*steps):
        for key in ("loss", "grad_norm"):
            assert abs(a[key] - b[key]) <= 1e-4 * max(1.0, abs(a[key])), (key, a, b)


def _cases():
    from mixhub.testing import tiny_config, tiny_regression_config

    cpu = {"device": "cpu", "checkpoint": False}
    continual = {
        "seed": 0, "plugins": ["dualmix"],
        "data": {"name": "split-digits", "image_size": 8},
        "model": {"name": "smallcnn", "kwargs": {"widths": [4, 8, 8]}},
        "train": {"lr": 0.1, "sched": "none", "plots": False, **cpu},
        "optimizer": {"name": "momentum", "momentum": 0.0},
        "continual": {"memory_size": 20, "batch_size": 10, "eval_val": False},
    }
    return [
        {"name": "erm", "config": tiny_config(train={**cpu, "max_steps_per_epoch": 6, "sync_every": 100}), "count": True},
        {"name": "mixup", "config": tiny_config(plugins=["mixup"], train={**cpu, "max_steps_per_epoch": 6, "sync_every": 100}), "count": True},
        {"name": "rankmixup", "config": tiny_config(plugins=["rankmixup"], train=cpu)},
        {"name": "adautomix", "config": tiny_config(plugins=["adautomix"], train=cpu)},
        {"name": "decoupled", "config": tiny_config(plugins=["mixup", "decoupled"], train=cpu)},
        {"name": "cmixup", "config": tiny_regression_config(plugins=["cmixup"], train=cpu)},
        {"name": "dualmix", "config": continual},
    ]


def _core(summary):
    """The summary without what describes one process's own state: plugin metrics
    (``<plugin>/...``), the continual replay buffer (filled from each process's shard) and times."""
    local = ("buffer_class_counts", "task_metrics", "stream_time_s")
    return {
        k: ({m: v for m, v in split.items() if "/" not in m and m not in local} if isinstance(split, dict) else split)
        for k, split in summary.items()
    }


def _bn_config(sync_bn):
    from mixhub.testing import tiny_config

    return tiny_config(train={"device": "cpu", "checkpoint": False, "max_steps_per_epoch": 4, "sync_bn": sync_bn, "sched": "none"})


def _eval_cases():
    from mixhub.testing import tiny_config, tiny_regression_config

    cpu = {"device": "cpu", "checkpoint": False, "epochs": 0}
    # evaluation batches not a multiple of the world size: rank 0 predicts one batch more than rank 1
    return [
        {"name": "eval_cls", "config": tiny_config(train={**cpu, "batch_size": 32}), "eval_only": True, "eval_batch": 32},
        {"name": "eval_reg", "config": tiny_regression_config(train={**cpu, "batch_size": 16}), "eval_only": True, "eval_batch": 8},
    ]


def _run_cases(out, cases):
    if sys.platform != "linux":
        pytest.skip("gloo multi-process test runs on Linux")
    _launch("ddp_worker.py", json.dumps(cases), out)

    def result(name):
        return [json.loads((out / f"{name}.rank{r}.json").read_text()) for r in range(2)]

    return result


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    """One torchrun launch (2 gloo processes): ERM and mixup (counted), SyncBN, sharded evaluation."""
    cases = [c for c in _cases() if c.get("count")]
    cases += [{"name": "syncbn", "config": _bn_config(True)}, {"name": "nosyncbn", "config": _bn_config(False)}, *_eval_cases()]
    return _run_cases(tmp_path_factory.mktemp("ddp"), cases)


def _check_replicas(ddp_runs, cases):
    for case in cases:
        r0, r1 = ddp_runs(case["name"])
        assert r0["fingerprint"]["hash"] == r1["fingerprint"]["hash"], (case["name"], r0["fingerprint"]["sum"], r1["fingerprint"]["sum"])
        # core metrics agree (plugin metrics, ``<plugin>/...``, describe each process's own draws)
        assert _core(r0["summary"]) == _core(r1["summary"]), case["name"]
        if case.get("count"):
            assert len(r0["counts"]) == 3, r0["counts"]
            for c in r0["counts"] + r1["counts"]:
                assert set(c) == {"allreduce_"} and c["allreduce_"] >= 1, (case["name"], c)


def test_replicas_stay_identical_and_steps_issue_only_ddp_all_reduces(ddp_runs):
    """A step issues DDP's bucket all-reduces and nothing else (no per-step flags, no buffer
    broadcasts); replicas end identical."""
    _check_replicas(ddp_runs, [c for c in _cases() if c.get("count")])


@pytest.mark.slow
def test_replicas_stay_identical_with_every_kind_of_plugin(tmp_path):
    """Plugins that run several forward calls (RankMixup, AdAutoMix), fetch dataset partners
    (C-Mixup), replace the loss (Decoupled Mixup) or replay memory in the continual protocol
    (DualMix) keep every replica identical."""
    cases = [c for c in _cases() if not c.get("count")]
    runs = _run_cases(tmp_path, cases)
    _check_replicas(runs, cases)
    cont = runs("dualmix")[0]["summary"]["continual"]
    assert cont is not None and len(cont["acc_matrix"]) == 5


def test_sync_bn_matches_one_process_with_the_same_global_batch(ddp_runs):
    """smallcnn (BatchNorm) on digits: with SyncBatchNorm two processes of 16 equal one process of 32."""
    import torch

    from mixhub.trainer import Trainer

    single = Trainer(_bn_config(False), write=False)
    summary = single.fit()
    import importlib.util

    spec = importlib.util.spec_from_file_location("ddp_worker", ROOT / "tests" / "ddp_worker.py")
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    want = torch.tensor(worker.fingerprint(single)["flat"])
    sync, plain = (torch.tensor(ddp_runs(name)[0]["fingerprint"]["flat"]) for name in ("syncbn", "nosyncbn"))
    assert (sync - want).abs().max() <= 1e-4, float((sync - want).abs().max())
    assert (plain - want).abs().max() > 1e-4  # per-process BatchNorm statistics do differ
    got = ddp_runs("syncbn")[0]["summary"]
    for split in ("val", "test"):
        assert got[split]["acc"] == pytest.approx(summary[split]["acc"], abs=1e-9)
        assert got[split]["nll"] == pytest.approx(summary[split]["nll"], abs=1e-4)


def test_sharded_evaluation_equals_one_process(ddp_runs):
    """Each rank predicts its share of the batches; gathered metrics equal the single-process ones."""
    from mixhub.trainer import Trainer

    for case in _eval_cases():
        trainer = Trainer(case["config"], write=False)
        r0, r1 = ddp_runs(case["name"])
        assert r0["summary"] == r1["summary"]
        for split, ds in (("val", trainer.bundle.val), ("test", trainer.bundle.test)):
            want = trainer.evaluate(ds, split, batch_size=case["eval_batch"])
            got = r0["summary"][split]
            assert set(got) == set(want), split
            for k, v in want.items():
                assert got[k] == pytest.approx(v, rel=1e-5, abs=1e-6), (case["name"], split, k)


def _launch(script, *args, timeout=600):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(ROOT / "tests" / script), *map(str, args)]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=timeout)
    assert p.returncode == 0, p.stderr[-4000:]
    return p


@pytest.mark.skipif(sys.platform != "linux", reason="gloo multi-process test runs on Linux")
def test_distributed_services_on_two_gloo_processes(tmp_path):
    """DDP, collective counting, dist_bn, sharded gathering and FSDP2 + DCP against single-process references."""
    import torch
    from torch import nn

    from mixhub.models import MLP

    _launch("dist_unit_worker.py", tmp_path)
    r0, r1 = (json.loads((tmp_path / f"unit{r}.json").read_text()) for r in range(2))
    # DDP: one bucket all-reduce per step and nothing else (buffers are not broadcast every forward)
    assert r0["ddp_counts"] == r1["ddp_counts"] == [{"allreduce_": 1}] * 3
    # DDP = one process on the global batch (rank 0's initial weights, gradients averaged)
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    gens = [torch.Generator().manual_seed(100 + r) for r in range(2)]
    for _ in range(5):
        xs = [torch.randn(8, 6, generator=g) for g in gens]
        # BatchNorm normalises per process: the reference averages the two per-process losses
        loss = sum(ref(x).square().mean() for x in xs) / 2
        loss.backward()
        opt.step()
        opt.zero_grad()
    want = [float(p.detach().double().sum()) for p in ref.parameters()]
    for got in (r0["ddp_weight"], r1["ddp_weight"]):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
    # dist_bn: broadcast = rank 0's statistics; reduce = their mean; none = local
    a, b = torch.tensor(r0["bn_local"]), torch.tensor(r1["bn_local"])
    assert not torch.allclose(a, b)
    for r in (r0, r1):
        assert torch.equal(torch.tensor(r["bn_broadcast"]), a)
        assert torch.allclose(torch.tensor(r["bn_reduce"]), (a + b) / 2, atol=1e-7)
    assert r0["bn_none"] == r0["bn_local"] and r1["bn_none"] == r1["bn_local"]
    assert r0["any_rank"] == r1["any_rank"] == [True, False]
    # CPU SyncBatchNorm = BatchNorm over the concatenated global batch (weights and running statistics)
    assert r0["sync_bn_type"] == "CpuSyncBatchNorm"
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 2, 1))
    opt = torch.optim.SGD(ref.parameters(), lr=0.5)
    gens = [torch.Generator().manual_seed(11 + r) for r in range(2)]
    for _ in range(2):
        x = torch.cat([torch.randn(3, 2, 6, 6, generator=g) * 2 + 1 for g in gens])
        ref(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
    for k, v in ref.state_dict().items():
        if v.is_floating_point():
            for r in (r0, r1):
                assert torch.allclose(torch.tensor(r["sync_bn_state"][k], dtype=torch.float64), v.double().flatten(), atol=1e-5), k
    for key in ("gather_23_4", "gather_3_4", "gather_5_2"):
        assert r0[key] and r1[key], key
    # FSDP2: sharded, same as one process on the global batch, DCP round trip, export on rank 0
    assert r0["fsdp_sharded"] and r0["fsdp_restored"] and r1["fsdp_restored"]
    torch.manual_seed(0)
    mlp = MLP(6, 3, hidden=[8, 8])
    opt = torch.optim.SGD(mlp.parameters(), lr=0.1)
    gens = [torch.Generator().manual_seed(7 + r) for r in range(2)]
    for _ in range(3):
        xs = [torch.randn(4, 6, generator=g) for g in gens]
        loss = sum(mlp.forward_head(mlp.forward_features(x)).square().mean() + mlp(x).mean() for x in xs) / 2
        loss.backward()
        opt.step()
        opt.zero_grad()
    probe = torch.randn(5, 6, generator=torch.Generator().manual_seed(3))
    want_out = mlp(probe).detach()
    for r in (r0, r1):
        assert torch.allclose(torch.tensor(r["fsdp_out"]), want_out, atol=1e-5)
    assert r1["export_keys"] == [] and r0["export_keys"] == sorted(mlp.state_dict())
    plain = MLP(6, 3, hidden=[8, 8])
    plain.load_state_dict(torch.load(tmp_path / "export.pt", weights_only=True))
    assert torch.allclose(plain(probe), want_out, atol=1e-5)
    assert r0["missing_error"].startswith("CheckpointError: sharded checkpoint")


def test_layout_helpers_single_process():
    import torch

    from mixhub import distributed as D
    from mixhub.errors import ConfigError
    from mixhub.models import MLP, SmallCNN

    assert D.per_rank_batch(64, 4) == 16
    with pytest.raises(ConfigError, match=r"train.batch_size \(30\).*divisible.*\(4\).*use 28 or 32"):
        D.per_rank_batch(30, 4)
    with pytest.raises(ConfigError, match="train.device"):
        D.resolve_device("gpu0")
    assert D.resolve_device("cpu") == torch.device("cpu")
    ctx = D.init_distributed("cpu")
    assert not ctx.enabled and ctx.is_main and ctx.device.type == "cpu"
    sh = D.ShardedEval(10, 4, ctx)
    assert [list(r) for r in sh.batches()] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    two = D.ShardedEval(10, 4, D.DistContext(world_size=2, rank=1))
    assert two.indices() == [4, 5, 6, 7] and two.indices(0) == [0, 1, 2, 3, 8, 9] and two.rows_of(0) == 6
    mlp, cnn = MLP(4, 2, hidden=(8, 8)), SmallCNN(3, 10, widths=(4, 8))
    assert D.find_blocks(mlp) == list(mlp.blocks)
    assert len(D.find_blocks(cnn)) == len(cnn.stages) and all(b in list(cnn.stages) for b in D.find_blocks(cnn))
    assert D.find_blocks(torch.nn.Linear(2, 2)) == []
    with pytest.raises(ConfigError, match="dist_bn"):
        D.distribute_bn([mlp], D.DistContext(world_size=2), "mean")


def _fsdp_cases(root):
    from mixhub.testing import tiny_config, tiny_regression_config

    def mlp(epochs):
        return tiny_regression_config(train={"device": "cpu", "strategy": "fsdp", "epochs": epochs, "max_steps_per_epoch": 3})

    vit = tiny_config(train={"device": "cpu", "strategy": "fsdp", "max_steps_per_epoch": 2})
    vit["model"] = {"name": "test_vit"}
    vit2 = json.loads(json.dumps(vit))
    vit2["train"]["epochs"] = 2
    return [
        {"name": "mlp_full", "config": mlp(2), "out": str(root / "mlp_full")},
        {"name": "mlp_part", "config": mlp(1), "out": str(root / "mlp_part")},
        {"name": "mlp_resumed", "config": mlp(2), "out": str(root / "mlp_part"), "resume": True},
        {"name": "vit", "config": vit, "out": str(root / "vit")},
        {"name": "vit_resumed", "config": vit2, "out": str(root / "vit"), "resume": True},
    ]


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="gloo multi-process test runs on Linux")
def test_fsdp_trains_checkpoints_resumes_and_exports(tmp_path):
    """FSDP2 on 2 gloo processes: an MLP and a small timm ViT train, write sharded checkpoints,
    resume from them (the resumed MLP run equals the uninterrupted one) and export plain weights."""
    import torch

    from mixhub.checkpoint import load_checkpoint
    from mixhub.trainer import Trainer

    cases = _fsdp_cases(tmp_path)
    runs = _run_cases(tmp_path, cases)
    for case in cases:
        r0, r1 = runs(case["name"])
        assert r0["fingerprint"]["hash"] == r1["fingerprint"]["hash"], case["name"]
    full, resumed = runs("mlp_full")[0], runs("mlp_resumed")[0]
    assert resumed["summary"]["steps"] == full["summary"]["steps"] == 6
    assert torch.allclose(torch.tensor(full["fingerprint"]["flat"]), torch.tensor(resumed["fingerprint"]["flat"]), atol=1e-6)
    assert full["summary"]["test"] == pytest.approx(resumed["summary"]["test"], rel=1e-5)
    last = load_checkpoint(tmp_path / "mlp_part" / "checkpoints" / "last.pt")
    assert last["sharded"] == "last.dcp" and (tmp_path / "mlp_part" / "checkpoints" / "last.dcp" / ".metadata").is_file()
    # the export is a plain state dict: one process evaluates it to the run's own test metrics
    for name, split_metric in (("mlp_full", "rmse"), ("vit_resumed", "nll")):
        case = next(c for c in cases if c["name"] == name)
        export = load_checkpoint(tmp_path / Path(case["out"]).name / "checkpoints" / "export.pt")
        cfg = json.loads(json.dumps(case["config"]))
        cfg["train"]["strategy"] = "ddp"
        single = Trainer(cfg, write=False)
        single.model.load_state_dict(export["state_dict"])
        got = single.evaluate(single.bundle.test, "test")
        assert got[split_metric] == pytest.approx(runs(name)[0]["summary"]["test"][split_metric], rel=1e-4), name
    assert runs("vit_resumed")[0]["summary"]["steps"] == 4
