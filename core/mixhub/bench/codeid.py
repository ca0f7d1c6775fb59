"""What identifies the code a bench cell ran: part of every cell's cache key.

``code_identity()`` returns

* ``versions``: mixhub, torch, timm, numpy and every installed plugin distribution;
* ``source``: a content hash of the checkout that holds the ``mixhub`` package (every tracked
  file except documentation, as it is on disk, plus untracked source files that git does not
  ignore); outside a git checkout, a content hash of the installed ``mixhub`` package;
* ``plugins``: a content hash per plugin package installed from outside that checkout (a
  plugin's own checkout, a wheel in site-packages), so an edited plugin counts even when its
  version number stays;
* ``git`` and ``dirty``: the commit and a hash of ``git diff HEAD``, for the report's provenance.

The key (``key_part``) holds ``versions``, ``source`` and ``plugins``; a commit that changes only
documentation (``docs/``, ``*.md``, ``*.rst``, ``mkdocs.yml``, images) leaves it equal, so no cell
runs again.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

__all__ = ["code_identity", "key_part", "is_documentation", "is_untracked_source", "tree_hash", "DOC_SUFFIXES", "SOURCE_SUFFIXES"]

#: Tracked files with these suffixes (and everything under ``docs/``) are documentation.
DOC_SUFFIXES = {".md", ".rst", ".png", ".jpg", ".jpeg", ".gif", ".svg"}
DOC_FILES = {"mkdocs.yml", "LICENSE", "NOTICE", "CHANGELOG"}
#: Untracked files that count as source: code and packaging metadata (run folders' YAML and
#: JSON never count, so a bench writing into the checkout does not change its own key).
SOURCE_SUFFIXES = {".py", ".pyi", ".pyx", ".pxd", ".c", ".cc", ".cpp", ".cu", ".h", ".hpp"}
SOURCE_FILES = {"pyproject.toml", "setup.cfg", "setup.py"}


def is_documentation(path: str) -> bool:
    """Whether a checkout path (POSIX, relative) is documentation: it never enters the key."""
    p = PurePosixPath(path)
    return p.parts[:1] == ("docs",) or p.suffix.lower() in DOC_SUFFIXES or p.name in DOC_FILES


def is_untracked_source(path: str) -> bool:
    p = PurePosixPath(path)
    return p.suffix.lower() in SOURCE_SUFFIXES or p.name in SOURCE_FILES


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        p = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return p.stdout if p.returncode == 0 else None


def tree_hash(root: Path, paths: list[str]) -> str:
    """sha256 over (path, content) of ``paths`` under ``root``, sorted; a missing file hashes as deleted."""
    h = hashlib.sha256()
    for rel in sorted(set(paths)):
        f = root / rel
        h.update(rel.encode() + b"\0")
        try:
            h.update(hashlib.sha256(f.read_bytes()).digest() if f.is_file() else b"<missing>")
        except OSError:
            h.update(b"<unreadable>")
    return h.hexdigest()[:24]


def _package_files(folder: Path) -> list[str]:
    return [str(p.relative_to(folder).as_posix()) for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]


def _checkout_source(top: Path) -> str:
    tracked = (_git(["ls-files", "-z", "--cached"], top) or "").split("\0")
    untracked = (_git(["ls-files", "-z", "--others", "--exclude-standard"], top) or "").split("\0")
    paths = [p for p in tracked if p and not is_documentation(p)]
    paths += [p for p in untracked if p and is_untracked_source(p)]
    return tree_hash(top, paths)


def _plugin_folders() -> dict[str, Path]:
    """Each plugin distribution's package folder, found without importing plugin code."""
    from ..plugins import discover

    out: dict[str, Path] = {}
    for info in discover().values():
        top = info.value.split(":", 1)[0].split(".", 1)[0]
        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            continue
        if spec is None:
            continue
        if spec.submodule_search_locations:
            out[info.distribution] = Path(next(iter(spec.submodule_search_locations))).resolve()
        elif spec.origin:
            out[info.distribution] = Path(spec.origin).resolve()
    return out


@functools.lru_cache(maxsize=1)
def code_identity() -> dict[str, Any]:
    """The code identity of this process (see the module docstring); cached until ``cache_clear()``, which
    every bench and tune start calls."""
    from importlib import metadata

    from ..plugins import discover

    names = {"mixhub", "torch", "timm", "numpy"} | {info.distribution for info in discover().values() if info.distribution}
    versions: dict[str, str | None] = {}
    for name in sorted(names):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    package = Path(__file__).resolve().parents[1]
    top_s = _git(["rev-parse", "--show-toplevel"], package)
    top = Path(top_s.strip()).resolve() if top_s else None
    commit = _git(["rev-parse", "HEAD"], package) if top else None
    dirty = None
    if commit is not None:
        diff = _git(["diff", "HEAD"], package) or ""
        dirty = hashlib.sha256(diff.encode()).hexdigest()[:16] if diff.strip() else None
    source = _checkout_source(top) if top is not None else tree_hash(package, _package_files(package))
    plugins: dict[str, str] = {}
    for dist, folder in sorted(_plugin_folders().items()):
        if top is not None and folder.is_relative_to(top):
            continue  # part of the checkout: already in ``source``
        plugins[dist] = tree_hash(folder, _package_files(folder)) if folder.is_dir() else tree_hash(folder.parent, [folder.name])
    return {"versions": versions, "source": source, "plugins": plugins, "git": commit.strip() if commit else None, "dirty": dirty}


def key_part(code: dict[str, Any]) -> dict[str, Any]:
    """The part of ``code_identity()`` that enters a cell's key (not the commit: docs-only commits keep it)."""
    return {k: code.get(k) for k in ("versions", "source", "plugins")}
