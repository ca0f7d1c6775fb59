"""``mix_shuffle_no_repeat`` against a transcription of the official ``_no_repeat_shuffle_idx``."""

from __future__ import annotations

import copy

import pytest
import torch
from mixhub_adautomix import no_repeat_permutation
from test_adautomix_plugin import TINY

from mixhub.trainer import Trainer


def official_no_repeat(n, g, ignore_failure):
    """The official loop, step by step (torch's generator in place of the global RNGs)."""
    idx_shuffle = torch.randperm(n, generator=g)
    idx_original = torch.tensor([i for i in range(n)])
    idx_repeat = False
    for _ in range(10):
        if (idx_original == idx_shuffle).any():
            idx_repeat = True
            idx_shuffle = torch.randperm(n, generator=g)
        else:
            idx_repeat = False
            break
    if idx_repeat and not ignore_failure:
        idx_shift = int(torch.randint(1, n - 1, (1,), generator=g))
        idx_shuffle = torch.tensor([(i + idx_shift) % n for i in range(n)])
    return idx_shuffle


@pytest.mark.parametrize("ignore_failure", [False, True])
def test_matches_the_official_loop_including_failures(ignore_failure):
    failures = 0
    for seed in range(400):
        for n in (3, 4, 9):
            got = no_repeat_permutation(n, torch.Generator().manual_seed(seed), ignore_failure=ignore_failure)
            g = torch.Generator().manual_seed(seed)
            expect = official_no_repeat(n, g, ignore_failure)
            assert torch.equal(got, expect), (seed, n)
            assert sorted(got.tolist()) == list(range(n))
            if not ignore_failure:
                assert not bool((got == torch.arange(n)).any())
            # count the seeds where all 11 draws had a fixed point (the fallback or the unchecked draw)
            g2 = torch.Generator().manual_seed(seed)
            draws = [torch.randperm(n, generator=g2) for _ in range(10)]
            failures += int(all(bool((d == torch.arange(n)).any()) for d in draws))
    assert failures > 0  # the failure branch was exercised


def test_small_sizes():
    assert no_repeat_permutation(1).tolist() == [0]
    for seed in range(50):
        assert no_repeat_permutation(2, torch.Generator().manual_seed(seed)).tolist() == [1, 0]
    with pytest.raises(ValueError):
        no_repeat_permutation(0)


@pytest.mark.parametrize("n", [2, 3])
def test_plugin_partners_move_every_sample(n):
    c = copy.deepcopy(TINY)
    c["adautomix"].update(mix_samples=n, mix_shuffle_no_repeat=True)
    c["train"]["checkpoint"] = False
    trainer = Trainer(c, write=False)
    batch = next(iter(trainer.loader))
    ident = torch.arange(batch.size)
    state = trainer.state
    for _ in range(20):
        plan = trainer.host.slot("sample_pairs", batch=batch, state=state)
        mb = plan.extras["mb_index"]
        strict = mb[1] if n == 2 else mb[0]
        assert not bool((strict == ident).any())
        for p in (*mb, *plan.extras["bb_index"]):
            assert sorted(p.tolist()) == list(range(batch.size))
    # the draws follow the official order: classifier branch (lenient) first, then generator branch
    g = torch.Generator().manual_seed(123)
    state.generator.manual_seed(123)
    plan = trainer.host.slot("sample_pairs", batch=batch, state=state)
    if n == 2:
        from mixhub_adautomix import sample_mix_lambdas

        sample_mix_lambdas(2, 1.0, g, sampler="raw_beta")
        bb = official_no_repeat(batch.size, g, True)
        mb = official_no_repeat(batch.size, g, False)
        assert torch.equal(plan.extras["bb_index"][1], bb) and torch.equal(plan.extras["mb_index"][1], mb)


def _all_checked_draws_fail(n, seed):
    """Whether the 10 checked draws of ``seed`` all have a fixed point (the failure branch)."""
    g = torch.Generator().manual_seed(seed)
    return all(bool((torch.randperm(n, generator=g) == torch.arange(n)).any()) for _ in range(10))


@pytest.mark.parametrize("n,seed", [(2, 1635), (3, 119)])
def test_failure_branch_result_and_generator_state(n, seed):
    """Seeds whose checked draws all fail: the default (strict) call shifts, consumes the
    official ``randint`` only for n > 2, and leaves the generator where the official loop does."""
    assert _all_checked_draws_fail(n, seed)
    g = torch.Generator().manual_seed(seed)
    got = no_repeat_permutation(n, g)
    g_ref = torch.Generator().manual_seed(seed)
    expect = torch.arange(n).roll(-1) if n == 2 else official_no_repeat(n, g_ref, False)
    if n == 2:  # the official range is empty for n = 2: the plugin uses the one derangement
        for _ in range(11):
            torch.randperm(n, generator=g_ref)
    assert got.tolist() == expect.tolist() == ([1, 0] if n == 2 else [1, 2, 0])
    assert torch.equal(g.get_state(), g_ref.get_state())


def test_zero_tries_keeps_the_first_draw_unchecked():
    for seed in range(20):
        first = torch.randperm(4, generator=torch.Generator().manual_seed(seed))
        got = no_repeat_permutation(4, torch.Generator().manual_seed(seed), tries=0)
        assert torch.equal(got, first), seed


def test_size_error_names_the_function():
    with pytest.raises(ValueError, match=r"^no_repeat_permutation: n must be >= 1, got 0$"):
        no_repeat_permutation(0)
