import mixhub_manifold.plugin as plugin
import torch
from mixhub_manifold import manifold_forward, mix_hidden

from mixhub import MixPlan
from mixhub.models import SmallCNN
from mixhub.testing import Contract, tiny_config


def test_mix_hidden_formula():
    h = torch.arange(12.0).reshape(3, 4)
    plan = MixPlan.pairs(torch.tensor([2, 0, 1]), torch.tensor([0.5, 1.0, 0.25]))
    expect = torch.stack([0.5 * h[0] + 0.5 * h[2], h[1], 0.25 * h[2] + 0.75 * h[1]])
    assert torch.allclose(mix_hidden(h, plan), expect)


def test_forward_hook_mixes_the_named_stage_and_is_removed():
    torch.manual_seed(0)
    m = SmallCNN(3, 5, (4, 8)).eval()
    x = torch.randn(4, 3, 8, 8)
    plan = MixPlan.pairs(torch.tensor([1, 0, 3, 2]), 0.3)
    out = manifold_forward(m, x, plan, "stages.0")
    h = m.stages[0](x)
    ref = m.forward_head(m.stages[1](0.3 * h + 0.7 * h[[1, 0, 3, 2]]))
    assert torch.allclose(out, ref, atol=1e-5)
    assert not m.stages[0]._forward_hooks


def test_contracts(tmp_path):
    c = Contract(tmp_path)
    cfg = tiny_config(plugins=["manifold"])
    c.hooks_in_order(cfg, {"manifold": plugin})
    c.determinism(cfg, lambda: {"manifold": plugin})
    c.resume_equality(cfg, lambda: {"manifold": plugin})
