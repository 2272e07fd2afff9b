"""Built-in plugin of ``miro_eval``: lists the modules whose ``@hookimpl`` functions register components.

Registered through the ``miro`` entry-point group exactly like a third-party plugin.
"""

miro_plugins = [
    "miro_eval.reward_scores",
    "miro_eval.test_time_scaling",
    "miro_eval.suites.rewards",
    "miro_eval.suites.partiprompts",
    "miro_eval.suites.geneval",
    "miro_eval.suites.best_of_n",
    "miro_eval.suites.world",
    "miro_eval.suites.evaluators",
    "miro_eval.suites.controllability",
    "miro_eval.suites.comparison",
    "miro_eval.suites.leave_one_out",
    "miro_eval.suites.controllability_sweep",
    "miro_eval.suites.tradeoff",
    "miro_eval.suites.test_time_scaling",
    "miro_eval.suites.guidance_sweep",
]
