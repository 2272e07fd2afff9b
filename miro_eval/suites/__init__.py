"""Evaluation suites: named, registered evaluations run by ``miro eval --suite NAME`` (see docs/evaluation.md).

Built-ins: ``world`` (miro-run's world evaluation), ``rewards`` (any rewards on any prompt file),
``partiprompts``, ``geneval`` (GenEval's rules, detector through transformers), ``best_of_n`` (test-time
scaling on any suite) and ``evaluators`` (registered evaluators on a model; for suite TOML files).
"""

from __future__ import annotations

from miro_core.cli.eval_cmd import suite_from_toml

from ._base import ImageSuite, ResultCache, SamplingOptions, SuiteOptions, null_progress
from ._generation import CachedGenerate, generate_into, image_seed
from ._layout import ImageRecord, read_image_folder, sample_path, save_png, write_prompt_metadata
from ._prompts import read_prompt_file, read_tsv_prompts

__all__ = [
    "ImageSuite",
    "SuiteOptions",
    "SamplingOptions",
    "ResultCache",
    "null_progress",
    "CachedGenerate",
    "generate_into",
    "image_seed",
    "ImageRecord",
    "read_image_folder",
    "sample_path",
    "save_png",
    "write_prompt_metadata",
    "read_prompt_file",
    "read_tsv_prompts",
    "suite_from_toml",
    "toml_suite",
]

#: alias of :func:`suite_from_toml`
toml_suite = suite_from_toml
