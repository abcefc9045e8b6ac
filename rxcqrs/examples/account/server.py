"""BalancesServer: ``GET /account/balances/{checking|mm|savings}/GetAccountBalances?id=N``.

Ids 1-3 answer ``{"id": N, "balances": [...]}`` as JSON; any other id is a 400 in plain text; an unknown
path is a 404. A real HTTP server (``http.server``) on 127.0.0.1, port 0 by default (the OS chooses).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

__all__ = ["BalancesServer", "BALANCES", "KINDS"]

KINDS = ("checking", "mm", "savings")
BALANCES: dict[str, dict[int, list[float]]] = {
    "checking": {1: [1000.1], 2: [2000.2, 2222.2], 3: [3000.3, 3333.3, 3333.33]},
    "mm": {1: [11000.1], 2: [22000.2, 22200.22], 3: [33000.3, 33300.33, 33330.33]},
    "savings": {1: [111000.1], 2: [222000.2, 222200.22], 3: [333000.3, 333300.33, 333330.33]},
}


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *_args: Any) -> None:  # quiet
        return None

    def _send(self, status: int, content_type: str, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", f"{content_type}; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        url = urlparse(self.path)
        parts = url.path.strip("/").split("/")
        if len(parts) != 4 or parts[:2] != ["account", "balances"] or parts[2] not in KINDS \
                or parts[3] != "GetAccountBalances":
            self._send(404, "text/plain", f"no such resource {url.path}")
            return
        raw = parse_qs(url.query).get("id", [""])[0]
        if not raw.isdigit() or int(raw) not in BALANCES[parts[2]]:
            self._send(400, "text/plain", f"unknown account id {raw!r}")
            return
        account = int(raw)
        self._send(200, "application/json", json.dumps({"id": account, "balances": BALANCES[parts[2]][account]}))


class BalancesServer:
    """Start with ``with BalancesServer() as server: server.base_url``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.httpd = ThreadingHTTPServer((host, port), _Handler)
        self.base_url = f"http://{host}:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,),  # quick to shut down
                                        name="balances-server", daemon=True)

    def __enter__(self) -> "BalancesServer":
        self._thread.start()
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
