"""Scene model of the procedural world: coloured shapes with counts and spatial relations, and the renderer.

A scene is a small graph: a background colour and 1-4 objects (shape, colour, size, position), plus an
optional spatial relation between two objects. Everything is deterministic given a numpy ``Generator``;
:func:`scene_rng` makes the generator of sample ``index`` under ``seed``.

Rendering is vectorised numpy: each object is a signed distance field on the pixel grid, turned into a
coverage with a one-pixel linear ramp (analytic anti-aliasing), composited in order.

Coordinates are normalised to the unit square, ``x`` to the right, ``y`` downwards (image rows).
Every shape fits the axis-aligned square box ``[cx-r, cx+r] x [cy-r, cy+r]``: circles are inscribed,
squares fill it, triangles point up with their apex at the top centre and their base on the bottom edge.
"""

from __future__ import annotations

__all__ = [
    "SHAPES",
    "COLORS",
    "PALETTE",
    "RELATIONS",
    "POSITION_THRESHOLD",
    "WorldObject",
    "Scene",
    "scene_rng",
    "sample_scene",
    "render",
    "shape_coverage",
    "relative_position",
    "relations_between",
]

from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np

#: Object classes (GenEval "class").
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
#: Colour names, in palette order.
COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "white")
#: Reference RGB of each colour name (objects jitter around it).
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.12, 0.12),
    "green": (0.15, 0.75, 0.20),
    "blue": (0.15, 0.35, 0.95),
    "yellow": (0.95, 0.85, 0.15),
    "purple": (0.62, 0.22, 0.85),
    "white": (0.95, 0.95, 0.95),
}
#: Spatial relations, GenEval phrasing.
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
#: GenEval's position threshold: offsets smaller than this fraction of the summed box sides do not count.
POSITION_THRESHOLD = 0.1

#: Scene kinds sampled by :func:`sample_scene` (how the caption is phrased).
KINDS: tuple[str, ...] = ("single", "count", "two", "position", "multi")


@attrs.frozen
class WorldObject:
    """One object. ``cx, cy`` centre and ``r`` half-side of its box, all in [0, 1] image units."""

    shape: str
    color: str
    cx: float
    cy: float
    r: float
    rgb: tuple[float, float, float]

    def box(self) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)`` in normalised units."""
        return (self.cx - self.r, self.cy - self.r, self.cx + self.r, self.cy + self.r)

    def as_dict(self) -> dict[str, Any]:
        return {"shape": self.shape, "color": self.color, "cx": self.cx, "cy": self.cy, "r": self.r,
                "rgb": list(self.rgb)}


@attrs.frozen
class Scene:
    """A scene graph. ``relation = (rel, i, j)`` means ``objects[i]`` is ``rel`` ``objects[j]``."""

    kind: str
    objects: tuple[WorldObject, ...]
    background: tuple[float, float, float]
    relation: tuple[str, int, int] | None = None
    #: colour name of a saturated backdrop ("vivid backdrop" style), None for the usual dark grey.
    backdrop: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "objects": [o.as_dict() for o in self.objects],
            "background": list(self.background),
            "relation": list(self.relation) if self.relation else None,
            "backdrop": self.backdrop,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scene:
        objs = tuple(WorldObject(o["shape"], o["color"], float(o["cx"]), float(o["cy"]), float(o["r"]),
                                 tuple(float(v) for v in o["rgb"])) for o in d["objects"])
        rel = d.get("relation")
        return cls(kind=d["kind"], objects=objs, background=tuple(float(v) for v in d["background"]),
                   relation=(rel[0], int(rel[1]), int(rel[2])) if rel else None, backdrop=d.get("backdrop"))


def scene_rng(seed: int, index: int, stream: int = 0) -> np.random.Generator:
    """The generator of sample ``index`` under ``seed`` (``stream`` separates independent uses)."""
    return np.random.Generator(np.random.PCG64([int(seed), int(index), int(stream)]))


# ---------------------------------------------------------------------------------------------------
# Geometry shared by the sampler, the captions and the evaluator
# ---------------------------------------------------------------------------------------------------
def relative_position(box_a: Sequence[float], box_b: Sequence[float], center_a: Sequence[float] | None = None,
                      center_b: Sequence[float] | None = None) -> set[str]:
    """GenEval's relative position of A with respect to B (``{"left of", "above", ...}``, maybe empty).

    Boxes are ``(x0, y0, x1, y1)`` (y down). Centres default to the box centres; the evaluator passes the
    segment centroids. An offset counts only beyond ``POSITION_THRESHOLD * (side_a + side_b)`` per axis,
    and a relation holds when its axis carries more than half of the (revised) offset direction.
    """
    box_a = np.asarray(box_a, dtype=np.float64)
    box_b = np.asarray(box_b, dtype=np.float64)
    ca = np.asarray(center_a, dtype=np.float64) if center_a is not None else (box_a[:2] + box_a[2:]) / 2
    cb = np.asarray(center_b, dtype=np.float64) if center_b is not None else (box_b[:2] + box_b[2:]) / 2
    dim_a = np.abs(box_a[2:] - box_a[:2])
    dim_b = np.abs(box_b[2:] - box_b[:2])
    offset = ca - cb
    norm = float(np.linalg.norm(offset))
    revised = np.maximum(np.abs(offset) - POSITION_THRESHOLD * (dim_a + dim_b), 0) * np.sign(offset)
    if norm == 0 or np.all(np.abs(revised) < 1e-3 * max(1.0, float(dim_a.max() + dim_b.max()))):
        return set()
    dx, dy = revised / norm
    out = set()
    if dx < -0.5:
        out.add("left of")
    if dx > 0.5:
        out.add("right of")
    if dy < -0.5:
        out.add("above")
    if dy > 0.5:
        out.add("below")
    return out


def relations_between(a: WorldObject, b: WorldObject) -> set[str]:
    """Ground-truth relations of ``a`` with respect to ``b``."""
    return relative_position(a.box(), b.box())


# ---------------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------------
_GAP = 0.05  # minimum gap between object boxes (normalised units)
_MARGIN = 0.03  # minimum gap to the image border


def _jitter_rgb(rng: np.random.Generator, color: str) -> tuple[float, float, float]:
    base = np.asarray(PALETTE[color])
    rgb = np.clip(base + rng.uniform(-0.05, 0.05, size=3), 0.0, 1.0)
    return tuple(float(v) for v in rgb)


def _place(rng: np.random.Generator, radii: Sequence[float], tries: int = 200) -> list[tuple[float, float]] | None:
    """Non-overlapping box centres for the given half-sides (None if the sampler gives up)."""
    centres: list[tuple[float, float]] = []
    for r in radii:
        for _ in range(tries):
            lo, hi = r + _MARGIN, 1 - r - _MARGIN
            cx, cy = rng.uniform(lo, hi, size=2)
            ok = all(abs(cx - ox) > r + orr + _GAP or abs(cy - oy) > r + orr + _GAP
                     for (ox, oy), orr in zip(centres, radii))
            if ok:
                centres.append((float(cx), float(cy)))
                break
        else:
            return None
    return centres


def _radius_range(n: int) -> tuple[float, float]:
    return {1: (0.12, 0.26), 2: (0.11, 0.2), 3: (0.11, 0.16), 4: (0.11, 0.15)}[n]


def _background(rng: np.random.Generator) -> tuple[float, float, float]:
    v = rng.uniform(0.06, 0.30)
    return tuple(float(np.clip(v + t, 0, 1)) for t in rng.uniform(-0.03, 0.03, size=3))


def sample_scene(rng: np.random.Generator, kind: str | None = None, backdrop_prob: float = 0.0) -> Scene:
    """Sample a scene. ``kind`` in :data:`KINDS` (None: uniform). ``backdrop_prob``: chance of a saturated
    colour backdrop instead of the dark grey background (its colour differs from every object's colour)."""
    kind = kind if kind is not None else KINDS[int(rng.integers(len(KINDS)))]
    if kind not in KINDS:
        raise ValueError(f"unknown scene kind {kind!r}; expected one of {KINDS}")
    while True:
        relation = None
        if kind == "single":
            specs = [(SHAPES[rng.integers(3)], COLORS[rng.integers(len(COLORS))])]
        elif kind == "count":
            n = int(rng.integers(2, 5))
            spec = (SHAPES[rng.integers(3)], COLORS[rng.integers(len(COLORS))])
            specs = [spec] * n
        elif kind in ("two", "position"):
            sa, sb = rng.choice(len(SHAPES), size=2, replace=False)
            specs = [(SHAPES[sa], COLORS[rng.integers(len(COLORS))]), (SHAPES[sb], COLORS[rng.integers(len(COLORS))])]
        else:  # multi: 2-4 objects, any attributes
            n = int(rng.integers(2, 5))
            specs = [(SHAPES[rng.integers(3)], COLORS[rng.integers(len(COLORS))]) for _ in range(n)]
        lo, hi = _radius_range(len(specs))
        radii = [float(rng.uniform(lo, hi)) for _ in specs]
        centres = _place(rng, radii)
        if centres is None:
            continue
        objects = tuple(WorldObject(s, c, cx, cy, r, _jitter_rgb(rng, c))
                        for (s, c), (cx, cy), r in zip(specs, centres, radii))
        if kind == "position":
            rels = sorted(relations_between(objects[0], objects[1]))
            if not rels:
                continue  # too close to call: resample so the caption is unambiguous
            relation = (rels[int(rng.integers(len(rels)))], 0, 1)
        break
    background = _background(rng)
    backdrop = None
    if backdrop_prob > 0 and rng.random() < backdrop_prob:
        used = {o.color for o in objects}
        free = [c for c in COLORS if c not in used and c != "white"]
        if free:
            backdrop = free[int(rng.integers(len(free)))]
            base = np.asarray(PALETTE[backdrop]) * rng.uniform(0.45, 0.6)
            background = tuple(float(v) for v in np.clip(base, 0, 1))
    return Scene(kind=kind, objects=objects, background=background, relation=relation, backdrop=backdrop)


# ---------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------
def _sdf(shape: str, px: np.ndarray, py: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    """Signed distance (normalised units, negative inside) of ``shape`` on the given coordinates."""
    dx, dy = px - cx, py - cy
    if shape == "circle":
        return np.sqrt(dx * dx + dy * dy) - r
    if shape == "square":
        qx, qy = np.abs(dx) - r, np.abs(dy) - r
        outside = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2)
        return outside + np.minimum(np.maximum(qx, qy), 0)
    if shape == "triangle":
        # apex (0, -r), base corners (+-r, r): base line y = r; sides through the apex
        nx, ny = 2.0 / np.sqrt(5.0), -1.0 / np.sqrt(5.0)  # outward normal of the right side (mirrored)
        side = np.abs(dx) * nx + (dy + r) * ny  # signed distance to the side lines through the apex
        base = dy - r
        return np.maximum(side, base)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def shape_coverage(shape: str, height: int, width: int, box: Sequence[float] | None = None) -> np.ndarray:
    """Anti-aliased coverage ``[H, W]`` in [0, 1] of ``shape`` filling ``box`` (pixel units, default the
    whole grid). Used by the renderer and as the detector's templates."""
    x0, y0, x1, y1 = box if box is not None else (0.0, 0.0, float(width), float(height))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    sx, sy = max((x1 - x0) / 2, 1e-6), max((y1 - y0) / 2, 1e-6)
    px = (np.arange(width) + 0.5)[None, :]
    py = (np.arange(height) + 0.5)[:, None]
    # unit-box coordinates, distance rescaled to pixels by the mean half-side
    d = _sdf(shape, (px - cx) / sx, (py - cy) / sy, 0.0, 0.0, 1.0) * (sx + sy) / 2
    return np.clip(0.5 - d, 0.0, 1.0)


def render(scene: Scene, size: int = 32, chw: bool = False) -> np.ndarray:
    """Render a clean scene: uint8 ``[size, size, 3]`` (default) or float32 ``[3, size, size]`` in [0, 1]."""
    img = np.empty((size, size, 3), dtype=np.float32)
    img[:] = np.asarray(scene.background, dtype=np.float32)
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    px, py = coords[None, :], coords[:, None]
    for obj in scene.objects:
        d = _sdf(obj.shape, px, py, obj.cx, obj.cy, obj.r) * size
        a = np.clip(0.5 - d, 0.0, 1.0).astype(np.float32)[..., None]
        img = img * (1 - a) + np.asarray(obj.rgb, dtype=np.float32) * a
    if chw:
        return np.ascontiguousarray(img.transpose(2, 0, 1))
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
