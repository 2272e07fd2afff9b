"""miro_world: the built-in procedural text-image world (DESIGN.md section 7).

Modules: :mod:`~miro_world.scene` (scene graph + renderer), :mod:`~miro_world.captions`,
:mod:`~miro_world.degrade`, :mod:`~miro_world.source` (the ``world`` data source),
:mod:`~miro_world.rewards` (``world_sharpness``, ``world_cleanliness``, ``world_vividness``,
``world_alignment``), :mod:`~miro_world.alignment_model`, :mod:`~miro_world.detector` and
:mod:`~miro_world.geneval` (the ``world_geneval`` evaluator). Importing the package is cheap.
"""

__all__: list[str] = []
