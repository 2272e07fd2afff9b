"""``t5``: encoder of a (FLAN-)T5 model, token-level last hidden states.

The reference recipe uses ``google/flan-t5-xl`` (2048-d). ``model`` is a local directory (config,
tokenizer and weights saved with ``save_pretrained``) or a Hugging Face id; pin ``revision`` to a commit
hash for reproducible runs.
"""

from __future__ import annotations

__all__ = ["T5"]

from typing import Any

from miro_core import config, hookimpl

from ._hf import HFTextEncoder


class T5(HFTextEncoder):
    """T5 / FLAN-T5 encoder last hidden states (transformers T5EncoderModel)."""

    name = "t5"

    @config
    class Config:
        model: str = "google/flan-t5-xl"
        #: Git revision (commit hash) on the Hub; None = the default branch (not reproducible).
        revision: str | None = None
        max_length: int = 128
        dtype: str = "float32"
        #: Only read the local Hugging Face cache (never download).
        local_files_only: bool = False

    def _how_to_get(self) -> str:
        rev = f" --revision {self.config.revision}" if self.config.revision else ""
        return (f"Download it with `huggingface-cli download {self.config.model}{rev}` (it is then read from the "
                "HF cache), or set model to a local directory holding config.json, the tokenizer files and the "
                "weights (T5EncoderModel.save_pretrained + tokenizer.save_pretrained).")

    def _load_config(self, source: str, revision: str | None, local: bool) -> Any:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(source, **self._kw(local))

    def _hidden_size(self, cfg: Any) -> int:
        return int(cfg.d_model)

    def _load(self, source: str, revision: str | None, local: bool):
        from transformers import AutoTokenizer, T5EncoderModel

        tok = AutoTokenizer.from_pretrained(source, **self._kw(local))
        model = T5EncoderModel.from_pretrained(source, **self._kw(local))
        return tok, model


@hookimpl
def miro_register_text_encoders(register):
    register(T5)
