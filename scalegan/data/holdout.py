"""The held-out set of a pack: which images ``scalegan pack --holdout N`` keeps out of training,
and where a pack's held-out set is.

The held-out images are the N sources with the smallest SHA-256 of their source name (the
``"source"`` string in each sample's JSON, UTF-8 encoded). The choice depends on the names only,
not on the order in which files are found nor on the number of workers, so a source stays on its
side of the split as long as its name is kept; adding images moves only those whose hash falls
among the smallest. The set is written as a complete pack of its own in ``OUT/holdout/``, named
by ``OUT/index.json``'s ``"holdout": {"dir": "holdout", "num_samples": N}``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

__all__ = ["HOLDOUT_DIR", "count_or_fraction", "held_out", "holdout_shards"]

HOLDOUT_DIR = "holdout"
"""The held-out pack's directory inside OUT."""


def count_or_fraction(text: str) -> int | float:
    """``--holdout`` as given on the command line: ``"20"`` -> 20 (a count of images), ``"0.2"``
    -> 0.2 (a fraction of them). ValueError for text that is neither; the range is checked by
    the packer, which knows the number of images."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def held_out(sources: Iterable[str], count: int) -> frozenset[str]:
    """The ``count`` names of ``sources`` with the smallest SHA-256 of their UTF-8 bytes.

    Distinct names do not tie (a tie would be a SHA-256 collision); the name itself breaks one
    anyway, so the result never depends on the order of ``sources``.
    """
    ranked = sorted(sources, key=lambda s: (hashlib.sha256(s.encode("utf-8")).digest(), s))
    return frozenset(ranked[:count])


def holdout_shards(shards: str) -> str | None:
    """The held-out pack of a ``data.shards`` spec that is a local pack directory (or its
    ``index.json``) whose index names one, as a path string (``"OUT/holdout"``).

    None for every other spec: brace patterns, URLs, ``pipe:`` commands, comma-separated lists,
    a directory without ``index.json``, an index that is not readable JSON or names no held-out
    set, or one whose ``"dir"`` is not a plain relative path inside the pack. The held-out
    directory is not checked here; ``open_shards`` says what is wrong with it when it is read.
    """
    spec = str(shards).strip()
    # URLs and pipe: commands are never local packs (checked by hand: this module is imported
    # when the command line is parsed, and the shard readers pull in webdataset)
    if not spec or "," in spec or "://" in spec or spec.startswith("pipe:"):
        return None
    path = Path(spec)
    if path.is_dir():
        index_file = path / "index.json"
    elif path.name == "index.json":
        index_file, path = path, path.parent
    else:
        return None
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    entry = index.get("holdout") if isinstance(index, dict) else None
    directory = entry.get("dir") if isinstance(entry, dict) else None
    if not isinstance(directory, str) or not directory:
        return None
    relative = PurePosixPath(directory)
    if relative.is_absolute() or ".." in relative.parts or "\\" in directory:
        return None
    return str(path / relative)
