"""C-Mixup functional API: the spec's test vectors, independent computations, samplers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mixhub_cmixup import (
    SortedLabelBank,
    cmixup_batch,
    effective_bandwidth,
    pair_log_probabilities,
    pair_probabilities,
    pool_partners,
    sample_lam,
    sample_partners,
)
from scipy.stats import chisquare

Y4 = torch.tensor([[0.0], [0.5], [1.0], [3.0]], dtype=torch.float64)
TV_C1 = torch.tensor(
    [
        [0.399978, 0.352979, 0.242599, 0.004443],
        [0.314175, 0.356007, 0.314175, 0.015642],
        [0.231115, 0.336271, 0.381045, 0.051569],
        [0.009332, 0.036910, 0.113691, 0.840067],
    ],
    dtype=torch.float64,
)
TV_C1_NO_SELF = torch.tensor(
    [
        [0, 0.588278, 0.404317, 0.007405],
        [0.487856, 0, 0.487856, 0.024289],
        [0.373396, 0.543288, 0, 0.083316],
        [0.058351, 0.230784, 0.710865, 0],
    ],
    dtype=torch.float64,
)


def sklearn_rows(y: np.ndarray, bandwidth: float, kernel: str = "gaussian") -> np.ndarray:
    """The official construction: one KernelDensity fit per row, scored on every label."""
    from sklearn.neighbors import KernelDensity

    y = y.reshape(len(y), -1)
    rows = []
    for i in range(len(y)):
        kd = KernelDensity(kernel=kernel, bandwidth=bandwidth).fit(y[i : i + 1])
        r = np.exp(kd.score_samples(y))
        rows.append(r / r.sum())
    return np.array(rows)


# ----------------------------------------------------------------------------- test vectors
def test_tv_c1_gaussian_matches_spec_and_sklearn():
    p = pair_probabilities(Y4, Y4, 1.0)
    assert torch.allclose(p, TV_C1, atol=1e-6)
    assert np.allclose(p.numpy(), sklearn_rows(Y4.numpy(), 1.0), atol=1e-12)
    assert torch.allclose(p.sum(1), torch.ones(4, dtype=torch.float64))
    assert torch.equal(p.argmax(1)[:3], torch.tensor([0, 1, 2]))  # the diagonal dominates its row


def test_tv_c4_tophat():
    p = pair_probabilities(Y4, Y4, 0.75, "tophat")
    want = torch.tensor(
        [[0.5, 0.5, 0, 0], [1 / 3, 1 / 3, 1 / 3, 0], [0, 0.5, 0.5, 0], [0, 0, 0, 1]], dtype=torch.float64
    )
    assert torch.allclose(p, want, atol=1e-6)
    assert np.allclose(p.numpy(), sklearn_rows(Y4.numpy(), 0.75, "tophat"), atol=1e-12)


@pytest.mark.parametrize("method", ["gumbel", "sorted"])
def test_tophat_boundary_is_strict_as_sklearn(method):
    """A label exactly one bandwidth away is outside the tophat (sklearn: ``d < h``), in the
    probabilities and in both samplers; a label a hair inside is in."""
    y = torch.tensor([[0.0], [0.5], [1.0], [1.4999999]], dtype=torch.float64)  # 0.5 apart, exactly
    p = pair_probabilities(y, y, 0.5, "tophat")
    want = torch.tensor(
        [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0.5, 0.5], [0, 0, 0.5, 0.5]], dtype=torch.float64
    )
    assert torch.equal(p, want)
    assert np.array_equal(p.numpy(), sklearn_rows(y.numpy(), 0.5, "tophat"))
    g = torch.Generator().manual_seed(0)
    idx = sample_partners(y[:2, 0].repeat(200), y[:, 0], 0.5, g, "tophat", method=method)
    assert torch.equal(idx, torch.tensor([0, 1]).repeat(200))  # never the neighbour at distance 0.5
    idx = sample_partners(y[2:3, 0].repeat(400), y[:, 0], 0.5, g, "tophat", method=method)
    assert set(idx.tolist()) == {2, 3}
    with pytest.raises(ValueError, match="no admissible partner under the tophat kernel"):
        sample_partners(y[:1, 0], y[:, 0], 0.5, g, "tophat", exclude_index=torch.tensor([0]), method=method)


def test_tv_c5_one_dimensional_labels_equal_tv_c1():
    p = pair_probabilities(Y4[:, 0], Y4[:, 0], 1.0)
    assert torch.allclose(p, TV_C1, atol=1e-6)


def test_tv_c7_pool_row():
    pool = torch.tensor([0.1, 0.2, 0.9, 0.15, 0.5, 0.95, 0.12, 0.55], dtype=torch.float64)
    row = pair_probabilities(pool, pool, 0.2)[0]
    want = torch.tensor(
        [0.246179, 0.217252, 0.000083, 0.238604, 0.033317, 0.000029, 0.244951, 0.019586], dtype=torch.float64
    )
    assert torch.allclose(row, want, atol=1e-6)


def test_tv_c1_without_self():
    p = pair_probabilities(Y4, Y4, 1.0, exclude_index=torch.arange(4))
    assert torch.allclose(p, TV_C1_NO_SELF, atol=1e-6)
    assert torch.all(p.diagonal() == 0)
    logp = pair_log_probabilities(Y4, Y4, 1.0, exclude_index=torch.arange(4))
    assert torch.all(torch.isneginf(logp.diagonal()))


def test_multidimensional_labels_use_summed_squared_distance():
    g = torch.Generator().manual_seed(1)
    y = torch.rand(7, 3, generator=g, dtype=torch.float64)
    p = pair_probabilities(y, y, 0.4)
    d2 = ((y[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    w = np.exp(-d2.numpy() / (2 * 0.4**2))
    assert np.allclose(p.numpy(), w / w.sum(1, keepdims=True), atol=1e-12)
    assert np.allclose(p.numpy(), sklearn_rows(y.numpy(), 0.4), atol=1e-10)
    with pytest.raises(ValueError, match=r"\(7, 3\).*\(5, 2\)"):
        pair_probabilities(y, torch.rand(5, 2), 0.4)


# ----------------------------------------------------------------------------- properties
def test_bandwidth_limits():
    huge = pair_probabilities(Y4, Y4, 1e6)
    assert torch.allclose(huge, torch.full_like(huge, 0.25), atol=1e-6)
    tiny = pair_probabilities(Y4, Y4, 1e-4)
    assert torch.allclose(tiny, torch.eye(4, dtype=torch.float64), atol=1e-12)
    g = torch.Generator().manual_seed(0)
    for method in ("gumbel", "sorted"):
        idx = sample_partners(Y4.repeat(50, 1), Y4, 1e-4, g, method=method)
        assert torch.equal(idx, torch.arange(4).repeat(50))


def test_shift_and_permutation_invariance():
    g = torch.Generator().manual_seed(2)
    y = torch.randn(9, 2, generator=g, dtype=torch.float64)
    p = pair_probabilities(y, y, 0.7)
    assert torch.allclose(pair_probabilities(y + 5.0, y + 5.0, 0.7), p, atol=1e-10)
    perm = torch.randperm(9, generator=g)
    assert torch.allclose(pair_probabilities(y, y[perm], 0.7), p[:, perm], atol=1e-12)


def test_stability_high_dimension_small_bandwidth():
    g = torch.Generator().manual_seed(3)
    y = torch.rand(20, 321, generator=g)
    p = pair_probabilities(y, y, 0.05)
    assert torch.isfinite(p).all()
    assert torch.allclose(p.sum(1), torch.ones(20), atol=1e-5)


def test_float_precision_follows_inputs():
    assert pair_probabilities(Y4.float(), Y4.float(), 1.0).dtype == torch.float32
    assert pair_probabilities(Y4, Y4, 1.0).dtype == torch.float64


# ----------------------------------------------------------------------------- sampling
def test_sampling_frequency_row0_of_tv_c1():
    g = torch.Generator().manual_seed(0)
    n = 200_000
    for method in ("gumbel", "sorted"):
        idx = sample_partners(Y4[:1].repeat(n, 1), Y4, 1.0, g, method=method)
        freq = torch.bincount(idx, minlength=4).double() / n
        assert torch.allclose(freq, TV_C1[0], atol=0.005), (method, freq)


def test_chunking_gives_identical_draws():
    g0 = torch.Generator().manual_seed(11)
    q = torch.rand(6, generator=g0)
    bank = torch.rand(10, generator=g0)
    outs = []
    for chunk in (None, 1, 3, 10):
        g = torch.Generator().manual_seed(5)
        outs.append(sample_partners(q, bank, 0.3, g, chunk_size=chunk, method="gumbel"))
    for o in outs[1:]:
        assert torch.equal(o, outs[0])
    g = torch.Generator().manual_seed(5)
    assert torch.equal(
        sample_partners(q, bank, 0.3, g, method="gumbel", element_budget=7), outs[0]
    )  # budget -> streamed chunks


def _chi2_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Chi-square p-value; cells expecting fewer than 5 draws are pooled into one cell."""
    assert counts[probs == 0].sum() == 0, "a zero-probability partner was drawn"
    exp = probs.double() * counts.sum()
    big = exp >= 5
    obs = torch.cat([counts[big].double(), counts[~big].double().sum().reshape(1)])
    want = torch.cat([exp[big], exp[~big].sum().reshape(1)])
    if float(want[-1]) < 5:  # fold a tiny pooled cell into the smallest regular one
        if len(obs) == 2:  # one dominant cell: the rare ones must stay rare
            return 1.0 if float(obs[-1]) <= float(want[-1]) + 5 * max(float(want[-1]), 1.0) ** 0.5 else 0.0
        obs, want = obs[:-1].clone(), want[:-1].clone()
        obs[want.argmin()] += counts[~big].sum()
        want[want.argmin()] += exp[~big].sum()
    return float(chisquare(obs.numpy(), want.numpy()).pvalue)


@pytest.mark.parametrize("method", ["gumbel", "sorted"])
@pytest.mark.parametrize("bandwidth", [0.003, 0.05, 0.3, 5.0])
@pytest.mark.parametrize("exclude", [False, True])
def test_sampled_partners_follow_pair_probabilities(method, bandwidth, exclude):
    """Chi-square of 40k draws per query against the closed form (ties and clusters included)."""
    g = torch.Generator().manual_seed(7)
    bank = torch.cat(
        [torch.rand(60, generator=g), torch.full((5,), 0.5), 3 + torch.rand(5, generator=g)]
    ).double()
    queries = torch.tensor([0, 17, 62, 66])  # bank members (so exclusion means "no self")
    kw = {"exclude_index": queries} if exclude else {}
    probs = pair_probabilities(bank[queries], bank, bandwidth, **kw)
    reps = 20_000
    q = bank[queries].repeat_interleave(reps)
    ex = queries.repeat_interleave(reps) if exclude else None
    sb = SortedLabelBank(bank, block_size=4) if method == "sorted" else bank  # small blocks stress the bounds
    idx = sample_partners(q, sb, bandwidth, g, exclude_index=ex, method=method).reshape(len(queries), reps)
    for r in range(len(queries)):
        counts = torch.bincount(idx[r], minlength=len(bank))
        assert _chi2_pvalue(counts, probs[r]) > 1e-4, (method, bandwidth, exclude, r)


@pytest.mark.parametrize("kernel", ["tophat", "uniform"])
def test_sorted_sampler_other_kernels(kernel):
    g = torch.Generator().manual_seed(8)
    bank = torch.rand(40, generator=g).double()
    queries = torch.tensor([3, 20])
    for exclude in (False, True):
        kw = {"exclude_index": queries.repeat_interleave(30_000)} if exclude else {}
        probs = pair_probabilities(
            bank[queries], bank, 0.2, kernel, exclude_index=queries if exclude else None
        )
        idx = sample_partners(
            bank[queries].repeat_interleave(30_000), bank, 0.2, g, kernel, method="sorted", **kw
        )
        for r, row in enumerate(idx.reshape(2, -1)):
            assert _chi2_pvalue(torch.bincount(row, minlength=40), probs[r]) > 1e-4


def test_generator_reproducibility_and_sorted_bank_reuse():
    bank = torch.rand(1000, generator=torch.Generator().manual_seed(0))
    q = bank[:32]
    sb = SortedLabelBank(bank)
    a = sample_partners(q, sb, 0.05, torch.Generator().manual_seed(3), method="sorted")
    b = sample_partners(q, bank, 0.05, torch.Generator().manual_seed(3), method="sorted")
    assert torch.equal(a, b)
    assert a.dtype == torch.long and int(a.min()) >= 0 and int(a.max()) < 1000


def test_pool_partners_2b_variant():
    """Row 0 of the TV-C7 pool: anchors are pool[:4], the uniform draws pool[4:]."""
    pool = torch.tensor([0.1, 0.2, 0.9, 0.15, 0.5, 0.95, 0.12, 0.55], dtype=torch.float64)
    a_idx, r_idx = torch.tensor([100, 101, 102, 103]), torch.tensor([200, 201, 202, 203])
    ids = torch.cat([a_idx, r_idx])
    g = torch.Generator().manual_seed(0)
    calls = 4000
    picks = torch.stack([pool_partners(pool[:4], a_idx, pool[4:], r_idx, 0.2, g) for _ in range(calls)])
    assert set(picks.unique().tolist()) <= set(ids.tolist())
    freq = torch.stack([(picks[:, 0] == i).double().mean() for i in ids])
    want = torch.tensor(
        [0.246179, 0.217252, 0.000083, 0.238604, 0.033317, 0.000029, 0.244951, 0.019586], dtype=torch.float64
    )
    assert torch.allclose(freq, want, atol=0.02), freq
    out = pool_partners(pool[:4], a_idx, pool[4:], r_idx, 0.2, g, include_self=False)
    assert not torch.any(out == a_idx)


# ----------------------------------------------------------------------------- lam and mixing
def test_sample_lam():
    g = torch.Generator().manual_seed(0)
    lam = sample_lam(2.0, 16, generator=g)
    assert lam.shape == (16,) and torch.all(lam == lam[0]) and 0 < float(lam[0]) < 1
    lam_s = sample_lam(2.0, 4000, per_sample=True, generator=g)
    assert lam_s.unique().numel() > 3000
    assert abs(float(lam_s.mean()) - 0.5) < 0.02
    assert abs(float(lam_s.var()) - 1 / 20) < 0.005  # Beta(2, 2): var = 1 / (4 (2 alpha + 1))
    again = sample_lam(2.0, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, lam)
    with pytest.raises(ValueError):
        sample_lam(0.0, 4)


def test_cmixup_batch_matches_manual_interpolation():
    x, xj = torch.randn(3, 2, 4), torch.randn(3, 2, 4)
    y, yj = torch.randn(3), torch.randn(3)
    xm, ym = cmixup_batch(x, y, xj, yj, 0.3)
    assert torch.allclose(xm, 0.3 * x + 0.7 * xj) and torch.allclose(ym, 0.3 * y + 0.7 * yj)
    lam = torch.tensor([0.1, 0.5, 0.9])
    xm, ym = cmixup_batch(x, y, xj, yj, lam)
    for i in range(3):
        assert torch.allclose(xm[i], lam[i] * x[i] + (1 - lam[i]) * xj[i])
        assert torch.allclose(ym[i], lam[i] * y[i] + (1 - lam[i]) * yj[i])


def test_effective_bandwidth_units():
    bank = torch.tensor([[0.0, 0.0], [2.0, 4.0]])
    assert effective_bandwidth(0.5, bank, "raw") == 0.5
    # per-dimension variances 1 and 4 -> pooled std sqrt(2.5)
    assert effective_bandwidth(0.5, bank, "std") == pytest.approx(0.5 * 2.5**0.5)


# ----------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="NaN"):
        pair_probabilities(Y4, torch.tensor([0.0, float("nan")]), 1.0)
    with pytest.raises(ValueError, match="NaN"):
        sample_partners(torch.tensor([float("nan")]), Y4, 1.0)
    with pytest.raises(ValueError, match="empty"):
        sample_partners(Y4, torch.zeros(0, 1), 1.0)
    with pytest.raises(ValueError, match="empty"):
        SortedLabelBank(torch.zeros(0))
    for bw in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="bandwidth"):
            pair_probabilities(Y4, Y4, bw)
        with pytest.raises(ValueError, match="bandwidth"):
            sample_partners(Y4, Y4, bw, method="sorted")
    with pytest.raises(ValueError, match="kernel"):
        pair_probabilities(Y4, Y4, 1.0, "epanechnikov")
    with pytest.raises(ValueError, match="row 3"):
        pair_probabilities(Y4, Y4, 0.75, "tophat", exclude_index=torch.arange(4))
    for method in ("gumbel", "sorted"):
        with pytest.raises(ValueError, match="row 3"):
            sample_partners(Y4, Y4, 0.75, kernel="tophat", exclude_index=torch.arange(4), method=method)
        with pytest.raises(ValueError, match="no admissible"):
            sample_partners(Y4[:1], Y4[:1], 1.0, exclude_index=torch.tensor([0]), method=method)
    with pytest.raises(ValueError, match="1-D"):
        sample_partners(torch.rand(3, 2), torch.rand(5, 2), 1.0, method="sorted")
    with pytest.raises(ValueError, match="exclude_index"):
        sample_partners(Y4, Y4, 1.0, exclude_index=torch.tensor([0, 1]))
