"""``AdamP`` and ``SGDP``: ``torch.optim.Optimizer`` classes over ``functional``.

Signatures, defaults and state keys are the official ones (clovaai/AdamP, PyPI ``adamp``
0.3.0), so official optimizer states load. Keyword-only extras choose the implementation:

* ``impl="auto"`` (the default): the fastest exact step for each tensor's device. On CPU the
  fused kernel (float32/float64 tensors, when it builds; measured fastest by
  ``benchmarks/adamp_step.py``), else the multi-tensor step (bitwise equal to the reference).
  On other devices the capturable multi-tensor step (see ``capturable``);
* ``impl="reference"`` (also ``foreach=False``): the official per-tensor loop, bitwise equal to
  ``adamp`` 0.3.0, on every device;
* ``impl="foreach"`` (also ``foreach=True``): multi-tensor kernels, host decision on CPU
  (bitwise equal), branch-free on other devices (no host synchronisation);
* ``impl="fused"``: the C++ kernel on CPU (float32/float64), equal to rounding; CPU tensors it
  cannot take (other dtypes, layouts) use the reference loop, other devices ``foreach``.

``capturable`` (default: on for tensors off the CPU unless ``impl="reference"``): the step
count is a 0-d tensor on the parameter's device, bias corrections and projection decisions stay
on the device (``functional.adamp_capturable_update_``), so a step never synchronises with the
host and can be captured in a CUDA graph. ``capturable=True`` on CPU runs the same code.

Fixes over the official classes (no number changes): ``reshape`` instead of ``view``
(channels_last works), ``step`` under ``torch.no_grad()`` with the closure under
``torch.enable_grad()``, argument checks, and sparse or complex gradients rejected.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer, required

from . import functional as Fn
from . import native

__all__ = ["AdamP", "SGDP", "IMPLS"]

IMPLS = ("auto", "reference", "foreach", "fused")


def _check(
    name: str, value: float, low: float = 0.0, high: float | None = None, high_open: bool = True
) -> None:
    if not value >= low or (high is not None and (value >= high if high_open else value > high)):
        bound = f"in [{low}, {high}{')' if high_open else ']'}" if high is not None else f">= {low}"
        raise ValueError(f"invalid {name}: {value!r} (expected {bound})")


def _resolve_impl(impl: str | None, foreach: bool | None) -> str:
    if impl is None:
        return "auto" if foreach is None else ("foreach" if foreach else "reference")
    if impl not in IMPLS:
        raise ValueError(f"invalid impl {impl!r}; expected one of {IMPLS}")
    return impl


class _ProjectedOptimizer(Optimizer):
    """Shared bookkeeping: implementation choice, gradient checks, projection statistics."""

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        super().__init__(params, defaults)
        #: Counts of the last step's projections: channel, layer, none, 1d.
        self.last_projection: dict[str, int] = {k: 0 for k in Fn.KINDS}
        self._kinds: dict[int, str | Tensor] = {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # options a loaded state lacks (e.g. an official ``adamp`` state) come from this
        # optimizer's own defaults
        defaults = getattr(self, "defaults", {})
        for key, default in (
            ("foreach", None),
            ("impl", None),
            ("track_projection", False),
            ("capturable", None),
        ):
            for group in self.param_groups:
                group.setdefault(key, defaults.get(key, default))
        self.__dict__.setdefault("last_projection", {k: 0 for k in Fn.KINDS})
        self.__dict__.setdefault("_kinds", {})

    def projection_kinds(self) -> dict[Tensor, str]:
        """The projection kind of each parameter at the last step (``"channel"``, ``"layer"``,
        ``"none"``, ``"1d"``). Branch-free (CUDA) decisions are read here, with one sync."""
        by_id = {id(p): p for g in self.param_groups for p in g["params"]}
        out = {}
        for pid, kind in self._kinds.items():
            if pid in by_id:
                out[by_id[pid]] = kind if isinstance(kind, str) else Fn.KINDS[int(kind)]
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state.get(p)
                if st and "step" in st:
                    st["step"] = self._step_for(self._impl_for(group, p), p, st["step"])

    @staticmethod
    def _step_for(impl: str, p: Tensor, step: int | Tensor) -> int | Tensor:
        """The step count in the form ``impl`` keeps it: a Python int (official), or a 0-d
        float64 tensor on ``p``'s device for the capturable path (float32 where the device has no
        float64). A conversion reads the device once, only when the form changes (e.g. a loaded
        state)."""
        if impl != "capturable":
            return int(step.item()) if isinstance(step, Tensor) else step
        dtype = torch.float32 if p.device.type == "mps" else torch.float64
        if isinstance(step, Tensor):
            if step.dtype == dtype and step.device == p.device and step.dim() == 0:
                return step
            return step.detach().reshape(()).to(device=p.device, dtype=dtype)
        return torch.tensor(float(step), dtype=dtype, device=p.device)

    @staticmethod
    def _grads(group: dict[str, Any]) -> list[Tensor]:
        params = []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("AdamP/SGDP do not support sparse gradients")
            if torch.is_complex(p):
                raise RuntimeError("AdamP/SGDP do not support complex parameters")
            params.append(p)
        return params

    def _impl_for(self, group: dict[str, Any], p: Tensor) -> str:
        """``reference``, ``foreach``, ``fused`` or ``capturable`` for ``p`` in ``group``."""
        impl = _resolve_impl(group.get("impl"), group.get("foreach"))
        if impl == "reference":
            return impl
        capturable = group.get("capturable")
        if capturable or (capturable is None and p.device.type != "cpu"):
            return "capturable"
        if p.device.type != "cpu":
            return "foreach"  # branch-free, host step count: never synchronises
        if impl == "auto":
            return "fused" if Fn.fused_supported(p) else "foreach"
        if impl == "fused":
            if not native.available():
                raise RuntimeError(f"impl='fused' needs the C++ kernels: {native.build_error()}")
            return "fused" if Fn.fused_supported(p) else "reference"
        return impl

    def _record(self, params: list[Tensor], kinds: list[str | Tensor], track: bool) -> None:
        for p, kind in zip(params, kinds):
            self._kinds[id(p)] = kind
        if any(isinstance(k, Tensor) for k in kinds) and not track:
            return
        counts = Counter(k if isinstance(k, str) else Fn.KINDS[int(k)] for k in self._kinds.values())
        self.last_projection = {k: counts.get(k, 0) for k in Fn.KINDS}

    def _fused_state(self, p: Tensor, keys: tuple[str, ...]) -> None:
        """Give state tensors the parameter's layout (e.g. after loading a contiguous state)."""
        state = self.state[p]
        for key in keys:
            if state[key].stride() != p.stride():
                fixed = torch.empty_like(p)
                fixed.copy_(state[key])
                state[key] = fixed

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._kinds = {}
        track = False
        for group in self.param_groups:
            track = track or bool(group.get("track_projection"))
            params = self._grads(group)
            buckets: dict[tuple[Any, ...], list[Tensor]] = {}
            for p in params:
                impl = self._impl_for(group, p)
                key = (impl, p.device, p.dtype) if impl in ("foreach", "capturable") else (impl,)
                buckets.setdefault(key, []).append(p)
            for key, ps in buckets.items():
                kinds = self._update(group, key[0], ps)
                self._record(ps, kinds, track)
        if not self._kinds:
            self.last_projection = {k: 0 for k in Fn.KINDS}
        return loss

    def _update(self, group: dict[str, Any], impl: str, params: list[Tensor]) -> list[str | Tensor]:
        raise NotImplementedError


class AdamP(_ProjectedOptimizer):
    """AdamP (paper Algorithm 2; official ``adamp.AdamP``): Adam with decoupled weight decay
    whose update loses its radial component on scale-invariant tensors.

    Args: as the official class (``lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
    delta=0.1, wd_ratio=0.1, nesterov=False``), plus keyword-only ``foreach``, ``impl`` and
    ``capturable`` (module docstring) and ``track_projection`` (read the branch-free decisions
    every step, one sync, for ``last_projection``).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        delta: float = 0.1,
        wd_ratio: float = 0.1,
        nesterov: bool = False,
        *,
        foreach: bool | None = None,
        impl: str | None = None,
        capturable: bool | None = None,
        track_projection: bool = False,
    ) -> None:
        _check("lr", lr)
        _check("beta1", betas[0], 0.0, 1.0)
        _check("beta2", betas[1], 0.0, 1.0)
        for name, value in (
            ("eps", eps),
            ("weight_decay", weight_decay),
            ("delta", delta),
            ("wd_ratio", wd_ratio),
        ):
            _check(name, value)
        _resolve_impl(impl, foreach)
        defaults = dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, delta=delta, wd_ratio=wd_ratio,
            nesterov=nesterov, foreach=foreach, impl=impl, capturable=capturable,
            track_projection=track_projection,
        )  # fmt: skip
        super().__init__(params, defaults)

    def _state(self, p: Tensor) -> dict[str, Any]:
        state = self.state[p]
        if len(state) == 0:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    def _update(self, group: dict[str, Any], impl: str, params: list[Tensor]) -> list[str | Tensor]:
        beta1, beta2 = group["betas"]
        hyper = dict(
            lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
            delta=group["delta"], wd_ratio=group["wd_ratio"], nesterov=group["nesterov"],
        )  # fmt: skip
        if impl == "capturable":
            st = [self._state(p) for p in params]
            for p, s in zip(params, st):
                s["step"] = self._step_for(impl, p, s["step"])
            return Fn.adamp_capturable_update_(
                params, [p.grad for p in params], [s["exp_avg"] for s in st], [s["exp_avg_sq"] for s in st],
                [s["step"] for s in st], **hyper,
            )  # fmt: skip
        if impl == "foreach":
            by_step: dict[int, list[Tensor]] = {}
            for p in params:
                state = self._state(p)
                state["step"] = self._step_for(impl, p, state["step"]) + 1
                by_step.setdefault(state["step"], []).append(p)
            kinds: dict[int, str | Tensor] = {}
            for step, ps in by_step.items():
                st = [self.state[p] for p in ps]
                out = Fn.adamp_foreach_update_(
                    ps, [p.grad for p in ps], [s["exp_avg"] for s in st], [s["exp_avg_sq"] for s in st],
                    step, **hyper,
                )  # fmt: skip
                kinds.update({id(p): k for p, k in zip(ps, out)})
            return [kinds[id(p)] for p in params]
        update = Fn.fused_adamp_update_ if impl == "fused" else Fn.adamp_update_
        result: list[str | Tensor] = []
        for p in params:
            state = self._state(p)
            if impl == "fused":
                self._fused_state(p, ("exp_avg", "exp_avg_sq"))
            state["step"] = self._step_for(impl, p, state["step"]) + 1
            result.append(update(p, p.grad, state["exp_avg"], state["exp_avg_sq"], state["step"], **hyper))
        return result


class SGDP(_ProjectedOptimizer):
    """SGDP (paper Algorithm 3; official ``adamp.SGDP``): momentum SGD with decoupled weight
    decay whose update loses its radial component on scale-invariant tensors.

    Args: as the official class (``lr`` required: as an argument or in every parameter group;
    ``momentum=0, dampening=0, weight_decay=0, nesterov=False, eps=1e-8, delta=0.1,
    wd_ratio=0.1``), plus keyword-only ``buffer_alias=True`` (official: without nesterov the
    projection also rewrites the momentum buffer; ``False`` projects a copy, as timm >= 1.0.26),
    ``foreach``, ``impl``, ``capturable`` and ``track_projection`` (see ``AdamP``; SGDP has no
    step count, so ``capturable`` means the branch-free multi-tensor step).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = required,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
        eps: float = 1e-8,
        delta: float = 0.1,
        wd_ratio: float = 0.1,
        *,
        buffer_alias: bool = True,
        foreach: bool | None = None,
        impl: str | None = None,
        capturable: bool | None = None,
        track_projection: bool = False,
    ) -> None:
        # ``lr=required``: torch's Optimizer then requires it in every parameter group and says
        # which group lacks it
        if lr is not required:
            _check("lr", lr)
        _check("momentum", momentum, 0.0, 1.0, high_open=False)
        _check("dampening", dampening, 0.0, 1.0, high_open=False)
        for name, value in (
            ("eps", eps),
            ("weight_decay", weight_decay),
            ("delta", delta),
            ("wd_ratio", wd_ratio),
        ):
            _check(name, value)
        if momentum == 1 and weight_decay > 0:
            raise ValueError("SGDP: momentum=1 with weight_decay > 0 divides the decay by zero")
        _resolve_impl(impl, foreach)
        defaults = dict(
            lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
            eps=eps, delta=delta, wd_ratio=wd_ratio, buffer_alias=buffer_alias, foreach=foreach, impl=impl,
            capturable=capturable, track_projection=track_projection,
        )  # fmt: skip
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("buffer_alias", getattr(self, "defaults", {}).get("buffer_alias", True))

    def _update(self, group: dict[str, Any], impl: str, params: list[Tensor]) -> list[str | Tensor]:
        hyper = dict(
            lr=group["lr"], momentum=group["momentum"], dampening=group["dampening"],
            weight_decay=group["weight_decay"], nesterov=group["nesterov"], eps=group["eps"],
            delta=group["delta"], wd_ratio=group["wd_ratio"], buffer_alias=group.get("buffer_alias", True),
        )  # fmt: skip
        for p in params:
            state = self.state[p]
            if len(state) == 0:
                state["momentum"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if impl in ("foreach", "capturable"):
            return Fn.sgdp_foreach_update_(
                params, [p.grad for p in params], [self.state[p]["momentum"] for p in params], **hyper,
                branchless=True if impl == "capturable" else None,
            )  # fmt: skip
        update = Fn.fused_sgdp_update_ if impl == "fused" else Fn.sgdp_update_
        result: list[str | Tensor] = []
        for p in params:
            if impl == "fused":
                self._fused_state(p, ("momentum",))
            result.append(update(p, p.grad, self.state[p]["momentum"], **hyper))
        return result
