"""Reading tar shards, and index.json files, from local paths, http(s) URLs and ``pipe:`` commands.

A shard is a WebDataset tar: members ``KEY.EXT`` grouped into samples by their key. The stream
reads every shard through :func:`iter_tar_samples`, which yields the samples in tar order and
survives a source that breaks midway: a dropped connection, an HTTP error status, a body cut
short, a ``pipe:`` command exiting non-zero. It re-opens the source, waiting
``backoff * 2**k`` seconds before retry ``k``, and continues after the last sample it yielded, so
that no sample is yielded twice and none is skipped. An http(s) source is re-opened with a
``Range`` request from the first byte of the next sample when the server honours it (a 1 GB shard
dropped at 900 MB is not fetched again from its start); otherwise the samples already yielded
are read past.

A sample is yielded only once the tar shows it complete: when the header of the next sample has
been read, or, for the last one, when the end-of-archive marker has. Python's ``tarfile`` ends
its iteration silently on a stream that stops at a header (or holds a garbage header), so the
end marker is checked here: a tar without it is truncated or malformed, never taken as complete.

URLs follow WebDataset's conventions: a path or ``file://`` URL is local; ``http://`` and
``https://`` are streamed with urllib; ``pipe:CMD`` runs CMD with the shell and reads its stdout
(for example ``pipe:curl -sf https://host/shard.tar`` or ``pipe:aws s3 cp s3://b/shard.tar -``).

Measured once, in one run, on 20,000 samples of a 16x16 ``rgb`` member and a small ``json`` (a
51 MB uncompressed tar, 2 cores): ``tarfile`` in stream mode grouping members by key ~26,000
samples/s; WebDataset's ``tar_file_expander`` + ``group_by_keys`` (the same ``tarfile`` underneath,
plus a dict per member) ~22,900; ``tarfile`` reading a seekable file (not streamed) ~28,100. Stream
mode is used for every source, one code path for files, pipes and HTTP: ``iter_tar_samples``
gives ~24,600 samples/s from a local file, ~22,700 through ``pipe:cat`` and ~22,600 over HTTP from
a server in the same process. About half the time is ``tarfile`` parsing headers.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import tarfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from http.client import HTTPException

from webdataset.tariterators import base_plus_ext

log = logging.getLogger(__name__)

BUFFER_SIZE = 1 << 20
"""Bytes read from a local file, an HTTP response or a pipe at a time."""

MAX_WAIT = 60.0
"""Longest wait before a retry, in seconds."""

PERMANENT_HTTP_STATUS = frozenset({403, 404, 410})
"""HTTP statuses that re-asking will not change: not retried."""

_META_MEMBER = re.compile(r"__[^/]*__($|/)")  # WebDataset skips members named __...__

_LOCAL_PERMANENT = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


class ShardReadError(Exception):
    """A shard that could not be read to its end.

    ``url``: the shard; ``attempts``: times it was opened; ``error``: the last failure, as text;
    ``samples_read``: samples yielded before giving up (all of them complete and in order).
    """

    def __init__(self, url: str, attempts: int, error: str, samples_read: int) -> None:
        super().__init__(f"{url}: could not be read to its end after {attempts} attempt(s), "
                         f"{samples_read} sample(s) read: {error}")
        self.url, self.attempts, self.error, self.samples_read = url, attempts, error, samples_read

    def __reduce__(self):
        # Rebuilt from its fields when pickled (DataLoader workers, multiprocessing).
        return type(self), (self.url, self.attempts, self.error, self.samples_read)


class _SourceError(OSError):
    """A source that broke without the OS saying so: an HTTP body shorter than its
    Content-Length, a pipe command exiting non-zero, an unexpected Content-Range."""


class _TarFormatError(tarfile.TarError):
    """Tar data that ``tarfile`` accepts but that is truncated or malformed."""


class _DuplicateMemberError(_TarFormatError):
    """Two members of one sample with the same extension: the data itself is wrong."""


# Everything a broken source or broken tar data raises; anything else is a bug and propagates.
_READ_ERRORS = (OSError, EOFError, HTTPException, tarfile.TarError)


def _is_http(url: str) -> bool:
    return url[:8].lower().startswith(("http://", "https://"))


def is_remote(url: str) -> bool:
    """True for http(s):// URLs and ``pipe:`` commands; local paths and file:// are not remote."""
    return _is_http(url) or url.startswith("pipe:")


def _local_path(url: str) -> str:
    """The file system path of a local path or file:// URL; ValueError for other schemes."""
    if url.lower().startswith("file:"):
        parsed = urllib.parse.urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"{url}: a file:// URL must name a local file (not on host "
                             f"'{parsed.netloc}')")
        return urllib.request.url2pathname(parsed.path)
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", url)
    if scheme:
        raise ValueError(f"{url}: unsupported URL scheme '{scheme.group(1)}': give a local path, "
                         f"an http(s):// URL, or a pipe: command that writes the file to stdout "
                         f"(e.g. 'pipe:aws s3 cp {url} -')")
    return url


def join_url(base: str, name: str) -> str:
    """The URL of shard ``name`` (e.g. ``"r64/000003.tar"``) in the directory holding index.json.

    ``base`` is the URL or path of index.json, or of its directory: a last path segment ending
    in ``.json`` names the file (unless it is an existing local directory); anything else the
    directory. Works for http(s), file:// and local paths. ``name`` must be a relative path that
    stays inside that directory (no ``..``, no absolute path, no scheme): it comes from the data.
    ValueError for a ``pipe:`` base (a command has no directory) or a bad ``name``.
    """
    if base.startswith("pipe:"):
        raise ValueError(f"cannot locate shard {name!r} relative to the pipe: command {base!r}: a "
                         f"command has no directory; give index.json as a local path or an "
                         f"http(s) URL, or list the shards themselves as pipe: commands")
    parts = name.split("/")
    if (not name or name.startswith(("/", "pipe:")) or "\\" in name or "://" in name
            or any(p in ("", ".", "..") for p in parts)):
        raise ValueError(f"shard name {name!r} (relative to {base!r}) must be a relative path "
                         f"inside the index's directory, such as 'r64/000003.tar'")
    if _is_http(base) or base.lower().startswith("file:"):
        parsed = urllib.parse.urlsplit(base)
        if base.lower().startswith("file:"):
            _local_path(base)  # checks the host
        path = parsed.path
        if not path.endswith("/") and not path.rsplit("/", 1)[-1].lower().endswith(".json"):
            path += "/"
        directory = urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, path, "", ""))
        return urllib.parse.urljoin(directory, urllib.parse.quote(name))
    base_path = _local_path(base)
    if base_path.lower().endswith(".json") and not os.path.isdir(base_path):
        base_path = os.path.dirname(base_path)
    return os.path.join(base_path, *parts)


# ---------------------------------------------------------------------------------------- sources


class _HTTPBody(io.RawIOBase):
    """An HTTP response body that ends like a file where the connection broke, and keeps the
    failure in ``failure``: a reset, a timeout, or a close before Content-Length bytes (which
    http.client reports as a plain end).

    Ending there, rather than raising, lets every byte received reach the tar reader (an error
    raised mid-read would lose what the buffered readers have gathered: ``readinto`` of a large
    buffer waits to fill it), so every sample received whole is yielded; the caller then raises
    ``failure``.
    """

    def __init__(self, response) -> None:
        super().__init__()
        self.response = response
        length = response.headers.get("Content-Length")
        self.length = int(length) if length and length.isdigit() else None
        self.received = 0
        self.failure: BaseException | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.failure is not None:
            return 0
        try:  # one receive at a time: what arrived is returned before a timeout or a reset
            data = self.response.read1(len(buffer))
        except (OSError, HTTPException) as exc:
            self.failure = exc
            return 0
        n = len(data)
        buffer[:n] = data
        self.received += n
        if n == 0 and len(buffer) and self.length is not None and self.received < self.length:
            self.failure = _SourceError(f"the connection closed after {self.received} of "
                                        f"{self.length} bytes")
        return n

    def close(self) -> None:
        self.response.close()
        super().close()


class _Source:
    """An opened shard: ``reader`` (buffered, binary) starts at byte ``offset`` of the shard.

    ``finish()`` checks that a source whose data was read to the end ended well: an HTTP body
    of its full length, a pipe command exiting with status 0. ``check_broken()``, after tar data
    that ended early or garbled, raises the source's own failure if it had one (a connection
    reset, timed out or closed midway, a command that failed): it says more than the tar error,
    and is retried even where a tar error would not be.
    ``close()`` releases the source, killing a pipe command that is still running.
    """

    def __init__(self, reader, offset: int = 0, *, body: _HTTPBody | None = None,
                 process: subprocess.Popen | None = None) -> None:
        self.reader, self.offset, self.body, self.process = reader, offset, body, process

    def finish(self) -> None:
        if self.body is not None and self.body.failure is not None:
            raise self.body.failure
        if self.process is not None:
            # Read what follows the end-of-archive marker (padding), so that the command can exit.
            while self.reader.read(BUFFER_SIZE):
                pass
            self._check_status(self.process.wait())

    def check_broken(self) -> None:
        if self.body is not None and self.body.failure is not None:
            raise self.body.failure
        if self.process is not None:
            try:  # the tar data ended or broke: a command that failed has exited or soon will
                self._check_status(self.process.wait(timeout=1.0))
            except subprocess.TimeoutExpired:
                pass

    @staticmethod
    def _check_status(status: int) -> None:
        if status < 0:
            raise _SourceError(f"the command was killed by signal {-status}")
        if status > 0:
            raise _SourceError(f"the command exited with status {status}")

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            try:  # the whole process group: the shell and what it started
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.reader.close()
        if self.process is not None:
            self.process.wait()

    def __enter__(self) -> _Source:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _log_stderr(url: str, stream) -> None:
    with stream:
        for line in stream:
            log.warning("%s: %s", url, line.decode(errors="replace").rstrip())


def _open(url: str, offset: int, timeout: float) -> _Source:
    """Open ``url`` at byte ``offset`` if the source can seek there (local files; http(s) servers
    that honour Range), else at byte 0; the returned source says which."""
    if url.startswith("pipe:"):
        # The command's stderr comes back through a pipe and is logged: a command orphaned
        # when its reader is killed then holds none of the training process's files open.
        process = subprocess.Popen(url[len("pipe:"):], shell=True, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   bufsize=BUFFER_SIZE, start_new_session=True)
        threading.Thread(target=_log_stderr, args=(url, process.stderr), daemon=True).start()
        return _Source(process.stdout, 0, process=process)
    if _is_http(url):
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                          timeout=timeout)
        try:
            start = 0
            if offset and response.status == 206:
                content_range = response.headers.get("Content-Range", "")
                found = re.match(r"bytes (\d+)-", content_range)
                start = int(found.group(1)) if found else -1
                if start != offset:
                    raise _SourceError(f"asked for bytes {offset}- and got Content-Range "
                                       f"{content_range!r}")
            elif response.status != 200:
                raise _SourceError(f"unexpected HTTP status {response.status}")
            body = _HTTPBody(response)
            return _Source(io.BufferedReader(body, BUFFER_SIZE), start, body=body)
        except BaseException:
            response.close()
            raise
    reader = open(_local_path(url), "rb", buffering=BUFFER_SIZE)
    try:
        if offset:
            reader.seek(offset)
    except BaseException:
        reader.close()
        raise
    return _Source(reader, offset)


# ------------------------------------------------------------------------------------ tar reading


class _TarInfo(tarfile.TarInfo):
    """Records on its TarFile the header error that ended the iteration (``tarfile`` returns
    None for an end-of-archive block, a missing or cut header and a garbage header alike)."""

    @classmethod
    def fromtarfile(cls, tar):
        try:
            return super().fromtarfile(tar)
        except tarfile.HeaderError as exc:
            tar.header_error = exc
            raise


class _TarFile(tarfile.TarFile):
    tarinfo = _TarInfo
    header_error: Exception | None = None


def _tar_samples(reader, url: str, offset: int, first_index: int,
                 skip_below: int) -> Iterator[tuple[dict | None, int, int | None]]:
    """The samples of the tar data in ``reader``, numbered from ``first_index``, as
    ``(sample, index of the next sample, byte offset of the next sample or None)``.

    ``offset`` is the shard byte where ``reader`` starts; the next sample's offset is None when
    unknown (the last sample, or compressed data whose offsets are not the shard's). Samples
    numbered below ``skip_below`` are read past: ``sample`` is None and no member is extracted.
    Raises a ``tarfile.TarError`` for tar data that is malformed or ends early; the sample being
    read then is not yielded (it may lack members).
    """
    if reader.peek(6)[:6].startswith(_COMPRESSED_MAGIC):
        yield from _tarfile_samples(reader, url, offset, first_index, skip_below)
    else:
        yield from _plain_tar_samples(reader, url, offset, first_index, skip_below)


def _tarfile_samples(reader, url: str, offset: int, first_index: int,
                     skip_below: int) -> Iterator[tuple[dict | None, int, int | None]]:
    """``_tar_samples`` through ``tarfile``'s stream mode: compressed tar data."""
    tar = _TarFile.open(fileobj=reader, mode="r|*")
    offsets_known = getattr(tar.fileobj, "comptype", None) == "tar"  # uncompressed
    key, sample, index = None, None, first_index - 1
    while (info := tar.next()) is not None:
        tar.members.clear()  # stream mode would keep every TarInfo of the shard
        name = info.name
        if not info.isreg() or _META_MEMBER.match(name):
            continue
        prefix, ext = base_plus_ext(name)
        if prefix is None:
            continue
        if prefix != key:
            if key is not None:
                yield sample, index + 1, (offset + info.offset if offsets_known else None)
            key, index = prefix, index + 1
            sample = ({"__key__": prefix, "__url__": url, "__index__": index}
                      if index >= skip_below else None)
        if sample is not None:
            ext = ext.lower()
            if ext in sample:
                raise _DuplicateMemberError(f"sample {prefix!r} has a second '{ext}' member "
                                            f"({name})")
            sample[ext] = tar.extractfile(info).read()
    if not isinstance(tar.header_error, tarfile.EOFHeaderError):
        at = offset + tar.offset if offsets_known else None
        where = f" at byte {at}" if at is not None else ""
        if isinstance(tar.header_error, tarfile.InvalidHeaderError):
            raise _TarFormatError(f"invalid tar header{where} ({tar.header_error})")
        raise _TarFormatError(f"the tar data ends{where} without an end-of-archive marker "
                              f"(truncated)")
    if key is not None:
        yield sample, index + 1, None


_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ")
_ZERO_BLOCK = bytes(512)
_REGULAR = frozenset({b"0", b"\0", b"7"})


def _read_exactly(reader, n: int, at: int) -> bytes:
    data = reader.read(n) if n else b""
    if len(data) != n:
        raise _TarFormatError(f"the tar data ends at byte {at + len(data)} inside a member "
                              f"(truncated)")
    return data


def _header_number(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256
        return tarfile.nti(field)
    return int(field.split(b"\0", 1)[0].strip() or b"0", 8)


def _pax_fields(data: bytes) -> dict[str, str]:
    """The records ``LEN key=value\n`` of a pax extended header."""
    fields, i = {}, 0
    while i < len(data) and data[i:i + 1] != b"\0":
        space = data.index(b" ", i)
        length = int(data[i:space])
        key, _, value = data[space + 1:i + length - 1].partition(b"=")
        fields[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        i += length
    return fields


def _plain_tar_samples(reader, url: str, offset: int, first_index: int,
                       skip_below: int) -> Iterator[tuple[dict | None, int, int | None]]:
    """``_tar_samples`` for uncompressed tar data, reading the 512-byte headers directly.

    ``tarfile`` spends ~30 us on each member's header (measured), which at 16x16 images is
    most of a sample's cost; a plain POSIX (ustar/pax/GNU) stream needs only its name, size,
    type and checksum. Long names (pax ``path``, GNU ``L``) and pax sizes are honoured; other
    member types are read past."""
    pos = 0  # bytes of tar data consumed
    key, sample, index = None, None, first_index - 1
    long_name, pax_size, starts_at = None, None, None
    while True:
        header = reader.read(512)
        if len(header) < 512:
            raise _TarFormatError(f"the tar data ends at byte {offset + pos + len(header)} "
                                  f"without an end-of-archive marker (truncated)")
        if header == _ZERO_BLOCK:
            break
        try:
            stored = _header_number(header[148:156])
            size = _header_number(header[124:136])
        except ValueError:
            raise _TarFormatError(f"invalid tar header at byte {offset + pos}") from None
        if stored != sum(header) - sum(header[148:156]) + 256 and (  # 256: the field as spaces
                stored not in tarfile.calc_chksums(header)):  # some writers sum signed bytes
            raise _TarFormatError(f"invalid tar header at byte {offset + pos} (bad checksum)")
        if starts_at is None:
            starts_at = pos
        pos += 512
        kind = header[156:157]
        if kind in (b"x", b"L"):
            data = _read_exactly(reader, (size + 511) & ~511, offset + pos)[:size]
            pos += len(data) + (-size % 512)
            if kind == b"L":
                long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            else:
                fields = _pax_fields(data)
                long_name = fields.get("path", long_name)
                pax_size = int(fields["size"]) if "size" in fields else None
            continue
        if pax_size is not None:
            size = pax_size
        padded = (size + 511) & ~511
        name = long_name
        if name is None:
            name = header[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            if header[257:262] == b"ustar" and header[345] != 0:
                prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                name = f"{prefix}/{name}"
        member_at, long_name, pax_size, starts_at = starts_at, None, None, None
        prefix, ext = (base_plus_ext(name) if kind in _REGULAR and not _META_MEMBER.match(name)
                       else (None, None))
        if prefix is not None and prefix != key:
            if key is not None:
                yield sample, index + 1, offset + member_at
            key, index = prefix, index + 1
            sample = ({"__key__": prefix, "__url__": url, "__index__": index}
                      if index >= skip_below else None)
        if prefix is not None and sample is not None:
            ext = ext.lower()
            if ext in sample:
                raise _DuplicateMemberError(f"sample {prefix!r} has a second '{ext}' member "
                                            f"({name})")
            sample[ext] = _read_exactly(reader, size, offset + pos)
            _read_exactly(reader, padded - size, offset + pos + size)
        else:
            _read_exactly(reader, padded, offset + pos)
        pos += padded
    if key is not None:
        yield sample, index + 1, None


# ---------------------------------------------------------------------------------------- retries


def _check_retry_args(retries: int, backoff: float, timeout: float) -> None:
    if not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries={retries!r}: expected an integer >= 0")
    if not backoff >= 0:
        raise ValueError(f"backoff={backoff!r}: expected seconds >= 0")
    if not timeout > 0:
        raise ValueError(f"timeout={timeout!r}: expected seconds > 0")


def _is_permanent(exc: BaseException, local: bool) -> bool:
    """Whether re-reading cannot help: an HTTP 403/404/410, a local file that is missing or
    whose tar data is bad (re-reading gives the same bytes), a sample with duplicate members."""
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code in PERMANENT_HTTP_STATUS
    if isinstance(exc, _DuplicateMemberError):
        return True
    return local and isinstance(exc, (*_LOCAL_PERMANENT, tarfile.TarError, EOFError))


def _give_up_or_wait(url: str, exc: BaseException, attempts: int, *, retries: int,
                     backoff: float, sleep: Callable[[float], object], log_retry: bool,
                     samples_read: int) -> None:
    """After failed attempt number ``attempts``: raise ShardReadError when the failure is
    permanent or the retries are spent, else log and wait ``backoff * 2**(attempts - 1)`` s."""
    if isinstance(exc, urllib.error.HTTPError):
        exc.close()  # holds the error response's connection open
    error = f"{type(exc).__name__}: {exc}"
    if attempts > retries or _is_permanent(exc, not is_remote(url)):
        raise ShardReadError(url, attempts, error, samples_read) from exc
    wait = min(backoff * 2 ** (attempts - 1), MAX_WAIT)
    if log_retry:
        log.warning("%s: read failed (attempt %d of %d): %s; retrying in %.3g s",
                    url, attempts, retries + 1, error, wait)
    sleep(wait)


def iter_tar_samples(url: str, *, retries: int = 5, backoff: float = 1.0, timeout: float = 60.0,
                     start: int = 0, sleep: Callable[[float], object] = time.sleep,
                     log_retry: bool = True) -> Iterator[dict]:
    """The samples of one tar shard in tar order, from sample number ``start`` on.

    A sample is a dict: ``"__key__"`` (str), ``"__url__"`` (``url``), ``"__index__"`` (its
    0-based position in the shard) and one ``bytes`` entry per member of that key, named by the
    member's extension after the first dot of its basename, lower-cased (WebDataset's
    convention: ``000001.png`` -> ``"png"``, ``a/000001.seg.png`` -> key ``a/000001``,
    ``"seg.png"``). Consecutive members with the same key form a sample; members that are not
    regular files, have no extension or are named ``__...__`` are left out, as WebDataset does.
    Samples before ``start`` are read past without being returned (none if the shard is shorter).

    ``url`` is a local path or file:// URL, an http(s) URL (``timeout`` seconds per socket
    operation) or ``pipe:CMD`` (run with the shell; a non-zero exit status is a failure). A
    failure to open or a read that breaks midway is retried up to ``retries`` times in all,
    after ``backoff * 2**k`` seconds (at most 60) before retry ``k``, each logged as a warning
    unless not ``log_retry``; reading continues after the last sample yielded. Not retried: a
    local file that is missing or whose tar data is truncated or malformed, an HTTP 403, 404 or
    410, a sample with two members of one extension. Then, or when the retries are spent,
    raises :class:`ShardReadError` after yielding every sample that could be read.
    ``sleep`` waits (tests pass a recorder).
    """
    _check_retry_args(retries, backoff, timeout)
    if not isinstance(start, int) or start < 0:
        raise ValueError(f"start={start!r}: expected an integer >= 0")
    if not is_remote(url):
        _local_path(url)  # an unsupported scheme is an error in the URL, not a read failure
    next_index, yielded = start, 0
    resume_offset, resume_index = 0, 0  # sample resume_index's first header is at resume_offset
    attempts = 0
    while True:
        attempts += 1
        try:
            with _open(url, resume_offset, timeout) as source:
                first = resume_index if source.offset == resume_offset else 0
                try:
                    for sample, following, following_offset in _tar_samples(
                            source.reader, url, source.offset, first, next_index):
                        if following_offset is not None:
                            resume_offset, resume_index = following_offset, following
                        if sample is not None:
                            next_index, yielded = following, yielded + 1
                            yield sample
                except (tarfile.TarError, EOFError):
                    source.check_broken()
                    raise
                source.finish()
            return
        except _READ_ERRORS as exc:
            _give_up_or_wait(url, exc, attempts, retries=retries, backoff=backoff, sleep=sleep,
                             log_retry=log_retry, samples_read=yielded)


def read_json(url: str, *, retries: int = 5, backoff: float = 1.0, timeout: float = 60.0,
              sleep: Callable[[float], object] = time.sleep) -> object:
    """The JSON document at a local path, an http(s) URL or ``pipe:CMD`` (for an index.json
    given as a URL), read with the retries of :func:`iter_tar_samples` (ShardReadError when they
    are spent); ValueError naming ``url`` if what was read is not UTF-8 JSON."""
    _check_retry_args(retries, backoff, timeout)
    if not is_remote(url):
        _local_path(url)
    attempts = 0
    while True:
        attempts += 1
        try:
            with _open(url, 0, timeout) as source:
                data = source.reader.read()
                source.finish()
            break
        except _READ_ERRORS as exc:
            _give_up_or_wait(url, exc, attempts, retries=retries, backoff=backoff, sleep=sleep,
                             log_retry=True, samples_read=0)
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{url}: not valid JSON ({exc})") from None
