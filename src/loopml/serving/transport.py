"""uvicorn underneath the app: the connection guard (deadlines, header limits, connection cap,
pipelining, early answers) and the socket."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from typing import Any

from loopml.errors import ConfigError
from loopml.serving.core import ServingCore
from loopml.serving.requests import ServerLimits

log = logging.getLogger(__name__)


def _raw_json(status: str, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\nconnection: close\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


class _LimitExceeded(Exception):
    """Raised inside a parser callback: httptools turns it into a parser error, answered as ``status``."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


def guarded_protocol(limits: ServerLimits, core: ServingCore | None = None) -> type:
    """uvicorn's httptools protocol with the guards a server on a network needs, answering in JSON.

    * **Header deadline** (408): uvicorn arms no timer until a request's headers are complete, so a
      client that trickles header bytes (slowloris) would hold a connection forever.
    * **Header and URL limits** (431, 414): at most ``max_headers`` header lines and
      ``max_header_bytes`` bytes of request line and headers (counted as they arrive, before the
      parser buffers them), a URL of at most ``max_url_bytes``.
    * **Connection cap** (503): a connection past ``max_connections`` is answered and closed at
      once (uvicorn's own limit counts requests and answers in plain text).
    * **Pipelining**: a malformed request after good ones in the same packet is answered with its
      400 only after the good ones got their answers, in order.
    * **Early answers**: when a route answers before reading the body (401, 404, 415, …), the rest
      of the body is discarded for at most ``body_timeout``; a client still trickling it then is
      disconnected (uvicorn re-arms keep-alive on every byte, so a trickle kept it open forever).
    * **Honest metrics**: every status answered here, before any route ran, is counted.
    """
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class GuardedProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None
        _drain_timer: asyncio.TimerHandle | None = None
        _in_headers = True
        _header_bytes = 0
        _header_lines = 0
        _tail = b""
        _limit: _LimitExceeded | None = None
        _deferred: tuple[str, str] | None = None  # an error to answer once the requests before it are
        _closing = False  # answered and discarding what the client still sends, until closed

        # ---------------------------------------------------------------- answers of our own
        def _answer_and_close(self, status: str, message: str) -> None:
            """Write a JSON error, stop answering, close soon: the client's remaining bytes are
            read and discarded for a moment first, so that it can read the answer rather than see
            a reset connection."""
            self._disarm()
            self._unset_keepalive_if_required()
            if core is not None:
                core.count_request("unrouted", int(status.split()[0]))
            if self.transport.is_closing():
                return
            self.transport.write(_raw_json(status, message))
            self._closing = True
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(min(limits.body_timeout, 2.0), self.transport.close)

        def _refuse(self, status: str, message: str) -> None:
            """Answer a request the server will not process; requests before it are answered first.
            An error inside the body of the request being read is that request's: answered now."""
            cycle = self.cycle
            if cycle is not None and cycle.more_body and not cycle.response_complete and not self.pipeline:
                cycle.disconnected = True  # its handler sees the client gone; what it answers is dropped
                cycle.message_event.set()
                self._answer_and_close(status, message)
            elif self.pipeline or (cycle is not None and not cycle.response_complete):
                self._deferred = (status, message)
                self._disarm()
                self.flow.pause_reading()
            else:
                self._answer_and_close(status, message)

        # ---------------------------------------------------------------- header deadline
        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(limits.header_timeout, self._too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _too_slow(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing() and not self._closing:
                self._refuse("408 Request Timeout", "request headers did not arrive in time")

        # ---------------------------------------------------------------- uvicorn's callbacks
        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if core is not None:
                core.server_state = self.server_state
            if len(self.connections) > limits.max_connections:
                self._answer_and_close("503 Service Unavailable", f"more than {limits.max_connections} "
                                       "connections are open; retry shortly")
                return
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._closing or self._deferred is not None:
                return  # answered already: what follows is discarded
            if self._in_headers:  # count what the parser would buffer before a header line completes
                seen = self._tail + data
                end = seen.find(b"\r\n\r\n")
                self._header_bytes += len(data) if end < 0 else max(0, end + 4 - len(self._tail))
                self._tail = seen[-3:] if end < 0 else b""
                if self._header_bytes > limits.max_header_bytes:
                    self._refuse("431 Request Header Fields Too Large", f"request headers exceed "
                                 f"{limits.max_header_bytes} bytes; send fewer or shorter headers")
                    return
                if end >= 0:
                    self._in_headers = False
            super().data_received(data)

        def send_400_response(self, msg: str) -> None:  # the parser's errors, and our limits raised in it
            limit, self._limit = self._limit, None
            if limit is not None:
                self._refuse(limit.status, str(limit))
            else:
                self._refuse("400 Bad Request", f"malformed HTTP request ({msg.rstrip('.')}): check the "
                             "request line, headers and Content-Length")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self.scope["loopml.started"] = time.perf_counter()  # type: ignore[typeddict-unknown-key]
            self._header_lines = 0
            self._arm()

        def on_url(self, url: bytes) -> None:
            super().on_url(url)
            if len(self.url) > limits.max_url_bytes:
                self._limit = _LimitExceeded("414 URI Too Long", f"the URL exceeds {limits.max_url_bytes} bytes")
                raise self._limit

        def on_header(self, name: bytes, value: bytes) -> None:
            self._header_lines += 1
            if self._header_lines > limits.max_headers:
                self._limit = _LimitExceeded("431 Request Header Fields Too Large",
                                             f"more than {limits.max_headers} request headers")
                raise self._limit
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._disarm()
            self._in_headers = False
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._in_headers, self._header_bytes, self._tail = True, 0, b""
            if self._drain_timer is not None:  # the body of an early answer arrived in time
                self._drain_timer.cancel()
                self._drain_timer = None

        def on_response_complete(self) -> None:
            cycle = self.cycle
            super().on_response_complete()
            if self.transport.is_closing():
                return
            if self._deferred is not None and not self.pipeline and (cycle is None or cycle.response_complete):
                status, message = self._deferred
                self._deferred = None
                self._answer_and_close(status, message)
            elif cycle is not None and cycle.more_body and self._drain_timer is None:
                # answered before the body was read: discard the rest, but only for so long
                self._drain_timer = self.loop.call_later(limits.body_timeout, self._drain_expired)

        def _drain_expired(self) -> None:
            self._drain_timer = None
            if not self.transport.is_closing():
                self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self._drain_timer is not None:
                self._drain_timer.cancel()
                self._drain_timer = None
            super().connection_lost(exc)

    return GuardedProtocol


def uvicorn_config(app: Any, limits: ServerLimits, core: ServingCore | None = None, **kwargs: Any) -> Any:
    import uvicorn

    return uvicorn.Config(app, http=guarded_protocol(limits, core),
                          loop="asyncio", timeout_keep_alive=int(limits.keep_alive_timeout),
                          timeout_graceful_shutdown=30, access_log=False, log_level="warning", lifespan="on",
                          **kwargs)


def draining_server(config: Any, core: ServingCore, drain_seconds: float) -> Any:
    """A uvicorn server that, on the first SIGTERM/SIGINT, drains before it stops: for
    ``drain_seconds`` it keeps answering, every answer saying ``Connection: close`` and readiness
    saying 503, so load balancers take it out and keep-alive clients move on without a reset; then
    the usual graceful shutdown (requests in flight finish). A second signal stops at once."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        drain_deadline: float | None = None

        def handle_exit(self, sig: int, frame: Any) -> None:
            if drain_seconds > 0 and self.drain_deadline is None:
                core.draining = True
                self.drain_deadline = time.monotonic() + drain_seconds
                log.warning("draining for %g s before shutting down (readiness now 503)", drain_seconds)
                return
            super().handle_exit(sig, frame)

        async def on_tick(self, counter: int) -> bool:
            if self.drain_deadline is not None and time.monotonic() >= self.drain_deadline:
                self.should_exit = True
            return await super().on_tick(counter)

    return DrainingServer(config)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: a free one), so the URL is known before the server starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted connections only when the
    # listening socket says TCP; without it, headers and body go out in two segments and Nagle
    # plus the client's delayed ACK add ~40 ms to every answer.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; another server holds the "
                          "port? choose another with --port (or [serving.options] port)") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def check_exposure(host: str, token: str | None, *, insecure: bool = False) -> None:
    """A server reachable from other machines needs a token, unless the operator opts out."""
    if is_loopback(host):
        return
    if token is None and not insecure:
        raise ConfigError(f"binding {host} without a token would let anyone on the network use the model: "
                          "set LOOPML_SERVE_TOKEN (or [serving.options] token), or pass --insecure "
                          "([serving.options] insecure = true) if something in front authenticates")
    log.warning("binding %s: the server is reachable from other machines%s; put TLS in front of it", host,
                " WITHOUT a token (--insecure)" if token is None else "")
