"""A minimal HTTP/1.1 server for the stateless responder (`vpnca ocsp serve`).

The responder answers small fixed-shape requests from memory, so the cost that matters is HTTP
framing; a general ASGI stack spends several times the work of the answer itself. This protocol
speaks just what OCSP and CRL clients send: GET and POST with Content-Length, keep-alive, HTTP/1.0
and 1.1. Answers that need signing go to a worker thread and are written back in order. The whole
reply to a GET for a pre-signed answer is remembered while that answer stays the one in memory; a read
that is exactly one plain keep-alive GET for a remembered path is answered with its bytes, unparsed
further. On stop it stops accepting, closes idle connections and answers the requests in flight.
Slow or oversized requests are cut off as vpnca.runtime.limits says (431 for a head over 16 KiB, 408
for a head or body that does not arrive in time), and idle keep-alive connections are closed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import socket
import time
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime

from ocsp.app import CrlCache, not_modified
from ocsp.responses import CertIdKey, error_response
from ocsp.service import OcspAnswer, OcspService
from vpnca import metrics
from vpnca.balance import AcceptBalance, accept_balanced
from vpnca.errors import StoreUnavailable
from vpnca.events import emit
from vpnca.runtime import limits

log = logging.getLogger("vpnca.ocsp.http")
MAX_HEAD = limits.MAX_HEAD_BYTES
REASONS = {200: b"OK", 304: b"Not Modified", 400: b"Bad Request", 404: b"Not Found",
           405: b"Method Not Allowed", 408: b"Request Timeout", 411: b"Length Required",
           431: b"Request Header Fields Too Large"}
# what a connection waits for, each with its deadline (limits): the first request, the next one, the
# rest of a head, of a body; none while BUSY (an answer is being signed) or just DONE with a request
OPEN, IDLE, HEAD, BODY, BUSY, DONE = range(6)
Reply = tuple[int, list[tuple[bytes, bytes]], bytes]
ETAG_MEMO = 8192  # answers whose ETag is remembered (~1 KB each: it may outlive the cache's entry)
REPLY_MEMO = 8192  # GET paths whose whole reply is remembered (~3 KB each: the reply and its wire bytes)
# how long a GET reply is remembered; its max-age is that much shorter than nextUpdate allows, so a
# reply written at any moment of its memo never lets a cache keep the answer past its nextUpdate
REPLY_MEMO_SECONDS = 30.0
MEMO_COUNT_EVERY = 256  # answers from remembered replies are added to the metrics counter in batches
OCSP_GET = b"GET /ocsp/"
HTTP11 = b" HTTP/1.1"


@dataclass(frozen=True)
class RememberedReply:
    """A GET's reply to a pre-signed answer, served again while the cache holds the same answer."""

    key: CertIdKey
    body: bytes  # the cached answer's own bytes object: re-signed (a revocation) means another object
    next_update: datetime
    reply: Reply
    wire: bytes  # the reply as written on a keep-alive connection, head and body
    until: float  # monotonic: REPLY_MEMO_SECONDS on, never past the answer's nextUpdate


def wire_bytes(reply: Reply, *, close: bool = False, head_only: bool = False) -> bytes:
    """`reply` as HTTP/1.1 bytes: status line, content-length, its headers, `connection: close` when
    closing, then the body (none for HEAD)."""
    status, headers, body = reply
    head = [b"HTTP/1.1 %d %s" % (status, REASONS.get(status, b"")), b"content-length: %d" % len(body)]
    head += [name + b": " + value for name, value in headers]
    if close:
        head.append(b"connection: close")
    return b"\r\n".join(head) + b"\r\n\r\n" + (b"" if head_only else body)


def plain_ocsp_get(data: bytes) -> bytes | None:
    """The path of `data` when it is exactly one HTTP/1.1 GET head for /ocsp/... without a query and
    without a header the full parser must see (Connection, Content-Length, Transfer-Encoding)."""
    if not data.startswith(OCSP_GET) or data.find(b"\r\n\r\n") != len(data) - 4 or len(data) > MAX_HEAD:
        return None
    line_end = data.find(b"\r\n")
    if data[line_end - len(HTTP11):line_end] != HTTP11:
        return None
    path = data[4:line_end - len(HTTP11)]
    if b" " in path or b"?" in path:
        return None
    headers = data[line_end:].lower()  # those that need the full parser: a body, a connection to close
    if b"\nconnection" in headers or b"\ncontent-length" in headers or b"\ntransfer-encoding" in headers:
        return None
    return path


class Responder:
    """Turns one parsed HTTP request into a reply, or into a future for live signing."""

    def __init__(self, service: OcspService, extra: dict[bytes, tuple[bytes, bytes]] | None = None) -> None:
        self.service = service
        self.limit = service.settings.ocsp.max_request_bytes
        self.crls = CrlCache(service)
        self.static = extra or {}
        self._etags: dict[bytes, bytes] = {}
        self._replies: dict[bytes, RememberedReply] = {}
        self._memo_answers = 0  # answered from remembered replies, not yet added to the metrics

    def remembered(self, path: bytes) -> RememberedReply | None:
        """The reply remembered for GET `path` while the cache holds the same answer (counted as
        answered). One remembered for REPLY_MEMO_SECONDS is renewed: the same answer, a fresh max-age."""
        remembered = self._replies.get(path)
        if remembered is None or not self._holds(remembered):
            return None
        if time.monotonic() >= remembered.until:
            answer = OcspAnswer(remembered.body, remembered.next_update, key=remembered.key)
            renewed = self._remember(path, answer, self._ocsp_reply(answer, cacheable=True))
            if renewed is None:
                return None
            remembered = renewed
        self._memo_answers += 1
        if self._memo_answers >= MEMO_COUNT_EVERY:
            self.count_answers()
        return remembered

    def count_answers(self) -> None:
        """Add the answers served from remembered replies to the metrics (batched: each is ~1 us)."""
        if self._memo_answers:
            metrics.ocsp_answered_many("presigned", self._memo_answers)
            self._memo_answers = 0

    def handle(self, method: bytes, target: bytes, headers: dict[bytes, bytes],
               body: bytes) -> Reply | asyncio.Future[Reply]:
        path = target.split(b"?", 1)[0]
        if method == b"POST" and path in (b"/ocsp", b"/ocsp/", b"/"):
            return self._ocsp(body, cacheable=False)
        if method == b"GET" and path.startswith(b"/ocsp/"):
            remembered = self.remembered(path)
            if remembered is not None:
                return remembered.reply
            try:
                encoded = path[6:]  # percent-decoding only where a client escaped something
                der = base64.b64decode(urllib.parse.unquote_to_bytes(encoded) if b"%" in encoded else encoded,
                                       validate=True)
            except (binascii.Error, ValueError):
                der = b""
            return self._ocsp(der, cacheable=True, path=path)
        if method in (b"GET", b"HEAD") and path.decode("latin-1") in self.crls.names:
            return self._crl(path.decode("latin-1"), headers)
        if method == b"GET" and path == b"/metrics":
            self.count_answers()
            body = metrics.render(self.service.store, self.service.settings.ca.name)
            return 200, [(b"content-type", metrics.CONTENT_TYPE.encode())], body
        if method == b"GET" and path in self.static:
            content_type, content = self.static[path]
            return 200, [(b"content-type", content_type)], content
        return 404, [(b"content-type", b"text/plain")], b"not found\n"

    def _holds(self, remembered: RememberedReply) -> bool:
        """Whether the cache (which follows every commit) still holds the remembered answer object."""
        try:
            found = self.service.cache.get(remembered.key)
        except StoreUnavailable:
            return False
        return found is not None and found[0] is remembered.body

    def _ocsp(self, der: bytes, *, cacheable: bool, path: bytes = b"") -> Reply | asyncio.Future[Reply]:
        started = time.perf_counter()
        fast = self.service.respond_presigned(der)
        if isinstance(fast, OcspAnswer):
            metrics.ocsp_answered(fast.kind, time.perf_counter() - started)
            answered = self._ocsp_reply(fast, cacheable)
            if path and fast.key is not None and fast.next_update is not None:
                self._remember(path, fast, answered)
            return answered
        loop = asyncio.get_running_loop()
        signed = loop.run_in_executor(None, self.service.sign_live, fast.requests, fast.nonce)
        reply: asyncio.Future[Reply] = loop.create_future()
        def done(f: asyncio.Future[OcspAnswer]) -> None:
            if f.exception() is None:
                metrics.ocsp_answered(f.result().kind, time.perf_counter() - started)
                reply.set_result(self._ocsp_reply(f.result(), cacheable))
            else:
                metrics.ocsp_answered("internal_error", time.perf_counter() - started)
                reply.set_result((200, [(b"content-type", b"application/ocsp-response")],
                                  error_response("internal_error")))

        signed.add_done_callback(done)
        return reply

    def _ocsp_reply(self, answer: OcspAnswer, cacheable: bool) -> Reply:
        headers = [(b"content-type", b"application/ocsp-response")]
        if cacheable and answer.next_update is not None:
            left = (answer.next_update - datetime.now(UTC)).total_seconds()
            max_age = max(0, int(left - REPLY_MEMO_SECONDS))
            headers += [(b"cache-control", b"public, max-age=%d, no-transform, must-revalidate" % max_age),
                        (b"etag", self._etag(answer.body))]
        return 200, headers, answer.body

    def _remember(self, path: bytes, answer: OcspAnswer, reply: Reply) -> RememberedReply | None:
        """Remember `reply` to GET `path` for REPLY_MEMO_SECONDS, never past the answer's nextUpdate."""
        assert answer.key is not None and answer.next_update is not None
        left = (answer.next_update - datetime.now(UTC)).total_seconds()
        if left <= 0:
            self._replies.pop(path, None)
            return None
        if len(self._replies) >= REPLY_MEMO:
            self._replies.clear()
        remembered = self._replies[path] = RememberedReply(
            answer.key, answer.body, answer.next_update, reply, wire_bytes(reply),
            time.monotonic() + min(REPLY_MEMO_SECONDS, left))
        return remembered

    def _etag(self, body: bytes) -> bytes:
        """The answer's ETag, hashed once per answer (the pre-signed bodies are the cached objects)."""
        etag = self._etags.get(body)
        if etag is None:
            if len(self._etags) >= ETAG_MEMO:
                self._etags.clear()
            etag = self._etags[body] = b'"%s"' % hashlib.sha1(body).hexdigest().encode()
        return etag

    def _crl(self, path: str, headers: dict[bytes, bytes]) -> Reply:
        record = self.crls.current(path)
        if record is None:
            return 404, [(b"content-type", b"text/plain")], b"no CRL published yet\n"
        etag = f'"crl-{record.number}"'.encode()
        max_age = max(0, int((record.next_update - datetime.now(UTC)).total_seconds()))
        last_modified = format_datetime(record.this_update, usegmt=True).encode()
        cache = [(b"etag", etag), (b"last-modified", last_modified),
                 (b"cache-control", b"public, max-age=%d, no-transform" % max_age)]
        if not_modified(headers, etag, record.this_update):
            return 304, cache, b""
        return 200, [(b"content-type", b"application/pkix-crl"), *cache], record.der


class HttpProtocol(asyncio.Protocol):
    def __init__(self, responder: Responder, open_connections: set[HttpProtocol]) -> None:
        self.responder = responder
        self.open_connections = open_connections
        open_connections.add(self)  # from accept on, so the balance sees it at once
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.waiting: asyncio.Future[Reply] | None = None
        self.keep_alive = True
        self.closing = False  # the server is stopping: close after the request under way
        self.loop = asyncio.get_running_loop()
        self.phase = OPEN
        self.deadline = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.closing:  # accepted just before the server began to stop
            transport.close()
            return
        self._expect(OPEN, limits.HEAD_TIMEOUT)  # the first request's head: within 10 s of the connection

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if not self.buffer and self.waiting is None and not self.closing:
            path = plain_ocsp_get(data)  # a poll for a recent answer: written without parsing further
            remembered = self.responder.remembered(path) if path is not None else None
            if remembered is not None:
                self.transport.write(remembered.wire)
                self._expect(IDLE, limits.KEEP_ALIVE_TIMEOUT)
                return
        self.buffer += data
        if self.waiting is None:
            self._process()
        elif len(self.buffer) > MAX_HEAD + self.responder.limit and not self.paused:
            self.paused = True  # pipelined while an answer is signed: enough buffered
            self.transport.pause_reading()

    def _expect(self, phase: int, seconds: float) -> None:
        """`phase` begins now and must end within `seconds`. One timer per connection, moved lazily:
        a later deadline is checked when the timer fires, so requests that arrive whole cost no timer."""
        self.phase = phase
        self.deadline = self.loop.time() + seconds
        if self.timer is None or self.timer.when() > self.deadline:
            if self.timer is not None:
                self.timer.cancel()
            self.timer = self.loop.call_at(self.deadline, self._on_timer)

    def _waiting_for(self, phase: int) -> None:
        """The buffer holds all there is: wait for the rest of this head or body, or for a request."""
        if phase == self.phase or (phase == HEAD and self.phase == OPEN):
            self.phase = phase  # the same head or body (or the first head): its deadline stands
        else:
            self._expect(phase, limits.KEEP_ALIVE_TIMEOUT if phase == IDLE
                         else limits.HEAD_TIMEOUT if phase == HEAD else limits.BODY_TIMEOUT)

    def _on_timer(self) -> None:
        self.timer = None
        if self.transport is None or self.transport.is_closing() or self.phase == BUSY:
            return  # once the answer is written, the next phase arms the timer again
        if self.loop.time() + 0.005 < self.deadline:  # the deadline moved on since the timer was set
            self.timer = self.loop.call_at(self.deadline, self._on_timer)
            return
        if self.phase in (IDLE, DONE):  # keep-alive idle: not a cut-off
            self.transport.close()
            return
        reason = limits.BODY_TIMED_OUT if self.phase == BODY else limits.HEAD_TIMED_OUT
        self._cut_off(reason, 408 if self.buffer else None, b"request not received in time\n")

    def _cut_off(self, reason: str, status: int | None, message: bytes) -> None:
        assert self.transport is not None
        peer = self.transport.get_extra_info("peername")
        client = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else None
        limits.cut_off(reason, "ocsp", client, len(self.buffer))
        self.buffer = bytearray()
        if status is None:
            self.transport.close()
        else:
            self._write((status, [(b"content-type", b"text/plain; charset=utf-8")], message), close=True)

    def _process(self) -> None:
        while self.transport is not None and not self.transport.is_closing():
            end = self.buffer.find(b"\r\n\r\n")
            if end + 4 > MAX_HEAD or (end < 0 and len(self.buffer) > MAX_HEAD):
                self._cut_off(limits.HEAD_TOO_LARGE, 431, b"request head too large\n")
                return
            if end < 0:
                self._waiting_for(HEAD if self.buffer else IDLE)
                return
            lines = bytes(self.buffer[:end]).split(b"\r\n")
            try:
                method, target, version = lines[0].split(b" ", 2)
            except ValueError:
                self._write((400, [], b"bad request line\n"), close=True)
                return
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            if b"transfer-encoding" in headers:
                self._write((411, [], b"send Content-Length\n"), close=True)
                return
            length_text = headers.get(b"content-length", b"0")
            if not length_text.isdigit():
                self._write((400, [], b"bad Content-Length\n"), close=True)
                return
            length = int(length_text)
            if length > self.responder.limit:
                log.warning("OCSP request over %d bytes refused", self.responder.limit)
                body = error_response("malformed_request")
                self._write((200, [(b"content-type", b"application/ocsp-response")], body), close=True)
                return
            if len(self.buffer) < end + 4 + length:
                self._waiting_for(BODY)
                return
            body = bytes(self.buffer[end + 4:end + 4 + length])
            del self.buffer[:end + 4 + length]
            self.phase = DONE  # the next request, if any, has its own deadlines
            connection = headers.get(b"connection", b"").lower()
            self.keep_alive = (connection != b"close" if version == b"HTTP/1.1"
                               else connection == b"keep-alive")
            self.keep_alive = self.keep_alive and not self.closing
            head_only = method == b"HEAD"
            reply = self.responder.handle(method, target, headers, body)
            if isinstance(reply, asyncio.Future):
                self.phase = BUSY
                self.waiting = reply
                def resume(future: asyncio.Future[Reply], head_only: bool = head_only) -> None:
                    self._resume(future.result(), head_only)

                reply.add_done_callback(resume)
                return
            self._write(reply, close=not self.keep_alive, head_only=head_only)

    def _resume(self, reply: Reply, head_only: bool) -> None:
        self.waiting = None
        self._write(reply, close=not self.keep_alive, head_only=head_only)
        if self.paused and self.transport is not None and not self.transport.is_closing():
            self.paused = False
            self.transport.resume_reading()
        self._process()

    def _write(self, reply: Reply, *, close: bool = False, head_only: bool = False) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(wire_bytes(reply, close=close, head_only=head_only))
        if close:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.open_connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def shutdown(self) -> None:
        """The server is stopping: close now when idle, else after answering the request under way
        (one being signed, or one whose head or body is still arriving)."""
        self.closing = True
        if self.transport is not None and self.waiting is None and not self.buffer:
            self.transport.close()


async def serve_forever(responder: Responder, sock: socket.socket, balance: AcceptBalance,
                        stopping: asyncio.Event | None = None, grace: float = 25.0) -> None:
    """Serve `sock`, taking connections least-connections first across the workers, until `stopping`
    is set; then drain: no new connections, the requests in flight answered (for up to `grace` s)."""
    loop = asyncio.get_running_loop()
    open_connections: set[HttpProtocol] = set()

    async def connect(conn: socket.socket, protocol: HttpProtocol) -> None:
        try:
            await loop.connect_accepted_socket(lambda: protocol, conn)
        except OSError:
            open_connections.discard(protocol)
            conn.close()

    starting: set[asyncio.Task[None]] = set()  # referenced until done (the loop keeps only weak ones)

    def start(conn: socket.socket) -> None:
        protocol = HttpProtocol(responder, open_connections)  # counted from the accept on
        task = loop.create_task(connect(conn, protocol))
        starting.add(task)
        task.add_done_callback(starting.discard)

    beating = loop.create_task(balance.keep_beating())
    counting = loop.create_task(_keep_counting(responder))
    emit("worker.ready", server="ocsp", index=balance.index)
    accepting = loop.create_task(accept_balanced(sock, balance, lambda: len(open_connections), start))
    stop = loop.create_task((stopping or asyncio.Event()).wait())
    try:
        await asyncio.wait({accepting, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (accepting, beating, stop, counting):
            task.cancel()
        await asyncio.gather(accepting, beating, stop, counting, return_exceptions=True)
    error = accepting.exception() if accepting.done() and not accepting.cancelled() else None
    if error is not None:
        raise error
    emit("worker.draining", server="ocsp", index=balance.index, connections=len(open_connections))
    for protocol in list(open_connections):
        protocol.shutdown()
    deadline = loop.time() + grace
    while open_connections and loop.time() < deadline:  # noqa: ASYNC110 - polls a set the protocols change
        await asyncio.sleep(0.02)
    for protocol in list(open_connections):
        if protocol.transport is not None:
            protocol.transport.abort()
    responder.count_answers()


async def _keep_counting(responder: Responder, seconds: float = 0.5) -> None:
    """Bring the metrics up to date with the remembered replies served, twice a second."""
    while True:
        await asyncio.sleep(seconds)
        responder.count_answers()
