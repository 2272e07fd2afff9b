"""Built-in world rewards: one reward per module (registered by each module's ``@hookimpl``)."""

__all__: list[str] = []
