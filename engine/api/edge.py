"""The API's HTTP/1.1 protocol: uvicorn's httptools protocol with a bound on what a connection may cost.

httptools (llhttp) keeps a header's name and value in Python bytes until the header ends, and
uvicorn's ``HttpToolsProtocol`` sets no limit on a request head or on how long it may take, so
one unfinished header grows the process by whatever the client sends, and a socket that never
sends a request holds a file descriptor for ever. uvicorn's h11 protocol has a size bound
(``h11_max_incomplete_event_size``) but parses in pure Python, noticeably slower on the checkout
path than llhttp, and has no header timeout either; so the API keeps httptools and adds here:

* **Head size** — the request line and headers of one request may take ``max_header_bytes``.
  The parser is never fed more than that while a head is unfinished, so what it buffers stays
  within the bound whatever the client sends. Over it: 414 when the request line is what ran
  over, else 431.
* **Header count** — at most ``max_headers`` fields per request, else 431. Trailer fields after
  a chunked body count too; one that runs over ``max_header_bytes`` closes the connection (the
  request's response may already be under way, so there is no refusal to send).
* **Header timeout** — a request's headers must be complete within ``header_timeout_s`` of the
  connection opening or of the previous response. The clock is not reset by bytes arriving, so
  a client trickling a byte at a time is cut off like one that sends nothing. The connection is
  then closed without a response (the client may not even have started a request).

A refusal is a JSON body in the API's error shape (``{"error": "headers_too_large" |
"uri_too_long", "detail": ...}``) with ``connection: close``. The connection is then half-closed
and what the client still sends is read and dropped for up to ``LINGER_S`` before the socket
is closed: closing a socket with unread data makes the kernel send a reset, which can destroy
the refusal before the client has read it.

Limits are per process: ``EdgeProtocol.limits`` is set with ``use_limits`` before the server
starts (uvicorn builds the protocol itself, from the class, in each worker process).
Connection count and keep-alive are uvicorn's own options (``limit_concurrency``,
``timeout_keep_alive``), set by ``engine.api.server``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import httptools
from uvicorn.protocols.http import httptools_impl
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from engine.api.errors import PROBLEM_JSON, problem_bytes

if TYPE_CHECKING:
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from engine.settings import Settings

#: Seconds a refused connection keeps reading (and dropping) what the client still sends.
LINGER_S = 2.0
#: What a client over the connection limit is told to wait before retrying (seconds).
OVERLOADED_RETRY_S = 1


async def overloaded(scope: Any, receive: Any, send: Any) -> None:
    """The answer past ``limit_concurrency``: the API's 503 ``unavailable`` (JSON, with
    ``Retry-After``) instead of uvicorn's plain-text one, so every client sees one error shape."""
    body = problem_bytes(503, "unavailable", "the server is at its connection limit; retry later",
                         retry_after=OVERLOADED_RETRY_S)
    await send({
        "type": "http.response.start",
        "status": 503,
        "headers": [
            (b"content-type", PROBLEM_JSON.encode("ascii")),
            (b"content-length", str(len(body)).encode("ascii")),
            (b"retry-after", str(OVERLOADED_RETRY_S).encode("ascii")),
            (b"connection", b"close"),
        ],
    })
    await send({"type": "http.response.body", "body": body, "more_body": False})


# uvicorn's protocol picks its over-limit app from this module global when a request's headers
# are in (``on_headers_complete``), with no hook to pass another: ours takes its place.
httptools_impl.service_unavailable = overloaded


@dataclass(frozen=True)
class EdgeLimits:
    """What one connection may send before its request is refused or the connection dropped."""

    max_header_bytes: int = 16 * 1024
    max_headers: int = 100
    header_timeout_s: float = 10.0

    @classmethod
    def from_settings(cls, settings: Settings) -> EdgeLimits:
        return cls(settings.max_header_bytes, settings.max_headers, settings.header_timeout_s)


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "a client"


class _Refused(Exception):
    """Raised from a parser callback to stop the parse; the refusal is already recorded."""


class EdgeProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` with the head size, header count and header timeout of ``limits``."""

    limits: ClassVar[EdgeLimits] = EdgeLimits()

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits = type(self).limits
        self._max_head = limits.max_header_bytes
        self._max_headers = limits.max_headers
        self._header_timeout = limits.header_timeout_s
        # True from the end of one request's message (or the connection's start) to the end of
        # the next request's headers: bytes arriving then are head bytes.
        self._in_head = True
        # Head bytes fed to the parser so far. Exact when the head began at the start of a
        # feed; a head that began inside one (behind a pipelined request) is counted from its
        # parsed pieces instead, which lag by at most that one read.
        self._head_bytes = 0
        self._metered = True  # this feed began inside the current head (see _head_bytes)
        self._head_parsed = 0  # URL and completed header bytes of the current head
        self._header_count = 0
        self._request_line_done = False
        # Past the headers: whether a feed advanced the message, and the bytes of feeds since
        # one last did.
        self._progress = False
        self._stalled = 0
        self._refusal: tuple[int, str, str] | None = None
        self._header_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        self._lingering = False

    @classmethod
    def use_limits(cls, limits: EdgeLimits) -> type[EdgeProtocol]:
        """Set the limits of connections made from now on in this process; returns the class."""
        cls.limits = limits
        return cls

    # --- connection ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # a refused connection: read only to be dropped
        self._unset_keepalive_if_required()
        while data:
            if self._in_head:
                room = self._max_head - self._head_bytes
                if room <= 0:
                    self._refuse_oversized_head()
                    return
                if len(data) > room:
                    part, data = data[:room], data[room:]
                else:
                    part, data = data, b""
                self._metered = True
            else:
                part, data = data, b""
                self._metered = False
            self._progress = False
            if not self._feed(part):
                return
            if self._in_head:
                if self._metered:
                    self._head_bytes += len(part)
                    if not self._request_line_done:
                        self._request_line_done = b"\n" in part
                else:
                    self._head_bytes = self._head_parsed
                    self._request_line_done = True
            elif self._progress:
                self._stalled = 0
            else:
                # Past the headers, bytes that yield no body are a trailer field (which the
                # parser buffers like a header) or chunk syntax: neither is this long in earnest.
                self._stalled += len(part)
                if self._stalled > self._max_head:
                    self.logger.warning("closing %s: request trailer over %d bytes", _peer(self.client), self._max_head)
                    self.transport.close()
                    return

    def _feed(self, part: bytes) -> bool:
        """Parse ``part``; False when the connection is done with (refused, upgraded, closing)."""
        try:
            self.parser.feed_data(part)
        except httptools.HttpParserError:
            if self._refusal is not None:
                self._send_refusal(*self._refusal)
                return False
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return False
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return False
        return not self.transport.is_closing()

    # --- parser callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._start_head()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._head_parsed += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._progress = True
        self._header_count += 1
        self._head_parsed += len(name) + len(value) + 3  # at least ":" and CRLF besides
        if self._header_count > self._max_headers:
            self._refusal = (431, "headers_too_large", f"more than {self._max_headers} header fields")
            raise _Refused
        if self._head_parsed > self._max_head:
            self._refusal = (431, "headers_too_large", f"request headers over {self._max_head} bytes")
            raise _Refused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._metered = False  # a head starting later in this feed starts mid-feed
        self._progress = True
        self._stalled = 0
        self._cancel_header_timer()
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._progress = True
        super().on_body(body)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._start_head()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # The next request's headers are due within the timeout of this response, unless a
        # pipelined request whose headers are already in has just been started.
        if not self.transport.is_closing() and self.cycle.response_complete:
            self._arm_header_timer()

    # --- limits ------------------------------------------------------------------------------

    def _start_head(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        self._head_parsed = 0
        self._header_count = 0
        self._request_line_done = False

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self._header_timeout, self._header_timeout_expired)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout_expired(self) -> None:
        self._header_timer = None
        # Only a connection with no response under way is dropped: a slow app is not the
        # client's fault.
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self.transport.close()

    def _refuse_oversized_head(self) -> None:
        if self._request_line_done:
            self._send_refusal(431, "headers_too_large", f"request headers over {self._max_head} bytes")
        else:
            self._send_refusal(414, "uri_too_long", f"request line over {self._max_head} bytes")

    def _send_refusal(self, status: int, code: str, detail: str) -> None:
        self._cancel_header_timer()
        if not self._in_head or (self.cycle is not None and not self.cycle.response_complete):
            # A trailer past the request's headers, or a head behind a pipelined request still
            # being answered: a refusal would read as the answer to that request, so the
            # connection is just closed.
            self.logger.warning("closing %s: %s", _peer(self.client), detail)
            self.transport.close()
            return
        self.logger.warning("%d to %s: %s", status, _peer(self.client), detail)
        body = problem_bytes(status, code, detail)
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: " + PROBLEM_JSON.encode("ascii") + b"\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"connection: close\r\n",
                b"\r\n",
                body,
            ]
        )
        self.transport.write(b"".join(content))
        self._linger()

    def _linger(self) -> None:
        """Half-close after the refusal, drop what still comes in, close after ``LINGER_S``."""
        self._lingering = True
        self._unset_keepalive_if_required()
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self.flow.resume_reading()
        self._linger_timer = self.loop.call_later(LINGER_S, self.transport.close)
