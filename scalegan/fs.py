"""Small file-system helpers shared by the packer and the checkpoints."""

from __future__ import annotations

import errno
import os
from pathlib import Path


def fsync_dir(path: str | os.PathLike) -> None:
    """Make the entries of directory ``path`` durable (renames and new files in it)."""
    if os.name != "posix":
        return
    fd = os.open(Path(path), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:  # a few filesystems cannot fsync a directory
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)
