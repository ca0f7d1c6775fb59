"""Counting device-to-host synchronisations on any machine: the tensor-to-Python reads a step makes.

On a GPU every read of a device value on the host (``loss.item()``, ``if torch.isfinite(x).all():``,
``int(index.max())``, boolean-mask indexing, ``.cpu()``) stalls the host until the queued kernels
have run. ``torch.cuda.set_sync_debug_mode`` reports them on CUDA; on a CPU nothing stalls, so
``HostSyncCounter`` finds the same reads by intercepting the Python-level conversions a
synchronisation goes through:

* ``Tensor.item``, ``tolist``, ``numpy``, ``cpu`` (a read; ``.to(device)`` is a move and is not counted), ``__bool__``, ``__int__``, ``__float__``, ``__index__``;
* data-dependent shapes: ``nonzero``/``argwhere``, ``unique``, ``masked_select``,
  ``repeat_interleave`` without ``output_size``, boolean-mask indexing and assignment;
* comparisons that return a Python bool: ``torch.equal``, ``torch.allclose``.

**Host values are not device values.** A plugin's random draws come from a CPU generator
(``state.generator``) and Python numbers become CPU tensors; on a GPU run, reading those is free.
So that a CPU run counts what a GPU run would wait for, the counter also tracks, through a
``TorchFunctionMode``, which tensors are *host-born*: made by a factory call without a
``device`` argument or drawn from a CPU generator (``torch.randint(..., generator=g)``,
``torch.tensor(0.5)``, ``torch.from_numpy``) or computed from host-born tensors only. A read of a host-born tensor is
recorded in ``host_reads``, not in ``count``. Every other tensor (the batch, parameters,
gradients, anything made with ``device=``, anything a device tensor touched) counts. Where
the tracking cannot tell (a parameter moved with ``.to(device)``, which a CPU run returns
unchanged, or an in-place write of a device value into a host tensor) the tensor is treated as a device tensor, so the
count errs towards more synchronisations, never fewer. One exception by origin: 0-d reads made
inside ``torch/optim`` are the non-capturable optimizers' step counts, CPU tensors on any device.

Used by ``benchmarks/host_syncs.py`` and the tests that keep the training step sync-free::

    with HostSyncCounter() as counter:
        run.train_step(batch)
    counter.count, counter.sites()   # how many, and where (file:line of the caller)
"""

from __future__ import annotations

import sys
import weakref
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["HostSyncCounter", "SYNC_METHODS", "SYNC_FUNCTIONS"]

#: ``torch.Tensor`` methods whose Python call reads a device value on the host.
SYNC_METHODS = (
    "item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__",
    "nonzero", "argwhere", "unique", "unique_consecutive", "masked_select",
)
#: ``torch`` functions that do the same.
SYNC_FUNCTIONS = ("nonzero", "argwhere", "unique", "unique_consecutive", "masked_select", "equal", "allclose")

_TORCH_DIR = str(Path(torch.__file__).parent)
_OPTIM_DIR = str(Path(torch.__file__).parent / "optim")
_HERE = str(Path(__file__))
#: methods that move a tensor to another device (their result is a device tensor when given one)
_MOVES = {"to", "cuda", "pin_memory"}


def _is_bool_mask(index: Any) -> bool:
    if isinstance(index, torch.Tensor):
        return index.dtype == torch.bool and index.dim() > 0
    if isinstance(index, tuple):
        return any(_is_bool_mask(i) for i in index)
    return False


def _tensors(obj: Any) -> Iterable[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


def _names_device(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether a ``.to(...)``-style call names a device (not only a dtype)."""
    if kwargs.get("device") is not None:
        return True
    return any(isinstance(a, (torch.device, str, int)) and not isinstance(a, bool) for a in args[1:])


class _HostOrigin(TorchFunctionMode):
    """Marks the tensors that live on the host in a GPU run (see the module docstring)."""

    def __init__(self, on_index: Any = None) -> None:
        super().__init__()
        self._host: dict[int, weakref.ref[torch.Tensor]] = {}
        #: called with (what, tensors) for boolean-mask indexing (seen here, not by patching
        #: ``Tensor.__getitem__``: a Python ``__getitem__`` on the class, even once removed, leaves
        #: torch treating tensors as sequences)
        self.on_index = on_index

    def is_host(self, t: torch.Tensor) -> bool:
        ref = self._host.get(id(t))
        return ref is not None and ref() is t

    def mark(self, t: torch.Tensor) -> None:
        key = id(t)
        host = self._host

        def forget(_ref: weakref.ref[torch.Tensor]) -> None:  # the tensor is gone: its id may be reused
            host.pop(key, None)

        host[key] = weakref.ref(t, forget)

    def unmark(self, t: torch.Tensor) -> None:
        if self.is_host(t):
            del self._host[id(t)]

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in ("__getitem__", "__setitem__") and self.on_index is not None and len(args) > 1 and _is_bool_mask(args[1]):
            self.on_index(f"bool-mask {name.strip('_')}", [t for t in args[:1] if isinstance(t, torch.Tensor)])
        out = func(*args, **kwargs)
        inputs = list(_tensors(args)) + list(_tensors(kwargs))
        if name in _MOVES and (name != "to" or _names_device(args, kwargs)):
            src = args[0] if args and isinstance(args[0], torch.Tensor) else None
            if src is not None and out is src and self.is_host(src):
                if isinstance(src, torch.nn.Parameter):
                    self.unmark(src)  # keep the parameter itself; treat it as a device tensor from now on
                else:  # a CPU run returns the input: give back a device alias, the host tensor stays one
                    out = out.view_as(out)
            return out
        if name == "cpu":
            return out  # the wrapper of ``Tensor.cpu`` marks its result
        if inputs:
            host = all(self.is_host(t) for t in inputs)
        else:  # a factory: host unless it names a device; a draw from a CPU generator is a host value
            gen = kwargs.get("generator")
            host = kwargs.get("device") is None or (gen is not None and gen.device.type == "cpu")
        if not host:
            if name.endswith("_") or name == "__setitem__" or "out" in kwargs:  # a host tensor written with device values
                for t in inputs:
                    self.unmark(t)
            return out
        for t in _tensors(out):
            self.mark(t)
        return out


class HostSyncCounter:
    """Context manager: counts host reads of device tensors while active (see the module docstring).

    ``count``: reads that synchronise on a GPU; ``host_reads``: reads of host-born tensors
    (free on a GPU); ``sites()``: where the counted reads were made.
    """

    def __init__(self) -> None:
        self.count = 0
        self.host_reads = 0
        self.enabled = True
        self._sites: Counter[str] = Counter()
        #: (owner, name, original, whether owner itself defined name): what ``__exit__`` restores
        self._saved: list[tuple[Any, str, Any, bool]] = []
        self._depth = 0
        self._origin = _HostOrigin(on_index=self._record_index)

    # ------------------------------------------------------------------ results
    def sites(self) -> dict[str, int]:
        """``{"file.py:123 (item)": n}``: where the counted reads were made."""
        return dict(self._sites)

    def reset(self) -> None:
        self.count = 0
        self.host_reads = 0
        self._sites.clear()

    # ------------------------------------------------------------------ recording
    def _record_index(self, what: str, tensors: list[torch.Tensor]) -> None:
        """Boolean-mask indexing, reported by the torch function mode (outside counted calls only)."""
        if self._depth == 0:
            self._record(what, tensors, skip_torch=True)

    def _record(self, what: str, tensors: list[torch.Tensor], skip_torch: bool = False) -> None:
        if not self.enabled:
            return
        frame: FrameType | None = sys._getframe(2)
        while frame is not None and (
            frame.f_code.co_filename == _HERE or (skip_torch and frame.f_code.co_filename.startswith(_TORCH_DIR))
        ):
            frame = frame.f_back
        caller = frame.f_code.co_filename if frame is not None else "?"
        line = frame.f_lineno if frame is not None else 0
        host = tensors and all(self._origin.is_host(t) or t.device.type == "meta" for t in tensors)
        # torch's non-capturable optimizers keep their step counts as CPU tensors, also on a GPU
        optim_step = caller.startswith(_OPTIM_DIR) and tensors and all(t.dim() == 0 for t in tensors)
        if host or optim_step:
            self.host_reads += 1
            return
        self.count += 1
        short = caller.replace(_TORCH_DIR, "torch")
        for marker in ("/core/", "/plugins/", "/site-packages/", "/benchmarks/", "/tests/"):
            if marker in short:
                short = short[short.index(marker) + 1 :]
                break
        self._sites[f"{short}:{line} ({what})"] += 1

    def _wrap(self, owner: Any, name: str) -> None:
        original = getattr(owner, name)
        counter = self

        def what_syncs(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
            """What the call reads on the host, or ``None`` when it reads nothing."""
            if name == "repeat_interleave":
                repeats = args[1] if len(args) > 1 else kwargs.get("repeats")
                return name if isinstance(repeats, torch.Tensor) and kwargs.get("output_size") is None else None
            return name

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            outer = counter._depth == 0
            what = what_syncs(args, kwargs) if outer else None
            if what is not None:  # conversions made inside a counted call do not count again
                counter._record(what, [t for t in args[:2] if isinstance(t, torch.Tensor)])
            counter._depth += 1
            try:
                out = original(*args, **kwargs)
            finally:
                counter._depth -= 1
            if what == "cpu" and isinstance(out, torch.Tensor):
                if out is args[0]:  # a CPU run returns the tensor itself: read it through a host alias
                    out = out.view_as(out)
                counter._origin.mark(out)
            return out

        self._saved.append((owner, name, original, name in vars(owner)))
        setattr(owner, name, wrapper)

    def __enter__(self) -> HostSyncCounter:
        for name in (*SYNC_METHODS, "repeat_interleave"):
            self._wrap(torch.Tensor, name)
        for name in (*SYNC_FUNCTIONS, "repeat_interleave"):
            self._wrap(torch, name)
        from_numpy = torch.from_numpy
        origin = self._origin

        def host_from_numpy(array: Any) -> torch.Tensor:  # not seen by torch function modes
            out = from_numpy(array)
            origin.mark(out)
            return out

        self._saved.append((torch, "from_numpy", from_numpy, True))
        torch.from_numpy = host_from_numpy  # type: ignore[assignment]
        self._origin.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._origin.__exit__(*exc)
        for owner, name, original, own in reversed(self._saved):
            if own:
                setattr(owner, name, original)
            else:  # inherited (e.g. torch.Tensor's C methods): setting it back would shadow the C slot,
                delattr(owner, name)  # which changes how torch treats tensors (a 0-d tensor as a sequence)
        self._saved.clear()

    def paused(self) -> _Paused:
        """``with counter.paused():`` reads inside are not counted (e.g. the loader's CPU work)."""
        return _Paused(self)


class _Paused:
    def __init__(self, counter: HostSyncCounter) -> None:
        self.counter = counter

    def __enter__(self) -> None:
        self.was = self.counter.enabled
        self.counter.enabled = False

    def __exit__(self, *exc: Any) -> None:
        self.counter.enabled = self.was
