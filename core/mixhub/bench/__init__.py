"""The benchmark harness: suites (``Suite``, ``Arm``), the runner and the report."""

from .runner import cell_config, collect_suites, default_run, flatten_summary, run_suite
from .suite import Arm, Suite

__all__ = ["Arm", "Suite", "cell_config", "collect_suites", "default_run", "flatten_summary", "run_suite"]
