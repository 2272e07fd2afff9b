"""Captions generated from the scene graph, and caption corruptions (partial or wrong captions).

A caption is first built as a :class:`CaptionSpec` (groups of identical objects + an optional relation),
which is what corruptions edit, then phrased by one of several GenEval-like templates
("a photo of two red circles", "a blue square to the left of a yellow triangle", ...).
"""

from __future__ import annotations

__all__ = [
    "Group",
    "CaptionSpec",
    "CORRUPTIONS",
    "spec_from_scene",
    "phrase",
    "short_phrase",
    "make_caption",
    "corrupt",
    "plural",
    "drop_colors",
    "NUMBER_WORDS",
]

from collections import Counter
from typing import Any

import attrs
import numpy as np

from .scene import COLORS, SHAPES, Scene

NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
_PREFIXES = ("a photo of ", "", "an image of ", "a picture of ", "a photo of ")
_REL_PHRASES = {
    "left of": ("to the left of", "left of"),
    "right of": ("to the right of", "right of"),
    "above": ("above",),
    "below": ("below",),
}
_FLIP = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
#: Corruption types recorded in ``Sample.meta["caption_corruption"]["type"]``.
CORRUPTIONS = ("partial", "wrong_color", "wrong_count", "wrong_shape", "wrong_relation")


def plural(shape: str) -> str:
    return shape + "s"


@attrs.frozen
class Group:
    count: int
    color: str | None
    shape: str


@attrs.frozen
class CaptionSpec:
    """What a caption claims: groups of objects and, optionally, ``(relation, group_a, group_b)``."""

    groups: tuple[Group, ...]
    relation: tuple[str, int, int] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"groups": [attrs.asdict(g) for g in self.groups], "relation": list(self.relation) if self.relation else None}


def spec_from_scene(scene: Scene) -> CaptionSpec:
    """The true, complete description of ``scene``."""
    objs = scene.objects
    if scene.relation is not None:
        rel, i, j = scene.relation
        return CaptionSpec((Group(1, objs[i].color, objs[i].shape), Group(1, objs[j].color, objs[j].shape)), (rel, 0, 1))
    counts = Counter((o.color, o.shape) for o in objs)
    order = list(dict.fromkeys((o.color, o.shape) for o in objs))
    return CaptionSpec(tuple(Group(counts[k], k[0], k[1]) for k in order))


def _np(group: Group, with_color: bool, rng: np.random.Generator | None) -> str:
    color = f"{group.color} " if (with_color and group.color) else ""
    if group.count == 1:
        art = "one" if (rng is not None and rng.random() < 0.15) else ("an" if not color and group.shape[0] in "aeiou" else "a")
        return f"{art} {color}{group.shape}"
    return f"{NUMBER_WORDS[group.count]} {color}{plural(group.shape)}"


def _join(parts: list[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def phrase(spec: CaptionSpec, rng: np.random.Generator | None = None, with_color: bool = True,
           prefix: str | None = None) -> str:
    """A full caption for ``spec`` (template chosen by ``rng``; deterministic default without it)."""
    if prefix is None:
        prefix = _PREFIXES[int(rng.integers(len(_PREFIXES)))] if rng is not None else "a photo of "
    if spec.relation is not None:
        rel, a, b = spec.relation
        options = _REL_PHRASES[rel]
        rel_text = options[int(rng.integers(len(options)))] if rng is not None else options[0]
        body = f"{_np(spec.groups[a], with_color, rng)} {rel_text} {_np(spec.groups[b], with_color, rng)}"
    else:
        body = _join([_np(g, with_color, rng) for g in spec.groups])
    return prefix + body


def short_phrase(spec: CaptionSpec) -> str:
    """A short caption: no article for single objects, no prefix ("red circle left of blue square")."""
    def np_(g: Group) -> str:
        color = f"{g.color} " if g.color else ""
        return f"{color}{g.shape}" if g.count == 1 else f"{NUMBER_WORDS[g.count]} {color}{plural(g.shape)}"

    if spec.relation is not None:
        rel, a, b = spec.relation
        return f"{np_(spec.groups[a])} {rel} {np_(spec.groups[b])}"
    return _join([np_(g) for g in spec.groups])


def corrupt(spec: CaptionSpec, kind: str, rng: np.random.Generator) -> tuple[CaptionSpec, dict[str, Any]] | None:
    """Apply corruption ``kind`` to ``spec``; return ``(new_spec, details)`` or None when not applicable."""
    groups = list(spec.groups)
    if kind == "partial":
        if spec.relation is not None or len(groups) >= 2:
            drop = int(rng.integers(len(groups)))
            kept = tuple(g for k, g in enumerate(groups) if k != drop)
            return CaptionSpec(kept), {"type": "partial", "dropped": attrs.asdict(groups[drop])}
        return None  # a single group cannot lose an object (dropping its colour stays true: not a corruption)
    if kind == "wrong_color":
        k = int(rng.integers(len(groups)))
        present = {(g.color, g.shape) for g in groups}
        choices = [c for c in COLORS if c != groups[k].color and (c, groups[k].shape) not in present]
        new = choices[int(rng.integers(len(choices)))]
        old = groups[k].color
        groups[k] = attrs.evolve(groups[k], color=new)
        return attrs.evolve(spec, groups=tuple(groups)), {"type": kind, "group": k, "from": old, "to": new}
    if kind == "wrong_count":
        k = int(rng.integers(len(groups)))
        if spec.relation is not None:
            return None  # relations are phrased between single objects
        choices = [n for n in NUMBER_WORDS if n != groups[k].count]
        new = choices[int(rng.integers(len(choices)))]
        old = groups[k].count
        groups[k] = attrs.evolve(groups[k], count=new)
        return attrs.evolve(spec, groups=tuple(groups)), {"type": kind, "group": k, "from": old, "to": new}
    if kind == "wrong_shape":
        k = int(rng.integers(len(groups)))
        present = {(g.color, g.shape) for g in groups}
        choices = [s for s in SHAPES if s != groups[k].shape and (groups[k].color, s) not in present]
        if not choices:
            return None
        new = choices[int(rng.integers(len(choices)))]
        old = groups[k].shape
        groups[k] = attrs.evolve(groups[k], shape=new)
        return attrs.evolve(spec, groups=tuple(groups)), {"type": kind, "group": k, "from": old, "to": new}
    if kind == "wrong_relation":
        if spec.relation is None:
            return None
        rel, a, b = spec.relation
        if rng.random() < 0.5:
            new_rel = (_FLIP[rel], a, b)
        else:
            new_rel = (rel, b, a)  # same words, objects swapped
        return attrs.evolve(spec, relation=new_rel), {"type": kind, "from": rel, "to": list(new_rel)}
    raise ValueError(f"unknown corruption {kind!r}; expected one of {CORRUPTIONS}")


def make_caption(scene: Scene, rng: np.random.Generator, partial_prob: float = 0.0, wrong_prob: float = 0.0,
                 color_drop_prob: float = 0.15) -> tuple[str, str, dict[str, Any] | None, CaptionSpec]:
    """Caption a scene: ``(caption, short_caption, corruption or None, spec actually phrased)``.

    With ``partial_prob`` the caption omits an object (scenes of a single group keep a true caption); with
    ``wrong_prob`` one attribute is wrong (colour, count, shape or relation, whichever applies).
    """
    spec = spec_from_scene(scene)
    corruption = None
    u = rng.random()
    if u < partial_prob:
        out = corrupt(spec, "partial", rng)
        if out is not None:
            spec, corruption = out
    elif u < partial_prob + wrong_prob:
        kinds = ["wrong_color", "wrong_shape", "wrong_count", "wrong_relation"]
        for k in rng.permutation(len(kinds)):
            out = corrupt(spec, kinds[int(k)], rng)
            if out is not None:
                spec, corruption = out
                break
    if corruption is None and rng.random() < color_drop_prob:
        spec = drop_colors(spec)
    caption = phrase(spec, rng)
    return caption, short_phrase(spec), corruption, spec


def drop_colors(spec: CaptionSpec) -> CaptionSpec:
    """The same claim without colours (groups of the same shape merge: "two circles")."""
    if spec.relation is not None:
        return CaptionSpec(tuple(attrs.evolve(g, color=None) for g in spec.groups), spec.relation)
    counts: dict[str, int] = {}
    for g in spec.groups:
        counts[g.shape] = counts.get(g.shape, 0) + g.count
    return CaptionSpec(tuple(Group(min(n, 4), None, s) for s, n in counts.items()))

