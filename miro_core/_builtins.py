"""Built-in plugin of ``miro_core``: core CLI commands and data sources.

Registered through the ``miro`` entry-point group like any third-party plugin.
"""

miro_plugins = [
    "miro_core.cli.train_cmd",
    "miro_core.cli.sample_cmd",
    "miro_core.cli.plugins_cmd",
    "miro_core.data.sources",
    "miro_core.cli.score_cmd",
    "miro_core.cli.bin_cmd",
    "miro_core.cli.store_cmd",
    "miro_core.cli.convert_cmd",
    "miro_core.cli.encode_cmd",
    "miro_core.cli.eval_cmd",
    "miro_core.cli.new_plugin_cmd",
    "miro_core.cli.demo_cmd",
]
