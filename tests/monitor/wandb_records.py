"""Read the records of a W&B offline run file (``run-<id>.wandb``) without the network.

The file is a LevelDB-style log: a 7-byte header (":W&B", magic 0xBEE1, version 0), then 32 KiB
blocks of chunks, each with a 7-byte header (crc32c u32, length u16, type u8: 1 full, 2 first,
3 middle, 4 last); the payloads are serialized ``wandb.proto.wandb_internal_pb2.Record``s.
"""

from __future__ import annotations

import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32768
HEADER = 7


def read_records(path: str | Path) -> list[pb.Record]:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, records, pending = HEADER, [], b""
    while pos + HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < HEADER:  # block trailer padding
            pos += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0 and length == 0:
            break
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        pending += chunk
        if kind in (1, 4):  # full record, or the last chunk of one
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def history_keys(path: str | Path) -> set[str]:
    """Every key logged with ``run.log`` in the run file."""
    keys = set()
    for r in read_records(path):
        if r.WhichOneof("record_type") == "history":
            keys |= {it.key or "/".join(it.nested_key) for it in r.history.item}
    return keys
