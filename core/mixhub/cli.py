"""The ``mixhub`` command line: train, eval, bench, tune, plugins."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from .errors import MixhubError

__all__ = ["main"]


def _train(args: argparse.Namespace) -> int:
    from .config import apply_overrides, parse_overrides, read_yaml, resume_overrides

    raw: dict[str, Any] = {}
    if args.resume:
        folder = Path(args.resume)
        cfg_path = folder / "config.yaml"
        if not cfg_path.is_file():
            raise MixhubError(f"--resume {str(folder)!r}: no config.yaml there (is it a run folder?)")
        if args.out:
            raise MixhubError(f"--resume continues the run in its own folder {str(folder)!r}; drop --out")
        items = list(args.items)
        if items and "=" not in items[0]:
            raise MixhubError(f"--resume takes the run's own config ({cfg_path}); {items[0]!r} is not a key=value override")
        raw, notes = resume_overrides(read_yaml(cfg_path), parse_overrides(items))
        for note in notes:
            logging.getLogger("mixhub").warning("%s", note)
        from .trainer import train  # imported after the config is read: a bad config answers at once

        result = train(raw, quiet=args.quiet, out=folder, resume=True)
    else:
        items = list(args.items)
        if items and "=" not in items[0]:
            raw = read_yaml(items.pop(0))
        raw = apply_overrides(raw, parse_overrides(items))
        if args.out:
            raw["out"] = args.out
        from .trainer import train

        result = train(raw, quiet=args.quiet)
    if _is_rank0():
        _print_summary(result.summary, result.out)
    return 0


def _is_rank0() -> bool:
    """Under torchrun only rank 0 prints (the other ranks log errors only)."""
    import os

    return os.environ.get("RANK", "0") == "0"


def _print_summary(summary: dict[str, Any], out: Path) -> None:
    for split in ("val", "test", *[k for k in summary if k.startswith("test_")]):
        m = summary.get(split)
        if isinstance(m, dict):
            shown = {k: round(v, 4) for k, v in m.items() if k in ("acc", "nll", "ece", "ece_ts", "rmse", "mae", "avg_acc", "avg_forgetting")}
            print(f"{split}: " + "  ".join(f"{k}={v}" for k, v in shown.items()))
    print(f"run folder: {out}")


def _eval(args: argparse.Namespace) -> int:
    from .config import parse_overrides

    overrides = parse_overrides(args.items)
    if args.stream:
        from .protocols.testtime import evaluate_checkpoint_streams

        out = Path(args.out) if args.out else Path(args.checkpoint).resolve().parent.parent / "testtime"
        result = evaluate_checkpoint_streams(args.checkpoint, overrides, out)
        print(json.dumps(result.get("overall", result), indent=1, default=str))
        return 0
    from .trainer import Trainer

    trainer = Trainer.from_checkpoint(args.checkpoint, overrides)
    bundle = trainer.bundle
    splits = {"train": bundle.train, "val": bundle.val, "test": bundle.test, **bundle.extra_splits}
    if args.split not in splits:
        raise MixhubError(f"--split {args.split!r}: unknown split (have: {', '.join(splits)})")
    metrics = trainer.evaluate(splits[args.split], args.split)
    print(json.dumps({args.split: metrics}, indent=1))
    if args.predictions:
        assert trainer.evaluation.last_outputs is not None  # set by evaluate
        outs, targets = trainer.evaluation.last_outputs
        path = trainer.evaluation.write_predictions(args.predictions, splits[args.split], outs, targets)
        print(f"predictions: {path}")
    return 0


def _suite_from(arg: str) -> tuple[Any, Any]:
    """``(Suite, SuiteFile or None)``: a registered suite by name, or a user's suite file."""
    from .bench.runner import collect_suites

    suites = collect_suites()
    if arg in suites:
        return suites[arg], None
    from .bench.suitefile import is_suite_file, load_suite_file

    if is_suite_file(arg):
        spec = load_suite_file(arg)
        return spec.suite, spec
    from ._util import did_you_mean

    raise MixhubError(f"unknown bench suite {arg!r}{did_you_mean(arg, suites)} (see `mixhub bench --list`, or give a suite file)")


def _command(name: str) -> str:
    return f"mixhub {name} " + " ".join(sys.argv[2:]) if sys.argv[1:2] == [name] else ""


def _bench(args: argparse.Namespace) -> int:
    from .bench.runner import collect_suites, run_suite

    if args.list or not args.suite:
        for name, s in sorted(collect_suites().items()):
            print(f"{name:24s} [{s.provider}] {s.description}")
        return 0
    suite, _ = _suite_from(args.suite)
    out = Path(args.out or f"bench-out/{suite.name}{'-quick' if args.quick else ''}")
    cmd = _command("bench") or f"mixhub bench {args.suite}"
    loggers = [n.strip() for n in (args.log or "").split(",") if n.strip()]
    results = run_suite(
        suite, out, seeds=args.seeds, quick=args.quick, progress=not args.quiet, command=cmd, log=loggers,
        executor=args.executor, jobs=args.jobs, ray_address=args.ray_address, cpus_per_cell=args.cpus_per_cell, gpus_per_cell=args.gpus_per_cell,
    )
    print((out / "REPORT.md").read_text())
    if results.get("failed"):
        print(f"mixhub: error: {len(results['failed'])} cell(s) failed; see {out / 'REPORT.md'}", file=sys.stderr)
        return 1
    return 0


def _tune(args: argparse.Namespace) -> int:
    from .bench.suitefile import load_suite_file
    from .bench.tune import tune_suite

    spec = load_suite_file(args.suite)
    out = Path(args.out or f"tune-out/{spec.suite.name}")
    tune_suite(spec, out, trials=args.trials, arm=args.arm, storage=args.storage, command=_command("tune"), progress=not args.quiet, quick=args.quick)
    print((out / "REPORT.md").read_text())
    return 0


def _plugins(args: argparse.Namespace) -> int:
    from .listing import format_table, plugin_rows

    if args.action == "list":
        rows = plugin_rows(import_plugins=not args.no_import)
        if args.json:
            print(json.dumps(rows, indent=1))
        else:
            from .listing import dataset_rows, format_datasets

            print(format_table(rows) + "\n\n" + format_datasets(dataset_rows()))
        conflicts = [r["error"] for r in rows if r["status"] == "conflict"]
        for msg in conflicts:
            print(f"mixhub: error: {msg}", file=sys.stderr)
        return 1 if conflicts else 0
    if args.action == "doctor":
        from .doctor import run_doctor

        return run_doctor(json_out=args.json)
    raise MixhubError(f"unknown action {args.action!r}")


def _new_plugin(args: argparse.Namespace) -> int:
    from .scaffold import new_plugin

    path = new_plugin(args.name, Path(args.dir))
    print(f"wrote {path}; install it with `pip install -e {path}` and run its tests with `pytest {path}`")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mixhub", description="Train timm models with plugin training methods.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train from a YAML config and key=value overrides")
    t.add_argument("items", nargs="*", help="[CONFIG.yaml] [key=value ...], e.g. train.lr=0.01 plugins=mixup")
    t.add_argument("--resume", metavar="OUT", help="continue the run in folder OUT")
    t.add_argument("--out", help="run folder (same as out=...)")
    t.add_argument("--quiet", action="store_true", help="log lines instead of progress bars")
    t.set_defaults(func=_train)
    e = sub.add_parser("eval", help="evaluate a checkpoint")
    e.add_argument("checkpoint")
    e.add_argument("items", nargs="*", help="key=value overrides (e.g. data.name=... or testtime.*)")
    e.add_argument("--split", default="test")
    e.add_argument("--stream", action="store_true", help="test-time evaluation on streams (see the testtime section)")
    e.add_argument("--out", help="output folder of a stream evaluation")
    e.add_argument("--predictions", metavar="CSV", help="also write each sample's target and prediction, in the data's own labels, to this CSV")
    e.set_defaults(func=_eval)
    b = sub.add_parser("bench", help="run a proxy benchmark suite")
    b.add_argument("suite", nargs="?")
    b.add_argument("--list", action="store_true")
    b.add_argument("--seeds", type=int)
    b.add_argument("--quick", action="store_true", help="small seeded version (CI)")
    b.add_argument("--out")
    b.add_argument("--quiet", action="store_true")
    b.add_argument("--log", metavar="PLUGINS", help="logger plugins recording each cell as a run (one experiment per suite), e.g. tensorboard,mlflow,wandb")
    b.add_argument("--jobs", type=int, help="cells at once, each in its own process (default: one per visible GPU; on CPU one cell using every thread)")
    b.add_argument("--executor", choices=["local", "ray"], default="local", help="where cells run: this machine, or a Ray cluster (pip install 'mixhub[ray]')")
    b.add_argument("--ray-address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray instance)")
    b.add_argument("--cpus-per-cell", type=float, help="CPU threads of each cell (Ray: the task's num_cpus, default 1)")
    b.add_argument("--gpus-per-cell", type=float, help="Ray: GPUs each cell asks for (default 0)")
    b.set_defaults(func=_bench)
    tu = sub.add_parser("tune", help="tune a suite file's option ranges with Optuna on the validation split")
    tu.add_argument("suite", help="suite file (YAML) whose arms declare `search` ranges")
    tu.add_argument("--trials", type=int, help="trials per arm (default: the file's tune.trials); with a shared --storage, the study's total")
    tu.add_argument("--arm", help="tune only this arm")
    tu.add_argument("--storage", help="Optuna storage URL (default: sqlite:///OUT/optuna.db)")
    tu.add_argument("--out", help="output folder (default: tune-out/<suite>)")
    tu.add_argument("--quick", action="store_true", help="trials with the suite's `quick` overrides (best.yaml stays the full config)")
    tu.add_argument("--quiet", action="store_true")
    tu.set_defaults(func=_tune)
    pl = sub.add_parser("plugins", help="list or check installed plugins")
    pl.add_argument("action", choices=["list", "doctor"])
    pl.add_argument("--json", action="store_true")
    pl.add_argument("--no-import", action="store_true", help="list from metadata only (no plugin code runs)")
    pl.set_defaults(func=_plugins)
    n = sub.add_parser("new-plugin", help="write a new plugin package skeleton")
    n.add_argument("name")
    n.add_argument("--dir", default=".")
    n.set_defaults(func=_new_plugin)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides may follow options (e.g. `train --quiet train.lr=0.1`)
        if hasattr(args, "items") and all("=" in e and not e.startswith("-") for e in extra):
            args.items = list(args.items) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    level = logging.INFO if getattr(args, "quiet", False) else logging.WARNING
    logging.basicConfig(level=level if _is_rank0() else logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except MixhubError as exc:
        print(f"mixhub: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        import errno

        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise
        what = "the disk is full" if exc.errno != errno.EFBIG else "the file size limit was reached"
        print(f"mixhub: error: could not write {exc.filename or 'a file'!s}: {what}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
