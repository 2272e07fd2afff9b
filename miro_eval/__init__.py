"""miro_eval: evaluators (``reward_scores``, ``test_time_scaling``), suites (convergence, controllability,
trade-offs, model comparison, leave-one-out), plots, the report writer and ``miro-run``.

Importing ``miro_eval`` is cheap; the names below load their modules on first access.
"""

from __future__ import annotations

_LAZY = {
    "RewardScores": ".reward_scores",
    "read_prompts": ".reward_scores",
    "TestTimeScaling": ".test_time_scaling",
    "BestOfN": ".test_time_scaling",
    "select_best": ".test_time_scaling",
    "reward_curves": ".convergence",
    "steps_to_reach": ".convergence",
    "convergence_speedup": ".convergence",
    "convergence_suite": ".convergence",
    "spearman": ".controllability",
    "controllability_sweep": ".controllability",
    "pair_targets": ".tradeoff",
    "isolate_targets": ".tradeoff",
    "pairwise_sweep": ".tradeoff",
    "isolation_sweep": ".tradeoff",
    "comparison_table": ".comparison",
    "leave_one_out_table": ".comparison",
    "Report": ".report",
    "write_json": ".report",
    "to_jsonable": ".report",
    "generate_batched": "._common",
    "load_rewards": "._common",
    "score_images": "._common",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'miro_eval' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
