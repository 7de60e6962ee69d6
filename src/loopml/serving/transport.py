"""uvicorn underneath the app: the connection guard (header deadline, connection cap) and the socket."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from typing import Any

from loopml.serving.core import ServingCore
from loopml.serving.requests import ServerLimits

log = logging.getLogger(__name__)


def _raw_json(status: str, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\nconnection: close\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


def header_timeout_protocol(header_timeout: float, max_connections: int, core: ServingCore | None = None) -> type:
    """uvicorn's httptools protocol with a header deadline and a connection cap, answering in JSON.

    uvicorn arms no timer until a request's headers are complete, so a client that trickles
    header bytes (slowloris) would hold a connection forever; and its own concurrency limit counts
    requests, answering in plain text. Here a connection past ``max_connections`` gets a JSON 503
    and is closed at once.
    """
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout, self._too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _too_slow(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.write(_raw_json("408 Request Timeout", "request headers did not arrive in time"))
                self.transport.close()

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if core is not None:
                core.server_state = self.server_state
            if len(self.connections) > max_connections:
                transport.write(_raw_json("503 Service Unavailable", f"more than {max_connections} connections "
                                          "are open; retry shortly"))
                transport.close()
                return
            self._arm()

        def send_400_response(self, msg: str) -> None:  # the parser's own 400s, in JSON like the rest
            self.transport.write(_raw_json("400 Bad Request", f"malformed HTTP request ({msg.rstrip('.')}): "
                                           "check the request line, headers and Content-Length"))
            self.transport.close()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderTimeoutProtocol


def uvicorn_config(app: Any, limits: ServerLimits, core: ServingCore | None = None, **kwargs: Any) -> Any:
    import uvicorn

    return uvicorn.Config(app, http=header_timeout_protocol(limits.header_timeout, limits.max_connections, core),
                          loop="asyncio", timeout_keep_alive=int(limits.keep_alive_timeout),
                          timeout_graceful_shutdown=30, access_log=False, log_level="warning", lifespan="on",
                          **kwargs)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: a free one), so the URL is known before the server starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted connections only when the
    # listening socket says TCP; without it, headers and body go out in two segments and Nagle
    # plus the client's delayed ACK add ~40 ms to every answer.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def warn_if_exposed(host: str) -> None:
    if host not in ("127.0.0.1", "localhost", "::1") and not host.startswith("127."):
        log.warning("binding %s: the server is reachable from other machines; set a token "
                    "(LOOPML_SERVE_TOKEN) and put TLS in front of it", host)
