"""Run configuration: YAML plus dotted CLI overrides, validated with pydantic.

The core's sections are fixed models; each active plugin validates its own section with its
``PluginSpec.options`` schema; other core modules (continual, test-time) add sections with
``register_section``. Every error names the key, what was expected and the closest valid key.

Length: every core section is a pydantic model with one described field per option (the
reference page ``docs/config.md`` is generated from them), kept together with the loading and
override code that validates them.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ._util import did_you_mean
from .errors import ConfigError

__all__ = [
    "Section",
    "DataConfig",
    "TransformConfig",
    "ModelConfig",
    "TrainConfig",
    "OptimizerConfig",
    "TrackConfig",
    "Config",
    "RunConfig",
    "register_section",
    "load_config",
    "parse_overrides",
    "apply_overrides",
    "resume_overrides",
    "format_validation_error",
]


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), allow_inf_nan=False)


class TransformConfig(Section):
    """timm's transform options (``timm.data.create_transform``) for lazily loaded image datasets.

    ``None`` means timm's default, or the model's pretrained config where it has one (mean, std,
    interpolation, ``crop_pct``), resolved with ``timm.data.resolve_data_config``.
    """

    crop_pct: float | None = Field(None, gt=0.0, le=1.0, description="eval: resize to size / crop_pct, then centre-crop (default: the model's, else 0.875)")
    interpolation: str | None = Field(None, description="bilinear, bicubic, nearest or random (default: the model's, else bilinear)")
    scale: tuple[float, float] | None = Field(None, description="RandomResizedCrop area range (timm default 0.08, 1.0)")
    ratio: tuple[float, float] | None = Field(None, description="RandomResizedCrop aspect-ratio range (timm default 3/4, 4/3)")
    hflip: float = Field(0.5, ge=0.0, le=1.0, description="horizontal flip probability")
    vflip: float = Field(0.0, ge=0.0, le=1.0, description="vertical flip probability")
    color_jitter: float | tuple[float, ...] | None = Field(0.4, description="colour jitter strength (ignored when auto_augment is set, as in timm)")
    auto_augment: str | None = Field(None, description="timm auto-augment policy, e.g. rand-m9-mstd0.5-inc1, augmix-m5-w4-d2, original")
    re_prob: float = Field(0.0, ge=0.0, le=1.0, description="random erasing probability")
    re_mode: Literal["const", "rand", "pixel"] = Field("pixel", description="random erasing fill")
    re_count: int = Field(1, ge=1, description="random erasing boxes per image")
    mean: tuple[float, float, float] | None = Field(None, description="normalisation mean (default: the model's pretrained config, else ImageNet's)")
    std: tuple[float, float, float] | None = Field(None, description="normalisation std (default: the model's pretrained config, else ImageNet's)")
    no_aug: bool = Field(False, description="training transform without augmentation (resize + centre crop, as eval)")


class DataConfig(Section):
    name: str = Field("digits", description="dataset name (see `mixhub.data.list_datasets()`), `imagefolder:PATH`, `tar:PATH`, `webdataset:PATTERN`, `csv:PATH`, `torchvision:NAME`, or one a plugin package registers")
    root: str | None = Field(None, description="local folder of a torchvision dataset (never downloaded)")
    target: str | list[str] | None = Field(None, description="target column(s) of a CSV table (default: the last column; with image_column: every other column)")
    image_column: str | None = Field(None, description="CSV column of image paths (relative to the CSV file): images are loaded lazily, targets are the numeric target column(s)")
    task: Literal["auto", "classification", "regression"] = Field("auto", description="task kind of a CSV table; auto: classification when the target column holds integers with at most 50 distinct values, else regression (an image CSV: regression); the run prints the kind and its reason at start and warns when integer classes look like a quantity")
    classes: list[int | str] | None = Field(None, description="class labels in the order of the model's outputs; the data's labels are mapped to these (default: the labels found, sorted); saved with the run, and `mixhub eval` sets it from the checkpoint")
    val_frac: float = Field(0.15, ge=0.0, lt=1.0, description="share of the data kept for validation")
    test_frac: float = Field(0.2, ge=0.0, lt=1.0, description="share of the data kept for testing (datasets without a fixed test split)")
    train_frac: float = Field(1.0, gt=0.0, le=1.0, description="stratified share of the training split kept (low-data runs)")
    subset: float | int | None = Field(None, gt=0, description="train on a seeded random part of the training split: a share in (0, 1] (float) or a number of samples (int); for cheap screening runs")
    label_noise: float = Field(0.0, ge=0.0, lt=1.0, description="share of training labels replaced by random classes")
    image_size: int = Field(32, ge=8, description="side of square images")
    augment: str = Field("none", description="augmentation pipeline of the bundled image proxies: none, light (shift-scale-rotate), flip-crop")
    transform: TransformConfig = Field(default_factory=TransformConfig, description="timm transform options of lazily loaded image datasets")
    albumentations: str | None = Field(None, description="training augmentation of lazily loaded images: an albumentations pipeline file (A.save, .json or .yaml) instead of `transform`")
    options: dict[str, Any] = Field(default_factory=dict, description="dataset-specific options (unknown keys are errors)")
    num_workers: int | None = Field(None, ge=0, description="DataLoader workers (default: the machine's cores, at most 8, for lazily decoded datasets; 0 for in-memory arrays)")
    pin_memory: bool | None = Field(None, description="pin host batches (default: on when training on CUDA)")
    persistent_workers: bool = Field(True, description="keep training workers alive across epochs")
    prefetch_factor: int = Field(2, ge=1, description="batches each worker loads ahead")
    channels_last: bool = Field(False, description="image batches and the model in channels_last memory format")
    on_bad_sample: Literal["error", "skip"] = Field("error", description="an unreadable image stops the run naming the file, or is skipped (counted and reported at the end of each epoch)")
    split_seed: int | None = Field(None, description="seed of the train/val/test split (default: `seed`)")


class ModelConfig(Section):
    name: str = Field("smallcnn", description="`smallcnn`, `mlp` or any timm model name")
    pretrained: bool = Field(False, description="load timm pretrained weights (must be cached locally)")
    checkpoint: str | None = Field(None, description="local file of pretrained weights (a state dict), loaded through timm's pretrained_cfg_overlay=dict(file=PATH); implies pretrained")
    drop_rate: float = Field(0.0, ge=0.0, lt=1.0)
    small_input: bool | Literal["auto"] = Field("auto", description="adapt a timm CNN's stem (conv1 + max-pool, e.g. ResNet) to small inputs: a new 3x3 stride-1 stem without max-pool, or, with pretrained weights, the pretrained stem kept at stride 1; auto: only for images of 64 px or less (the bundled proxies); the decision is printed at start")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="extra keyword arguments of the model factory")


class TrainConfig(Section):
    epochs: int = Field(10, ge=0)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    layer_decay: float | None = Field(None, gt=0.0, le=1.0, description="layer-wise lr decay (timm's param_groups_layer_decay; needs a model with group_matcher, e.g. a ViT)")
    sched: Literal["cosine", "step", "multistep", "none"] = "cosine"
    warmup_epochs: int = Field(0, ge=0)
    min_lr: float = Field(0.0, ge=0.0)
    step_decay_epochs: int = Field(30, ge=1, description="step schedule: decay every N epochs")
    step_decay_rate: float = Field(0.1, gt=0.0, le=1.0, description="factor of each step / multistep decay")
    milestones: list[int] = Field(default_factory=list, description="multistep schedule: epochs at which the lr decays")
    clip_grad_norm: float | None = Field(None, gt=0.0, description="clip the global gradient norm (None: off)")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    soft_targets: bool = Field(
        False,
        description="classification: accept soft [B, C] targets (your own soft labels, e.g. for a loss-only plugin); "
        "off, they are refused as a batch some other code (timm's Mixup/CutMix) has already mixed",
    )
    amp: bool = Field(True, description="mixed precision (bfloat16/float16) on CUDA; ignored on CPU")
    amp_dtype: Literal["auto", "bfloat16", "float16"] = Field("auto", description="autocast dtype with train.amp: auto (bfloat16 where CUDA supports it, else float16; none on CPU) or a named dtype on any device (bfloat16 runs CPU autocast)")
    compile: bool = Field(False, description="torch.compile the model")
    compile_backend: str = Field("inductor", description="torch.compile backend (inductor; aot_eager compiles fast and needs no C++ toolchain, for tests and debugging)")
    ema: bool = Field(False, description="keep an EMA of the weights and evaluate it")
    ema_decay: float = Field(0.999, gt=0.0, lt=1.0)
    drop_last: bool = True
    shuffle: Literal["epoch", "once", "none"] = Field("epoch", description="reshuffle every epoch, once at start, or never")
    select: str = Field("auto", description="validation metric that picks best.pt, the final test's weights: a name or val/<name>, optionally :max or :min (auto: the first of best_metrics, else accuracy / rmse)")
    select_mode: Literal["auto", "max", "min"] = Field("auto", description="whether higher or lower `select` is better (auto: guessed from its name)")
    best_metrics: list[str] = Field(default_factory=list, description="further validation metrics that each keep their own best checkpoint, best-<metric>.pt (e.g. [val/rmse, val/r2]); a name or val/<name>, optionally :max or :min")
    nan_policy: Literal["stop", "skip"] = Field("stop", description="non-finite inputs, targets or loss: stop the run or skip the batch")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    eval_every: int = Field(1, ge=1, description="validate (and keep the best checkpoints) every N epochs, and after the last")
    eval_every_steps: int | None = Field(None, ge=1, description="also validate inside each epoch, after the training batches n (counted from 1 at the epoch's start) with (n - eval_steps_offset) % N == 0 (official C-Mixup DTI: steps_per_epoch // 30, offset 2)")
    eval_steps_offset: int = Field(0, ge=0, description="phase of eval_every_steps (see there)")
    max_steps_per_epoch: int | None = Field(None, ge=1, description="cap on the optimizer steps of each epoch (cheap screening runs)")
    final_test: bool = Field(True, description="evaluate the test split (and extra evaluation splits) at the end; `mixhub tune` turns it off, so tuning never looks at test")
    checkpoint: bool = True
    plots: bool = True
    log_every: int = Field(50, ge=1, description="optimizer steps between step records (loss, lr, images/s, grad norm) and console lines")
    log_seconds: float = Field(30.0, ge=0, description="also a step record (and console line) at the first step and about every this many seconds of training, whatever log_every is; 0: only every log_every steps")
    check_every: int | None = Field(None, ge=1, description="read the step's device-side checks (non-finite or out-of-range batches, invalid mix plans, non-finite loss) every N steps; a failure stops the run at most N steps late, naming the step and dataset indices (None: at log steps, train.log_every; nan_policy=skip decides before each optimizer step, so it reads every step)")
    strategy: Literal["ddp", "fsdp"] = Field("ddp", description="multi-process engine under torchrun: ddp (DistributedDataParallel) or fsdp (FSDP2 fully_shard per block)")
    sync_bn: bool = Field(False, description="multi-process: convert BatchNorm layers to SyncBatchNorm (statistics over the global batch)")
    dist_bn: Literal["reduce", "broadcast", "none"] = Field("reduce", description="multi-process: BatchNorm running statistics before evaluation: averaged, rank 0's, or left per process (EMA included)")
    sync_every: int = Field(50, ge=1, description="multi-process: agree on stop requests every N steps (no per-step host-synchronised collective)")
    find_unused_parameters: bool | Literal["auto"] = Field("auto", description="DDP find_unused_parameters (auto: on when a plugin runs its own forward, loss or aux losses, or trains a module)")


class TrackConfig(Section):
    """How trackers (logger plugins such as tensorboard, mlflow, wandb) name and file the run."""

    experiment: str | None = Field(None, description="experiment (MLflow) / project (W&B) the run belongs to (default: mixhub)")
    name: str | None = Field(None, description="the run's name in trackers (default: the run folder's name)")
    tags: dict[str, str] = Field(default_factory=dict, description="tags every tracker attaches to the run")
    dir: str | None = Field(None, description="folder for trackers' local stores shared by several runs (default: inside the run folder)")


class OptimizerConfig(Section):
    name: str = Field("adamw", description="any timm optimizer name, or one a plugin provides")
    momentum: float = Field(0.9, ge=0.0, le=1.0)
    betas: tuple[float, float] | None = None
    eps: float | None = Field(None, gt=0.0)
    kwargs: dict[str, Any] = Field(default_factory=dict)


class Config(Section):
    seed: int = 0
    out: str | None = Field(None, description="run folder (default: a fresh runs/<data>-<model>-<plugins>-s<seed>, numbered -1, -2, ... when taken); a folder holding another run is refused")
    plugins: list[str] = Field(default_factory=list)
    slots: dict[str, str] = Field(default_factory=dict, description="explicit slot owners, e.g. {compute_loss: decoupled}")
    losses: dict[str, float] = Field(default_factory=dict, description="weights of aux losses by name")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    track: TrackConfig = Field(default_factory=TrackConfig)

    @field_validator("plugins", mode="before")
    @classmethod
    def _split_plugins(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [p.strip() for p in v.split(",") if p.strip()]
        return [] if v is None else v


#: Sections other core modules add (name -> model class).
_SECTIONS: dict[str, type[Section]] = {}


def register_section(name: str, model: type[Section]) -> None:
    """Add a core config section (e.g. ``continual``, ``testtime``)."""
    _SECTIONS[name] = model


#: Core modules that register their own config sections on import.
SECTION_MODULES = ("mixhub.protocol_sections",)


def core_sections() -> dict[str, type[Section]]:
    import importlib
    import importlib.util

    for mod in SECTION_MODULES:
        if importlib.util.find_spec(mod) is not None:
            importlib.import_module(mod)
    return dict(_SECTIONS)


class RunConfig:
    """The resolved configuration of a run: core ``Config``, extra core sections and plugin options."""

    def __init__(self, core: Config, sections: dict[str, Section], options: dict[str, Any]) -> None:
        self.core = core
        self.sections = sections
        self.options = options

    def __getattr__(self, name: str) -> Any:
        if name in ("core", "sections", "options"):
            raise AttributeError(name)
        if name in self.sections:
            return self.sections[name]
        return getattr(self.core, name)

    def to_dict(self) -> dict[str, Any]:
        d = self.core.model_dump(mode="json")
        for name, sec in self.sections.items():
            d[name] = sec.model_dump(mode="json")
        for name, opts in self.options.items():
            d[name] = opts.model_dump(mode="json")
        return d


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    cur: Any = model
    for part in loc[:-1]:
        field = getattr(cur, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        cur = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if cur is None:
            return []
    return list(getattr(cur, "model_fields", {}))


def format_validation_error(exc: ValidationError, model: type[BaseModel], prefix: str = "") -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = prefix + ".".join(str(p) for p in loc)
        if err["type"] == "extra_forbidden":
            hint = did_you_mean(str(loc[-1]), _fields_at(model, loc))
            lines.append(f"unknown key {key!r}{hint}")
        else:
            got = err.get("input")
            got_s = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"{key}: {err['msg']}{got_s}")
    return "invalid configuration: " + "; ".join(lines)


#: Limits of any YAML mixhub reads (configs and override values): a config is a few kilobytes.
MAX_YAML_BYTES = 1 << 20
MAX_YAML_DEPTH = 64
MAX_YAML_NODES = 100_000


class _LimitedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that stops at ``MAX_YAML_DEPTH`` nesting levels while composing.

    PyYAML composes nodes recursively, so deep nesting would end in a ``RecursionError``;
    aliases are composed as shared nodes, so the expansion check runs on the node graph
    (``_expanded_size``) before anything is constructed.
    """

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise ConfigError(f"nested deeper than {MAX_YAML_DEPTH} levels (line {mark.line + 1})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _expanded_size(root: yaml.Node) -> int:
    """Nodes of the document with every alias expanded (memoised per node, so an alias bomb is cheap to size)."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if id(node) in sizes:
            continue
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            sizes[id(node)] = 1
            continue
        if done:
            sizes[id(node)] = min(1 + sum(sizes.get(id(c), 0) for c in children), 1 << 62)
        else:
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(root)]


def safe_load_limited(text: str, source: str) -> Any:
    """``yaml.safe_load`` with limits on size, nesting depth and alias expansion.

    Every limit is a ``ConfigError`` naming ``source``; a YAML syntax error is ``yaml.YAMLError``.
    """
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{source} is {len(text)} bytes; mixhub reads YAML of at most {MAX_YAML_BYTES} bytes")
    loader = _LimitedLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        if node is None:
            return None
        size = _expanded_size(node)
        if size > MAX_YAML_NODES:
            raise ConfigError(
                f"{source}: expands to {size} values through aliases (&anchor/*alias); mixhub reads at most {MAX_YAML_NODES}"
            )
        return loader.construct_document(node)
    finally:
        loader.dispose()


def parse_value(text: str) -> Any:
    try:
        return safe_load_limited(text, f"override value {text[:40]!r}")
    except yaml.YAMLError:
        return text


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["train.lr=0.1", "plugins=mixup,cmixup"]`` -> nested dict."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. train.lr=0.01)")
        key, _, raw = item.partition("=")
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        value: Any = parse_value(raw)
        if key == "plugins" and isinstance(value, str):
            value = [p.strip() for p in value.split(",") if p.strip()]
        set_dotted(out, key, value)
    return out


def set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    cur = d
    for part in parts[:-1]:
        nxt = cur.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {key!r}: {part!r} is not a section")
        cur = nxt
    cur[parts[-1]] = value


def apply_overrides(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``overrides`` into a copy of ``base``."""
    out = copy.deepcopy(base)
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = apply_overrides(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


#: Keys a resumed run may change: they do not alter what was already trained.
RESUMABLE = ("train.epochs", "train.eval_every", "train.eval_every_steps", "train.eval_steps_offset", "train.plots", "train.device", "data.num_workers")


def _dotted(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_dotted(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _get_dotted(d: dict[str, Any], key: str) -> Any:
    cur: Any = d
    for part in key.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def resume_overrides(saved: dict[str, Any], overrides: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Apply ``key=value`` overrides to a resumed run's saved config.

    Only ``RESUMABLE`` keys may change (an override equal to the saved value is accepted);
    any other is a ``ConfigError``. Returns the config and notes for the user (a longer run
    is no longer equal to a straight run of that length: its schedule was planned for fewer
    epochs up to the resume point).
    """
    changed = {k: v for k, v in _dotted(overrides).items() if _get_dotted(saved, k) != v}
    refused = sorted(k for k in changed if k not in RESUMABLE)
    if refused:
        raise ConfigError(
            f"--resume: {', '.join(refused)} cannot change when a run resumes (the resumed run would mix two configurations); "
            f"on resume only {', '.join(RESUMABLE)} may change. Start a new run for other changes"
        )
    notes = []
    if "train.epochs" in changed:
        old = _get_dotted(saved, "train.epochs")
        new = changed["train.epochs"]
        if not isinstance(new, int) or isinstance(new, bool) or (isinstance(old, int) and new < old):
            raise ConfigError(f"--resume: train.epochs={new!r}: a resumed run can only train longer (saved: {old})")
        notes.append(
            f"--resume with train.epochs={changed['train.epochs']} (was {old}): the learning-rate schedule is re-planned for "
            f"{changed['train.epochs']} epochs from the resume point on, so the result is no longer equal to a straight "
            f"{changed['train.epochs']}-epoch run"
        )
    return apply_overrides(saved, overrides), notes


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    if path.stat().st_size > MAX_YAML_BYTES:
        raise ConfigError(f"config file {str(path)!r} is {path.stat().st_size} bytes; mixhub reads YAML of at most {MAX_YAML_BYTES} bytes")
    try:
        data = safe_load_limited(path.read_text(encoding="utf-8"), f"config file {str(path)!r}") or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at top level")
    return data


def load_config(raw: dict[str, Any], plugin_specs: dict[str, Any] | None = None) -> RunConfig:
    """Validate a raw config dict.

    ``plugin_specs`` maps active plugin names to their ``PluginSpec`` (the caller resolves
    ``plugins`` first with ``plugin_names``). Unknown top-level keys are errors naming the
    closest core key or plugin.
    """
    plugin_specs = plugin_specs or {}
    sections = core_sections()
    core_keys = set(Config.model_fields)
    core_raw = {k: v for k, v in raw.items() if k in core_keys}
    try:
        core = Config.model_validate(core_raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, Config)) from None
    extra_sections: dict[str, Section] = {}
    for name, model in sections.items():
        try:
            extra_sections[name] = model.model_validate(raw.get(name) or {})
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, model, prefix=name + ".")) from None
    options: dict[str, Any] = {}
    for name in core.plugins:
        spec = plugin_specs.get(name)
        if spec is None:
            continue
        section = raw.get(name) or {}
        if not isinstance(section, dict):
            raise ConfigError(f"{name}: the plugin's section must be a mapping, got {section!r}")
        try:
            options[name] = spec.options.model_validate(section)
        except ValidationError as exc:
            raise ConfigError(
                format_validation_error(exc, spec.options, prefix=name + ".") + f" (options of plugin {name!r})"
            ) from None
    known = core_keys | set(sections) | set(core.plugins)
    for key in raw:
        if key not in known:
            from .plugins import discover

            installed = set(discover())
            if key in installed or key in plugin_specs:
                raise ConfigError(f"section {key!r} configures plugin {key!r}, which is not in `plugins`; add it there")
            raise ConfigError(f"unknown key {key!r}{did_you_mean(key, known | installed)}")
    return RunConfig(core, extra_sections, options)


def plugin_names(raw: dict[str, Any]) -> list[str]:
    v = raw.get("plugins") or []
    if isinstance(v, str):
        v = [p.strip() for p in v.split(",") if p.strip()]
    if not isinstance(v, list) or not all(isinstance(p, str) for p in v):
        raise ConfigError(f"plugins: expected a list of plugin names, got {v!r}")
    return v
