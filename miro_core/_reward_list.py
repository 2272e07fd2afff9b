"""The one parser of ``--rewards`` lists, shared by ``miro score``, ``miro bin``, ``miro train`` and ``miro-run``.

Rules (the same everywhere): reward names separated by commas, each of letters, digits, ``_``, ``.`` or
``-``; no spaces, no empty items, no name twice. The keywords ``all`` (every binned reward of the store) and
``none`` (the unconditioned baseline) stand alone and only where the command accepts them.
"""

from __future__ import annotations

__all__ = ["parse_reward_list", "REWARD_NAME"]

import re

from ._errors import ConfigError

REWARD_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_KEYWORDS = ("all", "none")


def parse_reward_list(text: str | None, *, flag: str = "--rewards", allow_all: bool = False,
                      allow_none: bool = False) -> tuple[str, ...]:
    """``"a,b"`` -> ``("a", "b")``; ``"none"`` -> ``()`` and ``"all"`` -> ``("all",)`` where allowed.

    Raises :class:`ConfigError` naming the problem and the accepted form."""
    example = f"{flag} aesthetic,hpsv2"
    keywords = [k for k, ok in (("all", allow_all), ("none", allow_none)) if ok]
    also = f", or {' / '.join(repr(k) for k in keywords)} alone" if keywords else ""
    raw = "" if text is None else str(text)
    items = raw.split(",")
    if not raw.strip() or any(not REWARD_NAME.match(item) for item in items):
        bad = next((item for item in items if not REWARD_NAME.match(item)), raw)
        what = "an empty item" if not bad.strip() else f"{bad!r}, which is not a reward name"
        raise ConfigError(
            f"{flag} {raw!r} is malformed ({what}): give reward names separated by commas, with no spaces or "
            f"empty items, e.g. {example}{also} (see `miro plugins --kind rewards`)."
        )
    lowered = [item.lower() for item in items]
    for word in _KEYWORDS:
        if word in lowered:
            if word not in keywords:
                raise ConfigError(
                    f"{flag} {raw!r}: {word!r} is not accepted here; name the rewards, e.g. {example}."
                )
            if len(items) > 1:
                raise ConfigError(f"{flag} {raw!r}: {word!r} stands alone; do not combine it with reward names.")
            return () if word == "none" else ("all",)
    dup = sorted({n for n in items if items.count(n) > 1})
    if dup:
        raise ConfigError(f"{flag} lists {', '.join(dup)} more than once; give each reward once.")
    return tuple(items)
