"""Mechanics checks of a built AdAutoMix run (the method card's property tests).

Each check takes a ``mixhub.trainer.Trainer`` whose config activates ``adautomix`` (fresh,
not yet trained), runs a step or two through the hooks and returns plain values; the tests
assert on them and the bench suite reports them (1.0 = pass). The checks train the run they
receive: use a throw-away trainer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .features import one_hot_logits

NAME = "adautomix"

__all__ = [
    "check_masks_at_init",
    "check_gradient_routing",
    "check_teacher_ema",
    "check_alternation",
    "check_lam_margin",
    "check_eval_heads",
    "run_all",
]


def _batch(trainer: Any) -> Any:
    return next(iter(trainer.loader)).to(trainer.device)


def _parts(trainer: Any) -> tuple[nn.Module, nn.Module, nn.Module]:
    st = trainer.state
    return trainer.model, st.module(NAME, "teacher"), st.module(NAME, "generator")


def check_masks_at_init(trainer: Any, trials: int = 4) -> dict[str, float]:
    """Masks of the freshly initialised generator on the teacher's real stage features.

    Returns the worst deviation of the per-pixel sum from 1, the minimum value, the worst
    within-image spatial std and the worst deviation from 1/N. With the official N(0, 0.01)
    init the attention is uniform, so masks are spatially constant; their distance to 1/N
    scales with the feature magnitude (about 5e-3 for unit-scale features over 32 channels,
    below 1e-3 for features of scale 0.1).
    """
    from .features import stage_features

    student, teacher, gen = _parts(trainer)
    index = trainer.state.options(NAME).feature_index
    batch = _batch(trainer)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        feat = stage_features(teacher, batch.inputs, index).float()
    worst_sum, worst_uniform, worst_std, min_value = 0.0, 0.0, 0.0, 1.0
    b = feat.shape[0]
    for n in (2, 3):
        for _ in range(trials):
            perms = [torch.randperm(b, generator=g).to(feat.device) for _ in range(n)]
            lams = torch.distributions.Dirichlet(torch.ones(n)).sample().tolist()
            with torch.no_grad():
                m = gen([feat[p] for p in perms], lams)
            worst_sum = max(worst_sum, float((m.sum(1) - 1).abs().max()))
            worst_uniform = max(worst_uniform, float((m - 1.0 / n).abs().max()))
            worst_std = max(worst_std, float(m.flatten(2).std(dim=2).max()))
            min_value = min(min_value, float(m.min()))
    return {"sum_err": worst_sum, "uniform_err": worst_uniform, "spatial_std": worst_std, "min": min_value}


def _step_parts(trainer: Any, batch: Any) -> tuple[Any, Any, dict[str, Any], Tensor, Tensor]:
    st, host = trainer.state, trainer.host
    trainer.model.train()
    st.module(NAME, "teacher").train()
    plan = host.slot("sample_pairs", batch=batch, state=st)
    plan.resolve(batch)
    mixed = host.slot("mix_batch", batch=batch, plan=plan, state=st)
    outputs = host.slot("forward", model=trainer.net, batch=mixed, plan=plan, state=st)
    main = host.slot("compute_loss", outputs=outputs, batch=mixed, plan=plan, state=st)
    aux = {}
    for terms in host.collect("mixhub_aux_losses", outputs=outputs, batch=mixed, plan=plan, state=st):
        aux.update(terms)
    return plan, mixed, outputs, main, aux["adautomix_generator"]


def _grad_norms(loss: Tensor, params: list[nn.Parameter]) -> float:
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
    return float(sum(float(g.detach().abs().sum()) for g in grads if g is not None))


def check_gradient_routing(trainer: Any) -> dict[str, float]:
    """Gradient mass each loss sends to the generator and the student; teacher grads after a full step."""
    student, teacher, gen = _parts(trainer)
    batch = _batch(trainer)
    _, _, _, main, gen_loss = _step_parts(trainer, batch)
    s_params = [p for p in student.parameters() if p.requires_grad]
    g_params = list(gen.parameters())
    out = {
        "gen_loss_to_generator": _grad_norms(gen_loss, g_params),
        "gen_loss_to_student": _grad_norms(gen_loss, s_params),
        "main_loss_to_student": _grad_norms(main, s_params),
        "main_loss_to_generator": _grad_norms(main, g_params),
        "teacher_trainable": float(sum(p.requires_grad for p in teacher.parameters())),
    }
    trainer.train_step(batch)
    out["teacher_grads_after_step"] = float(sum(p.grad is not None for p in teacher.parameters()))
    return out


def check_teacher_ema(trainer: Any) -> dict[str, float]:
    """Teacher == student after configure; after a step it moved by exactly (1 - m)(theta_S - theta_T)."""
    student, teacher, _ = _parts(trainer)
    init_diff = max(
        float((a - b).abs().max())
        for a, b in zip(teacher.state_dict().values(), student.state_dict().values())
        if a.is_floating_point()
    )
    old_t = [p.detach().clone() for p in teacher.parameters()]
    trainer.train_step(_batch(trainer))
    m = float(trainer.state.scratch(NAME).momentum)
    ema_err = 0.0
    for pt, t0, ps in zip(teacher.parameters(), old_t, student.parameters()):
        expected = t0 * m + ps.detach() * (1.0 - m)
        ema_err = max(ema_err, float((pt - expected).abs().max()))
    buf_t = {k: v for k, v in teacher.named_buffers() if v.is_floating_point()}
    buf_s = dict(student.named_buffers())
    buffers_differ = float(all(not torch.equal(v, buf_s[k]) for k, v in buf_t.items())) if buf_t else 1.0
    return {"init_diff": init_diff, "ema_err": ema_err, "momentum": m, "buffers_differ": buffers_differ}


def check_alternation(trainer: Any, steps: int = 5) -> list[bool]:
    """Adversarial flag of each of ``steps`` optimizer steps (official: A, C, A, C, A)."""
    batch = _batch(trainer)
    flags = []
    for _ in range(steps):
        out = trainer.train_step(batch)
        flags.append(bool(out["adautomix/adversarial"]))
    return flags


def check_lam_margin(trainer: Any, n: int) -> dict[str, float]:
    """With a margin that always fires, the bb masks are the constants lam_i."""
    st, host = trainer.state, trainer.host
    opts = st.options(NAME)
    saved = (opts.lam_margin, opts.mix_samples, opts.is_random)
    opts.lam_margin, opts.mix_samples, opts.is_random = 0.99, n, False
    try:
        batch = _batch(trainer)
        plan = host.slot("sample_pairs", batch=batch, state=st)
        plan.resolve(batch)
        mixed = host.slot("mix_batch", batch=batch, plan=plan, state=st)
    finally:
        opts.lam_margin, opts.mix_samples, opts.is_random = saved
    ex = plan.extras
    masks = mixed.extras["masks_bb"]
    const = torch.tensor(ex["bb_lams"], device=masks.device).reshape(1, -1, 1, 1)
    return {
        "const_err": float((masks - const).abs().max()),
        "lam_sum": float(sum(ex["bb_lams"])),
        "same_lams": float(list(ex["mb_lams"]) == list(ex["bb_lams"])) if n > 2 else 1.0,
    }


def check_eval_heads(trainer: Any) -> dict[str, float]:
    """Evaluating the network the core evaluates (the teacher by default), ``logits`` is its one-hot
    head in eval mode and ``logits_student`` the student's; both modes are restored, also on error."""
    st, host = trainer.state, trainer.host
    student, teacher, _ = _parts(trainer)
    evaluated = trainer.session.eval_network()
    batch = _batch(trainer)
    teacher.train()
    student.train()
    with torch.no_grad(), host.wrap("mixhub_evaluate", model=evaluated, state=st):
        mode_inside = teacher.training or student.training
        out = host.slot("eval_forward", model=evaluated, batch=batch, state=st)
        ref = one_hot_logits(teacher, batch.inputs)
        ref_student = one_hot_logits(student, batch.inputs)
    restored = teacher.training and student.training
    raised = ""
    try:
        with host.wrap("mixhub_evaluate", model=student, state=st):
            raise RuntimeError("adautomix-probe")
    except Exception as exc:  # noqa: BLE001 - the host may re-wrap it with plugin context
        raised = str(exc)
    return {
        "teacher_err": float((out["logits"] - ref).abs().max()),
        "student_err": float((out["logits_student"] - ref_student).abs().max()),
        "eval_mode_inside": float(not mode_inside),
        "restored": float(restored),
        "restored_after_error": float(teacher.training and "adautomix-probe" in raised),
    }


def run_all(make_trainer: Any) -> dict[str, float]:
    """Every check on fresh trainers from ``make_trainer()``; 1.0 = pass for the ``mech.*`` keys."""
    out: dict[str, float] = {}
    masks = check_masks_at_init(make_trainer())
    out["mech.masks"] = float(
        masks["sum_err"] < 1e-5
        and masks["min"] >= 0
        and masks["spatial_std"] < 1e-4
        and masks["uniform_err"] < 0.02
    )
    out["mech.mask_init_uniform_err"] = masks["uniform_err"]
    g = check_gradient_routing(make_trainer())
    out["mech.gradient_routing"] = float(
        g["gen_loss_to_generator"] > 0
        and g["gen_loss_to_student"] == 0
        and g["main_loss_to_student"] > 0
        and g["main_loss_to_generator"] == 0
        and g["teacher_trainable"] == 0
        and g["teacher_grads_after_step"] == 0
    )
    e = check_teacher_ema(make_trainer())
    out["mech.teacher_ema"] = float(
        e["init_diff"] == 0 and e["ema_err"] < 1e-6 and e["buffers_differ"] == 1.0
    )
    trainer = make_trainer()
    adv = trainer.state.options(NAME).adv_interval
    flags = check_alternation(trainer)
    expected = [adv != 0 and (i % adv == 0) for i in range(len(flags))] if adv else [False] * len(flags)
    out["mech.alternation"] = float(flags == expected)
    ok = True
    for n in (2, 3):
        lm = check_lam_margin(make_trainer(), n)
        ok = ok and lm["const_err"] < 1e-6 and abs(lm["lam_sum"] - 1) < 1e-6 and lm["same_lams"] == 1.0
    out["mech.lam_margin"] = float(ok)
    ev = check_eval_heads(make_trainer())
    out["mech.eval_heads"] = float(
        ev["teacher_err"] < 1e-5
        and ev["eval_mode_inside"] == 1
        and ev["restored"] == 1
        and ev["restored_after_error"] == 1
    )
    return out
