"""A user's suite file: ``mixhub bench my-suite.yaml`` and ``mixhub tune my-suite.yaml``.

The file holds a base config (exactly what ``mixhub train`` takes, inline or as a path relative
to the suite file), the arms (a name each, with the config each adds or overrides, and for
``mixhub tune`` the option ranges it searches), the seeds, the metrics, the reference arm, and
optionally ``quick`` overrides and tuning settings (see docs/benchmarks.md). Every error names
the file and the key; every arm's config is validated as ``mixhub train`` would validate it,
before any cell runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..config import (
    apply_overrides,
    format_validation_error,
    load_config,
    plugin_names,
    read_yaml,
    set_dotted,
)
from ..errors import ConfigError
from .suite import Arm, Suite

__all__ = ["SearchRange", "ArmFile", "TuneSettings", "SuiteFileModel", "SuiteFile", "load_suite_file", "is_suite_file"]

PlotName = Literal["bars", "curves", "reliability", "accuracy_matrix"]


def _default_plots() -> list[PlotName]:
    return ["bars", "curves"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)


class SearchRange(_Strict):
    """One option's range for ``mixhub tune``: numbers ``low``..``high`` (log scale, step), or ``choices``.

    Integers when ``low`` and ``high`` are both integers, else floats.
    """

    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = Field(None, gt=0)
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> SearchRange:
        if self.choices is not None:
            if self.low is not None or self.high is not None or self.step is not None or self.log:
                raise ValueError("give either choices or low/high (with log, step), not both")
            if not self.choices:
                raise ValueError("choices must not be empty")
            return self
        if self.low is None or self.high is None:
            raise ValueError("a range needs low and high (or choices)")
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0 (got {self.low})")
        if self.log and self.step is not None:
            raise ValueError("a log range takes no step")
        return self

    @property
    def is_int(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int) and not isinstance(self.low, bool) and (self.step is None or isinstance(self.step, int))


class ArmFile(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.+-]+$", description="arm name (also its folder name)")
    description: str = ""
    config: dict[str, Any] = Field(default_factory=dict, description="config the arm adds to or overrides in the base")
    search: dict[str, SearchRange] = Field(default_factory=dict, description="dotted option -> range, for mixhub tune")


class TuneSettings(_Strict):
    metric: str = Field("auto", description="validation metric to optimise (val.acc, val.nll, val.rmse ...); auto: val.acc, or val.rmse for regression")
    direction: Literal["auto", "maximize", "minimize"] = "auto"
    trials: int = Field(20, ge=1, description="default of --trials")
    seed: int = Field(0, description="seed of every trial's run and of the sampler")
    n_startup_trials: int = Field(5, ge=0, description="MedianPruner: trials finished before any is pruned")
    n_warmup_steps: int = Field(0, ge=0, description="MedianPruner: epochs of a trial before it may be pruned")

    @model_validator(mode="after")
    def _check(self) -> TuneSettings:
        if self.metric != "auto" and not self.metric.startswith("val."):
            raise ValueError(f"tuning optimises a validation metric (val.*), never {self.metric!r}: the test split stays unseen")
        return self


class SuiteFileModel(_Strict):
    name: str | None = Field(None, description="suite name (default: the file's stem)")
    description: str = ""
    base: dict[str, Any] | str = Field(description="base config, or the path of a `mixhub train` config file (relative to the suite file)")
    arms: list[ArmFile] = Field(min_length=1)
    reference: str = Field(description="the arm every other arm is compared with (paired over seeds)")
    seeds: int = Field(3, ge=1)
    metrics: list[str] = Field(min_length=1)
    higher_is_better: dict[str, bool] = Field(default_factory=dict)
    quick: dict[str, Any] = Field(default_factory=dict, description="overrides of `--quick` (e.g. train.max_steps_per_epoch, data.subset)")
    quick_seeds: int = Field(1, ge=1)
    plots: list[PlotName] = Field(default_factory=_default_plots)
    comparisons: list[tuple[str, str]] = Field(default_factory=list)
    notes: str = ""
    tune: TuneSettings = Field(default_factory=TuneSettings)

    @model_validator(mode="after")
    def _check(self) -> SuiteFileModel:
        names = [a.name for a in self.arms]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"arm names must be unique; repeated: {', '.join(dup)}")
        if self.reference not in names:
            raise ValueError(f"reference {self.reference!r} is not an arm (arms: {', '.join(names)})")
        for a, b in self.comparisons:
            for n in (a, b):
                if n not in names:
                    raise ValueError(f"comparisons: {n!r} is not an arm (arms: {', '.join(names)})")
        for m in self.metrics:
            if "." not in m:
                raise ValueError(f"metrics: {m!r} must name a split and a metric, e.g. test.acc")
        return self


@dataclass
class SuiteFile:
    """A loaded suite file: the ``Suite`` to bench, and per arm the ranges to tune."""

    suite: Suite
    path: Path
    search: dict[str, dict[str, SearchRange]] = field(default_factory=dict)
    tune: TuneSettings = field(default_factory=TuneSettings)

    def arm_config(self, arm: str, seed: int, quick: bool = False) -> dict[str, Any]:
        """The arm's config for ``seed`` (with the suite's ``quick`` overrides when ``quick``)."""
        from .runner import cell_config

        return cell_config(self.suite, arm, seed, quick=quick)


def is_suite_file(name: str) -> bool:
    return name.endswith((".yaml", ".yml")) or Path(name).is_file()


def _validate_config(raw: dict[str, Any], where: str) -> None:
    """Validate ``raw`` as ``mixhub train`` does (plugins resolved, every section checked)."""
    from ..plugins import resolve_plugins
    from ..registry import load_registry

    try:
        plugins = resolve_plugins(plugin_names(raw), None, load_registry())
        load_config(raw, {p.name: p.spec for p in plugins})
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a plugin that fails to load, named by its own message
        raise ConfigError(f"{where}: {exc}") from None


def load_suite_file(path: str | Path) -> SuiteFile:
    """Read and validate a suite file; a ``ConfigError`` names the file and the key at fault."""
    path = Path(path)
    raw = read_yaml(path)
    src = f"suite file {str(path)!r}"
    try:
        model = SuiteFileModel.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{src}: " + format_validation_error(exc, SuiteFileModel)) from None
    base = model.base
    if isinstance(base, str):
        base_path = (path.parent / base) if not Path(base).is_absolute() else Path(base)
        base = read_yaml(base_path)
    base = {k: v for k, v in base.items() if k not in ("out", "seed")}  # each cell has its own folder and seed
    arms, search = [], {}
    for i, arm in enumerate(model.arms):
        where = f"{src}: arms[{i}] ({arm.name!r})"
        cfg = apply_overrides(base, arm.config)
        if "seed" in arm.config or "out" in arm.config:
            raise ConfigError(f"{where}.config: seed and out are set per cell by the bench; remove them")
        _validate_config(cfg, f"{where}.config")
        for key, rng in arm.search.items():
            probe = apply_overrides(cfg, {})
            try:
                set_dotted(probe, key, rng.choices[0] if rng.choices is not None else rng.low)
            except ConfigError as exc:
                raise ConfigError(f"{where}.search.{key}: {exc}") from None
            _validate_config(probe, f"{where}.search.{key}")
        if model.quick:
            _validate_config(apply_overrides(cfg, model.quick), f"{src}: quick (with arm {arm.name!r})")
        arms.append(Arm(arm.name, arm.config, arm.description))
        search[arm.name] = dict(arm.search)
    suite = Suite(
        name=model.name or path.stem,
        description=model.description or f"Suite file {path.name}.",
        base=base,
        arms=arms,
        baseline=model.reference,
        metrics=list(model.metrics),
        higher_is_better=dict(model.higher_is_better),
        seeds=model.seeds,
        quick_seeds=model.quick_seeds,
        quick=dict(model.quick),
        plots=list(model.plots),
        comparisons=[tuple(c) for c in model.comparisons],  # type: ignore[misc]
        notes=model.notes,
        provider=f"file {path}",
    )
    return SuiteFile(suite, path, search, model.tune)
