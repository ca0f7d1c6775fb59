import torch

from mixhub.testing import Contract, tiny_config, tiny_regression_config
from mixhub.trainer import Trainer


def test_plugin_owns_sampling_and_uses_core_mixer(tmp_path):
    t = Trainer(tiny_config(plugins=["mixup"], mixup={"mode": "cutmix"}), out=tmp_path / "r")
    assert t.host.owner("sample_pairs") == "mixup" and t.host.owner("mix_batch") == "core"
    from mixhub.trainer import collate

    batch = collate([t.train_set[i] for i in range(8)])
    plan = t.host.slot("sample_pairs", batch=batch, state=t.state)
    assert plan.mask is not None and plan.batch_lam is not None


def test_plugin_matches_functional(tmp_path):
    from mixhub_mixup import mixup_plan

    t = Trainer(tiny_config(plugins=["mixup"], mixup={"alpha": 0.5}), out=tmp_path / "r")
    from mixhub.trainer import collate

    batch = collate([t.train_set[i] for i in range(8)])
    state = t.state.generator.get_state()
    plan = t.host.slot("sample_pairs", batch=batch, state=t.state)
    t.state.generator.set_state(state)
    ref = mixup_plan(8, 0.5, generator=t.state.generator)
    assert torch.equal(plan.index, ref.index) and torch.equal(plan.lam, ref.lam)


def test_contracts(tmp_path):
    c = Contract(tmp_path)
    c.hooks_in_order(tiny_config(plugins=["mixup"]))
    c.determinism(tiny_config(plugins=["mixup"], mixup={"mode": "cutmix", "lam_mode": "sample"}))
    c.resume_equality(tiny_config(plugins=["mixup"], mixup={"prob": 0.5}))
    c.slot_types(tiny_regression_config(plugins=["mixup"]))
