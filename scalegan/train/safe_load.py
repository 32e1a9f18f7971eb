"""Reading checkpoint files without ever running code from them.

A pickle can name any importable callable and have the unpickler call it, so every pickled byte
scalegan reads goes through an unpickler that resolves only an allow-list of classes:

- DCP's ``.metadata`` (a plain ``pickle.load`` in torch's ``FileSystemReader``) is read by
  ``SafeFileSystemReader`` with ``MetadataUnpickler``, which knows DCP's metadata dataclasses,
  ``torch.Size``, dtypes and layouts, and nothing else;
- DCP's bytes items (the optimizers' ``param_groups``: numbers, strings, tuples), read by torch's
  default load planner with ``torch.load(weights_only=False)``, are read by ``SafeLoadPlanner`` with
  ``weights_only=True`` (tensors are already read that way by DCP);
- DeepSpeed's engine files go through ``safe_torch_load``: ``weights_only=True`` plus the three
  plain-data classes DeepSpeed's optimizer states hold.

Anything else is refused with ``UnsafeCheckpointError`` naming the file and the class.
"""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata, StorageMeta


class UnsafeCheckpointError(ValueError):
    """A checkpoint file needs a class outside the allow-list to load; names the file and class."""


def _metadata_classes() -> dict[tuple[str, str], Any]:
    from torch.distributed.checkpoint import filesystem, metadata

    allowed: dict[tuple[str, str], Any] = {}
    for name in ("Metadata", "TensorStorageMetadata", "BytesStorageMetadata",
                 "ChunkStorageMetadata", "TensorProperties", "StorageMeta", "MetadataIndex",
                 "_MEM_FORMAT_ENCODING"):
        allowed[("torch.distributed.checkpoint.metadata", name)] = getattr(metadata, name)
    allowed[("torch.distributed.checkpoint.filesystem", "_StorageInfo")] = filesystem._StorageInfo
    allowed[("torch", "Size")] = torch.Size
    allowed[("torch.serialization", "_get_layout")] = torch.serialization._get_layout
    allowed[("collections", "OrderedDict")] = __import__("collections").OrderedDict
    # StorageMeta.checkpoint_id: the path the checkpoint was saved to (a plain path object)
    allowed[("pathlib", "PosixPath")] = __import__("pathlib").PosixPath
    allowed[("pathlib", "WindowsPath")] = __import__("pathlib").PureWindowsPath
    for name in dir(torch):
        value = getattr(torch, name, None)
        if isinstance(value, (torch.dtype, torch.layout, torch.memory_format)):
            allowed[("torch", name)] = value
    return allowed


class MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP metadata; any class outside ``_metadata_classes`` raises
    ``UnsafeCheckpointError`` before it is imported or called."""

    def __init__(self, file, source: str):
        super().__init__(file)
        self.source = source
        self.allowed = _metadata_classes()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"{self.source} asks to load {module}.{name}, which DCP metadata never holds: "
                f"refusing to load it (a checkpoint may only hold tensors and plain data)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeCheckpointError(f"{self.source} holds a persistent reference: refusing it")


def load_metadata(path: str | Path) -> Metadata:
    """DCP's ``.metadata`` at ``path`` through ``MetadataUnpickler``."""
    path = Path(path)
    with open(path, "rb") as f:
        try:
            md = MetadataUnpickler(f, str(path)).load()
        except UnsafeCheckpointError:
            raise
        except Exception as e:  # truncated or random bytes: damaged, not unsafe
            raise ValueError(f"{path} is not readable DCP metadata ({type(e).__name__}: "
                             f"{e})") from None
    if not isinstance(md, Metadata):
        raise ValueError(f"{path} holds a {type(md).__name__}, not DCP metadata")
    return md


def check_items(directory: str | Path) -> Metadata:
    """Read a DCP checkpoint's metadata and every bytes item in it through the allow-lists
    (bytes items are small: the optimizers' settings), and check that every item lies in a file
    of the checkpoint directory. Raises UnsafeCheckpointError or ValueError naming the file; no
    tensor is read."""
    directory = Path(directory)
    md = load_metadata(directory / ".metadata")
    byte_items = {fqn for fqn, item in md.state_dict_metadata.items()
                  if isinstance(item, BytesStorageMetadata)}
    for index, info in md.storage_data.items():
        name = Path(str(getattr(info, "relative_path", "")))
        if name.name != str(name) or name.name in ("", ".", ".."):
            raise ValueError(f"{directory / '.metadata'} places an item outside the checkpoint "
                             f"directory ({str(name)!r}): refusing it")
        if index.fqn not in byte_items:
            continue
        with open(directory / name, "rb") as f:
            f.seek(info.offset)
            data = f.read(info.length)
        if len(data) != info.length:
            raise ValueError(f"{directory / name} ends before item {index.fqn}")
        try:
            torch.load(io.BytesIO(data), weights_only=True)
        except pickle.UnpicklingError as e:
            raise _refusal(f"{directory / name} (item {index.fqn})", e) from None
        except Exception as e:  # noqa: BLE001 - damaged bytes, not a refusal
            raise ValueError(f"{directory / name}: item {index.fqn} cannot be read "
                             f"({type(e).__name__}: {e})") from None
    return md


class SafeFileSystemReader(FileSystemReader):
    """torch's ``FileSystemReader`` with the metadata read by ``MetadataUnpickler``."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        md = load_metadata(self._get_metadata_path(kwargs.get("rank")))
        if getattr(md, "storage_meta", None) is None:
            md.storage_meta = StorageMeta()
        md.storage_meta.load_id = self.load_id
        return md


_UNSUPPORTED = re.compile(r"Unsupported global: GLOBAL ([\w.]+)|unsupported global ([\w.]+)",
                          re.IGNORECASE)


def _refusal(source: str, error: Exception) -> UnsafeCheckpointError:
    """torch's weights-only refusal -> a one-line error naming the file and the class."""
    match = _UNSUPPORTED.search(str(error))
    what = next((g for g in match.groups() if g), None) if match else None
    detail = f"asks to load {what}" if what else f"is not plain data ({str(error).splitlines()[0]})"
    return UnsafeCheckpointError(f"{source} {detail}: refusing to load it (a checkpoint may only "
                                 f"hold tensors and plain data)")


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's default load planner with bytes items read by ``torch.load(weights_only=True)``."""

    def __init__(self, source: str = "checkpoint", **kwargs: Any):
        super().__init__(**kwargs)
        self.source = source

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        try:
            obj = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as e:
            raise _refusal(f"{self.source} (item {read_item.dest_index.fqn})", e) from None
        fqn = read_item.dest_index.fqn
        if self.flatten_state_dict:  # as DefaultLoadPlanner.load_bytes places the object
            set_element(self.original_state_dict, self.mappings[fqn], obj)
        else:
            self.state_dict[fqn] = obj


def _deepspeed_globals() -> list:
    """The plain-data classes DeepSpeed's ZeRO optimizer states pickle (beside tensors)."""
    out = []
    for module, name in (("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
                         ("deepspeed.runtime.zero.config", "ZeroStageEnum"),
                         ("deepspeed.utils.tensor_fragment", "fragment_address")):
        try:
            out.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return out


def safe_torch_load(path: str | Path, map_location: Any = None) -> Any:
    """``torch.load`` of a DeepSpeed checkpoint file with ``weights_only=True``; refusals raise
    ``UnsafeCheckpointError`` naming the file and the class."""
    with torch.serialization.safe_globals(_deepspeed_globals()):
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as e:
            raise _refusal(str(path), e) from None
