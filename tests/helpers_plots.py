"""Capture the figures a test's code saves, to read their axes instead of their pixels."""

from __future__ import annotations

from typing import Any


def capture_figures(monkeypatch: Any) -> list[tuple[str, Any]]:
    """Record ``(path, figure)`` for every ``Figure.savefig`` while the test runs (the files are still written)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    saved: list[tuple[str, Any]] = []
    original = Figure.savefig

    def savefig(self: Any, path: Any, *a: Any, **k: Any) -> Any:
        saved.append((str(path), self))
        return original(self, path, *a, **k)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return saved
