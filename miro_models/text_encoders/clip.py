"""``clip``: CLIP text transformer (transformers CLIPTextModel), token-level last hidden states.

``model`` is a local directory or a Hugging Face id of a CLIP model (full CLIPModel or text-only
checkpoints both load: only the text tower is read). CLIP's text transformer is causal, so padding never
changes the states of real tokens.
"""

from __future__ import annotations

__all__ = ["CLIPText"]

from typing import Any

from miro_core import config, hookimpl

from ._hf import HFTextEncoder


class CLIPText(HFTextEncoder):
    """CLIP text encoder last hidden states (77 tokens max)."""

    name = "clip"

    @config
    class Config:
        model: str = "openai/clip-vit-large-patch14"
        revision: str | None = None
        max_length: int = 77
        dtype: str = "float32"
        local_files_only: bool = False

    def _how_to_get(self) -> str:
        rev = f" --revision {self.config.revision}" if self.config.revision else ""
        return (f"Download it with `huggingface-cli download {self.config.model}{rev}`, or set model to a local "
                "directory holding config.json, the CLIP tokenizer files (vocab.json, merges.txt) and weights.")

    def _load_config(self, source: str, revision: str | None, local: bool) -> Any:
        from transformers import CLIPTextConfig

        return CLIPTextConfig.from_pretrained(source, **self._kw(local))

    def _load(self, source: str, revision: str | None, local: bool):
        from transformers import AutoTokenizer, CLIPTextModel

        tok = AutoTokenizer.from_pretrained(source, **self._kw(local))
        model = CLIPTextModel.from_pretrained(source, **self._kw(local))
        return tok, model


@hookimpl
def miro_register_text_encoders(register):
    register(CLIPText)
