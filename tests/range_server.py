"""A real HTTP file server for download tests: honours Range (206 + Content-Range), records what
it was asked, and can stop mid-body (``cut_after``), holding the connection until ``release`` is
set, so a test decides when a transfer breaks instead of racing a clock."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class RangeServer:
    files: dict[str, bytes]
    port: int = 0
    ranges: list[str | None] = field(default_factory=list)  # each GET's Range header, in order
    cut_after: int | None = None  # stop the body once this many bytes of the file were sent
    ignore_range: bool = False  # a server without Range support: always 200, the whole file
    extra: bytes = b""  # bytes sent past the file (a server that sends more than it should)
    release: threading.Event = field(default_factory=threading.Event)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"


def _handler(server: RangeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            body = server.files.get(self.path.lstrip("/"))
            if body is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            wanted = self.headers.get("Range")
            server.ranges.append(wanted)
            start = 0
            if wanted and not server.ignore_range:
                start = int(wanted.removeprefix("bytes=").split("-")[0])
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            payload = body[start:] + server.extra
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if server.cut_after is not None and start < server.cut_after:
                self.wfile.write(payload[:server.cut_after - start])
                self.wfile.flush()
                server.release.wait(60)
                self.close_connection = True
                return
            self.wfile.write(payload)

    return Handler


@contextmanager
def serving(files: dict[str, bytes], **options: object) -> Iterator[RangeServer]:
    state = RangeServer(files, **options)  # type: ignore[arg-type]
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.port = int(httpd.server_address[1])
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        httpd.shutdown()
        httpd.server_close()
