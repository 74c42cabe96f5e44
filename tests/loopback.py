"""An OpenAI-compatible server on the loopback interface for tests (fspo-judge's scripted judge, fspo-generate's
replay of transformers): it answers each POST with what a subclass's ``respond`` returns."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class LoopbackServer:
    """A server on 127.0.0.1 (``url``: its ``/v1`` address) for the duration of a ``with`` block; each POST's JSON
    body (and Authorization header) goes to :meth:`respond`, whose (status, headers, payload, wait) is sent back
    after ``wait`` seconds (a payload of bytes as it is, else as JSON)."""

    def __init__(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, headers, payload, wait = server.respond(body, self.headers.get("Authorization", ""))
                time.sleep(wait)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    for k, v in {"Content-Type": "application/json", **headers}.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def respond(self, body: dict, auth: str) -> tuple[int, dict[str, str], Any, float]:
        raise NotImplementedError

    def __enter__(self) -> Any:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
