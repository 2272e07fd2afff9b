"""Image folders on disk: GenEval's layout (written by every generating suite) and a flat layout (read).

GenEval layout (``generation/diffusers_generate.py`` of the official repository)::

    <root>/00000/metadata.jsonl      one JSON object: the prompt record ({"prompt": ..., "tag": ..., ...})
    <root>/00000/samples/0000.png    the images of that prompt
    <root>/00001/...

Flat layout (any model's output folder): images in ``<root>`` and their prompts either in
``<root>/metadata.jsonl`` (one object per line with ``file_name`` / ``file`` / ``image`` and ``prompt``; other
keys are metadata, as the Hugging Face ``imagefolder`` format) or in a sidecar per image: ``<stem>.txt`` (the
prompt) or ``<stem>.json`` (an object with ``prompt``, as ``miro sample`` writes). Images with the same prompt
form one group (``sample`` = their order), so best-of-N and per-prompt statistics work on flat folders too.
"""

from __future__ import annotations

__all__ = [
    "IMAGE_EXTS",
    "ImageRecord",
    "read_image_folder",
    "prompt_dir",
    "sample_path",
    "write_prompt_metadata",
    "save_png",
    "load_rgb",
]

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from miro_core import MiroError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp")
_DIGITS = re.compile(r"^\d+$")
_SAMPLE = re.compile(r"^(\d+)\.(png|jpg|jpeg|webp)$", re.I)
_FLAT_METADATA = ("metadata.jsonl", "prompts.jsonl")
_FILE_KEYS = ("file_name", "file", "image", "filename")


@attrs.frozen
class ImageRecord:
    """One image on disk with its prompt: ``group`` = prompt index, ``sample`` = image index within it."""

    path: Path
    prompt: str
    group: int
    sample: int
    metadata: Mapping[str, Any] = attrs.field(factory=dict)

    def key(self, root: Path) -> str:
        """The path relative to ``root`` (``/``-separated): the id of the image in result files."""
        try:
            return self.path.relative_to(root).as_posix()
        except ValueError:
            return self.path.as_posix()


def prompt_dir(root: str | Path, group: int) -> Path:
    return Path(root) / f"{int(group):05d}"


def sample_path(root: str | Path, group: int, sample: int) -> Path:
    return prompt_dir(root, group) / "samples" / f"{int(sample):04d}.png"


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_prompt_metadata(root: str | Path, group: int, record: Mapping[str, Any]) -> Path:
    """Write ``<root>/<group>/metadata.jsonl`` (one JSON object, as GenEval) atomically.

    An existing file with a different record is an error: the folder holds another prompt set."""
    path = prompt_dir(root, group) / "metadata.jsonl"
    text = json.dumps(dict(record)) + "\n"
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = None
        if old == json.loads(text):
            return path
        raise MiroError(
            f"{path} holds the prompt record {old!r}, but this evaluation's prompt {group} is {dict(record)!r}: "
            "the output folder belongs to another prompt set or order. Use a new --out, or delete that folder."
        )
    _atomic_write_text(path, text)
    return path


def save_png(image: np.ndarray, path: str | Path) -> Path:
    """Write a uint8 ``[H, W, 3]`` array as PNG atomically (temp file + rename: a killed run leaves no half file)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    Image.fromarray(np.ascontiguousarray(image)).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def load_rgb(path: str | Path):
    """The image as an RGB PIL image, EXIF orientation applied (as GenEval's evaluation reads it)."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        return ImageOps.exif_transpose(im).convert("RGB")


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MiroError(f"{path} is not one JSON object ({exc}); GenEval's layout keeps the prompt record there.") from exc
    if not isinstance(data, dict) or not isinstance(data.get("prompt"), str):
        raise MiroError(f"{path} must hold one JSON object with a string 'prompt' (got {str(data)[:120]!r}).")
    return data


def _read_geneval(root: Path, dirs: list[Path]) -> list[ImageRecord]:
    out: list[ImageRecord] = []
    for d in sorted(dirs, key=lambda p: int(p.name)):
        meta_file = d / "metadata.jsonl"
        if not meta_file.exists():
            raise MiroError(f"{d} has no metadata.jsonl: in GenEval's layout every <index>/ folder holds its prompt "
                            "record there (one JSON object) and its images in samples/.")
        meta = _read_json_object(meta_file)
        samples = d / "samples"
        files = []
        if samples.is_dir():
            for f in samples.iterdir():
                m = _SAMPLE.match(f.name)
                if m and f.is_file():
                    files.append((int(m.group(1)), f))
        for k, f in sorted(files):
            out.append(ImageRecord(path=f, prompt=meta["prompt"], group=int(d.name), sample=k, metadata=meta))
    return out


def _read_flat(root: Path) -> list[ImageRecord]:
    images = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    entries: list[tuple[Path, str, dict[str, Any]]] = []
    meta_file = next((root / n for n in _FLAT_METADATA if (root / n).is_file()), None)
    if meta_file is not None:
        by_name = {p.name: p for p in images}
        for lineno, line in enumerate(meta_file.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise MiroError(f"{meta_file}:{lineno} is not JSON ({exc}).") from exc
            name = next((row[k] for k in _FILE_KEYS if isinstance(row.get(k), str)), None)
            if name is None or not isinstance(row.get("prompt"), str):
                raise MiroError(f"{meta_file}:{lineno} needs a 'file_name' (or 'file') and a 'prompt' string.")
            path = by_name.get(name) or (root / name)
            if not path.is_file():
                raise MiroError(f"{meta_file}:{lineno} names {name!r}, which is not an image in {root}.")
            meta = {k: v for k, v in row.items() if k not in _FILE_KEYS}
            entries.append((path, row["prompt"], meta))
    else:
        missing = []
        for p in images:
            txt, side = p.with_suffix(".txt"), p.with_suffix(".json")
            if side.is_file():
                meta = _read_json_object(side)
                entries.append((p, meta["prompt"], {k: v for k, v in meta.items() if k in ("prompt", "category",
                                                                                           "challenge", "tag")}))
            elif txt.is_file():
                entries.append((p, txt.read_text().strip(), {"prompt": txt.read_text().strip()}))
            else:
                missing.append(p.name)
        if missing:
            raise MiroError(
                f"{len(missing)} image(s) in {root} have no prompt (e.g. {', '.join(missing[:3])}). Give each image "
                "a <name>.txt or <name>.json ({\"prompt\": ...}) sidecar, a metadata.jsonl with file_name + prompt "
                "per line, or use GenEval's layout (<index>/metadata.jsonl + <index>/samples/<k>.png)."
            )
    groups: dict[str, int] = {}
    counts: dict[int, int] = {}
    out = []
    for path, prompt, meta in entries:
        g = groups.setdefault(prompt, len(groups))
        k = counts.get(g, 0)
        counts[g] = k + 1
        out.append(ImageRecord(path=path, prompt=prompt, group=g, sample=k, metadata={"prompt": prompt, **meta}))
    return out


def read_image_folder(root: str | Path) -> list[ImageRecord]:
    """Every image of ``root`` with its prompt, in GenEval's layout or the flat one (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise MiroError(f"Image folder {root} does not exist (or is not a folder).")
    dirs = [p for p in root.iterdir() if p.is_dir() and _DIGITS.match(p.name)]
    records = _read_geneval(root, dirs) if dirs else _read_flat(root)
    if not records:
        raise MiroError(f"No images found in {root}: expected GenEval's layout (<index>/metadata.jsonl + "
                        "<index>/samples/<k>.png) or images with prompts (metadata.jsonl or .txt/.json sidecars).")
    return records
