"""Built-in plugin of ``miro_core``: core CLI commands and data sources.

Registered through the ``miro`` entry-point group like any third-party plugin.
"""

miro_plugins = [
    "miro_core.cli.plugins_cmd",
]
