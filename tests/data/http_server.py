"""A local HTTP file server for tests, with failures on demand.

``serve(directory, ...)`` serves the files under ``directory`` on 127.0.0.1 (a free port) from a
thread, and yields ``(base_url, request_log)``; the server and its thread stop at exit. Failures
are chosen per file name (the path relative to ``directory``, e.g. ``"r64/000000.tar"``):

* ``drop_once[name] = n``: the first GET of ``name`` sends the headers (the full Content-Length)
  and only the first ``n`` bytes of the body, then closes the connection;
* ``always_fail``: every GET sends the headers and the body only up to the file's middle byte,
  then closes the connection;
* ``status[name] = code``: every GET is answered with that HTTP status and no file;
* ``stall[name] = n``: every GET sends the headers and the body up to the file's byte ``n``,
  then nothing more, holding the connection open until the server stops (for client timeouts).

A dropped connection is closed in order (FIN: the client gets exactly the bytes sent, then an
end before Content-Length), or with ``reset=True`` reset (RST, SO_LINGER 0: the client gets
ECONNRESET, and Linux discards what it had received but not yet read).

``Range: bytes=N-`` is honoured (206 with Content-Range) unless ``ranges=False``; ``always_fail``
and ``stall`` then count bytes of the file, ``drop_once`` bytes of the response.
``request_log`` gets one ``(path, outcome)`` per request, e.g. ``("/000000.tar", "200")``,
``("/000000.tar", "206 from 1536")``, ``("/000000.tar", "200 dropped after 2000 bytes")``,
``("/000000.tar", "404")``, appended before the response goes out, so a client that has its
answer finds the request logged.
"""

from __future__ import annotations

import contextlib
import http.server
import re
import socket
import struct
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def serve(directory: str | Path, *, drop_once: dict[str, int] | None = None,
          always_fail: set[str] | None = None, status: dict[str, int] | None = None,
          stall: dict[str, int] | None = None, ranges: bool = True, reset: bool = False,
          ) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """Serve ``directory`` over HTTP until the block ends; yields (base URL ending in '/', the
    request log). See the module docstring for the failure options."""
    root = Path(directory).resolve()
    drop_once, always_fail, status = dict(drop_once or {}), set(always_fail or ()), status or {}
    stall = stall or {}
    stopping = threading.Event()
    request_log: list[tuple[str, str]] = []
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format, *args):  # noqa: A002 - the base class's signature
            pass  # the request log is enough; keep pytest's output clean

        def do_GET(self) -> None:
            path = urllib.parse.urlsplit(self.path).path
            name = urllib.parse.unquote(path).lstrip("/")
            file = (root / name).resolve()
            if name in status:
                request_log.append((path, str(status[name])))
                self.send_error(status[name])
                return
            if not file.is_file() or root not in file.parents:
                request_log.append((path, "404"))
                self.send_error(404)
                return
            data = file.read_bytes()
            start, code = 0, 200
            wanted = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
            if ranges and wanted and int(wanted.group(1)) < len(data):
                start, code = int(wanted.group(1)), 206
            body = data[start:]
            with lock:
                drop = drop_once.pop(name, None)
            limit = None
            if name in always_fail:
                limit = max(0, len(data) // 2 - start)
            elif drop is not None:
                limit = drop
            self.send_response(code)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            if code == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            outcome = f"{code} from {start}" if code == 206 else str(code)
            if name in stall:
                sent = max(0, stall[name] - start)
                request_log.append((path, f"{outcome} stalled after {sent} bytes"))
                self.wfile.write(body[:sent])
                stopping.wait()
                return
            if limit is None:
                request_log.append((path, outcome))
                self.wfile.write(body)
                return
            request_log.append((path, f"{outcome} dropped after {min(limit, len(body))} bytes"))
            self.wfile.write(body[:limit])
            if reset:
                self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                        struct.pack("ii", 1, 0))
            else:
                self.request.shutdown(socket.SHUT_WR)
            self.request.close()
            self.close_connection = True

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.handle_error = lambda request, client_address: None  # clients that hang up early
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                              name="test-http-server", daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host}:{port}/", request_log
    finally:
        stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
