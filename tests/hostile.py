"""Crafting damaged and hostile checkpoints for the tests, as an attacker who knows the format
would: payloads that run a shell command when unpickled, and a manifest recomputed afterwards so
that the checksums alone do not catch them."""

from __future__ import annotations

import io
import json
import os
import pickle
import zlib
from pathlib import Path

import torch
from torch.distributed.checkpoint.metadata import BytesStorageMetadata

from scalegan.train.safe_load import load_metadata


class Payload:
    """Unpickling this runs ``touch MARKER`` (through os.system)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _crc(path: Path) -> int:
    return zlib.crc32(path.read_bytes())


def resign(ckpt: Path) -> None:
    """Recompute meta.json's manifest (size and CRC32 of every file) and its own checksum."""
    meta = json.loads((ckpt / "meta.json").read_text())
    files = sorted(p for p in ckpt.rglob("*") if p.is_file() and p.name != "meta.json")
    meta["files"] = {p.relative_to(ckpt).as_posix(): {"size": p.stat().st_size,
                                                       "crc32": _crc(p)} for p in files}
    meta.pop("checksum", None)
    meta["checksum"] = zlib.crc32(json.dumps(meta, sort_keys=True,
                                             separators=(",", ":")).encode())
    (ckpt / "meta.json").write_text(json.dumps(meta, indent=1))


def poison_metadata(ckpt: Path, marker: Path) -> None:
    """Put a payload object inside DCP's .metadata (a plain pickle)."""
    md = load_metadata(ckpt / ".metadata")
    md.planner_data = Payload(marker)
    (ckpt / ".metadata").write_bytes(pickle.dumps(md))
    resign(ckpt)


def poison_bytes_item(ckpt: Path, marker: Path, prefix: str = "opt_G.param_groups") -> str:
    """Replace one DCP bytes item (an optimizer setting) with a torch.save'd payload, appended
    to its .distcp file; returns the item's name."""
    md = load_metadata(ckpt / ".metadata")
    fqn = next(k for k, v in md.state_dict_metadata.items()
               if isinstance(v, BytesStorageMetadata) and k.startswith(prefix))
    index = next(i for i in md.storage_data if i.fqn == fqn)
    info = md.storage_data[index]
    buf = io.BytesIO()
    torch.save({"lr": Payload(marker)}, buf)
    file = ckpt / info.relative_path
    offset = file.stat().st_size
    with open(file, "ab") as f:
        f.write(buf.getvalue())
    info.offset, info.length = offset, len(buf.getvalue())
    (ckpt / ".metadata").write_bytes(pickle.dumps(md))
    resign(ckpt)
    return fqn


def poison_torch_file(file: Path, marker: Path) -> None:
    """Add a payload to a torch.save'd dict (DeepSpeed's engine files)."""
    state = torch.load(file, map_location="cpu", weights_only=False)
    state["extra"] = Payload(marker)
    torch.save(state, file)
