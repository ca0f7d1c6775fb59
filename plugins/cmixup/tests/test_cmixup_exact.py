"""C-Mixup functional API, exactly: seeded draws replayed by hand, dtypes, devices, messages.

The sorted sampler's tophat and uniform kernels draw one float64 uniform per query and take
that quantile of the admissible partners (in sorted label order for the tophat, in bank order
for the uniform kernel). The tests replay the generator and compute the admissible set with
the brute-force kernel (``pair_probabilities``), on labels placed within an ulp of the tophat's
edges, where ``q +- bandwidth`` and the kernel's ``|y - q| / bandwidth < 1`` disagree.
"""

from __future__ import annotations

import bisect
import math

import numpy as np
import pytest
import torch
from mixhub_cmixup import (
    SortedLabelBank,
    as_label_matrix,
    cmixup_batch,
    effective_bandwidth,
    pair_probabilities,
    pool_partners,
    sample_lam,
    sample_partners,
)

BW = 0.7
Y1 = torch.tensor([0.0, 1.0])
# (query, label) with the label within an ulp of the query's tophat edge (bandwidth 0.7):
LO_IN = (3.802, 3.1020000000000003)  # label <= query - bw in floating point, yet inside
LO_OUT = (0.577, -0.12299999999999998)  # label > query - bw, yet outside
HI_IN = (2.047, 2.747)  # label >= query + bw, yet inside
HI_OUT = (0.3, 0.9999999999999999)  # label < query + bw, yet outside


def _edge_cases() -> tuple[torch.Tensor, torch.Tensor]:
    """A shuffled bank holding the four edge labels among regular ones, and their queries."""
    edges = [LO_IN, LO_OUT, HI_IN, HI_OUT]
    bank = torch.tensor([v for _, v in edges] + [0.1, 0.5, 1.2, 1.5, 2.0, 2.5, 3.0, 3.3, 3.9, 4.4], dtype=torch.float64)
    bank = bank[torch.randperm(len(bank), generator=torch.Generator().manual_seed(0))]
    queries = torch.tensor([q for q, _ in edges] + [0.1, 1.35, 4.4], dtype=torch.float64)
    return bank, queries


def _replay(bank, queries, kernel, seed, exclude=None, sorted_order=True):
    """The quantile ``u`` of the admissible partners, ``u`` replayed from the generator."""
    u = torch.rand(len(queries), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    p = pair_probabilities(queries, bank, BW, kernel, exclude_index=exclude)
    order = torch.sort(bank, stable=True).indices if sorted_order else torch.arange(len(bank))
    out = []
    for i in range(len(queries)):
        admissible = [int(j) for j in order if p[i, j] > 0]
        out.append(admissible[min(int(u[i] * len(admissible)), len(admissible) - 1)])
    return torch.tensor(out)


def _sorted_draw(bank, queries, kernel, seed, exclude=None):
    g = torch.Generator().manual_seed(seed)
    return sample_partners(queries, bank, BW, g, kernel, exclude_index=exclude, method="sorted")


# ----------------------------------------------------------------------------- sorted sampler
def test_edge_labels_are_where_the_shifted_query_and_the_kernel_disagree():
    for (q, v), inside in ((LO_IN, True), (LO_OUT, False), (HI_IN, True), (HI_OUT, False)):
        assert (abs((v - q) / BW) < 1.0) is inside
        assert (q - BW < v < q + BW) is not inside


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sorted_tophat_draws_equal_the_replayed_quantile(seed):
    bank, queries = _edge_cases()
    want = _replay(bank, queries, "tophat", seed)
    assert torch.equal(_sorted_draw(bank, queries, "tophat", seed), want)
    # one excluded partner per row: inside the range, just right of it, or far outside it
    order = torch.sort(bank).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(bank))
    p = pair_probabilities(queries, bank, BW, "tophat")
    last_in = [int(order[max(int(rank[j]) for j in torch.nonzero(row).flatten())]) for row in p]
    right_of = [int(order[min(int(rank[j]) + 1, len(bank) - 1)]) for j in last_in]
    far = [int(torch.argmax((bank - q).abs())) for q in queries]
    for ex in (torch.tensor(last_in), torch.tensor(right_of), torch.tensor(far)):
        if any(p[i, j] > 0 and p[i].count_nonzero() == 1 for i, j in enumerate(ex.tolist())):
            continue  # excluding a row's only partner raises (tested below)
        want = _replay(bank, queries, "tophat", seed, exclude=ex)
        assert torch.equal(_sorted_draw(bank, queries, "tophat", seed, exclude=ex), want), ex


def test_sorted_tophat_edge_label_at_either_end_of_the_bank():
    # the smallest label is inside although it lies at or below query - bw
    bank = torch.tensor([LO_IN[1], 3.5, 4.0], dtype=torch.float64)
    q = torch.full((50,), LO_IN[0], dtype=torch.float64)
    assert torch.equal(_sorted_draw(bank, q, "tophat", 3), _replay(bank, q, "tophat", 3))
    assert 0 in _sorted_draw(bank, q, "tophat", 3).tolist()
    # the largest label is the only one inside, although it lies at or above query + bw
    bank = torch.tensor([1.0, HI_IN[1]], dtype=torch.float64)
    q = torch.full((5,), HI_IN[0], dtype=torch.float64)
    assert torch.equal(_sorted_draw(bank, q, "tophat", 4), torch.ones(5, dtype=torch.long))


@pytest.mark.parametrize("seed", [0, 5])
def test_sorted_uniform_draws_equal_the_replayed_quantile(seed):
    bank, queries = _edge_cases()
    want = _replay(bank, queries, "uniform", seed, sorted_order=False)
    assert torch.equal(_sorted_draw(bank, queries, "uniform", seed), want)
    ex = torch.arange(len(queries)) * 2 % len(bank)
    want = _replay(bank, queries, "uniform", seed, exclude=ex, sorted_order=False)
    assert torch.equal(_sorted_draw(bank, queries, "uniform", seed, exclude=ex), want)


def test_sorted_uniform_two_and_one_labels_with_exclusion():
    bank = torch.tensor([0.0, 5.0], dtype=torch.float64)
    got = _sorted_draw(bank, bank.repeat(10), "uniform", 0, exclude=torch.tensor([0, 1]).repeat(10))
    assert torch.equal(got, torch.tensor([1, 0]).repeat(10))
    msg = r"^row 0 has no admissible partner under the uniform kernel \(bandwidth too small\?\)$"
    with pytest.raises(ValueError, match=msg):
        _sorted_draw(bank[:1], bank[:1].repeat(2), "uniform", 0, exclude=torch.zeros(2, dtype=torch.long))


def test_sorted_bank_to_another_device_copies_every_tensor():
    bank = torch.tensor([0.3, 0.1, 0.2, 0.9, 0.5], dtype=torch.float64)
    sb = SortedLabelBank(bank, block_size=2)
    meta = sb.to("meta")
    assert isinstance(meta, SortedLabelBank) and meta is not sb and meta.device.type == "meta"
    assert vars(meta).keys() == vars(sb).keys()
    for key, val in vars(sb).items():
        other = getattr(meta, key)
        if isinstance(val, torch.Tensor):
            assert other.device.type == "meta" and other.shape == val.shape and other.dtype == val.dtype, key
        else:
            assert other == val, key
    assert sb.device.type == "cpu"  # the original is untouched
    cpu = sb.to("cpu")
    for key, val in vars(sb).items():
        assert torch.equal(getattr(cpu, key), val) if isinstance(val, torch.Tensor) else getattr(cpu, key) == val
    q = torch.tensor([0.25, 0.6], dtype=torch.float64)
    assert torch.equal(
        sample_partners(q, cpu, 0.1, torch.Generator().manual_seed(1), method="sorted"),
        sample_partners(q, sb, 0.1, torch.Generator().manual_seed(1), method="sorted"),
    )


# ----------------------------------------------------------------------------- bandwidth units
def test_effective_bandwidth_defaults_and_errors():
    bank = torch.tensor([0.0, 1.0])  # 1-D labels, population std 0.5
    assert effective_bandwidth(0.5, bank) == 0.5  # raw units by default
    assert effective_bandwidth(0.5, bank, "std") == pytest.approx(0.25)
    with pytest.raises(ValueError, match=r"^bandwidth units must be 'raw' or 'std', got 'var'$"):
        effective_bandwidth(0.5, bank, "var")
    with pytest.raises(ValueError, match=r"^bandwidth_units='std' needs at least two bank labels$"):
        effective_bandwidth(0.5, torch.tensor([1.0]), "std")
    with pytest.raises(ValueError, match=r"^bandwidth_units='std': the bank labels have zero spread$"):
        effective_bandwidth(0.5, torch.tensor([2.0, 2.0]), "std")
    with pytest.raises(ValueError, match=r"^bank_labels contain NaN or inf \(first at row 1\)$"):
        effective_bandwidth(0.5, torch.tensor([0.0, float("nan")]), "std")


# ----------------------------------------------------------------------------- lam
def test_sample_lam_is_the_numpy_beta_seeded_from_the_generator():
    for alpha, per_sample in ((0.5, False), (0.5, True), (3.0, True)):
        lam = sample_lam(alpha, 5, per_sample=per_sample, generator=torch.Generator().manual_seed(9))
        seed = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(9)))
        draws = np.random.default_rng(seed).beta(alpha, alpha, size=5 if per_sample else 1)
        want = torch.tensor(draws, dtype=torch.float32).expand(5)
        assert lam.dtype == torch.float32 and torch.equal(lam, want)
    free = sample_lam(2.0, 5)  # without a generator: NumPy's fresh entropy
    assert free.shape == (5,) and free.dtype == torch.float32 and bool((free == free[0]).all())
    assert 0 < float(free[0]) < 1


def test_sample_lam_device_and_errors():
    assert sample_lam(2.0, 3, device="meta").device.type == "meta"
    with torch.device("meta"):  # a default device does not move the CPU generator's seed draw
        assert sample_lam(2.0, 3, generator=torch.Generator().manual_seed(0)).shape == (3,)
    for alpha, shown in ((0.0, "0.0"), (-1.0, "-1.0"), (float("nan"), "nan"), (float("inf"), "inf")):
        with pytest.raises(ValueError, match=rf"^alpha must be > 0, got {shown}$"):
            sample_lam(alpha, 4)


# ----------------------------------------------------------------------------- mixing
def test_cmixup_batch_shape_errors_name_both_shapes():
    x, y = torch.zeros(3, 2), torch.zeros(3)
    with pytest.raises(ValueError, match=r"^anchor and partner shapes differ: x \(3, 2\) vs \(3, 3\), y \(3,\) vs \(3,\)$"):
        cmixup_batch(x, y, torch.zeros(3, 3), y, 0.5)
    with pytest.raises(ValueError, match=r"^anchor and partner shapes differ: x \(3, 2\) vs \(3, 2\), y \(3,\) vs \(3, 1\)$"):
        cmixup_batch(x, y, x, torch.zeros(3, 1), 0.5)


def test_cmixup_batch_dtypes():
    g = torch.Generator().manual_seed(0)
    x, xj = torch.randn(3, 2, generator=g, dtype=torch.float64), torch.randn(3, 2, generator=g, dtype=torch.float64)
    y, yj = torch.randn(3, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)
    lam = torch.tensor([0.1, 0.3, 0.7], dtype=torch.float64)
    xm, ym = cmixup_batch(x, y, xj, yj, lam)  # float64 throughout: lam is not rounded to float32
    assert xm.dtype == ym.dtype == torch.float64
    assert torch.equal(xm, lam[:, None] * x + (1 - lam[:, None]) * xj)
    assert torch.equal(ym, lam * y + (1 - lam) * yj)
    xm, _ = cmixup_batch(x.float(), y, xj.float(), yj, lam)  # lam follows the inputs' dtype
    assert xm.dtype == torch.float32
    xi, xij = torch.tensor([[1, 2]]), torch.tensor([[3, 4]])  # integer inputs mix as float32
    xm, ym = cmixup_batch(xi, torch.tensor([1]), xij, torch.tensor([3]), 0.25)
    assert xm.dtype == ym.dtype == torch.float32
    assert torch.equal(xm, torch.tensor([[2.5, 3.5]])) and torch.equal(ym, torch.tensor([2.5]))


def test_cmixup_batch_moves_lam_to_the_inputs_device():
    x, y = torch.zeros(3, 2, device="meta"), torch.zeros(3, device="meta")
    xm, ym = cmixup_batch(x, y, x, y, torch.tensor([0.1, 0.5, 0.9]))
    assert xm.device.type == ym.device.type == "meta" and xm.shape == (3, 2)


# ----------------------------------------------------------------------------- 2B pool
def test_pool_partners_pool_takes_the_anchors_dtype_and_names_bad_labels():
    g = torch.Generator().manual_seed(0)
    anchors = torch.rand(6, generator=g)  # float32
    randoms = torch.rand(6, generator=g, dtype=torch.float64)
    a_idx, r_idx = torch.arange(6), torch.arange(100, 106)
    got = pool_partners(anchors, a_idx, randoms, r_idx, 0.05, torch.Generator().manual_seed(3))
    pool = torch.cat([anchors, randoms.float()])  # float32 pool: the draws use float32 noise
    pick = sample_partners(anchors, pool, 0.05, torch.Generator().manual_seed(3), method="gumbel")
    assert torch.equal(got, torch.cat([a_idx, r_idx])[pick])
    nan = torch.tensor([0.0, float("nan")])
    with pytest.raises(ValueError, match=r"^anchor_labels contain NaN"):
        pool_partners(nan, a_idx[:2], anchors[:2], r_idx[:2], 0.05)
    with pytest.raises(ValueError, match=r"^random_labels contain NaN"):
        pool_partners(anchors[:2], a_idx[:2], nan, r_idx[:2], 0.05)


# ----------------------------------------------------------------------------- sorted gaussian
def test_sorted_gaussian_errors_name_the_kernel_and_the_rounds():
    one = torch.tensor([0.5], dtype=torch.float64)
    msg = (
        r"^row 0 has no admissible partner: every kernel weight is zero \(bank of one excluded label, "
        r"or a bandwidth so small that exp underflows for every partner\)$"
    )
    with pytest.raises(ValueError, match=msg):
        SortedLabelBank(one).sample(one, 1.0, exclude_index=torch.tensor([0]))
    bank = SortedLabelBank(torch.linspace(0, 1, 50, dtype=torch.float64), block_size=5)
    with pytest.raises(RuntimeError, match=r"^SortedLabelBank.sample: 3 rows not accepted after 0 rounds$"):
        bank.sample(torch.tensor([0.1, 0.5, 0.9]), 0.2, max_rounds=0)


def _replay_gaussian(bank, queries, bw, k, seed, exclude=None):
    """The documented rejection sampler, row by row: three exactly scored blocks around the
    query's insertion block (kept inside the bank), a bound ``count * w(nearest edge)`` for
    every other block, Gumbel-max over that proposal, a uniform member of a chosen block
    accepted with probability ``w / bound``; rejected rows draw again, together."""
    values, order = torch.sort(bank, stable=True)
    v, n = values.tolist(), len(bank)
    rank = torch.argsort(order).tolist()
    nb = -(-n // k)
    width = min(3, nb)
    tiny = torch.finfo(torch.float64).tiny

    def logw(s, q):
        return -0.5 * ((values[s] - q) / bw).square()

    rows = []
    for i, q in enumerate(queries.tolist()):
        c = min(bisect.bisect_left(v, q), n - 1) // k
        first = min(max(c - 1, 0), nb - width)
        banned = None if exclude is None else rank[int(exclude[i])]
        exact = [logw(s, q) if s < n and s != banned else torch.tensor(-math.inf, dtype=torch.float64)
                 for s in range(first * k, (first + width) * k)]
        bound = []
        for blk in range(nb):
            lo, hi = v[blk * k], v[min(blk * k + k, n) - 1]
            gap = torch.tensor(max(lo - q, q - hi, 0.0), dtype=torch.float64)
            bound.append(-0.5 * (gap / bw).square())
        count = [min(k, n - blk * k) for blk in range(nb)]
        blocks = [torch.tensor(-math.inf, dtype=torch.float64) if first <= blk < first + width
                  else bound[blk] + torch.tensor(float(count[blk]), dtype=torch.float64).log() for blk in range(nb)]
        rows.append((first, torch.stack(exact + blocks), bound, count, q, banned))
    g = torch.Generator().manual_seed(seed)
    out, pending = [None] * len(rows), list(range(len(rows)))
    while pending:
        noise = torch.rand((len(pending), width * k + nb), generator=g, dtype=torch.float64)
        u = torch.rand((2, len(pending)), generator=g, dtype=torch.float64)
        still = []
        for p, i in enumerate(pending):
            first, logits, bound, count, q, banned = rows[i]
            choice = int((logits - torch.log(-torch.log(noise[p].clamp_min(tiny)))).argmax())
            if choice < width * k:
                out[i] = int(order[first * k + choice])
                continue
            blk = choice - width * k
            member = blk * k + min(int(u[0, p] * count[blk]), count[blk] - 1)
            if torch.log(u[1, p].clamp_min(tiny)) < logw(member, q) - bound[blk] and member != banned:
                out[i] = int(order[member])
            else:
                still.append(i)
        pending = still
    return torch.tensor(out)


@pytest.mark.parametrize("block_size, bw", [(4, 0.05), (4, 0.3), (3, 0.02), (16, 0.1)])
def test_sorted_gaussian_draws_equal_the_replayed_rejection_sampler(block_size, bw):
    g = torch.Generator().manual_seed(block_size)
    bank = torch.cat([torch.rand(37, generator=g), torch.full((4,), 0.5), torch.tensor([-1.0, 2.0])]).double()
    queries = torch.cat([bank[:6], torch.tensor([-2.0, 0.5, 0.999, 3.0], dtype=torch.float64)]).repeat(20)
    for exclude in (None, torch.arange(len(queries)) % 10):
        sb = SortedLabelBank(bank, block_size=block_size)
        got = sample_partners(queries, sb, bw, torch.Generator().manual_seed(7), exclude_index=exclude, method="sorted")
        assert torch.equal(got, _replay_gaussian(bank, queries, bw, block_size, 7, exclude)), exclude


def test_sorted_bank_attributes_against_numpy():
    g = torch.Generator().manual_seed(4)
    bank = torch.cat([torch.full((40,), 0.5), torch.rand(260, generator=g)]).double()
    bank = bank[torch.randperm(300, generator=g)]
    sb = SortedLabelBank(bank)  # 300 labels: default block size sqrt(300 / 3) = 10
    order = np.argsort(bank.numpy(), kind="stable")  # ties keep bank order
    assert torch.equal(sb.order, torch.from_numpy(order)) and torch.equal(sb.values, bank[order])
    assert torch.equal(sb.rank, torch.from_numpy(np.argsort(order)))
    assert (sb.block_size, sb.num_blocks, len(sb)) == (10, 30, 300)
    assert torch.equal(sb.block_start, torch.arange(0, 300, 10))
    assert torch.equal(sb.block_lo, sb.values[::10]) and torch.equal(sb.block_hi, sb.values[9::10])
    assert sb.block_count.dtype == torch.float64 and torch.equal(sb.block_count, torch.full((30,), 10.0, dtype=torch.float64))
    assert SortedLabelBank(bank[:30]).block_size == 8  # at least 8 per block
    assert SortedLabelBank(bank[:5]).block_size == 5  # never more than the bank
    small = SortedLabelBank(bank[:7], block_size=1)
    assert small.block_size == 1 and small.num_blocks == 7
    uneven = SortedLabelBank(bank[:10].float(), block_size=4)
    assert uneven.block_count.dtype == torch.float32 and uneven.block_count.tolist() == [4.0, 4.0, 2.0]


def test_sorted_bank_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"^bank_labels contain NaN or inf \(first at row 1\)$"):
        SortedLabelBank(torch.tensor([0.0, float("inf")]))
    with pytest.raises(ValueError, match=r"^SortedLabelBank needs 1-D labels, got shape \(3, 2\)$"):
        SortedLabelBank(torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"^bank_labels is empty: there is no partner to draw$"):
        SortedLabelBank(torch.zeros(0))
    sb = SortedLabelBank(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"^query_labels contain NaN or inf \(first at row 0\)$"):
        sb.sample(torch.tensor([float("nan")]), 1.0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gumbel_draws_are_the_argmax_of_log_probability_plus_replayed_noise(dtype):
    """Gumbel-max: the noise is one ``[N, B]`` uniform stream in the labels' dtype."""
    g0 = torch.Generator().manual_seed(12)
    bank, q = torch.rand(9, 2, generator=g0, dtype=dtype), torch.rand(5, 2, generator=g0, dtype=dtype)
    for chunk in (None, 4):
        got = sample_partners(q, bank, 0.3, torch.Generator().manual_seed(2), method="gumbel", chunk_size=chunk)
        u = torch.rand((9, 5), generator=torch.Generator().manual_seed(2), dtype=dtype).T
        noise = -torch.log(-torch.log(u.clamp_min(torch.finfo(dtype).tiny)))
        assert torch.equal(got, (torch.log(pair_probabilities(q, bank, 0.3)) + noise).argmax(1))


def test_auto_method_picks_the_sorted_sampler_above_the_budget():
    g0 = torch.Generator().manual_seed(13)
    bank, q = torch.rand(40, generator=g0, dtype=torch.float64), torch.rand(6, generator=g0, dtype=torch.float64)

    def draw(**kw):
        return sample_partners(q, bank, 0.2, torch.Generator().manual_seed(1), **kw)

    sorted_, gumbel = draw(method="sorted"), draw(method="gumbel")
    assert not torch.equal(sorted_, gumbel)  # the two samplers' draws tell them apart
    assert torch.equal(draw(element_budget=239), sorted_)  # 6 x 40 labels above the budget
    assert torch.equal(draw(element_budget=240), gumbel)
    assert torch.equal(draw(), gumbel)  # the default budget
    assert torch.equal(draw(element_budget=10, chunk_size=40), gumbel)  # a chunk size means Gumbel-max
    q2, bank2 = torch.stack([q, q], 1), torch.stack([bank, bank], 1)
    whole = sample_partners(q2, bank2, 0.2, torch.Generator().manual_seed(1), method="gumbel")
    for budget in (10, 30):  # 2-D labels: Gumbel-max, streamed in chunks of budget // (6 x 2) labels
        assert torch.equal(sample_partners(q2, bank2, 0.2, torch.Generator().manual_seed(1), element_budget=budget), whole)


def test_draws_without_a_generator_come_from_torch_global_stream():
    bank, q = torch.tensor([0.0, 0.3, 0.5, 0.9], dtype=torch.float64), torch.tensor([0.2, 0.6], dtype=torch.float64)
    with torch.random.fork_rng():
        torch.manual_seed(21)
        got = sample_partners(q, bank, 0.4, method="gumbel")
        torch.manual_seed(21)
        u = torch.rand((4, 2), dtype=torch.float64).T
    noise = -torch.log(-torch.log(u.clamp_min(torch.finfo(torch.float64).tiny)))
    assert torch.equal(got, (torch.log(pair_probabilities(q, bank, 0.4)) + noise).argmax(1))


def test_sample_partners_empty_queries_and_errors():
    out = sample_partners(torch.zeros(0, dtype=torch.float64), torch.rand(5), 0.3)
    assert out.shape == (0,) and out.dtype == torch.long
    assert sample_partners(torch.zeros(0, device="meta"), torch.rand(5), 0.3).device.type == "meta"
    with pytest.raises(ValueError, match=r"^method must be 'auto', 'gumbel' or 'sorted', got 'exact'$"):
        sample_partners(Y1, Y1, 0.3, method="exact")
    with pytest.raises(ValueError, match=r"^chunk_size must be >= 1, got 0$"):
        sample_partners(Y1, Y1, 0.3, chunk_size=0)
    msg = r"^row 3 has no admissible partner under the tophat kernel \(bandwidth too small\?\)$"
    y4 = torch.tensor([0.0, 0.5, 1.0, 3.0], dtype=torch.float64)
    with pytest.raises(ValueError, match=msg):
        pair_probabilities(y4, y4, 0.75, "tophat", exclude_index=torch.arange(4))



def test_mixed_precision_labels_are_compared_in_float64():
    g0 = torch.Generator().manual_seed(14)
    q32, bank64 = torch.rand(5, generator=g0), torch.rand(30, generator=g0, dtype=torch.float64)
    for q, bank in ((q32, bank64), (q32.double(), bank64.float())):
        p = pair_probabilities(q, bank, 0.2, "uniform")
        assert p.dtype == torch.float64 and torch.equal(p, torch.full((5, 30), 1 / 30, dtype=torch.float64))
        for method in ("gumbel", "sorted"):
            got = sample_partners(q, bank, 0.2, torch.Generator().manual_seed(3), method=method)
            want = sample_partners(q.double(), bank.double(), 0.2, torch.Generator().manual_seed(3), method=method)
            assert torch.equal(got, want), method


@pytest.mark.parametrize("chunk", [1, 3, 4])
def test_exclusion_across_chunks(chunk):
    g0 = torch.Generator().manual_seed(15)
    bank, q = torch.rand(10, generator=g0, dtype=torch.float64), torch.rand(6, generator=g0, dtype=torch.float64)
    ex = torch.tensor([3, 4, 9, 0, 8, 6])  # bank positions at the ends and starts of chunks
    got = sample_partners(q, bank, 0.5, torch.Generator().manual_seed(4), exclude_index=ex, chunk_size=chunk)
    u = torch.rand((10, 6), generator=torch.Generator().manual_seed(4), dtype=torch.float64).T
    noise = -torch.log(-torch.log(u.clamp_min(torch.finfo(torch.float64).tiny)))
    logp = torch.log(pair_probabilities(q, bank, 0.5, exclude_index=ex))
    assert torch.equal(got, (logp + noise).argmax(1)) and not bool((got == ex).any())


def test_label_errors_name_the_argument():
    bad = torch.tensor([0.0, float("nan")])
    with pytest.raises(ValueError, match=r"^query_labels contain NaN or inf \(first at row 1\)$"):
        sample_partners(bad, Y1, 0.3)
    with pytest.raises(ValueError, match=r"^bank_labels contain NaN or inf \(first at row 1\)$"):
        pair_probabilities(Y1, bad, 0.3)
    with pytest.raises(ValueError, match=r"^bank_labels is empty: there is no partner to draw$"):
        pair_probabilities(Y1, torch.zeros(0), 0.3)
    with pytest.raises(ValueError, match=r"^kernel must be one of gaussian, tophat, uniform, got 'box'$"):
        pair_probabilities(Y1, Y1, 0.3, "box")


def test_as_label_matrix_shapes_dtypes_and_errors():
    assert torch.equal(as_label_matrix([1.0, 2.0]), torch.tensor([[1.0], [2.0]]))  # lists too
    assert torch.equal(pair_probabilities([0.0, 1.0], [0.0, 1.0], 1.0), pair_probabilities(Y1, Y1, 1.0))
    for dtype, want in ((torch.long, torch.float32), (torch.float16, torch.float32), (torch.bfloat16, torch.float32),
                        (torch.float32, torch.float32), (torch.float64, torch.float64)):
        out = as_label_matrix(torch.tensor([1, 2], dtype=dtype))
        assert out.dtype == want and torch.equal(out, torch.tensor([[1.0], [2.0]], dtype=want)), dtype
    with pytest.raises(ValueError, match=r"^labels contain NaN or inf \(first at row 2\)$"):
        as_label_matrix(torch.tensor([[0.0, 1.0], [1.0, 2.0], [3.0, float("-inf")]]))
    with pytest.raises(ValueError, match=r"^query_labels must have shape \[n\] or \[n, d\], got \(2, 1, 1\)$"):
        pair_probabilities(torch.zeros(2, 1, 1), Y1, 1.0)


def test_bandwidth_and_exclusion_errors_are_exact():
    with pytest.raises(ValueError, match=r"^bandwidth must be a finite number > 0, got 0.0$"):
        pair_probabilities(Y1, Y1, 0.0)
    for bad in ([0, 2], [-1, 0]):
        with pytest.raises(ValueError, match=r"^exclude_index must lie in \[0, 2\)$"):
            pair_probabilities(Y1, Y1, 1.0, exclude_index=torch.tensor(bad))
    msg = (
        r"^row 0 has no admissible partner: every kernel weight is zero \(bank of one excluded label, "
        r"or a bandwidth so small that exp underflows for every partner\)$"
    )
    with pytest.raises(ValueError, match=msg):
        sample_partners(Y1[:1], Y1[:1], 1.0, exclude_index=torch.tensor([0]), method="gumbel")


def test_sorted_bank_sample_casts_queries_to_the_bank_dtype_and_checks_dimension():
    bank = torch.rand(30, generator=torch.Generator().manual_seed(16))  # a float32 bank
    sb = SortedLabelBank(bank, block_size=4)
    q = torch.tensor([0.1, 0.45, 0.9], dtype=torch.float64)
    for kernel in ("gaussian", "tophat"):
        got = sb.sample(q, 0.2, torch.Generator().manual_seed(2), kernel)
        assert torch.equal(got, sb.sample(q.float(), 0.2, torch.Generator().manual_seed(2), kernel)), kernel
    msg = r"^query_labels and bank_labels differ in label dimension: \(3, 2\) vs \(30, 1\)$"
    with pytest.raises(ValueError, match=msg):
        sb.sample(torch.zeros(3, 2), 0.2)


@pytest.mark.parametrize("kernel", ["uniform", "tophat"])
def test_pool_partners_passes_the_kernel_on(kernel):
    g0 = torch.Generator().manual_seed(17)
    anchors, randoms = torch.rand(5, generator=g0, dtype=torch.float64), torch.rand(5, generator=g0, dtype=torch.float64)
    a_idx, r_idx = torch.arange(5), torch.arange(10, 15)
    got = pool_partners(anchors, a_idx, randoms, r_idx, 0.3, torch.Generator().manual_seed(6), kernel)
    pick = sample_partners(anchors, torch.cat([anchors, randoms]), 0.3, torch.Generator().manual_seed(6), kernel,
                           method="gumbel")
    assert torch.equal(got, torch.cat([a_idx, r_idx])[pick])


@pytest.mark.parametrize("chunk", [2, 3])
def test_excluded_self_is_never_drawn_in_any_chunk(chunk):
    """Each query is a bank label excluded for its row, with a bandwidth so small that the label
    itself would win every draw: rows whose label falls in a later chunk see it masked too."""
    bank = torch.arange(8, dtype=torch.float64)
    ex = torch.arange(8)
    got = sample_partners(bank, bank, 0.3, torch.Generator().manual_seed(5), exclude_index=ex, chunk_size=chunk)
    assert not bool((got == ex).any())
    assert bool(((got - ex).abs() == 1).all())  # the neighbours one label away
