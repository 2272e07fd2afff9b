"""Built-in plugin of ``miro_world``: lists the modules whose ``@hookimpl`` functions register components.

Registered through the ``miro`` entry-point group exactly like a third-party plugin.
"""

miro_plugins = [
    "miro_world.source",
    "miro_world.rewards.sharpness",
    "miro_world.rewards.cleanliness",
    "miro_world.rewards.vividness",
    "miro_world.rewards.alignment",
    "miro_world.geneval",
    "miro_world.commands",
]
