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
]
