"""``mixhub tune SUITE.yaml --trials N``: search an arm's option ranges with Optuna, on validation only.

For every arm of the suite file that declares ``search`` ranges (or the one ``--arm`` names),
one Optuna study (``<suite>-<arm>``) runs trials. A trial is an ordinary run folder
``OUT/trials/<arm>/trial<k>``: the arm's config with the trial's values, trained with
``train.final_test: false`` (the test split is never evaluated) and ``train.select`` set to the
tuned metric. At each validation (epoch end) the trial reports the metric to Optuna, and
``MedianPruner`` stops trials below the median of earlier ones at the same epoch. The study lives in
``--storage`` (default: SQLite ``OUT/optuna.db``; any Optuna storage URL lets several processes or
machines share one study, and ``--trials`` then caps the study's finished trials in total).

It writes per arm ``best-<arm>.yaml`` (and ``best.yaml`` for the best arm): the arm's config with
the best values, ready for ``mixhub train``; ``trials-<arm>.png`` (Optuna's optimisation
history), and ``REPORT.md``, which states that only the validation split was used.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import yaml

from ..config import apply_overrides, set_dotted
from ..errors import ConfigError, MixhubError, PluginHookError
from ..hookspecs import hookimpl
from ..plugins import TASK_KINDS, PluginSpec
from .suitefile import SearchRange, SuiteFile

__all__ = ["TrialReporter", "suggest", "tune_suite", "tune_metric"]

log = logging.getLogger("mixhub.tune")

REPORTER = "tune-reporter"


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise MixhubError("mixhub tune needs Optuna, which is not installed: pip install 'mixhub[tune]'") from None
    return optuna


class TrialReporter:
    """In-process plugin: reports the validation metric of each epoch to the trial; prunes."""

    PLUGIN = PluginSpec(name=REPORTER, task_kinds=TASK_KINDS, description="reports validation metrics to an Optuna trial")

    def __init__(self, trial: Any, metric: str) -> None:
        self.trial, self.metric = trial, metric
        self.reported: list[tuple[int, float]] = []

    @hookimpl
    def mixhub_log(self, record: Any, state: Any) -> None:
        if record.kind != "epoch" or record.split != "val" or self.metric not in record.scalars:
            return
        value = float(record.scalars[self.metric])
        epoch = int(record.epoch or 0)
        self.trial.report(value, epoch)
        self.reported.append((epoch, value))
        if self.trial.should_prune():
            raise _optuna().TrialPruned(f"epoch {epoch}: val.{self.metric} = {value:.4g}")


def suggest(trial: Any, key: str, rng: SearchRange) -> Any:
    """The trial's value of option ``key`` from its range (Optuna's ``suggest_*``)."""
    if rng.choices is not None:
        return trial.suggest_categorical(key, rng.choices)
    if rng.is_int:
        return trial.suggest_int(key, int(rng.low), int(rng.high), step=int(rng.step or 1), log=rng.log)  # type: ignore[arg-type]
    return trial.suggest_float(key, float(rng.low), float(rng.high), step=rng.step, log=rng.log)  # type: ignore[arg-type]


def tune_metric(spec: SuiteFile, task_kind: str | None = None) -> tuple[str, str]:
    """``(metric, direction)``: the suite's ``tune.metric`` (``auto``: val.acc, val.rmse for regression)."""
    metric = spec.tune.metric
    if metric == "auto":
        metric = "val.rmse" if task_kind == "regression" else "val.acc"
    direction = spec.tune.direction
    if direction == "auto":
        direction = "maximize" if spec.suite.better_high(metric) else "minimize"
    return metric, direction


def _trial_config(spec: SuiteFile, arm: str, params: dict[str, Any], metric: str, direction: str, quick: bool = False) -> dict[str, Any]:
    cfg = spec.arm_config(arm, spec.tune.seed, quick)
    for key, value in params.items():
        set_dotted(cfg, key, value)
    return apply_overrides(cfg, {"train": {"select": metric.split(".", 1)[1], "select_mode": "max" if direction == "maximize" else "min"}})


def _task_kind(spec: SuiteFile) -> str:
    from ..config import load_config
    from ..data import build_data

    cfg = load_config({k: v for k, v in spec.suite.base.items() if k in ("data", "seed")})
    return build_data(cfg.data, 0).task


def _run_trial(spec: SuiteFile, arm: str, trial: Any, metric: str, direction: str, out: Path, quick: bool = False) -> float:
    from ..trainer import train

    params = {key: suggest(trial, key, rng) for key, rng in spec.search[arm].items()}
    cfg = _trial_config(spec, arm, params, metric, direction, quick)
    cfg = apply_overrides(cfg, {"train": {"final_test": False}})
    cfg["plugins"] = [*cfg.get("plugins", []), REPORTER]
    reporter = TrialReporter(trial, metric.split(".", 1)[1])
    run_dir = out / "trials" / arm / f"trial{trial.number}"
    trial.set_user_attr("run_dir", str(run_dir))
    try:
        result = train(cfg, extra_plugins={REPORTER: reporter}, out=run_dir, quiet=True)
    except PluginHookError as exc:
        if isinstance(exc.__cause__, _optuna().TrialPruned):
            raise exc.__cause__ from None
        raise
    if "test" in result.summary:  # pragma: no cover - guarded by train.final_test
        raise MixhubError("a tuning trial evaluated the test split")
    value = result.summary.get("val", {}).get(metric.split(".", 1)[1])
    if value is None:
        raise ConfigError(f"tune.metric: {metric!r} is not a validation metric of this run (have: val.{', val.'.join(sorted(result.summary.get('val', {})))})")
    return float(value)


def tune_suite(
    spec: SuiteFile,
    out: str | Path,
    *,
    trials: int | None = None,
    arm: str | None = None,
    storage: str | None = None,
    command: str = "",
    progress: bool = True,
    quick: bool = False,
) -> dict[str, Any]:
    """Tune every arm with ranges (or ``arm``); returns ``{arm: {"best_value", "best_params", ...}}``.

    ``quick``: trials run with the suite's ``quick`` overrides (screening); ``best.yaml`` is the
    full config with the best values."""
    optuna = _optuna()
    out = Path(out).resolve()
    arms = [arm] if arm else [a.name for a in spec.suite.arms if spec.search.get(a.name)]
    if arm and arm not in spec.search:
        raise ConfigError(f"--arm {arm!r}: not an arm of {spec.suite.name!r} (arms: {', '.join(spec.search)})")
    if not arms or not all(spec.search.get(a) for a in arms):
        raise ConfigError(f"suite file {str(spec.path)!r}: no arm declares `search` ranges to tune" if not arm else f"arm {arm!r} declares no `search` ranges")
    task_kind = _task_kind(spec)
    if task_kind == "continual":
        raise ConfigError("mixhub tune: task streams (continual datasets) are not tuned: their protocol evaluates the test stream")
    metric, direction = tune_metric(spec, task_kind)
    n_trials = trials if trials is not None else spec.tune.trials
    out.mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{out / 'optuna.db'}"
    if not progress:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    results: dict[str, Any] = {}
    for name in arms:
        study = optuna.create_study(
            study_name=f"{spec.suite.name}-{name}",
            storage=url,
            load_if_exists=True,
            direction=direction,
            sampler=optuna.samplers.TPESampler(seed=spec.tune.seed),
            # trials report 1-based epochs: epoch e may be pruned once e > n_warmup_steps
            pruner=optuna.pruners.MedianPruner(n_startup_trials=spec.tune.n_startup_trials, n_warmup_steps=spec.tune.n_warmup_steps + 1),
        )
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        study.optimize(
            lambda trial, name=name: _run_trial(spec, name, trial, metric, direction, out, quick),  # type: ignore[misc]
            n_trials=n_trials,
            callbacks=[optuna.study.MaxTrialsCallback(n_trials, states=states)],
            catch=(),
        )
        results[name] = _arm_result(spec, name, study, metric, direction, out)
    _write_best(spec, results, metric, direction, out)
    _write_report(spec, results, metric, direction, url, out, command, quick)
    return results


def _arm_result(spec: SuiteFile, arm: str, study: Any, metric: str, direction: str, out: Path) -> dict[str, Any]:
    optuna = _optuna()
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    trials = [
        {"number": t.number, "state": t.state.name.lower(), "value": t.value, "params": t.params, "run_dir": t.user_attrs.get("run_dir")}
        for t in study.trials
    ]
    res: dict[str, Any] = {"study": study.study_name, "trials": trials}
    if done:
        best = study.best_trial
        res.update(best_value=best.value, best_params=best.params, best_trial=best.number)
        res["config"] = _best_config(spec, arm, best.params, metric, direction)
        path = out / f"best-{arm}.yaml"
        path.write_text(yaml.safe_dump(res["config"], sort_keys=False))
        res["best_yaml"] = str(path)
    res["plot"] = _plot(study, out / f"trials-{arm}.png")
    return res


def _best_config(spec: SuiteFile, arm: str, params: dict[str, Any], metric: str, direction: str) -> dict[str, Any]:
    """The arm's config with the best values: what ``mixhub train best.yaml`` runs (test split on again)."""
    cfg = _trial_config(spec, arm, params, metric, direction)
    return json.loads(json.dumps(cfg))


def _write_best(spec: SuiteFile, results: dict[str, Any], metric: str, direction: str, out: Path) -> None:
    scored = [(r["best_value"], a) for a, r in results.items() if "best_value" in r]
    if not scored:
        return
    pick = max if direction == "maximize" else min
    _, arm = pick(scored)
    (out / "best.yaml").write_text(f"# mixhub tune {spec.suite.name}: arm {arm}, best {metric} = {results[arm]['best_value']:.6g}\n" + yaml.safe_dump(results[arm]["config"], sort_keys=False))
    results["best_arm"] = arm


def _plot(study: Any, path: Path) -> str | None:
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    optuna = _optuna()
    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the matplotlib backend of optuna.visualization is marked experimental
        ax = optuna.visualization.matplotlib.plot_optimization_history(study)
    fig = ax.figure
    fig.set_size_inches(6, 4)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.4g}"
    return "n/a" if v is None else str(v)


def _write_report(spec: SuiteFile, results: dict[str, Any], metric: str, direction: str, url: str, out: Path, command: str, quick: bool = False) -> None:
    from .codeid import code_identity
    from .report import cpu_model, thread_info

    code_identity.cache_clear()  # the code as it is now (a long-lived process may have installed plugins since)
    code = code_identity()
    lines = [f"# Tune `{spec.suite.name}`", "", f"Command: `{command or 'mixhub tune ' + str(spec.path)}`", ""]
    lines += [
        f"Code: {'git commit `' + code['git'] + '`' if code.get('git') else 'not a git checkout'}"
        + (f" with uncommitted changes (diff hash `{code['dirty']}`)" if code.get("dirty") else "")
        + f"; CPU: {cpu_model()}; threads: {thread_info()}.",
        "",
        f"Objective: {direction} `{metric}` of the best-validation checkpoint (seed {spec.tune.seed}). "
        "Tuning used the training and validation splits only: every trial ran with `train.final_test: false`, "
        "so the test split was never evaluated. Judge the tuned config on test with `mixhub bench` or `mixhub train best.yaml`.",
        "",
        f"Optuna: TPE sampler (seed {spec.tune.seed}), median pruner at epoch ends (after {spec.tune.n_startup_trials} trials, "
        f"{spec.tune.n_warmup_steps} warm-up epochs); storage `{url}`.",
        "",
    ]
    if quick:
        lines += [f"Screening (`--quick`): trials ran with the suite's quick overrides {json.dumps(spec.suite.quick)}; the best configs are the full ones.", ""]
    for arm, res in results.items():
        if arm == "best_arm":
            continue
        lines += [f"## Arm `{arm}` (study `{res['study']}`)", ""]
        if "best_value" in res:
            lines += [f"Best: trial {res['best_trial']}, {metric} = {_fmt(res['best_value'])}, " + ", ".join(f"`{k}` = {_fmt(v)}" for k, v in res["best_params"].items()) + f"; config `{Path(res['best_yaml']).name}`.", ""]
        keys = list(spec.search[arm])
        lines += ["| trial | state | " + metric + " | " + " | ".join(f"`{k}`" for k in keys) + " |", "|" + "---|" * (3 + len(keys))]
        for t in res["trials"]:
            lines.append(f"| {t['number']} | {t['state']} | {_fmt(t['value'])} | " + " | ".join(_fmt(t["params"].get(k)) for k in keys) + " |")
        lines.append("")
        if res.get("plot"):
            lines += [f"Plot: `{Path(res['plot']).name}`", ""]
    if "best_arm" in results:
        lines += [f"`best.yaml`: arm `{results['best_arm']}` (run it with `mixhub train best.yaml`).", ""]
    (out / "REPORT.md").write_text("\n".join(lines))
