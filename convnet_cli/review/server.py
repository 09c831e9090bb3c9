"""The review page on 127.0.0.1 (docs/REVIEW.md), on the standard library's ThreadingHTTPServer.

Routes: `GET /` the page, with the verdicts on disk at that moment (so a reload resumes); `GET /clips/…`,
`/listen/…`, `/images/…` the item files (byte ranges served, for seeking); `POST /api/verdict` {"id", "verdict"}
saves one verdict (VerdictStore.record: both files written before the reply). Anything else is 404.

It listens on 127.0.0.1 only, never on another interface. A request whose Host header is not this address
(or localhost) is refused, so a web page elsewhere cannot reach the server through a name that resolves to
127.0.0.1 (DNS rebinding), and a POST that carries another page's Origin is refused, so another site open in
the browser cannot mark items.
"""
from __future__ import annotations

import errno
import json
import os
import re
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from convnet_cli.errors import ConfigError, ConvnetError
from convnet_cli.ingest.annotations import VERDICTS

HOST = "127.0.0.1"
DEFAULT_PORT = 8765
MAX_BODY = 4096
_MEDIA = re.compile(r"^/(clips|listen|images)/([A-Za-z0-9_-][A-Za-z0-9_.-]*)$")   # one file name, never '..'
_TYPES = {".wav": "audio/wav", ".png": "image/png"}


class ReviewServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, review, port: int = DEFAULT_PORT, on_request=None):
        """review: a build.Review (review_dir, store, page()); on_request(method, path, client, host): called for
        every request (the tests record them)."""
        self.review, self.on_request = review, on_request
        try:
            super().__init__((HOST, int(port)), _Handler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"--port {port}: in use (another convnet review?); give another --port, or --port 0 "
                                  "for any free one") from None
            raise ConfigError(f"--port {port}: cannot listen on {HOST}:{port} ({exc.strerror or exc}); give another "
                              "--port") from None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server_address[1]}/"


class _Handler(BaseHTTPRequestHandler):
    server_version = "convnet-review"
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):       # quiet: the terminal shows what review prints, not a log
        pass

    def _seen(self):
        hook = self.server.on_request
        if hook is not None:
            hook(self.command, self.path, self.client_address[0], self.headers.get("Host", ""))

    def _host_ok(self) -> bool:
        port = self.server.server_address[1]
        return self.headers.get("Host", "") in (f"{HOST}:{port}", f"localhost:{port}")

    def _send(self, code, body: bytes, ctype, extra=()):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, code, obj):
        self._send(code, json.dumps(obj).encode("utf-8"), "application/json")

    def do_GET(self):
        self._seen()
        if not self._host_ok():
            return self._send(403, b"forbidden: open the page at the address convnet review printed\n", "text/plain")
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            body = self.server.review.page("server").encode("utf-8")
            return self._send(200, body, "text/html; charset=utf-8",
                              [("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline'; "
                                "style-src 'unsafe-inline'; img-src 'self' data:; media-src 'self'")])
        m = _MEDIA.match(path)
        if not m:
            return self._send(404, b"not found\n", "text/plain")
        self._file(os.path.join(self.server.review.review_dir, m.group(1), m.group(2)))

    do_HEAD = do_GET

    def _file(self, path):
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            return self._send(404, b"not found\n", "text/plain")
        ctype = _TYPES.get(os.path.splitext(path)[1].lower(), "application/octet-stream")
        rng = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "").strip())
        if rng and (rng.group(1) or rng.group(2)) and data:
            a, b = rng.group(1), rng.group(2)
            start = int(a) if a else max(0, len(data) - int(b))
            end = min(len(data) - 1, int(b)) if a and b else len(data) - 1
            if start > end or start >= len(data):
                return self._send(416, b"", ctype, [("Content-Range", f"bytes */{len(data)}")])
            return self._send(206, data[start:end + 1], ctype, [("Accept-Ranges", "bytes"),
                                                                ("Content-Range", f"bytes {start}-{end}/{len(data)}")])
        self._send(200, data, ctype, [("Accept-Ranges", "bytes")])

    def do_POST(self):
        self._seen()
        if not self._host_ok():
            return self._json(403, {"error": "forbidden host"})
        port = self.server.server_address[1]
        origin = self.headers.get("Origin")
        if origin is not None and origin not in (f"http://{HOST}:{port}", f"http://localhost:{port}"):
            return self._json(403, {"error": "forbidden origin"})
        if self.path != "/api/verdict":
            return self._json(404, {"error": "not found"})
        try:
            n = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            n = -1
        if not 0 < n <= MAX_BODY:
            return self._json(400, {"error": "a JSON body {id, verdict} is needed"})
        try:
            body = json.loads(self.rfile.read(n).decode("utf-8"))
            item, verdict = int(body["id"]), str(body["verdict"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            return self._json(400, {"error": "a JSON body {id, verdict} is needed"})
        store = self.server.review.store
        if item not in store.ids or verdict not in VERDICTS:
            return self._json(400, {"error": f"item {item} is not in review.csv" if item not in store.ids
                                    else f"'{verdict}' is not a verdict; use {', '.join(VERDICTS)}"})
        try:
            verdicts = store.record(item, verdict)
        except ConvnetError as exc:        # a damaged verdicts.csv, a full disk: the page shows it, nothing is lost
            return self._json(500, {"error": str(exc)})
        self._json(200, {"ok": True, "reviewed": len(verdicts)})


def serve(review, port: int = DEFAULT_PORT, echo=print, on_request=None):
    """Serve until Ctrl-C (KeyboardInterrupt goes to the caller, after the socket is closed)."""
    server = ReviewServer(review, port, on_request)
    echo(f"serving the review page at {server.url} (127.0.0.1 only); press Ctrl-C to stop")
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
