"""`MixPlan`: who mixes with whom, and with which weights.

A plan says, for every sample ``i`` of a batch, which *sources* its mixed sample is built
from and with which weights. The common case has two sources, the sample itself with
weight ``lam[i]`` and a partner ``index[i]`` with weight ``1 - lam[i]``::

    x_mixed[i] = lam[i] * x[i] + (1 - lam[i]) * x[index[i]]
    y_a, y_b   = y, y[index]

Partners are positions inside the batch (``partner_source="batch"``) or dataset indices
(``partner_source="dataset"``), in which case the core fetches those samples through the
training dataset before ``mixhub_mix_batch`` and stores them in ``plan.partner``.

A plan may also carry N sources (``sources``: a list of ``(index [B], weight [B])`` whose
weights sum to one per sample), a per-pixel ``mask`` (the anchor's weight per pixel, e.g.
CutMix or a learned generator; ``lam`` is then the anchor's area share), and ``extras`` for
anything method-specific (e.g. several mixed copies). ``y_a``, ``y_b``, ``lam`` (and
``source_targets()``) are what any loss needs; no method hides them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .batch import Batch
    from .checks import DeviceChecks

__all__ = ["MixPlan"]


def _deferred(error: Callable[[str], BaseException], message: str) -> Callable[[], BaseException]:
    return lambda: error(message)

PartnerSource = Literal["batch", "dataset"]


@dataclass
class MixPlan:
    """Sources and weights of each mixed sample.

    Attributes:
        index: partner of each sample, ``[B]`` long (batch positions or dataset indices).
        lam: the anchor's weight, ``[B]`` float (one value repeated for per-batch lam).
        partner_source: ``"batch"`` or ``"dataset"`` (what ``index`` refers to).
        sources: optional N-source form ``[(index_k [B], weight_k [B]), ...]``; when set it
            supersedes ``index``/``lam`` for mixing and the default loss.
        mask: optional per-pixel anchor weight ``[B, 1, H, W]`` in ``[0, 1]``.
        extras: method-specific data (e.g. ``extras["views"]``).
        y_a, y_b: targets of anchor and partner, filled in by the core (``resolve``).
        partner: the fetched partner ``Batch`` when ``partner_source == "dataset"``.
        known_identity: set by ``identity()`` so the core can skip mixing without reading tensors.
        lam_value: the per-batch lam as a host number, when the sampler knows it (``pairs()`` with
            a float lam sets it): ``batch_lam`` then reads nothing from the device.
        source_lams: with ``sources``, each source's batch-constant weight as a host number, when
            the sampler knows them (losses that need the weights as numbers read them here).
    """

    index: Tensor
    lam: Tensor
    partner_source: PartnerSource = "batch"
    sources: list[tuple[Tensor, Tensor]] | None = None
    mask: Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    y_a: Tensor | None = None
    y_b: Tensor | None = None
    partner: Batch | None = None
    known_identity: bool = field(default=False, repr=False)
    lam_value: float | None = field(default=None, repr=False)
    source_lams: list[float] | None = field(default=None, repr=False)

    # ----------------------------------------------------------------- constructors
    @classmethod
    def identity(cls, batch_size: int, device: torch.device | str | None = None) -> MixPlan:
        """No mixing: every sample is its own partner with weight one."""
        return cls(
            index=torch.arange(batch_size, device=device),
            lam=torch.ones(batch_size, device=device),
            known_identity=True,
            lam_value=1.0,
        )

    @classmethod
    def pairs(
        cls,
        index: Tensor,
        lam: float | Tensor,
        partner_source: PartnerSource = "batch",
        **kwargs: Any,
    ) -> MixPlan:
        """Two-source plan; ``lam`` may be a float, a 0-d tensor or a ``[B]`` tensor (a float is
        also kept on the host as ``lam_value``)."""
        index = index.long()
        if isinstance(lam, (int, float)) and "lam_value" not in kwargs:
            kwargs["lam_value"] = float(lam)
        lam_t = torch.as_tensor(lam, dtype=torch.float32, device=index.device)
        if lam_t.dim() == 0:
            lam_t = lam_t.expand(index.shape[0]).clone()
        return cls(index=index, lam=lam_t, partner_source=partner_source, **kwargs)

    # ----------------------------------------------------------------- properties
    @property
    def batch_size(self) -> int:
        return int(self.lam.shape[0])

    @property
    def is_identity(self) -> bool:
        """No sample is mixed. Free for plans built by ``MixPlan.identity``; for other two-source
        plans it reads lam and index on the host (the step itself only looks at ``known_identity``)."""
        if self.known_identity:
            return True
        if self.sources is not None or self.mask is not None or self.partner_source != "batch":
            return False
        return bool(
            torch.all(self.lam == 1)
            and torch.equal(self.index, torch.arange(self.batch_size, device=self.index.device))
        )

    @property
    def batch_lam(self) -> float | None:
        """The single lam of a per-batch plan, or ``None`` when lam varies across samples.

        Free when the sampler gave ``lam_value`` (a float lam); otherwise it reads ``lam`` on the host.
        """
        if self.lam_value is not None:
            return self.lam_value
        if self.lam.numel() == 0:
            return None
        first = self.lam.reshape(-1)[0]
        return float(first) if bool(torch.all(self.lam == first)) else None

    def validate(
        self,
        batch_size: int,
        dataset_size: int | None = None,
        owner: str = "sampler",
        checks: DeviceChecks | None = None,
        error: Callable[[str], BaseException] = ValueError,
    ) -> None:
        """Check the plan; raises ``ValueError``/``TypeError`` naming ``owner``.

        The structure (types, shapes, dtypes, the sources' form) is checked on the host at once.
        The values (lam and weights in [0, 1], weights summing to one, partners in range, the mask
        in [0, 1]) live on the device: with ``checks`` they become failure flags read later
        (``DeviceChecks``, no host synchronisation in the step) that raise ``error(message)``;
        without, they are read here.
        A plan built by ``MixPlan.identity`` needs no check.
        """
        if self.known_identity:
            return
        if not isinstance(self.lam, Tensor) or not isinstance(self.index, Tensor):
            raise TypeError(f"{owner}: MixPlan.index and MixPlan.lam must be tensors")
        if self.index.shape != (batch_size,) or self.lam.shape != (batch_size,):
            raise ValueError(
                f"{owner}: MixPlan.index and MixPlan.lam must have shape [{batch_size}], got "
                f"{tuple(self.index.shape)} and {tuple(self.lam.shape)}"
            )
        if self.index.is_floating_point() or self.index.dtype == torch.bool:
            raise TypeError(f"{owner}: MixPlan.index must be an integer tensor, got {self.index.dtype}")
        if not self.lam.is_floating_point():
            raise TypeError(f"{owner}: MixPlan.lam must be a floating-point tensor, got {self.lam.dtype}")
        if self.partner_source not in ("batch", "dataset"):
            raise ValueError(f"{owner}: MixPlan.partner_source must be 'batch' or 'dataset', got {self.partner_source!r}")
        flags: list[tuple[Tensor, str]] = []

        def outside(t: Tensor, low: float, high: float) -> Tensor:
            return ~((t >= low) & (t <= high)).all()  # NaN fails both comparisons

        flags.append((outside(self.lam, 0, 1), f"{owner}: MixPlan.lam must lie in [0, 1]"))
        if self.lam_value is not None:
            flags.append((((self.lam - self.lam_value).abs() > 1e-5).any(), f"{owner}: MixPlan.lam differs from MixPlan.lam_value={self.lam_value}"))
        limit = batch_size if self.partner_source == "batch" else dataset_size
        if limit is not None and self.index.numel():
            flags.append((
                ((self.index < 0) | (self.index >= limit)).any(),
                f"{owner}: MixPlan.index out of range for partner_source={self.partner_source!r} (must be in [0, {limit}))",
            ))
        if self.sources is not None:
            if not isinstance(self.sources, (list, tuple)) or not self.sources:
                raise ValueError(f"{owner}: MixPlan.sources must be a non-empty list of (index, weight) pairs")
            for k, (idx, w) in enumerate(self.sources):
                if idx.shape != (batch_size,) or w.shape != (batch_size,):
                    raise ValueError(f"{owner}: MixPlan.sources[{k}] must hold two tensors of shape [{batch_size}]")
                flags.append((((idx < 0) | (idx >= batch_size)).any(), f"{owner}: MixPlan.sources[{k}] index out of range [0, {batch_size})"))
                flags.append((outside(w, 0, 1), f"{owner}: MixPlan.sources[{k}] weights must lie in [0, 1]"))
            if self.source_lams is not None:
                if len(self.source_lams) != len(self.sources):
                    raise ValueError(f"{owner}: MixPlan.source_lams has {len(self.source_lams)} values for {len(self.sources)} sources")
                for k, ((_, w), value) in enumerate(zip(self.sources, self.source_lams)):
                    flags.append((((w - value).abs() > 1e-5).any(), f"{owner}: MixPlan.sources[{k}] weights differ from MixPlan.source_lams[{k}]={value}"))
            total = sum(w.float() for _, w in self.sources)
            flags.append((((total - 1).abs() > 1e-4).any(), f"{owner}: MixPlan.sources weights must sum to 1 per sample"))  # type: ignore[union-attr]
        if self.mask is not None:
            if self.mask.dim() == 0 or self.mask.shape[0] != batch_size:
                raise ValueError(f"{owner}: MixPlan.mask must have {batch_size} rows, got shape {tuple(self.mask.shape)}")
            flags.append((outside(self.mask, 0, 1), f"{owner}: MixPlan.mask must lie in [0, 1]"))
        if checks is None:
            for failed, message in flags:
                if bool(failed):
                    raise ValueError(message)
            return
        for failed, message in flags:
            checks.fail_if(failed, _deferred(error, message))

    # ----------------------------------------------------------------- targets
    def resolve(self, batch: Batch) -> MixPlan:
        """Fill ``y_a`` and ``y_b`` from the batch (and the fetched partner)."""
        self.y_a = batch.targets
        if self.partner_source == "dataset":
            if self.partner is None:
                raise RuntimeError("MixPlan: dataset partners have not been fetched")
            self.y_b = self.partner.targets
        else:
            self.y_b = batch.targets[self.index]
        return self

    def source_targets(self, targets: Tensor) -> list[tuple[Tensor, Tensor]]:
        """``[(targets_k [B], weight_k [B]), ...]`` for any plan (two or N sources)."""
        if self.sources is not None:
            return [(targets[idx], w) for idx, w in self.sources]
        y_b = self.y_b if self.y_b is not None else targets[self.index]
        return [(targets, self.lam), (y_b, 1 - self.lam)]

    def lam_as(self, like: Tensor) -> Tensor:
        """``lam`` reshaped to broadcast over ``like`` (``[B, 1, ...]``) in its dtype."""
        return self.lam.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))

    def mixed_regression_target(self) -> Tensor:
        """``lam * y_a + (1 - lam) * y_b`` for real-valued targets (``sum_k w_k * y_k`` for N sources)."""
        if self.y_a is None or self.y_b is None:
            raise RuntimeError("MixPlan.resolve(batch) must run before the targets are read")
        y_a = self.y_a.float()
        if self.sources is not None:
            return sum(w.to(y_a.dtype).reshape(-1, *([1] * (y_a.dim() - 1))) * t.float() for t, w in self.source_targets(self.y_a))  # type: ignore[return-value]
        lam = self.lam_as(y_a)
        return lam * y_a + (1 - lam) * self.y_b.float()
