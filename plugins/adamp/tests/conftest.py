"""mixhub-adamp test support: make the state of the fast paths visible in the test summary.

The fused CPU kernels are built on first use (torch's extension builder); where they cannot be
built, their tests skip. So that a skipped fast path is never silent, the terminal summary
says which fast paths ran and why any did not. ``MIXHUB_REQUIRE_FUSED=1`` (for CI machines that
have a compiler) turns an unavailable fused kernel into a failure instead of skips.
"""

from __future__ import annotations

import os

import pytest


def fused_or_skip() -> None:
    """Skip the calling test when the fused kernels are unavailable (fail under
    ``MIXHUB_REQUIRE_FUSED=1``)."""
    from mixhub_adamp import native

    if native.available():
        return
    reason = f"mixhub-adamp fused kernels unavailable: {native.build_error()}"
    if os.environ.get("MIXHUB_REQUIRE_FUSED") == "1":
        pytest.fail(reason + " (MIXHUB_REQUIRE_FUSED=1)")
    pytest.skip(reason)


@pytest.fixture
def fused_kernels() -> None:
    """Request it in a test that needs the fused kernels (skip, or fail under
    ``MIXHUB_REQUIRE_FUSED=1``, where they are unavailable). A fixture, not an import: a plain
    ``from conftest import ...`` finds whichever ``conftest`` module the whole suite loaded first."""
    fused_or_skip()


@pytest.fixture(autouse=True)
def _fused_parameter(request: pytest.FixtureRequest) -> None:
    """Tests parametrised with ``impl="fused"`` need the kernels."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("impl") == "fused":
        fused_or_skip()


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001
    import sys

    native = sys.modules.get("mixhub_adamp.native")
    if native is None or not getattr(native, "_TRIED", False):
        return  # no adamp test asked for the kernels in this run
    terminalreporter.section("mixhub-adamp fast paths")
    if native.available():
        terminalreporter.write_line(
            "fused CPU kernels: built and tested (torch ops mixhub_adamp::adamp_step/sgdp_step)"
        )
    else:
        terminalreporter.write_line(
            f"fused CPU kernels: NOT AVAILABLE, their tests were skipped: {native.build_error()}", red=True
        )
    terminalreporter.write_line(
        "capturable multi-tensor step: tested on CPU tensors (CUDA: benchmarks/gpu_check.py)"
    )
