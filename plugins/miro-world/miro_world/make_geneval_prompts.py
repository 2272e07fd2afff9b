"""Generate the world's GenEval prompt set (``geneval_prompts.jsonl``), deterministically.

Run ``python -m miro_world.make_geneval_prompts [OUT]`` (default: the file shipped in the package).
Same format as GenEval's ``evaluation_metadata.jsonl``: one JSON object per line with ``tag``, ``include``
(``[{class, count, color?, position?: [relation, index]}]``), ``exclude`` and ``prompt``. Prompts are
enumerated from the world's vocabulary (classes = shapes); only ``color_attr`` is subsampled, with a
dedicated seed unrelated to any data-source seed. Templates follow GenEval's phrasing, which differs
from the training captions' most common forms.
"""

from __future__ import annotations

__all__ = ["CATEGORIES", "generate_prompts", "write_prompts", "DEFAULT_PATH", "PROMPT_SEED"]

import itertools
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .captions import NUMBER_WORDS, plural
from .scene import COLORS, RELATIONS, SHAPES

CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
DEFAULT_PATH = Path(__file__).parent / "geneval_prompts.jsonl"
#: seed of the color_attr subsample (a stream of its own: not a data-source seed)
PROMPT_SEED = 20_240_917
NUM_COLOR_ATTR = 60


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def generate_prompts() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for s in SHAPES:
        out.append({"tag": "single_object", "include": [{"class": s, "count": 1}], "exclude": [],
                    "prompt": f"a photo of {_a(s)} {s}"})
    for a, b in itertools.permutations(SHAPES, 2):
        out.append({"tag": "two_object", "include": [{"class": a, "count": 1}, {"class": b, "count": 1}],
                    "exclude": [], "prompt": f"a photo of {_a(a)} {a} and {_a(b)} {b}"})
    for s in SHAPES:
        for n in (2, 3, 4):
            out.append({"tag": "counting", "include": [{"class": s, "count": n}],
                        "exclude": [{"class": s, "count": n + 1}], "prompt": f"a photo of {NUMBER_WORDS[n]} {plural(s)}"})
    for s in SHAPES:
        for c in COLORS:
            out.append({"tag": "colors", "include": [{"class": s, "count": 1, "color": c}], "exclude": [],
                        "prompt": f"a photo of {_a(c)} {c} {s}"})
    for a, b in itertools.permutations(SHAPES, 2):
        for rel in RELATIONS:
            out.append({"tag": "position",
                        "include": [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [rel, 0]}],
                        "exclude": [], "prompt": f"a photo of {_a(a)} {a} {rel} {_a(b)} {b}"})
    combos = [(a, b, ca, cb) for a, b in itertools.permutations(SHAPES, 2) for ca in COLORS for cb in COLORS if ca != cb]
    rng = np.random.default_rng(PROMPT_SEED)
    for k in sorted(rng.choice(len(combos), size=NUM_COLOR_ATTR, replace=False).tolist()):
        a, b, ca, cb = combos[k]
        out.append({"tag": "color_attr",
                    "include": [{"class": a, "count": 1, "color": ca}, {"class": b, "count": 1, "color": cb}],
                    "exclude": [], "prompt": f"a photo of {_a(ca)} {ca} {a} and {_a(cb)} {cb} {b}"})
    return out


def write_prompts(path: str | Path = DEFAULT_PATH) -> Path:
    path = Path(path)
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in generate_prompts()))
    return path


if __name__ == "__main__":  # pragma: no cover
    write_prompts(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_PATH)
