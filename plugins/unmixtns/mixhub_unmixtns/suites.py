"""The ``unmixtns-digits-c`` proxy benchmark.

A small BatchNorm CNN is trained once per seed on clean digits and cached in the bench
folder (``OUT/source-models/seed<k>``); every arm then streams the ``digits-c`` corruptions
(severity 5) through the core's test-time loop (``mixhub.protocols.testtime``) over a grid of stream
settings, orders and batch sizes. A cell's metrics are ``<setting>.<order>.b<B>.error`` (online
error, a fraction; the report shows %), plus stream statistics and plugin metrics.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

from mixhub import Arm, Suite

SOURCE_KEYS = ("seed", "data", "model", "train", "optimizer")
CORRUPTIONS = ["gaussian_noise", "impulse_noise", "motion_blur", "fog", "contrast", "pixelate"]


def stream_key(s: dict[str, Any]) -> str:
    order = "iid" if s["order"] == "iid" else f"dir{s['delta']:g}"
    return f"{s['setting']}.{order}.b{s['batch_size']}"


def _streams(specs: list[tuple[str, str, float, int]]) -> list[dict[str, Any]]:
    return [{"setting": a, "order": b, "delta": c, "batch_size": d} for a, b, c, d in specs]


FULL_STREAMS = _streams([
    ("continual", "iid", 0.1, 64), ("continual", "dirichlet", 0.1, 64), ("continual", "dirichlet", 0.01, 64),
    ("continual", "iid", 0.1, 16), ("continual", "dirichlet", 0.1, 16),
    ("continual", "iid", 0.1, 1), ("continual", "dirichlet", 0.1, 1),
    ("single", "iid", 0.1, 64), ("single", "dirichlet", 0.1, 64),
    ("mixed", "iid", 0.1, 64), ("mixed", "dirichlet", 0.1, 64),
])
QUICK_STREAMS = _streams([("continual", "iid", 0.1, 64), ("continual", "dirichlet", 0.1, 16)])


def source_model(config: dict[str, Any], cache: Path) -> Path:
    """Train (once) the source model of this seed; returns its best checkpoint."""
    from mixhub.trainer import train

    best = cache / "checkpoints" / "best.pt"
    if best.exists() and (cache / "summary.json").exists():
        return best
    if cache.exists():
        shutil.rmtree(cache)  # an unfinished run: start again
    train({k: copy.deepcopy(v) for k, v in config.items() if k in SOURCE_KEYS}, out=cache, quiet=True)
    return best


def run_cell(config: dict[str, Any], out: Path) -> dict[str, float]:
    """One (arm, seed): evaluate the cached source model under the arm's plugins on every stream."""
    from mixhub import TestTimeConfig
    from mixhub.protocols.testtime import evaluate_streams, load_for_testtime

    config = copy.deepcopy(config)
    streams = config.pop("_streams")
    out = Path(out)
    ckpt = source_model(config, out.parents[2] / "source-models" / f"seed{config['seed']}")
    overrides = {k: v for k, v in config.items() if k not in SOURCE_KEYS}
    overrides.setdefault("plugins", [])
    trainer = load_for_testtime(ckpt, overrides)
    metrics: dict[str, float] = {}
    for spec in streams:
        key = stream_key(spec)
        summary = evaluate_streams(trainer, out / key.replace(".", "-"), TestTimeConfig(**spec, plot=spec["batch_size"] > 1))
        metrics[f"{key}.error"] = summary["overall"]["err"] / 100.0
        metrics[f"{key}.nll"] = summary["overall"]["nll"]
        metrics[f"{key}.ece"] = summary["overall"]["ece"]
        metrics[f"{key}.ms_per_batch"] = summary["ms_per_batch"]
        metrics[f"{key}.classes_per_batch"] = summary["stream"]["classes_per_batch"]
        metrics[f"{key}.mean_run"] = summary["stream"]["mean_run"]
        for dom, m in summary["domains"].items():
            metrics[f"{key}.{dom}.error"] = m["err"] / 100.0
        for name, v in summary["plugins"].items():
            metrics[f"{key}.{name}"] = v
    return metrics


def _mean_std(xs: list[float]) -> str:
    if not xs:
        return "n/a"
    m = sum(xs) / len(xs)
    sd = (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else 0.0
    return f"{m:.2f} ± {sd:.2f}"


def extra_report(results: dict[str, Any], out: Path) -> list[Path]:
    """``EXTRA.md``: stream statistics, per-corruption errors and plugin metrics; a B-sweep plot."""
    cells = results["cells"]
    if not cells:
        return []
    arms = list(dict.fromkeys(c["arm"] for c in cells))
    keys = [stream_key(s) for s in FULL_STREAMS if any(f"{stream_key(s)}.error" in c["metrics"] for c in cells)]

    def vals(arm: str, metric: str) -> list[float]:
        return [c["metrics"][metric] for c in cells if c["arm"] == arm and metric in c["metrics"]]

    lines = ["## Stream statistics (mean over seeds)", "", "| stream | classes per batch | mean same-label run |", "|---|---|---|"]
    first = arms[0]
    for k in keys:
        cpb, run = vals(first, f"{k}.classes_per_batch"), vals(first, f"{k}.mean_run")
        lines.append(f"| {k} | {sum(cpb) / len(cpb):.2f} | {sum(run) / len(run):.2f} |")
    for k in [k for k in ("continual.iid.b64", "continual.dir0.1.b64") if k in keys]:
        mids = {m[len(k) + 1 : -len(".error")] for c in cells for m in c["metrics"] if m.startswith(k + ".") and m.endswith(".error")}
        doms = sorted(d for d in mids if d and "." not in d)
        lines += ["", f"## Online error % per corruption, `{k}`", "", "| arm | " + " | ".join(doms) + " |", "|---|" + "---|" * len(doms)]
        for a in arms:
            lines.append(f"| {a} | " + " | ".join(_mean_std([100 * v for v in vals(a, f"{k}.{d}.error")]) for d in doms) + " |")
    plugin_keys = sorted({m.rsplit(".", 1)[-1] for c in cells for m in c["metrics"] if "/" in m})
    if plugin_keys:
        lines += ["", "## Plugin metrics (mean ± std over seeds)", ""]
        for k in [k for k in ("continual.iid.b64", "continual.dir0.1.b64", "continual.dir0.1.b1", "mixed.dir0.1.b64") if k in keys]:
            lines += [f"`{k}`:", "", "| arm | " + " | ".join(plugin_keys) + " |", "|---|" + "---|" * len(plugin_keys)]
            for a in arms:
                row = [_mean_std(vals(a, f"{k}.{pk}")) for pk in plugin_keys]
                if any(r != "n/a" for r in row):
                    lines.append(f"| {a} | " + " | ".join(row) + " |")
            lines.append("")
    lines += ["", "## Wall time per batch (ms, mean over seeds)", "", "| arm | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for a in arms:
        lines.append(f"| {a} | " + " | ".join(f"{sum(v) / len(v):.1f}" if (v := vals(a, f'{k}.ms_per_batch')) else "n/a" for k in keys) + " |")
    path = out / "EXTRA.md"
    path.write_text("\n".join(lines) + "\n")
    written = [path]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
        for ax, order in zip(axes, ("iid", "dir0.1")):
            for a in arms:
                xs, ys = [], []
                for b in (1, 16, 64):
                    v = vals(a, f"continual.{order}.b{b}.error")
                    if v:
                        xs.append(b)
                        ys.append(100 * sum(v) / len(v))
                if xs:
                    ax.plot(xs, ys, marker="o", label=a)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("stream batch size")
            ax.set_title(f"continual, {order}", fontsize=9)
        axes[0].set_ylabel("online error %")
        axes[1].legend(fontsize=7)
        fig.tight_layout()
        p = out / "batch_size_sweep.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        written.append(p)
    except Exception:  # noqa: BLE001 - plots are optional
        pass
    return written


def suites() -> list[Suite]:
    base = {
        "data": {"name": "digits-c", "options": {"corruptions": CORRUPTIONS, "severities": [5]}},
        "model": {"name": "smallcnn", "kwargs": {"widths": [16, 32, 64]}},
        "train": {"epochs": 8, "batch_size": 64, "lr": 3e-3, "device": "cpu", "plots": False},
        "_streams": FULL_STREAMS,
    }
    tent = {"plugins": ["tent"], "tent": {"lr": 1e-3, "lr_batch_ref": 64}}
    arms = [
        Arm("source", {"plugins": []}, "eval-mode BN with source statistics, no adaptation"),
        Arm("tbn", {"plugins": ["tent"], "tent": {"steps": 0}}, "test-batch BN (tent.steps=0)"),
        Arm("tent", tent, "TENT, Adam betas (0.9, 0.999), lr 1e-3 * B/64, one step per batch"),
        Arm("tent-lr1e-5", {"plugins": ["tent"], "tent": {"lr": 1e-5}}, "TENT at the official UnMix-TNS grid's lr 1e-5 (sensitivity)"),
        Arm("unmixtns", {"plugins": ["unmixtns"], "unmixtns": {"num_components": 16}}, "UnMix-TNS K=16, B_max=64, no training"),
        Arm("unmixtns-k128", {"plugins": ["unmixtns"], "unmixtns": {"num_components": 128}}, "UnMix-TNS K=128 (official mixed-domain K)"),
        Arm("unmixtns-mom0.5", {"plugins": ["unmixtns"], "unmixtns": {"num_components": 16, "momentum": 0.5}},
            "ablation, not the method: UnMix-TNS K=16 with component momentum 0.5 instead of the formula's 0.1 at B=64 "
            "(does the proxy's short stream, ~6 batches per corruption at B=64, limit how far the components move?)"),
        Arm("tent+unmixtns", {"plugins": ["unmixtns", "tent"], "tent": {"lr": 1e-3, "lr_batch_ref": 64},
                              "unmixtns": {"num_components": 16}}, "TENT's optimiser on the UnMix-TNS layers' affine (K=16)"),
    ]
    metrics = [f"{stream_key(s)}.error" for s in FULL_STREAMS]
    return [
        Suite(
            name="unmixtns-digits-c",
            description=(
                "Test-time adaptation on digits-c (6 corruptions, severity 5, 360 test images each) with a smallcnn "
                "(BatchNorm after every conv) trained on clean digits once per seed. Online error (%) over the stream; "
                "columns are <setting>.<order>.b<batch size>: continual (no reset), single (reset per corruption), "
                "mixed (all corruptions in one stream); iid = shuffled, dirX = label-correlated Dirichlet order, delta X."
            ),
            base=base,
            arms=arms,
            baseline="tbn",
            metrics=metrics,
            higher_is_better={m: False for m in metrics},
            seeds=3,
            quick_seeds=1,
            quick={
                "data": {"image_size": 16, "options": {"corruptions": ["gaussian_noise"]}},
                "model": {"kwargs": {"widths": [8, 16]}},
                "train": {"epochs": 1, "max_steps_per_epoch": 10},
                "_streams": QUICK_STREAMS,
            },
            run=run_cell,
            plot=extra_report,
            comparisons=[("tent", "tent+unmixtns"), ("source", "unmixtns")],
            notes=(
                "Every seed sets the source model's training, the stream order and the UnMix-TNS component noise. "
                "TENT's lr is our choice (1e-3 * B/64); the tent-lr1e-5 row is the official grid's value. "
                "The quick run (--quick) is a smoke test, not evidence."
            ),
        )
    ]
