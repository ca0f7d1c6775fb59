"""Generate the docs pages that come from code: the plugin catalogue (registry.yaml), the config
reference (the pydantic schemas) and the plugin cards (each plugin's README: methods and loggers).

    python docs/gen_docs.py            # writes docs/catalogue.md, docs/config.md, docs/{methods,loggers}/*.md
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _type_name(ann: Any) -> str:
    s = getattr(ann, "__name__", None) or str(ann)
    return s.replace("typing.", "").replace("NoneType", "None")


def _fields_table(model: Any, prefix: str) -> list[str]:
    from pydantic import BaseModel

    lines = ["| key | type | default | description |", "|---|---|---|---|"]
    nested = []
    for name, f in model.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            nested.append((name, ann))
            continue
        default = f.default if f.default_factory is None else f.default_factory()
        desc = (f.description or "").replace("|", "\\|")
        lines.append(f"| `{prefix}{name}` | `{_type_name(ann)}` | `{default!r}` | {desc} |")
    out = lines
    for name, sub in nested:
        out += ["", f"### `{prefix}{name}`", ""] + _fields_table(sub, f"{prefix}{name}.")
    return out


def config_reference() -> str:
    from mixhub.config import Config, core_sections
    from mixhub.plugins import discover, load_plugin

    lines = ["# Config reference", "", "Generated from the pydantic schemas (`python docs/gen_docs.py`).", "", "## Core", ""]
    lines += _fields_table(Config, "")
    for name, model in sorted(core_sections().items()):
        lines += ["", f"## `{name}`", ""] + _fields_table(model, f"{name}.")
    lines += ["", "## Plugins", "", "Each active plugin validates its own section, named after the plugin.", ""]
    in_tree = {p.parent.name for p in ROOT.glob("plugins/*/pyproject.toml")}
    for name, info in sorted(discover().items()):
        if name.replace("-", "_") not in in_tree:  # folders spell a hyphenated name with "_"
            continue  # the reference documents this repository's plugins, whatever else is installed
        try:
            spec = load_plugin(info).spec
        except Exception as exc:  # pragma: no cover - shown in the page
            lines += [f"### `{name}`", "", f"(could not be imported: {exc})", ""]
            continue
        lines += [f"### `{name}` ({info.distribution} {info.version})", "", spec.description or "", ""]
        if spec.options.model_fields:
            lines += _fields_table(spec.options, f"{name}.")
        else:
            lines += ["(no options)"]
        lines.append("")
    return "\n".join(lines) + "\n"


def catalogue() -> str:
    from mixhub.registry import load_registry

    entries = sorted(load_registry().items())
    lines = ["# Plugin catalogue", "", "Generated from `registry.yaml` (`python docs/gen_docs.py`).", "", "## Training methods", ""]
    lines += ["| plugin | paper | slots | task kinds | status | install |", "|---|---|---|---|---|---|"]
    for name, e in entries:
        if e.get("kind", "method") != "method":
            continue
        paper = e["paper"]
        folder = name.replace("-", "_")  # a hyphenated plugin name lives in an underscored folder
        card = f"[{name}](methods/{folder}.md)" if (ROOT / "plugins" / folder / "README.md").exists() else name
        lines.append(
            f"| {card} | [{paper['title']}]({paper['link']}) ({paper['venue']}) | {', '.join(e['slots']) or '-'} | "
            f"{', '.join(e['task_kinds'])} | {e['status']} | `{e['install']}` |"
        )
    loggers = [(n, e) for n, e in entries if e.get("kind") == "logger"]
    if loggers:
        lines += ["", "## Loggers", "", "Collectors of `mixhub_log` records: any number can be active in one run.", ""]
        lines += ["| plugin | tool | status | install |", "|---|---|---|---|"]
        for name, e in loggers:
            card = f"[{name}](loggers/{name}.md)" if (ROOT / "plugins" / name / "README.md").exists() else name
            lines.append(f"| {card} | [{e['tool']['name']}]({e['tool']['link']}) | {e['status']} | `{e['install']}` |")
    return "\n".join(lines) + "\n"


def main(out: Path = ROOT / "docs") -> None:
    from mixhub.registry import load_registry

    (out / "config.md").write_text(config_reference())
    (out / "catalogue.md").write_text(catalogue())
    kinds = {name: e.get("kind", "method") for name, e in load_registry().items()}
    for folder in ("methods", "loggers"):
        if (out / folder).exists():
            shutil.rmtree(out / folder)
        (out / folder).mkdir()
    for readme in sorted(ROOT.glob("plugins/*/README.md")):
        text = readme.read_text()
        # links inside a card are relative to the plugin folder: show them as repository paths
        text = re.sub(r"!\[([^\]]*)\]\((?!https?:)([^)]+)\)", lambda m: f"(figure `{m.group(2)}`)", text)
        text = re.sub(r"\[([^\]]+)\]\((?!https?:|#)([^)]+)\)", lambda m: f"{m.group(1)} (`{m.group(2)}`)", text)
        folder = "loggers" if kinds.get(readme.parent.name) == "logger" else "methods"
        (out / folder / f"{readme.parent.name}.md").write_text(text)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs")
