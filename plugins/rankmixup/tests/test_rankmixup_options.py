"""RankMixup's official options: exact same-class test, feature-level mixing (layer_mix), ignore_index.

Each is checked against an independent computation of the official behaviour on fixed tensors
(``calibrate/losses/rankmixup.py`` and ``calibrate/net/resnet_mixup.py`` of the official code).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mixhub_rankmixup import (
    make_mixed_views,
    mix_at_layer,
    mix_copies,
    mixed_copy_targets,
    mndcg_loss,
    mrl_loss,
    plugin,
    ranking_rows,
    rankmixup_loss,
    same_class_rows,
)
from torch import nn

from mixhub import Batch, ConfigError
from mixhub.trainer import Trainer

Z = torch.tensor([[2.0, 0.5, -1.0], [0.1, 1.5, 0.3], [-0.5, 0.2, 2.5], [1.0, 1.0, 0.0], [0.3, -0.2, 0.9]])
ZM = torch.tensor([[1.0, 0.8, -0.2], [0.6, 0.9, 0.1], [0.0, 0.1, 1.2], [0.9, 0.3, 0.6], [0.2, 1.1, 0.4]])


def official_mrl(z, zm, t, margin):
    """The official MRL term written out: mask [B] broadcast against hinge [B, 1], mean over B*B."""
    b = z.shape[0]
    keep = [0.0 if any(v == 1.0 for v in t[i].tolist()) else 1.0 for i in range(b)]
    hinge = [max(0.0, max(zm[i].tolist()) - max(z[i].tolist()) + margin) for i in range(b)]
    return sum(keep[j] * hinge[i] for i in range(b) for j in range(b)) / (b * b)


# ----------------------------------------------------------------------------- same-class test
def test_same_class_test_is_exact_equality_with_one():
    lam = 1.0 - 2.0**-24  # float32(lam) = 0.99999994: two different classes, not a same-class pair
    t = make_mixed_views(torch.zeros(5, 1), torch.tensor([0, 1, 2, 0, 1]), 3, 1, 0.0, lams=[lam],
                         perms=[torch.tensor([1, 0, 3, 2, 4])])[1]
    assert float(t[0].max()) < 1.0 and float(t[0].max()) > 1.0 - 1e-6
    assert same_class_rows(t).tolist() == [False, False, False, False, True]  # row 4 pairs with itself
    got = mrl_loss(Z, ZM, t, 2.0)
    assert float(got) == pytest.approx(official_mrl(Z, ZM, t, 2.0), abs=1e-6)
    # a tolerance-based test (>= 1 - 1e-6) would drop rows 0..3 too: the value would differ
    keep_tol = (~(t >= 1 - 1e-6).any(1)).float()
    hinge = F.relu(ZM.max(1).values - Z.max(1).values + 2.0)
    assert abs(float(keep_tol.mean() * hinge.mean()) - float(got)) > 0.1


def test_same_class_rows_match_the_official_test_on_small_alpha_draws():
    rng = np.random.default_rng(0)
    lams = rng.beta(0.1, 0.1, size=4000)
    y = torch.tensor([0, 1])
    onehot = F.one_hot(y, 2).float()
    near_one = 0
    for lam in lams:
        t = mixed_copy_targets(y, 2, [float(lam)], [torch.tensor([1, 0])])
        official = (onehot * lam + onehot[[1, 0]] * (1 - lam) == 1.0).sum(dim=1) > 0  # target_re == 1.0
        assert same_class_rows(t).tolist() == official.tolist()
        near_one += int(bool(((t >= 1 - 1e-6) & (t != 1.0)).any()))
    assert near_one > 0  # draws where a tolerance would have changed the answer occur


def test_plugin_keeps_lam_in_float64_so_the_same_class_test_matches_the_official_one(monkeypatch):
    """lam = 2^-25 (1 + 2e-8) with two different classes: the official float64 lam gives
    ``1 - lam`` = float32(1 - 2^-24) (no entry is 1.0, MRL = mean(hinge) = 1.5); a float32 lam
    rounds to 2^-25 and ``1 - lam`` to exactly 1.0 (a same-class pair, MRL = 0)."""
    lam = 2.0**-25 * (1 + 2e-8)
    trainer = Trainer({**CNN, "rankmixup": {"variant": "mrl"}}, write=False)
    state = trainer.state
    monkeypatch.setattr(plugin, "sample_lams", lambda m, alpha, generator: [lam] * m)
    monkeypatch.setattr(plugin, "_permutation", lambda b, *args: torch.arange(b).flip(0))
    batch = Batch(inputs=torch.zeros(2, 3, 16, 16), targets=torch.tensor([0, 1]), index=torch.arange(2))
    plan = trainer.host.slot("sample_pairs", batch=batch, state=state).resolve(batch)
    assert plan.extras["views"][0]["lam"].dtype == torch.float64
    mixed = trainer.host.slot("mix_batch", batch=batch, plan=plan, state=state)
    z = torch.tensor([[2.0, 0.0] + [0.0] * 8, [1.0, 0.5] + [0.0] * 8])
    zm = z - 0.5  # every hinge is relu(-0.5 + 2) = 1.5
    aux = plugin.mixhub_aux_losses({"logits": z, "mixed_logits": zm}, mixed, plan, state)["rankmixup_mrl"]
    # the official computation: NumPy float64 lam times the float32 one-hot targets
    onehot = F.one_hot(batch.targets, 10).float()
    lam64 = np.float64(lam)
    official_t = lam64 * onehot + (1 - lam64) * onehot[[1, 0]]
    assert not bool((official_t == 1.0).any())
    assert torch.equal(mixed.extras["rank_targets"], official_t)
    assert official_mrl(z, zm, official_t, 2.0) == pytest.approx(1.5)
    assert float(aux) == pytest.approx(1.5)
    # the float32 lam the plugin used to store would flip the test
    lam32 = float(torch.tensor(lam, dtype=torch.float32))
    assert bool(same_class_rows(mixed_copy_targets(batch.targets, 10, [lam32], [torch.tensor([1, 0])])).all())


# ----------------------------------------------------------------------------- ignore_index
Y = torch.tensor([0, 1, -100, 2, 1])
PERM = torch.tensor([1, 0, 3, 2, 4])  # rows 2 and 3 swap: both lose their ranking term


def test_ranking_rows_drop_unlabelled_samples_and_their_partners():
    assert ranking_rows(Y, [PERM], -100).tolist() == [True, True, False, False, True]
    assert ranking_rows(Y, [PERM], None) is None
    two = [PERM, torch.tensor([4, 1, 2, 3, 0])]
    assert ranking_rows(Y, two, -100).tolist() == [True, True, False, False, True]
    assert ranking_rows(Y, [torch.tensor([2, 1, 0, 3, 4])], -100).tolist() == [False, True, False, True, True]


def test_ignore_index_matches_the_official_loss_on_the_labelled_batch():
    t = mixed_copy_targets(Y, 3, [0.7], [PERM], ignore_index=-100)
    assert torch.allclose(t[2], torch.tensor([0.0, 0.0, 0.3]))  # the unlabelled source contributes nothing
    got = rankmixup_loss(Z, Y, ZM, t, "mrl", margin=2.0, weight=0.1, ignore_index=-100, perms=[PERM])
    keep = torch.tensor([0, 1, 4])
    ce = F.cross_entropy(Z[[0, 1, 3, 4]], Y[[0, 1, 3, 4]])  # the official filter: labelled rows only
    term = official_mrl(Z[keep], ZM[keep], t[keep], 2.0)
    assert float(got) == pytest.approx(float(ce) + 0.1 * term, abs=1e-6)
    assert float(F.cross_entropy(Z, Y, ignore_index=-100)) == pytest.approx(float(ce), abs=1e-6)


def test_ignore_index_mndcg_uses_the_labelled_samples_only():
    perms = [PERM, torch.tensor([4, 2, 1, 0, 3])]
    t = mixed_copy_targets(Y, 3, [0.7, 0.4], perms, ignore_index=-100)
    zm = torch.cat([ZM, ZM.flip(0) * 0.5])
    valid = ranking_rows(Y, perms, -100)
    assert valid.tolist() == [True, False, False, False, True]  # row 1's second partner is unlabelled
    got = mndcg_loss(Z, zm, t, 2, valid=valid)
    keep = torch.tensor([0, 4])
    sub_t = torch.cat([t[:5][keep], t[5:][keep]])
    sub_zm = torch.cat([zm[:5][keep], zm[5:][keep]])
    assert float(got) == pytest.approx(float(mndcg_loss(Z[keep], sub_zm, sub_t, 2)), abs=1e-7)


def test_ignore_index_with_no_labelled_row_is_a_zero_term_with_a_graph():
    z = Z.clone().requires_grad_()
    y = torch.full((5,), -1)
    t = mixed_copy_targets(y, 3, [0.7], [PERM], ignore_index=-1)
    loss = rankmixup_loss(z, y, ZM, t, "mrl", ignore_index=-1, perms=[PERM])
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))


def test_ignore_index_needs_the_permutations():
    with pytest.raises(ValueError, match="perms"):
        rankmixup_loss(Z, Y, ZM, ZM.softmax(1), ignore_index=-100)


# ----------------------------------------------------------------------------- layer_mix (functional)
class Net(nn.Module):
    """A trunk, a mixing layer and a head (the official CIFAR ResNet's shape: layer4 -> pool -> fc)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.layer4 = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(self.layer4(self.trunk(x)).mean((2, 3)))


def test_mix_at_layer_matches_mixing_the_layer_output_by_hand():
    net = Net()
    x = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    lams, perms = [0.7, 0.25], [torch.tensor([1, 0, 3, 2]), torch.tensor([3, 2, 1, 0])]
    h = net.layer4(net.trunk(x))
    expect = net.fc(torch.cat([0.7 * h + 0.3 * h[perms[0]], 0.25 * h + 0.75 * h[perms[1]]]).mean((2, 3)))
    with mix_at_layer(net.layer4, lams, perms):
        got = net(x)
    assert got.shape == (8, 3)
    assert torch.allclose(got, expect, atol=1e-6)
    with mix_at_layer(net.layer4, lams, perms, keep_raw=True):
        both = net(x)
    assert torch.allclose(both[:4], net(x), atol=1e-6) and torch.allclose(both[4:], expect, atol=1e-6)
    assert torch.allclose(net(x), net.fc(h.mean((2, 3))))  # the hook is gone after the block


def test_mix_at_layer_is_input_mixing_on_an_identity_layer():
    net = nn.Sequential(nn.Identity(), nn.Linear(3, 2))
    x = torch.randn(4, 3)
    perms = [torch.tensor([2, 3, 0, 1])]
    with mix_at_layer(net[0], [0.6], perms):
        got = net(x)
    assert torch.allclose(got, net(mix_copies(x, [0.6], perms)), atol=1e-6)


def test_mix_at_layer_errors():
    net = Net()
    with pytest.raises(RuntimeError, match="did not run"), mix_at_layer(net.layer4, [0.5], [torch.arange(2)]):
        net.fc(torch.randn(2, 6))
    shared = nn.Linear(3, 3)
    twice = nn.Sequential(shared, shared)
    with pytest.raises(RuntimeError, match="twice"), mix_at_layer(shared, [0.5], [torch.arange(2)]):
        twice(torch.randn(2, 3))


def test_mix_at_layer_on_a_timm_resnet_mixes_layer4():
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet10t", num_classes=3).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    lams, perms = [0.8], [torch.tensor([1, 0])]
    with torch.no_grad():
        expect = model.forward_head(mix_copies(model.forward_features(x), lams, perms))
        with mix_at_layer(model.layer4, lams, perms):
            got = model(x)
    assert torch.allclose(got, expect, atol=1e-5)


# ----------------------------------------------------------------------------- the plugin
CNN = {
    "seed": 0,
    "plugins": ["rankmixup"],
    "data": {"name": "digits", "image_size": 16, "train_frac": 0.3},
    "model": {"name": "smallcnn", "kwargs": {"widths": [4, 8, 8]}},
    "train": {"epochs": 1, "batch_size": 16, "max_steps_per_epoch": 2, "clip_grad_norm": 2.0,
              "checkpoint": False, "plots": False},
    "optimizer": {"name": "momentum"},
}


def _step_parts(options):
    trainer = Trainer({**CNN, "rankmixup": options}, write=False)
    batch = next(iter(trainer.loader))
    state = trainer.state
    plan = trainer.host.slot("sample_pairs", batch=batch, state=state).resolve(batch)
    mixed = trainer.host.slot("mix_batch", batch=batch, plan=plan, state=state)
    return trainer, batch, plan, mixed


@pytest.mark.parametrize("layer, module", [("last", "stages.2"), ("stages.1", "stages.1")])
def test_plugin_feature_mixing_matches_the_official_forward(layer, module):
    trainer, batch, plan, mixed = _step_parts({"layer_mix": layer, "variant": "mndcg", "num_mixup": 2})
    assert "rank_inputs" not in mixed.extras
    model = trainer.model
    outputs = trainer.host.slot("forward", model=model, batch=mixed, plan=plan, state=trainer.state)
    lams = [float(v["lam"][0]) for v in plan.extras["views"]]
    perms = [v["index"] for v in plan.extras["views"]]
    # official forward_multimixup: the raw batch up to the layer, the copies mixed there, then the rest
    stages = model.stages
    split = int(module.split(".")[1]) + 1
    h = x = batch.inputs
    for stage in stages[:split]:
        h = stage(h)
    h = mix_copies(h, lams, perms)
    for stage in stages[split:]:
        h = stage(h)
    expect = model.forward_head(h)
    assert torch.allclose(outputs["mixed_logits"], expect, atol=1e-5)
    assert torch.allclose(outputs["logits"], model(x), atol=1e-5)
    t = mixed.extras["rank_targets"]
    assert torch.allclose(t, mixed_copy_targets(batch.targets, 10, lams, perms))


def test_plugin_feature_mixing_trains_and_one_call_mode_agrees():
    trainer, batch, plan, mixed = _step_parts({"layer_mix": "last"})
    loss = trainer.train_step(batch)
    assert math.isfinite(float(loss["loss"] if isinstance(loss, dict) else loss))
    sep, _, plan2, mixed2 = _step_parts({"layer_mix": "last"})
    one, _, _, _ = _step_parts({"layer_mix": "last", "separate_forward": False})
    sep.model.eval(), one.model.eval()  # same weights; eval mode so BatchNorm does not see the batch split
    a = sep.host.slot("forward", model=sep.model, batch=mixed2, plan=plan2, state=sep.state)
    b = one.host.slot("forward", model=one.model, batch=mixed2, plan=plan2, state=one.state)
    assert torch.allclose(a["mixed_logits"], b["mixed_logits"], atol=1e-5)
    assert torch.allclose(a["logits"], b["logits"], atol=1e-5)


def test_plugin_unknown_layer_fails_at_startup_naming_the_field():
    with pytest.raises(Exception, match="rankmixup.layer_mix: the model has no module 'stages.9'") as info:
        Trainer({**CNN, "rankmixup": {"layer_mix": "stages.9"}}, write=False)
    assert isinstance(info.value, ConfigError) or isinstance(info.value.__cause__, ConfigError)


def test_plugin_ignore_index_permutes_labelled_samples_only_and_matches_functional():
    trainer = Trainer({**CNN, "rankmixup": {"ignore_index": -1, "variant": "mndcg", "num_mixup": 3}}, write=False)
    batch = next(iter(trainer.loader))
    targets = batch.targets.clone()
    targets[[1, 4, 5]] = -1
    batch = Batch(inputs=batch.inputs, targets=targets, index=batch.index)
    state = trainer.state
    plan = trainer.host.slot("sample_pairs", batch=batch, state=state).resolve(batch)
    labelled = targets != -1
    for view in plan.extras["views"]:
        idx = view["index"]
        assert sorted(idx.tolist()) == list(range(batch.size))
        assert idx[[1, 4, 5]].tolist() == [1, 4, 5]  # unlabelled samples stay in place
        assert bool(labelled[idx][labelled].all())  # labelled samples pair with labelled ones
    assert any(not torch.equal(v["index"], torch.arange(batch.size)) for v in plan.extras["views"])
    mixed = trainer.host.slot("mix_batch", batch=batch, plan=plan, state=state)
    out = trainer.host.slot("forward", model=trainer.model, batch=mixed, plan=plan, state=state)
    out = {k: v.detach() for k, v in out.items()}
    ce = plugin.mixhub_compute_loss(out, mixed, plan, state)
    assert float(ce) == pytest.approx(float(F.cross_entropy(out["logits"], targets, ignore_index=-1)), abs=1e-6)
    aux = plugin.mixhub_aux_losses(out, mixed, plan, state)["rankmixup_mndcg"]
    keep = labelled.nonzero().squeeze(1)
    b = batch.size
    sub_zm = torch.cat([out["mixed_logits"][k * b : (k + 1) * b][keep] for k in range(3)])
    sub_t = torch.cat([mixed.extras["rank_targets"][k * b : (k + 1) * b][keep] for k in range(3)])
    assert float(aux) == pytest.approx(float(mndcg_loss(out["logits"][keep], sub_zm, sub_t, 3)), abs=1e-6)
