"""Transfer learning: a new run starts from another run's weights (``train.init_from``).

Every network and averaged copy of the new run is read from the checkpoint's DCP entries of the
same name (``G``, ``D``, ``G_ema``, ...); the optimizers, counters, RNG and data position are
not: the new run starts at step 0 on its own data. A key of the new networks that the
checkpoint lacks, or of the checkpoint that the new networks lack, is allowed only where the
family says a transfer adds or drops it (``Family.transfer_new_keys``: the blocks of a
progressive run grown past the old resolution, or stopping below it); an added one starts from
its fresh initialisation. Anything else (a key the new networks lack, a shape
that differs, another architecture) is a TransferError naming the keys, before training starts.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from scalegan.train.checkpoint import CheckpointError, load_dcp, resolve_checkpoint, verify
from scalegan.train.safe_load import load_metadata

log = logging.getLogger(__name__)


class TransferError(ValueError):
    """``train.init_from`` cannot initialise this run's networks; names the keys."""


def _listing(keys: list[str], limit: int = 6) -> str:
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def init_from(source: str | Path, family, nets: Mapping[str, nn.Module],
              ema: Mapping[str, nn.Module], verbose: bool = True) -> Path:
    """Load the weights of the checkpoint ``source`` (a checkpoint, or a run directory: its
    newest) into ``nets`` and ``ema`` (plain, unwrapped modules) in place; returns the
    checkpoint's path. TransferError when the checkpoint does not fit, CheckpointError when it
    cannot be read."""
    try:
        path = resolve_checkpoint(source)
    except FileNotFoundError as e:
        raise TransferError(f"train.init_from={str(source)!r}: {e}") from None
    meta = verify(path, scope="dcp")
    saved = meta["config"]
    family.check_transfer(saved.get("model") or {}, str(path))
    try:
        md = load_metadata(path / ".metadata")
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    stored = {key: tuple(item.size) for key, item in md.state_dict_metadata.items()
              if hasattr(item, "size")}
    targets = {**nets, **{f"{name}_ema": net for name, net in ema.items()}}
    wanted: dict[str, dict[str, torch.Tensor]] = {}
    problems = []
    for name, net in targets.items():
        own = net.state_dict()
        have = {k[len(name) + 1:]: shape for k, shape in stored.items()
                if k.startswith(name + ".")}
        if not have:
            fmt = meta.get("format", "dcp")
            why = (" (its networks are in DeepSpeed's own files: init_from reads the DCP "
                   "checkpoints of ddp and fsdp runs)" if fmt == "deepspeed" and
                   not name.endswith("_ema") else "")
            problems.append(f"{name}: not in the checkpoint{why}")
            continue
        missing = sorted(set(own) - set(have))
        new = family.transfer_new_keys(name.removesuffix("_ema"), missing)
        missing = [k for k in missing if k not in new]
        unexpected = sorted(set(have) - set(own))
        dropped = family.transfer_new_keys(name.removesuffix("_ema"), unexpected)
        unexpected = [k for k in unexpected if k not in dropped]
        shapes = sorted(f"{k} {list(have[k])} -> {list(own[k].shape)}" for k in own
                        if k in have and tuple(own[k].shape) != have[k])
        for what, keys in (("missing from the checkpoint", missing),
                           ("in the checkpoint but not in this run's network", unexpected),
                           ("of another shape", shapes)):
            if keys:
                problems.append(f"{name} keys {what}: {_listing(keys)}")
        wanted[name] = {k: torch.empty(have[k], dtype=own[k].dtype) for k in own if k in have}
    if problems:
        raise TransferError(f"train.init_from={str(source)!r}: {path} does not fit this run's "
                            f"networks (model.arch={family.arch}): {'; '.join(problems)}")
    load_dcp(path, wanted)
    for name, state in wanted.items():
        targets[name].load_state_dict(state, strict=False)
    if verbose:
        fresh = {name: len(targets[name].state_dict()) - len(state)
                 for name, state in wanted.items()}
        log.info("initialised %s from %s%s", ", ".join(wanted), path,
                 "".join(f"; {name}: {n} tensor(s) new, from scratch"
                         for name, n in fresh.items() if n))
    return path
