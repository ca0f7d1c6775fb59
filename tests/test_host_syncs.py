"""The training step of ERM and of every in-tree training plugin makes no device-to-host read
between log steps, and at most one at a log step (``benchmarks/host_syncs.py`` on a tiny run,
counted by ``mixhub.hostsync.HostSyncCounter``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers_scripts import load_script

from mixhub.hostsync import HostSyncCounter

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "host_syncs.py"


def _bench():
    return load_script(BENCH, "host_syncs_bench")


ARMS = [a[0] for a in _bench().arms()]


def test_every_training_plugin_has_an_arm():
    names = set(ARMS)
    for plugin in _bench().training_plugins():
        assert plugin in names
    assert {"erm", "mixup-cutmix", "decoupled-elem", "decoupled-ksource", "replay", "dualmix"} <= names


@pytest.mark.parametrize("arm", ARMS)
def test_no_sync_between_log_steps(arm):
    counts = _bench().quick_counts(arm, steps=5, log_every=3)
    rows = counts.steps[1:]  # the first step allocates optimizer state and checks loss names once
    plain = [(n, sites) for log_step, n, _, sites in rows if not log_step]
    logged = [n for log_step, n, _, _ in rows if log_step]
    assert plain and logged, "the run must have steps between log steps and log steps"
    assert all(n == 0 for n, _ in plain), f"{arm}: host reads between log steps: {[s for n, s in plain if n]}"
    assert max(logged) <= 1, f"{arm}: {max(logged)} reads at a log step"


def test_counter_tells_device_reads_from_host_reads():
    """The counter itself: device values count, host values (CPU-generator draws, Python numbers,
    their results) do not, and a host tensor written with device values becomes a device one."""
    x = torch.randn(4)  # made outside: a device tensor for the counter
    g = torch.Generator().manual_seed(0)
    item = torch.Tensor.item
    with HostSyncCounter() as c:
        int(torch.randint(0, 10, (1,), generator=g))  # host draw
        float(torch.tensor(0.3) * 2)  # host arithmetic
        moved = torch.tensor([1.0, 2.0]).to("cpu")  # a "device" copy (the host tensor stays host)
        assert c.count == 0 and c.host_reads == 2
        bool((x > 0).any())
        x.cpu().tolist()  # one read: the copy, not its tolist
        _ = x[x > 0]  # boolean-mask indexing
        float(moved.sum())
        h = torch.zeros(2)
        h.add_(x[:2])
        float(h.sum())
        float(torch.ones(2, device="cpu").sum())  # made with device=: a device tensor
    assert c.count == 6, c.sites()
    assert all(site.startswith("tests/test_host_syncs.py:") for site in c.sites())
    assert torch.Tensor.item is item  # patched methods are restored


def test_counter_leaves_torch_as_it_found_it():
    """Leaving the counter restores torch.Tensor's own attributes: a wrapper put back on the Python
    class (instead of removed) would shadow the C slots, and torch would then treat 0-d tensors as
    sequences (``torch.tensor([t0, t1])`` raising ``len() of a 0-d tensor``)."""
    before = dict(vars(torch.Tensor))
    with HostSyncCounter():
        pass
    assert dict(vars(torch.Tensor)) == before
    e = torch.tensor(1.0)
    assert torch.tensor([[e, e]]).shape == (1, 2)


def test_boolean_mask_indexing_counts_and_plain_indexing_does_not():
    x = torch.randn(6)  # made outside the counter: a device tensor as far as it knows
    with HostSyncCounter() as counter:
        mask = x > 0
        x[mask]
        x[mask] = 0.0
        x[torch.arange(2)]
    assert counter.count == 2
    assert sorted(s.split(" (")[1] for s in counter.sites()) == ["bool-mask getitem)", "bool-mask setitem)"]
