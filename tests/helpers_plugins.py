"""In-process plugins used by the core tests."""

from __future__ import annotations

import torch

from mixhub import Batch, MixPlan, PluginOptions, PluginSpec, State, hookimpl


class Recorder:
    """Records hook calls; claims nothing."""

    PLUGIN = PluginSpec(name="recorder", task_kinds=("classification", "regression"))

    def __init__(self) -> None:
        self.calls: list[str] = []

    @hookimpl
    def mixhub_configure_model(self, model, state):  # noqa: ANN001
        self.calls.append("configure_model")

    @hookimpl
    def mixhub_epoch_start(self, state):  # noqa: ANN001
        self.calls.append("epoch_start")

    @hookimpl
    def mixhub_after_step(self, state):  # noqa: ANN001
        self.calls.append("after_step")

    @hookimpl
    def mixhub_epoch_end(self, state):  # noqa: ANN001
        self.calls.append("epoch_end")

    @hookimpl(wrapper=True)
    def mixhub_evaluate(self, model, state):  # noqa: ANN001
        self.calls.append("evaluate_enter")
        try:
            return (yield)
        finally:
            self.calls.append("evaluate_exit")

    @hookimpl(wrapper=True)
    def mixhub_fit(self, state):  # noqa: ANN001
        self.calls.append("fit_enter")
        try:
            return (yield)
        finally:
            self.calls.append("fit_exit")


class FlipSampler:
    """Pairs i with B-1-i at lam 0.7 (a third-party sampler)."""

    class Options(PluginOptions):
        lam: float = 0.7

    PLUGIN = PluginSpec(name="flip", options=Options, slots=("sample_pairs",))

    @hookimpl
    def mixhub_sample_pairs(self, batch: Batch, state: State) -> MixPlan:
        idx = torch.arange(batch.size - 1, -1, -1, device=batch.inputs.device)
        return MixPlan.pairs(idx, state.options("flip").lam)


class OtherSampler:
    PLUGIN = PluginSpec(name="other", slots=("sample_pairs",))

    @hookimpl
    def mixhub_sample_pairs(self, batch, state):  # noqa: ANN001
        return MixPlan.identity(batch.size)


class Raising:
    PLUGIN = PluginSpec(name="raiser", slots=("forward",))

    @hookimpl
    def mixhub_forward(self, model, batch, plan, state):  # noqa: ANN001
        raise RuntimeError("boom inside forward")


class WrongType:
    PLUGIN = PluginSpec(name="wrongtype", slots=("compute_loss",))

    @hookimpl
    def mixhub_compute_loss(self, outputs, batch, plan, state):  # noqa: ANN001
        return 1.0


class NanLoss:
    PLUGIN = PluginSpec(name="nanloss", slots=("compute_loss",))

    @hookimpl
    def mixhub_compute_loss(self, outputs, batch, plan, state):  # noqa: ANN001
        return outputs["logits"].sum() * float("nan")


class BadState:
    PLUGIN = PluginSpec(name="badstate")

    @hookimpl
    def mixhub_state_dict(self, state):  # noqa: ANN001
        return {"obj": object()}
