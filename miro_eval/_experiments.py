"""The experiments of ``miro-run`` after training, in the order they run: each is a suite of its own file in
:mod:`miro_eval.suites` (``compute`` writes its numbers into ``run.metrics`` and its plots under ``plots/``;
expensive ones are cached in ``experiments/*.json``, reused on a re-run); ``miro eval --suite NAME`` runs one alone."""

from __future__ import annotations

__all__ = ["run_experiments", "main_metrics", "EXPERIMENTS", "REPORT_ORDER"]

from typing import Any

from .suites._experiment import main_metrics
from .suites.comparison import ComparisonSuite
from .suites.controllability_sweep import ControllabilitySweepSuite
from .suites.convergence import ConvergenceExperiment
from .suites.guidance_sweep import GuidanceSweepSuite
from .suites.leave_one_out import LeaveOneOutSuite
from .suites.test_time_scaling import TestTimeScalingSuite
from .suites.tradeoff import TradeoffSuite

#: the order in which ``miro-run`` computes them (single-reward models are part of the comparison)
EXPERIMENTS = (ComparisonSuite, ConvergenceExperiment, LeaveOneOutSuite, ControllabilitySweepSuite, TradeoffSuite,
               TestTimeScalingSuite, GuidanceSweepSuite)
#: the order of their sections in ``report.md`` after the comparison's ``Models`` section and the samples
REPORT_ORDER = (ConvergenceExperiment, ControllabilitySweepSuite, LeaveOneOutSuite, TestTimeScalingSuite,
                TradeoffSuite, GuidanceSweepSuite)


def run_experiments(run: Any, models: dict[str, tuple[str, ...]], histories: dict[str, list[dict[str, Any]]]) -> None:
    run.metrics.setdefault("plots", {})
    for exp in EXPERIMENTS:
        if exp.wanted(run, models, histories):
            exp.compute(run, models, histories)
