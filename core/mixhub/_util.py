"""Small shared helpers (private)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The closest candidate to ``name`` (for 'did you mean' hints), or None."""
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return match[0] if match else None


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    best = closest(name, candidates)
    return f"; did you mean {best!r}?" if best else ""
