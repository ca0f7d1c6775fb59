"""C-Mixup as pure functions: the label kernel, exact partner sampling, lam and mixing.

C-Mixup (Yao et al., "C-Mixup: Improving Generalization in Regression", NeurIPS 2022,
arXiv 2210.05775) is mixup for regression in which only the choice of partner changes: an
anchor with label ``y_i`` takes partner ``j`` with probability (paper Eq. 6; official
``src/algorithm.py::get_mixup_sample_rate``, which fits an sklearn ``KernelDensity`` on the
single point ``y_i`` and scores every ``y_j``)::

    P(j | i) = exp(-||y_i - y_j||^2 / (2 sigma^2)) / sum_k exp(-||y_i - y_k||^2 / (2 sigma^2))

with the squared Euclidean distance summed over the label dimensions and ``j = i`` included.

Nothing here builds the official N x N table. Two exact samplers draw from these rows:

* ``method="gumbel"``: the Gumbel-max trick over a ``[B, N]`` log-kernel, streamed over the
  bank in chunks (memory ``O(B * chunk)``); any label dimension; the reference.
* ``method="sorted"``: 1-D labels only. The bank is sorted once (``SortedLabelBank``) and cut
  into blocks of ``K`` consecutive labels. Each query computes exact log-weights on the three
  blocks around its position and a bound (count x largest weight) for every other block, draws
  from that ``3K + N/K`` proposal and accepts a block draw with probability ``w_j / bound``.
  This is exact rejection sampling; the bound never exceeds twice the true mass (see
  ``SortedLabelBank``), so at least half the proposals are accepted, at ``O(B sqrt(N))`` cost
  per round instead of ``O(B N)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "KERNELS",
    "SortedLabelBank",
    "as_label_matrix",
    "effective_bandwidth",
    "pair_log_probabilities",
    "pair_probabilities",
    "sample_partners",
    "pool_partners",
    "sample_lam",
    "cmixup_batch",
]

Kernel = Literal["gaussian", "tophat", "uniform"]
KERNELS: tuple[str, ...] = ("gaussian", "tophat", "uniform")
#: ``B * N`` above which the default sampler streams the bank / switches to the sorted sampler.
DEFAULT_ELEMENT_BUDGET = 2**24


# =============================================================================== checks
def as_label_matrix(labels: Tensor, name: str = "labels") -> Tensor:
    """Labels as a floating ``[n, d]`` tensor: 1-D ``[n]`` becomes ``[n, 1]`` (official code
    raises ``IndexError`` there). Integer labels become float32. NaN or inf raise ``ValueError``."""
    if not isinstance(labels, Tensor):
        labels = torch.as_tensor(labels)
    if not labels.is_floating_point():
        labels = labels.float()
    elif labels.dtype not in (torch.float32, torch.float64):
        labels = labels.float()
    if labels.dim() == 1:
        labels = labels[:, None]
    if labels.dim() != 2:
        raise ValueError(f"{name} must have shape [n] or [n, d], got {tuple(labels.shape)}")
    if labels.numel() and not bool(torch.isfinite(labels).all()):
        bad = torch.nonzero(~torch.isfinite(labels).all(dim=1))[0].item()
        raise ValueError(f"{name} contain NaN or inf (first at row {bad})")
    return labels


def _check_kernel(kernel: str) -> None:
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")


def _check_bandwidth(bandwidth: float) -> float:
    bw = float(bandwidth)
    if not math.isfinite(bw) or bw <= 0:
        raise ValueError(f"bandwidth must be a finite number > 0, got {bandwidth!r}")
    return bw


def _prepare(query: Tensor, bank: Tensor, bandwidth: float, kernel: str) -> tuple[Tensor, Tensor, float]:
    _check_kernel(kernel)
    bw = _check_bandwidth(bandwidth)
    q = as_label_matrix(query, "query_labels")
    b = as_label_matrix(bank, "bank_labels")
    if b.shape[0] == 0:
        raise ValueError("bank_labels is empty: there is no partner to draw")
    if q.shape[1] != b.shape[1]:
        raise ValueError(
            f"query_labels and bank_labels differ in label dimension: {tuple(query.shape)} vs {tuple(bank.shape)}"
        )
    dtype = torch.float64 if torch.float64 in (q.dtype, b.dtype) else torch.float32
    return q.to(dtype), b.to(dtype=dtype, device=q.device), bw


def _check_exclude(
    exclude_index: Tensor | None, batch: int, bank_size: int, device: torch.device
) -> Tensor | None:
    if exclude_index is None:
        return None
    ex = torch.as_tensor(exclude_index, device=device).long().reshape(-1)
    if ex.shape[0] != batch:
        raise ValueError(f"exclude_index must have shape [{batch}], got {tuple(ex.shape)}")
    if ex.numel() and (int(ex.min()) < 0 or int(ex.max()) >= bank_size):
        raise ValueError(f"exclude_index must lie in [0, {bank_size})")
    return ex


def effective_bandwidth(bandwidth: float, bank_labels: Tensor, units: Literal["raw", "std"] = "raw") -> float:
    """The bandwidth in raw label units. ``units="std"`` multiplies by the pooled standard
    deviation of the bank (``sqrt`` of the mean per-dimension variance); not official."""
    bw = _check_bandwidth(bandwidth)
    if units == "raw":
        return bw
    if units != "std":
        raise ValueError(f"bandwidth units must be 'raw' or 'std', got {units!r}")
    b = as_label_matrix(bank_labels, "bank_labels").double()
    if b.shape[0] < 2:
        raise ValueError("bandwidth_units='std' needs at least two bank labels")
    pooled = float(b.var(dim=0, unbiased=False).mean().sqrt())
    if pooled <= 0:
        raise ValueError("bandwidth_units='std': the bank labels have zero spread")
    return bw * pooled


# =============================================================================== kernel
def _log_kernel(q: Tensor, b: Tensor, bw: float, kernel: str) -> Tensor:
    """Unnormalised log-kernel ``[B, n]``: ``-||q - b||^2 / (2 bw^2)`` (gaussian), ``0`` or
    ``-inf`` (tophat: distance < bw, strict as sklearn), ``0`` (uniform)."""
    if kernel == "uniform":
        return q.new_zeros(q.shape[0], b.shape[0])
    # (d / bw)^2 rather than d^2 / bw^2: bw^2 may underflow for tiny bandwidths.
    z = ((q[:, None, :] - b[None, :, :]) / bw).square().sum(-1)
    if kernel == "gaussian":
        return -0.5 * z
    return torch.where(z.sqrt() < 1.0, 0.0, float("-inf")).to(q.dtype)


def _mask_excluded(logits: Tensor, exclude: Tensor | None, start: int) -> Tensor:
    if exclude is None:
        return logits
    cols = exclude - start
    rows = torch.nonzero((cols >= 0) & (cols < logits.shape[1])).reshape(-1)
    if rows.numel():
        logits = logits.clone()
        logits[rows, cols[rows]] = float("-inf")
    return logits


def _raise_empty_rows(max_logit: Tensor, kernel: str) -> None:
    empty = torch.nonzero(~torch.isfinite(max_logit)).reshape(-1)
    if empty.numel():
        row = int(empty[0])
        if kernel == "gaussian":
            raise ValueError(
                f"row {row} has no admissible partner: every kernel weight is zero (bank of one excluded "
                "label, or a bandwidth so small that exp underflows for every partner)"
            )
        raise ValueError(
            f"row {row} has no admissible partner under the {kernel} kernel (bandwidth too small?)"
        )


def pair_log_probabilities(
    query_labels: Tensor,
    bank_labels: Tensor,
    bandwidth: float,
    kernel: Kernel = "gaussian",
    *,
    exclude_index: Tensor | None = None,
) -> Tensor:
    """Row-wise log P(j | i), ``[B, N]``, ``-inf`` where a partner is impossible.

    The log-softmax of ``-||y_i - y_j||^2 / (2 sigma^2)`` over the bank (official
    ``get_mixup_sample_rate`` without its ``(2 pi sigma^2)^(-d/2)`` normaliser, which cancels).
    ``exclude_index[i]`` forbids bank position ``exclude_index[i]`` for row ``i``.
    """
    q, b, bw = _prepare(query_labels, bank_labels, bandwidth, kernel)
    ex = _check_exclude(exclude_index, q.shape[0], b.shape[0], q.device)
    logits = _mask_excluded(_log_kernel(q, b, bw, kernel), ex, 0)
    if logits.numel():
        _raise_empty_rows(logits.max(dim=1).values, kernel)
    return torch.log_softmax(logits, dim=1)


def pair_probabilities(
    query_labels: Tensor,
    bank_labels: Tensor,
    bandwidth: float,
    kernel: Kernel = "gaussian",
    *,
    exclude_index: Tensor | None = None,
) -> Tensor:
    """Row-stochastic P(j | i), ``[B, N]`` (exp of ``pair_log_probabilities``)."""
    return pair_log_probabilities(
        query_labels, bank_labels, bandwidth, kernel, exclude_index=exclude_index
    ).exp()


# =============================================================================== randomness
def _rand(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device, dtype: torch.dtype
) -> Tensor:
    if generator is None:
        return torch.rand(shape, device=device, dtype=dtype)
    return torch.rand(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


def _gumbel(u: Tensor) -> Tensor:
    tiny = torch.finfo(u.dtype).tiny
    return -torch.log(-torch.log(u.clamp_min(tiny)))


# =============================================================================== brute force
def _sample_gumbel_stream(
    q: Tensor,
    b: Tensor,
    bw: float,
    kernel: str,
    ex: Tensor | None,
    generator: torch.Generator | None,
    chunk: int,
) -> Tensor:
    """argmax_j (log K(i, j) + g_ij), the noise drawn bank-major as an ``[N, B]`` stream."""
    n, batch = b.shape[0], q.shape[0]
    best = torch.full((batch,), float("-inf"), dtype=q.dtype, device=q.device)
    best_idx = torch.zeros(batch, dtype=torch.long, device=q.device)
    best_logit = torch.full_like(best, float("-inf"))
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        logits = _mask_excluded(_log_kernel(q, b[start:stop], bw, kernel), ex, start)
        noise = _gumbel(_rand((stop - start, batch), generator, q.device, q.dtype)).T
        score = logits + noise
        val, arg = score.max(dim=1)
        better = val > best
        best = torch.where(better, val, best)
        best_idx = torch.where(better, arg + start, best_idx)
        best_logit = torch.maximum(best_logit, logits.max(dim=1).values)
    _raise_empty_rows(best_logit, kernel)
    return best_idx


# =============================================================================== sorted sampler
class SortedLabelBank:
    """A 1-D label bank sorted once, for the exact ``O(B sqrt(N))`` sampler.

    The sorted labels are cut into blocks of ``block_size`` (default ``sqrt(N / 3)``, which
    minimises the ``3K + N/K`` proposal width). For a query ``q`` with insertion position in
    block ``c``, blocks ``c - 1 .. c + 1`` are scored exactly and every other block ``b`` gets
    the bound ``count_b * w(edge_b)`` with ``edge_b`` its label nearest to ``q``.

    Why at least half of the proposals are accepted: right of ``q`` the bound of block ``b``
    is ``K w(lo_b)`` while its true mass is at least ``K w(lo_{b+1})``, so summed over the
    right blocks the bounds exceed the true mass by at most ``K w(lo_first)``; the exactly
    scored neighbour block holds ``K`` labels between ``q`` and ``lo_first``, each weighing at
    least ``w(lo_first)``. The same holds on the left, so the proposal mass is at most twice
    the true mass, for any label configuration.

    Attributes:
        values: sorted labels ``[N]``; ``order[s]``: bank index of sorted position ``s``;
        rank[i]: sorted position of bank index ``i``; ``block_size``; ``num_blocks``.
    """

    def __init__(self, bank_labels: Tensor, block_size: int | None = None) -> None:
        b = as_label_matrix(bank_labels, "bank_labels")
        if b.shape[1] != 1:
            raise ValueError(f"SortedLabelBank needs 1-D labels, got shape {tuple(bank_labels.shape)}")
        n = b.shape[0]
        if n == 0:
            raise ValueError("bank_labels is empty: there is no partner to draw")
        self.labels = b
        self.values, self.order = torch.sort(b[:, 0], stable=True)
        self.rank = torch.empty_like(self.order)
        self.rank[self.order] = torch.arange(n, device=b.device)
        k = int(block_size) if block_size else max(8, int(math.sqrt(n / 3)))
        self.block_size = max(1, min(k, n))
        self.num_blocks = -(-n // self.block_size)
        starts = torch.arange(self.num_blocks, device=b.device) * self.block_size
        ends = torch.clamp(starts + self.block_size, max=n)
        self.block_lo = self.values[starts]
        self.block_hi = self.values[ends - 1]
        self.block_count = (ends - starts).to(b.dtype)
        self.block_start = starts

    def __len__(self) -> int:
        return int(self.values.shape[0])

    @property
    def device(self) -> torch.device:
        return self.values.device

    def to(self, device: torch.device | str) -> SortedLabelBank:
        out = object.__new__(SortedLabelBank)
        for key, val in vars(self).items():
            setattr(out, key, val.to(device) if isinstance(val, Tensor) else val)
        return out

    # ------------------------------------------------------------------ kernels
    def sample(
        self,
        query_labels: Tensor,
        bandwidth: float,
        generator: torch.Generator | None = None,
        kernel: Kernel = "gaussian",
        *,
        exclude_index: Tensor | None = None,
        max_rounds: int = 10_000,
    ) -> Tensor:
        """Exact draws ``j ~ P(. | q_i)`` for every query; returns bank indices ``[B]``."""
        _check_kernel(kernel)
        bw = _check_bandwidth(bandwidth)
        q = as_label_matrix(query_labels, "query_labels")
        if q.shape[1] != 1:
            raise ValueError(
                f"query_labels and bank_labels differ in label dimension: {tuple(query_labels.shape)} vs {tuple(self.labels.shape)}"
            )
        q = q[:, 0].to(dtype=self.values.dtype, device=self.device)
        ex = _check_exclude(exclude_index, q.shape[0], len(self), self.device)
        if kernel == "uniform":
            return self._sample_uniform(q, ex, generator)
        if kernel == "tophat":
            return self._sample_tophat(q, bw, ex, generator)
        return self._sample_gaussian(q, bw, ex, generator, max_rounds)

    def _randint(self, high: Tensor, generator: torch.Generator | None) -> Tensor:
        """Uniform integers in ``[0, high)`` per row (float64 draws; exact enough for ``high < 2^40``)."""
        u = _rand(tuple(high.shape), generator, self.device, torch.float64)
        return torch.minimum((u * high.double()).long(), (high - 1).clamp_min(0))

    def _first_position(self, pred: Callable[[Tensor], Tensor], q: Tensor, bw: float) -> Tensor:
        """Per query, the first sorted position whose ``(v - q) / bw`` satisfies ``pred`` (a
        predicate monotone in ``v``: False, then True), or ``N`` if none does; by bisection."""
        n = len(self)
        lo = torch.zeros(q.shape, dtype=torch.long, device=q.device)
        hi = torch.full_like(lo, n)
        for _ in range(n.bit_length()):
            active = lo < hi
            mid = (lo + hi) // 2
            ok = pred((self.values[mid.clamp(max=n - 1)] - q) / bw)
            hi = torch.where(active & ok, mid, hi)
            lo = torch.where(active & ~ok, mid + 1, lo)
        return lo

    def _sample_uniform(self, q: Tensor, ex: Tensor | None, generator: torch.Generator | None) -> Tensor:
        n = len(self)
        if ex is None:
            return self._randint(torch.full_like(q, n, dtype=torch.long), generator)
        if n == 1:
            _raise_empty_rows(torch.full((q.shape[0],), float("-inf")), "uniform")
        j = self._randint(torch.full_like(q, n - 1, dtype=torch.long), generator)
        return j + (j >= ex).long()

    def _sample_tophat(
        self, q: Tensor, bw: float, ex: Tensor | None, generator: torch.Generator | None
    ) -> Tensor:
        # The partners are the sorted positions where the brute-force kernel's predicate
        # |v - q| / bw < 1 holds. (v - q) / bw is monotone in v, so they form one run, found by
        # bisecting on that predicate itself: q -+ bw can disagree with it by an ulp, for any
        # number of labels (ties, or labels packed within the rounding error).
        lo = self._first_position(lambda d: d > -1.0, q, bw)
        hi = self._first_position(lambda d: d >= 1.0, q, bw)
        count = hi - lo
        if ex is not None:
            ex_pos = self.rank[ex]
            has_ex = (ex_pos >= lo) & (ex_pos < hi)
            count = count - has_ex.long()
        _raise_empty_rows(torch.where(count > 0, 0.0, float("-inf")), "tophat")
        s = lo + self._randint(count, generator)
        if ex is not None:
            s = s + (has_ex & (s >= ex_pos)).long()
        return self.order[s]

    def _sample_gaussian(
        self, q: Tensor, bw: float, ex: Tensor | None, generator: torch.Generator | None, max_rounds: int
    ) -> Tensor:
        v, n, k, nb = self.values, len(self), self.block_size, self.num_blocks
        batch = q.shape[0]
        dev, dt = self.device, v.dtype
        pos = torch.searchsorted(v, q).clamp(max=n - 1)
        width = min(3, nb)
        first = (pos // k - 1).clamp(0, nb - width)  # first exactly scored block
        # exact part: positions first*K .. (first+width)*K - 1 (clipped to N)
        offs = torch.arange(width * k, device=dev)
        epos = first[:, None] * k + offs[None, :]
        evalid = epos < n
        epos_c = epos.clamp(max=n - 1)
        e_logit = -0.5 * ((v[epos_c] - q[:, None]) / bw).square()
        e_logit = torch.where(evalid, e_logit, float("-inf"))
        ex_pos = None
        if ex is not None:
            ex_pos = self.rank[ex]
            e_logit = torch.where(epos_c == ex_pos[:, None], float("-inf"), e_logit)
        # bounded part: every other block, log(count) + log w(edge nearest q)
        gap = torch.clamp(
            torch.maximum(self.block_lo[None, :] - q[:, None], q[:, None] - self.block_hi[None, :]), min=0
        )
        b_bound = -0.5 * (gap / bw).square()
        bidx = torch.arange(nb, device=dev)
        in_exact = (bidx[None, :] >= first[:, None]) & (bidx[None, :] < first[:, None] + width)
        b_logit = torch.where(in_exact, float("-inf"), b_bound + self.block_count.log()[None, :])
        logits = torch.cat([e_logit, b_logit], dim=1)
        _raise_empty_rows(logits.max(dim=1).values, "gaussian")

        out = torch.full((batch,), -1, dtype=torch.long, device=dev)
        pending = torch.arange(batch, device=dev)
        for _ in range(max_rounds):
            lg = logits[pending]
            choice = (lg + _gumbel(_rand(tuple(lg.shape), generator, dev, dt))).argmax(dim=1)
            u = _rand((2, pending.shape[0]), generator, dev, torch.float64)
            is_exact = choice < width * k
            # exact choices are accepted as they are
            s = torch.where(is_exact, epos_c[pending, choice.clamp(max=width * k - 1)], 0)
            # block choices: a uniform member, accepted with probability w_j / bound_b
            blk = (choice - width * k).clamp(min=0)
            member = self.block_start[blk] + torch.minimum(
                (u[0] * self.block_count[blk].double()).long(), self.block_count[blk].long() - 1
            )
            log_w = -0.5 * ((v[member] - q[pending]) / bw).square()
            log_ratio = (log_w - b_bound[pending, blk]).double()
            accept_blk = torch.log(u[1].clamp_min(torch.finfo(torch.float64).tiny)) < log_ratio
            if ex_pos is not None:
                accept_blk &= member != ex_pos[pending]
            s = torch.where(is_exact, s, member)
            accept = is_exact | accept_blk
            out[pending[accept]] = s[accept]
            pending = pending[~accept]
            if pending.numel() == 0:
                return self.order[out]
        raise RuntimeError(
            f"SortedLabelBank.sample: {pending.numel()} rows not accepted after {max_rounds} rounds"
        )


# =============================================================================== sampling API
def sample_partners(
    query_labels: Tensor,
    bank_labels: Tensor | SortedLabelBank,
    bandwidth: float,
    generator: torch.Generator | None = None,
    kernel: Kernel = "gaussian",
    *,
    exclude_index: Tensor | None = None,
    chunk_size: int | None = None,
    method: Literal["auto", "gumbel", "sorted"] = "auto",
    element_budget: int = DEFAULT_ELEMENT_BUDGET,
) -> Tensor:
    """Draw one partner per query, ``j_i ~ P(. | i)``; returns bank indices ``[B]`` (long).

    Independent draws with replacement, as the official per-anchor ``np.random.choice``.

    Args:
        query_labels: ``[B]`` or ``[B, d]``.
        bank_labels: ``[N]`` or ``[N, d]``, or a prebuilt ``SortedLabelBank`` (1-D).
        bandwidth: sigma > 0, raw label units.
        generator: makes every draw reproducible.
        kernel: ``gaussian`` (official default), ``tophat`` (``kde_type='tophat'``) or
            ``uniform`` (official ``mixtype='random'``).
        exclude_index: ``[B]`` bank positions to forbid, one per row (``include_self=False``).
        chunk_size: Gumbel-max streams the bank in chunks of this many labels; the result is
            identical for every chunk size under the same generator seed. Setting it selects
            the Gumbel-max sampler.
        method: ``gumbel`` (any d; noise drawn bank-major as an ``[N, B]`` stream), ``sorted``
            (d = 1; exact rejection sampler, see ``SortedLabelBank``), or ``auto``: ``sorted``
            for 1-D labels when ``B * N > element_budget`` and no ``chunk_size`` is given, else
            ``gumbel`` with chunks of ``element_budget // B`` labels.
    """
    if method not in ("auto", "gumbel", "sorted"):
        raise ValueError(f"method must be 'auto', 'gumbel' or 'sorted', got {method!r}")
    if chunk_size is not None and int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size!r}")
    sorted_bank = bank_labels if isinstance(bank_labels, SortedLabelBank) else None
    raw_bank = sorted_bank.labels if sorted_bank is not None else bank_labels
    q, b, bw = _prepare(query_labels, raw_bank, bandwidth, kernel)
    batch, n = q.shape[0], b.shape[0]
    if batch == 0:
        return torch.zeros(0, dtype=torch.long, device=q.device)
    if method == "auto":
        method = (
            "sorted" if (b.shape[1] == 1 and chunk_size is None and batch * n > element_budget) else "gumbel"
        )
    if method == "sorted":
        if b.shape[1] != 1:
            raise ValueError(f"method='sorted' needs 1-D labels, got label dimension {b.shape[1]}")
        if sorted_bank is None or sorted_bank.device != q.device:
            sorted_bank = SortedLabelBank(b) if sorted_bank is None else sorted_bank.to(q.device)
        return sorted_bank.sample(q, bw, generator, kernel, exclude_index=exclude_index)
    ex = _check_exclude(exclude_index, batch, n, q.device)
    chunk = int(chunk_size) if chunk_size is not None else max(1, element_budget // (batch * b.shape[1]))
    return _sample_gumbel_stream(q, b, bw, kernel, ex, generator, min(chunk, n))


def pool_partners(
    anchor_labels: Tensor,
    anchor_index: Tensor,
    random_labels: Tensor,
    random_index: Tensor,
    bandwidth: float,
    generator: torch.Generator | None = None,
    kernel: Kernel = "gaussian",
    *,
    include_self: bool = True,
) -> Tensor:
    """The 2B-pool variant (official RCF-MNIST path, ``get_batch_kde_mixup_batch``).

    The pool is ``[anchors; random draws]`` (2B samples); each anchor's partner is re-drawn
    from its row of the kernel over the pool labels (itself and its batch-mates included).
    Returns the chosen pool members as dataset indices ``[B]``. ``include_self=False`` forbids
    each anchor's own pool slot (not official).
    """
    anchors = as_label_matrix(anchor_labels, "anchor_labels")
    pool_labels = torch.cat([anchors, as_label_matrix(random_labels, "random_labels").to(anchors)])
    pool_index = torch.cat(
        [anchor_index.reshape(-1), random_index.reshape(-1).to(anchor_index.device)]
    ).long()
    exclude = None if include_self else torch.arange(anchors.shape[0], device=anchors.device)
    pick = sample_partners(
        anchors, pool_labels, bandwidth, generator, kernel, exclude_index=exclude, method="gumbel"
    )
    return pool_index.to(pick.device)[pick]


# =============================================================================== lam and mixing
def sample_lam(
    alpha: float,
    batch_size: int,
    *,
    per_sample: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """lam ~ Beta(alpha, alpha): one value repeated ``batch_size`` times (official: one lam per
    step, ``np.random.beta`` in ``train``), or one per sample (``per_sample``, PovertyMap).

    With a generator, the Beta draws come from a NumPy generator seeded from it (reproducible).
    """
    a = float(alpha)
    if not math.isfinite(a) or a <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha!r}")
    count = batch_size if per_sample else 1
    if generator is not None:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        rng = np.random.default_rng(seed)
    else:
        rng = np.random.default_rng()
    lam = torch.as_tensor(rng.beta(a, a, size=count), dtype=torch.float32, device=device)
    return lam if per_sample else lam.expand(batch_size).clone()


def cmixup_batch(
    x: Tensor, y: Tensor, x_partner: Tensor, y_partner: Tensor, lam: float | Tensor
) -> tuple[Tensor, Tensor]:
    """``(lam x + (1 - lam) x_j, lam y + (1 - lam) y_j)``; ``lam`` a float or ``[B]`` (official
    ``train``: ``mixup_X = X1 * lambd + X2 * (1 - lambd)``, same for Y)."""
    if x.shape != x_partner.shape or y.shape != y_partner.shape:
        raise ValueError(
            f"anchor and partner shapes differ: x {tuple(x.shape)} vs {tuple(x_partner.shape)}, y {tuple(y.shape)} vs {tuple(y_partner.shape)}"
        )
    lam_t = torch.as_tensor(lam, device=x.device)

    def mix(a: Tensor, b: Tensor) -> Tensor:
        w = lam_t.to(a.dtype if a.is_floating_point() else torch.float32)
        if w.dim() == 1:
            w = w.reshape(-1, *([1] * (a.dim() - 1)))
        return w * a + (1 - w) * b

    return mix(x, x_partner), mix(
        y.float() if not y.is_floating_point() else y,
        y_partner.float() if not y_partner.is_floating_point() else y_partner,
    )
