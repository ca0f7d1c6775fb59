"""The cases timm's own optimizer suite runs for every optimizer, against ``mixhubadamp`` and
``mixhubsgdp`` built through timm's factory, for every implementation.

timm's suite builds each optimizer with ``create_optimizer_v2`` by name and checks: a closure
loop on ``weight.mv(input) + bias`` lowers the loss (also with non-contiguous parameters), with
``lr`` given at the top, per group, or only in a group; a state dict taken mid-run and loaded
into a fresh optimizer continues identically, is deterministic and keeps repeated groups; a
deepcopy keeps every public attribute; Rosenbrock's function gets closer to its minimum under
cyclic coordinate descent; a small sigmoid network's loss falls at every one of 20 steps.
These are our own versions of those cases; also: the class default and the factory default are
the fastest exact implementation for the device, and the capturable step reads nothing back.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from mixhub_adamp import SGDP, AdamP, native, register_timm
from torch.nn import Parameter

timm_optim = pytest.importorskip("timm.optim")
create_optimizer_v2 = timm_optim.create_optimizer_v2

#: factory name -> (class, top-level lr used by timm's cases for it)
NAMES = {"mixhubadamp": (AdamP, 5e-2), "mixhubsgdp": (SGDP, 1e-3)}
#: implementation choices: factory kwargs
IMPL_KW = {
    "default": {},
    "reference": {"impl": "reference"},
    "foreach": {"impl": "foreach"},
    "fused": {"impl": "fused"},
    "capturable": {"capturable": True},
}


@pytest.fixture(scope="module", autouse=True)
def registered() -> None:
    register_timm()


def _groups(weight: Parameter, bias: Parameter, layout: str, lr: float) -> list:
    if layout == "list":
        return [weight, bias]
    if layout == "two-groups":  # the bias group overrides lr
        return [{"params": [weight]}, {"params": [bias], "lr": lr}]
    return [{"params": [bias], "lr": lr}]  # "bias-only": one group, lr inside it


def _impl_kw(impl: str) -> dict:
    if impl == "fused" and not native.available():
        pytest.skip(f"fused kernels unavailable: {native.build_error()}")
    return IMPL_KW[impl]


def _same(a, b) -> bool:
    """Exact structural equality of state dicts (tensors bitwise, with their dtype)."""
    if torch.is_tensor(a) or torch.is_tensor(b):
        return torch.is_tensor(a) and torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _loss(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (weight.mv(x) + bias).pow(2).sum()


# ============================================================================ construction
@pytest.mark.parametrize("name", list(NAMES))
def test_factory_names_build_our_class_with_the_fast_default(name: str) -> None:
    cls, _ = NAMES[name]
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Flatten())
    opt = create_optimizer_v2(model, name, lr=1e-2, weight_decay=1e-4)
    assert type(opt) is cls
    conv = model[0].weight
    group = next(g for g in opt.param_groups if any(p is conv for p in g["params"]))
    expected = "fused" if native.available() else "foreach"  # never the slow reference loop
    assert opt._impl_for(group, conv) == expected
    assert cls(model.parameters(), lr=1e-2)._impl_for(opt.defaults, conv) == expected
    # timm passes foreach=False through: that is the reference loop, on purpose
    ref = create_optimizer_v2(model, name, lr=1e-2, foreach=False)
    assert ref._impl_for(ref.param_groups[0], conv) == "reference"
    repr(opt)


def test_sgdp_takes_lr_from_parameter_groups_only() -> None:
    w, b = Parameter(torch.randn(4, 3)), Parameter(torch.randn(4))
    opt = SGDP([{"params": [w], "lr": 0.1}, {"params": [b], "lr": 0.01}], momentum=0.9)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.01]
    opt = create_optimizer_v2([{"params": [w], "lr": 0.1}], "mixhubsgdp")  # timm passes no lr
    assert opt.param_groups[0]["lr"] == 0.1 and opt.param_groups[0]["momentum"] == 0.9
    with pytest.raises(ValueError, match="required optimization parameter lr"):
        SGDP([{"params": [w], "lr": 0.1}, {"params": [b]}])
    with pytest.raises(ValueError, match="lr"):
        SGDP([w], lr=-0.1)


# ============================================================================ timm's basic cases
@pytest.mark.parametrize("impl", list(IMPL_KW))
@pytest.mark.parametrize("name", list(NAMES))
@pytest.mark.parametrize("layout", ["list", "two-groups", "bias-only", "bias-only-no-top-lr"])
def test_closure_loop_lowers_the_loss(name: str, layout: str, impl: str) -> None:
    kw = _impl_kw(impl)
    cls, lr = NAMES[name]
    for contiguous in (True, False):
        torch.manual_seed(0)
        if contiguous:
            weight, bias = Parameter(torch.randn(10, 5)), Parameter(torch.randn(10))
        else:
            weight, bias = Parameter(torch.randn(10, 5, 2)[..., 0]), Parameter(torch.randn(10, 2)[..., 0])
        x = torch.randn(5)
        params = _groups(weight, bias, layout.removesuffix("-no-top-lr"), 3 * lr)
        top = {} if layout.endswith("no-top-lr") else {"lr": lr}
        opt = create_optimizer_v2(params, name, **top, **kw)
        assert type(opt) is cls

        def closure(opt=opt, weight=weight, bias=bias, x=x):
            opt.zero_grad()
            loss = _loss(weight, bias, x)
            loss.backward()
            return loss

        before = float(closure().detach())
        for _ in range(100):
            returned = opt.step(closure)
        assert torch.is_tensor(returned)  # step returns the closure's loss
        assert float(closure().detach()) < before


@pytest.mark.parametrize("impl", list(IMPL_KW))
@pytest.mark.parametrize("name", list(NAMES))
def test_state_dict_round_trip_continues_identically(name: str, impl: str) -> None:
    kw = _impl_kw(impl)
    torch.manual_seed(0)
    weight, bias, x = Parameter(torch.randn(10, 5)), Parameter(torch.randn(10)), torch.randn(5)
    make = functools.partial(create_optimizer_v2, opt=name, lr=1e-3, weight_decay=1e-2, **kw)
    opt = make([weight, bias])

    def closure(opt, weight, bias):
        opt.zero_grad()
        loss = _loss(weight, bias, x)
        loss.backward()
        return loss

    for _ in range(20):
        opt.step(functools.partial(closure, opt, weight, bias))
    weight_c, bias_c = Parameter(weight.detach().clone()), Parameter(bias.detach().clone())
    opt_c = make([weight_c, bias_c])
    saved = copy.deepcopy(opt.state_dict())
    opt_c.load_state_dict(copy.deepcopy(saved))
    for _ in range(20):
        opt.step(functools.partial(closure, opt, weight, bias))
        opt_c.step(functools.partial(closure, opt_c, weight_c, bias_c))
        assert torch.equal(weight, weight_c) and torch.equal(bias, bias_c)
    # deterministic state dict with equal (not identical) parameters
    assert _same(opt.state_dict(), opt_c.state_dict())
    # repeated parameter groups keep one representation
    opt_c.param_groups.extend(opt_c.param_groups)
    assert opt.state_dict()["param_groups"][-1] == opt_c.state_dict()["param_groups"][-1]
    # deepcopy keeps every public attribute
    public = {k for k in opt.__dict__ if not k.startswith("_")}
    assert public == {k for k in copy.deepcopy(opt).__dict__ if not k.startswith("_")}


def _rosenbrock(t: torch.Tensor) -> torch.Tensor:
    x, y = t
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


@pytest.mark.parametrize("impl", ["default", "capturable"])
@pytest.mark.parametrize("name, lr", [("mixhubadamp", 5e-2), ("mixhubsgdp", 1e-3)])
def test_rosenbrock_cyclic_coordinate_descent(name: str, lr: float, impl: str) -> None:
    params = Parameter(torch.tensor([1.5, 1.5]))
    opt = create_optimizer_v2([params], name, lr=lr, **_impl_kw(impl))
    solution = torch.tensor([1.0, 1.0])
    start = float(params.detach().dist(solution))

    def closure(coordinate: int):
        opt.zero_grad()
        loss = _rosenbrock(params)
        loss.backward()
        with torch.no_grad():
            params.grad[1 - coordinate] = 0.0  # only one coordinate's gradient per step
        return loss

    for i in range(600):
        opt.step(functools.partial(closure, i % 2))
    assert float(params.detach().dist(solution)) < start


@pytest.mark.parametrize("impl", list(IMPL_KW))
@pytest.mark.parametrize("name, lr", [("mixhubadamp", 5e-2), ("mixhubsgdp", 1e-3)])
def test_small_model_loss_falls_every_step(name: str, lr: float, impl: str) -> None:
    kw = _impl_kw(impl)
    model = torch.nn.Sequential(
        torch.nn.Linear(2, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 1), torch.nn.Sigmoid()
    )
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[-0.2109, -0.4976], [-0.1413, -0.3420], [-0.2524, 0.6976]]))
        model[0].bias.copy_(torch.tensor([-0.1085, -0.2979, 0.6892]))
        model[2].weight.copy_(torch.tensor([[-0.0508, -0.3941, -0.2843]]))
        model[2].bias.copy_(torch.tensor([-0.0711]))
    x = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]).reshape(3, 2)
    opt = create_optimizer_v2(model, name, lr=lr, **kw)
    previous = float("inf")
    for _ in range(20):
        opt.zero_grad()
        loss = model(x).sum()
        loss.backward()
        assert float(loss.detach()) < previous
        previous = float(loss.detach())
        opt.step()


# ============================================================================ capturable
_HOST_READS = ("item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__")


@pytest.mark.parametrize(
    "cls, kw",
    [
        (AdamP, {"weight_decay": 1e-2, "nesterov": True}),
        (SGDP, {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}),
    ],
)
def test_capturable_step_reads_nothing_back(monkeypatch: pytest.MonkeyPatch, cls, kw) -> None:
    """The capturable path on CPU tensors runs the CUDA code path; no tensor value may reach
    Python during a step (each read would be a host synchronisation on a GPU)."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 3)
    params = [conv.weight, conv.bias, Parameter(torch.randn(6, 4))]
    opt = cls(params, capturable=True, **kw)
    grads = [[torch.randn_like(p) for p in params] for _ in range(3)]
    reads: list[str] = []

    def tripwire(name, original):
        def wrapped(self, *args, **kwargs):
            reads.append(name)
            return original(self, *args, **kwargs)

        return wrapped

    for name in _HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, tripwire(name, getattr(torch.Tensor, name)))
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g
        opt.step()
    monkeypatch.undo()
    assert reads == []
    # and the tripwire works: the host-decided path does read
    host = cls([p.detach().clone().requires_grad_() for p in params], impl="foreach", **kw)
    for p, g in zip(host.param_groups[0]["params"], grads[0]):
        p.grad = g
    for name in _HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, tripwire(name, getattr(torch.Tensor, name)))
    host.step()
    monkeypatch.undo()
    assert reads


def test_capturable_state_round_trip_and_switch_to_host_steps() -> None:
    """A capturable state (tensor steps) continues on the host path (int steps) once the group
    options say so, and continues as capturable after a round trip, exactly as one uninterrupted
    run of each would."""
    torch.manual_seed(0)
    init = [torch.randn(6, 4), torch.randn(6)]
    grads = [[torch.randn_like(p) for p in init] for _ in range(6)]

    def run(make, steps, params=None, state=None, **switch):
        params = params or [p.clone().requires_grad_() for p in init]
        opt = make(params)
        if state is not None:
            opt.load_state_dict(state)  # restores the saved group options too, as torch does
            for group in opt.param_groups:
                group.update(switch)
        for gs in steps:
            for p, g in zip(params, gs):
                p.grad = g.clone()
            opt.step()
        return params, opt

    cap = functools.partial(AdamP, lr=1e-2, weight_decay=1e-2, capturable=True)
    host = functools.partial(AdamP, lr=1e-2, weight_decay=1e-2, impl="reference")
    half, opt = run(cap, grads[:3])
    assert all(s["step"].dtype == torch.float64 for s in opt.state.values())
    straight_host, _ = run(host, grads)
    resumed, opt_h = run(
        host, grads[3:], [p.detach().clone().requires_grad_() for p in half], copy.deepcopy(opt.state_dict()),
        capturable=False, impl="reference",
    )  # fmt: skip
    assert all(type(s["step"]) is int and s["step"] == 6 for s in opt_h.state.values())
    back, opt_c = run(
        cap, grads[3:], [p.detach().clone().requires_grad_() for p in half], copy.deepcopy(opt.state_dict())
    )
    assert all(float(s["step"]) == 6 for s in opt_c.state.values())
    straight_cap, _ = run(cap, grads)
    for a, b, c, d in zip(resumed, straight_host, back, straight_cap):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        assert torch.equal(c, d)
