"""`vpnca serve`: HTTPS (EST) and plain HTTP on uvicorn, with the TLS client certificate passed to the app.

Uvicorn does not expose the peer certificate, so the HTTP protocol is subclassed: on each TLS
connection the verified client certificate is put where the ASGI TLS extension says,
scope["extensions"]["tls"]["client_cert_chain"] (PEM). Several worker processes share the listening
sockets; each opens its own token session (signing scales with processes). The parent supervises them
(vpnca.runtime.supervision): a worker that dies is replaced at the same index, and SIGTERM drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import ssl
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httptools
import uvicorn
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from uvicorn.config import STARTUP_FAILURE
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from enrollment.est import check_proxy_listener
from hsm import generate_software_key
from ocsp.httpserver import Responder, serve_forever
from ocsp.presign import Share
from ocsp.service import load_ocsp_service
from vpnca import metrics
from vpnca.app import create_apps, load_bootstrap_cas
from vpnca.authority import Authority, IssueRequest
from vpnca.balance import AcceptBalance, accept_balanced, shared_balance
from vpnca.config import Settings, load_settings
from vpnca.events import configure_for, emit
from vpnca.files import restrict_state_files, write_private
from vpnca.identities import IkeIdentity
from vpnca.issuer import load_ca_certificate
from vpnca.revocation import Publisher
from vpnca.runtime import limits
from vpnca.runtime.supervision import DRAIN_SECONDS, run_workers
from vpnca.scheduler import build_scheduler
from vpnca.store import Store
from vpnca.x509util import to_pem

log = logging.getLogger("vpnca.server")

TLS_HANDSHAKE_TIMEOUT = 30.0


class Server(uvicorn.Server):
    """uvicorn.Server that leaves the signals to the worker: uvicorn would catch SIGTERM for the last
    server started only (and raise it again once that one has stopped), so one handler in the worker
    stops both listeners together (see `_serve`)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class BalancedServer(Server):
    """uvicorn.Server whose listening socket is served by an accept loop that keeps the workers'
    connection counts even (AcceptBalance) instead of asyncio's greedy accept."""

    def __init__(self, config: uvicorn.Config, balance: AcceptBalance) -> None:
        super().__init__(config)
        self.balance = balance
        self._handshaking = 0
        self._accepting: list[asyncio.Task[None]] = []

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            raise SystemExit(STARTUP_FAILURE)
        config = self.config

        def create_protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state, _loop=_loop)

        self.servers = []
        self._accepting = [asyncio.create_task(self._accept_loop(sock, create_protocol))
                           for sock in sockets or []]
        self._accepting.append(asyncio.create_task(self.balance.keep_beating()))
        self.started = True
        emit("worker.ready", server="serve", index=self.balance.index)

    async def _accept_loop(self, sock: socket.socket,
                           create_protocol: Callable[[], asyncio.Protocol]) -> None:
        def start(conn: socket.socket) -> None:
            self._handshaking += 1
            asyncio.get_running_loop().create_task(self._start_connection(conn, create_protocol))

        def load() -> int:
            return len(self.server_state.connections) + self._handshaking

        await accept_balanced(sock, self.balance, load, start)

    async def _start_connection(self, conn: socket.socket,
                                create_protocol: Callable[[], asyncio.Protocol]) -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                create_protocol, conn, ssl=self.config.ssl, ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT)
        except (TimeoutError, OSError, ssl.SSLError) as exc:
            log.debug("TLS handshake failed: %s", exc)
            conn.close()
        finally:
            self._handshaking -= 1

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Stop accepting (and beating: the other workers no longer count this one), let the TLS
        handshakes under way finish, then uvicorn's graceful shutdown: idle connections are closed,
        requests in flight are answered (up to timeout_graceful_shutdown)."""
        for task in self._accepting:
            task.cancel()
        await asyncio.gather(*self._accepting, return_exceptions=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TLS_HANDSHAKE_TIMEOUT
        while self._handshaking and loop.time() < deadline:  # noqa: ASYNC110 - a counter, not an event
            await asyncio.sleep(0.02)
        await super().shutdown(sockets)


class _HeadTooLarge(Exception):
    """Raised from a parser callback: stops httptools in the middle of a chunk."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of vpnca.runtime.limits: a head over
    MAX_HEAD_BYTES is answered 431 at once; a head or a body that does not arrive in time, 408.

    The first request's head timer starts on connection; a later request's when its first byte
    arrives (between requests uvicorn's keep-alive timer runs); the body timer when the head is
    complete. Timers are armed only when a chunk leaves a head or a body unfinished, so a request that
    arrives whole costs none. While uvicorn has paused reading (a pipelined request waits, or the app
    has not read the body yet) or not yet said 100 Continue, the delay is ours: a timer that fires then
    is armed again."""

    listener = "http"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reading_head = True  # between requests or in a head: what arrives is head
        self._reading_body = False
        self._head_begun = False  # the parser saw the first byte of the request being read
        self._head_bytes = 0  # bytes received while reading this head (whole chunks)
        self._head_parsed = 0  # bytes of URL and header fields the parser handed over
        self._timer: asyncio.TimerHandle | None = None
        self._cut = False  # cut off: whatever else arrives is dropped

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(limits.HEAD_TIMEOUT)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """uvicorn's, with the head counted and the timers armed after each chunk."""
        if self._cut:
            return
        if self._reading_head:
            self._head_bytes += len(data)
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):
                self._refuse_head()
            else:
                self.logger.warning("Invalid HTTP request received.")
                self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserError:
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self._disarm()
                self._cut = True  # the connection is the WebSocket protocol's now
                self.handle_websocket_upgrade()
                return
            self._unsupported_upgrade_warning()  # answered as plain HTTP, as uvicorn does
        if self._reading_head:
            if self._head_bytes > limits.MAX_HEAD_BYTES:
                self._refuse_head()
            elif self._timer is None and (self._head_begun or self._head_bytes):
                self._arm(limits.HEAD_TIMEOUT)
        elif self._reading_body and self._timer is None:
            self._arm(limits.BODY_TIMEOUT)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_begun = True
        self._head_parsed = 0

    def on_url(self, url: bytes) -> None:
        self._head_parsed += len(url)
        if self._head_parsed > limits.MAX_HEAD_BYTES:
            raise _HeadTooLarge
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_parsed += len(name) + len(value) + 4
        if self._head_parsed > limits.MAX_HEAD_BYTES:
            raise _HeadTooLarge
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm()
        self._reading_head = self._head_begun = False
        self._reading_body = True
        self._head_bytes = 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        self._reading_body = False
        self._reading_head = True
        self._head_bytes = 0
        super().on_message_complete()

    def _arm(self, seconds: float) -> None:
        self._timer = self.loop.call_later(seconds, self._timed_out, seconds)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self, seconds: float) -> None:
        self._timer = None
        if self._cut or self.transport.is_closing():
            return
        waiting_for_us = self.flow.read_paused or (  # uvicorn is not reading, or has not said 100 Continue
            self._reading_body and self.cycle is not None and self.cycle.waiting_for_100_continue)
        if waiting_for_us:  # not the client's delay
            self._arm(seconds)
            return
        if self._reading_head:
            received = self._head_bytes
            self._cut_off(limits.HEAD_TIMED_OUT, 408 if self._head_begun or received else None, received)
        else:
            self._cut_off(limits.BODY_TIMED_OUT, 408, len(self.cycle.body) if self.cycle else 0)

    def _refuse_head(self) -> None:
        self._cut_off(limits.HEAD_TOO_LARGE, 431, max(self._head_bytes, self._head_parsed))

    def _cut_off(self, reason: str, status: int | None, received: int) -> None:
        """Answer `status` unless an answer is under way, and close (after that answer, if any)."""
        self._cut = True
        self._disarm()
        client = f"{self.client[0]}:{self.client[1]}" if self.client else None
        limits.cut_off(reason, self.listener, client, received)
        cycle = self.cycle
        if not self._reading_head and cycle is not None:  # this request's body: is its answer under way?
            if cycle.response_started:
                status = None
            if not cycle.response_complete:
                cycle.disconnected = True  # the app gets http.disconnect, its answer is dropped
                cycle.message_event.set()
        elif cycle is not None and not cycle.response_complete:  # an earlier request's answer is going out
            cycle.keep_alive = False  # close after it
            self.transport.pause_reading()
            return
        if status is not None:
            message = b"request head too large\n" if status == 431 else b"request not received in time\n"
            self.transport.write(limits.refusal(status, message))
        self.transport.close()


X509_V_FLAG_NO_CHECK_TIME = 0x200000  # OpenSSL: verify the chain, not its validity times

class TlsClientCertProtocol(GuardedHttpToolsProtocol):
    """uvicorn's httptools protocol (with the limits), handing the verified TLS client certificate
    to the app."""

    listener = "https"

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if der:
            pem = ssl.DER_cert_to_PEM_cert(der)
            inner = self.app

            async def app_with_tls(scope: dict[str, Any], receive: Any, send: Any) -> None:
                if scope["type"] == "http":
                    scope.setdefault("extensions", {})["tls"] = {"client_cert_chain": [pem]}
                await inner(scope, receive, send)

            self.app = app_with_tls


def server_files(settings: Settings) -> dict[str, Path]:
    base = settings.home / "server"
    return {"cert": base / "tls.pem", "key": base / "tls-key.pem", "client_cas": base / "client-cas.pem"}


def ensure_server_certificate(settings: Settings, authority: Authority) -> dict[str, Path]:
    """Issue (or renew at 2/3 of its life) the HTTPS certificate for server.tls_names."""
    files = server_files(settings)
    files["cert"].parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    names = tuple(IkeIdentity.parse(n) for n in settings.server.tls_names)
    if files["cert"].exists() and files["key"].exists():
        cert = x509.load_pem_x509_certificate(files["cert"].read_bytes())
        life = cert.not_valid_after_utc - cert.not_valid_before_utc
        san = {str(v) for v in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
               .value.get_values_for_type(x509.DNSName)}
        san |= {str(v) for v in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
                .value.get_values_for_type(x509.IPAddress)}
        fresh = datetime.now(UTC) < cert.not_valid_before_utc + life * 2 / 3
        if fresh and san == {n.value for n in names}:
            write_client_cas(settings, authority, files)
            return files
    key = generate_software_key("ec-p256")
    issued = authority.issue(IssueRequest(profile="service", identities=names, public_key=key.public_key(),
                                          requester="vpnca-serve", protocol="internal"))
    write_private(files["key"], key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    files["cert"].write_bytes(to_pem(issued.certificate) + to_pem(authority.certificate))
    write_client_cas(settings, authority, files)
    log.info("issued HTTPS server certificate serial=%s", issued.serial)
    return files


def write_client_cas(settings: Settings, authority: Authority, files: dict[str, Path]) -> None:
    """The CAs a TLS client certificate may chain to: ours, plus the bootstrap CAs."""
    pems = [to_pem(c) for c in authority.chain()]
    pems += [to_pem(c) for c in load_bootstrap_cas(settings.est.bootstrap_ca_files)]
    files["client_cas"].write_bytes(b"".join(pems))


def bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # accepted sockets inherit it (no 40 ms stalls)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _serve(home: Path, https_sock: socket.socket, http_sock: socket.socket, log_level: str,
           run_scheduler: bool, balance: AcceptBalance) -> None:
    """One worker: its own store, token session and event loop over the shared sockets. SIGTERM (or
    SIGINT) stops both listeners from accepting and returns once the requests in flight are answered."""
    settings = load_settings(home)
    configure_for(settings, verbose=log_level == "info")
    store = Store(settings.database_url)
    authority = Authority.open(settings, store)
    ocsp = load_ocsp_service(settings, store)
    apps = create_apps(settings, store, authority, ocsp)
    # the first worker runs every job; each worker pre-signs its share of the OCSP backlog (its own token
    # session), so that pre-signing scales with the workers
    scheduler = build_scheduler(Publisher(authority, ocsp), share=Share(balance.index, len(balance.counts)),
                                presign_only=not run_scheduler)
    scheduler.start()
    files = server_files(settings)
    https = uvicorn.Config(
        apps.https, http=TlsClientCertProtocol, log_level=log_level, access_log=False,
        ssl_certfile=str(files["cert"]), ssl_keyfile=str(files["key"]),
        ssl_ca_certs=str(files["client_cas"]), ssl_cert_reqs=ssl.CERT_OPTIONAL, timeout_keep_alive=30,
        timeout_graceful_shutdown=DRAIN_SECONDS,
    )
    if settings.est.reenroll_grace:
        # OpenSSL would end the handshake of an expired client certificate before EST can apply
        # est.reenroll_grace; requester_from_certificate checks every client certificate's validity itself
        https.load()
        assert https.ssl is not None
        https.ssl.verify_flags |= X509_V_FLAG_NO_CHECK_TIME
    plain = uvicorn.Config(apps.http, http=GuardedHttpToolsProtocol, log_level=log_level, access_log=False,
                           timeout_keep_alive=30, timeout_graceful_shutdown=DRAIN_SECONDS)

    async def main() -> None:
        servers = [BalancedServer(https, balance), Server(plain)]

        def stop(signum: signal.Signals) -> None:
            if not any(server.should_exit for server in servers):
                emit("worker.draining", server="serve", index=balance.index, signal=signum.name,
                     connections=sum(len(server.server_state.connections) for server in servers))
            for server in servers:
                server.should_exit = True

        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop, signum)
        await asyncio.gather(servers[0].serve(sockets=[https_sock]), servers[1].serve(sockets=[http_sock]))

    try:
        asyncio.run(main())
    finally:
        scheduler.shutdown(wait=False)


def serve_ocsp(settings: Settings, *, host: str, port: int, workers: int = 1, log_level: str = "warning",
               with_signer: bool = True) -> None:
    """`vpnca ocsp serve`: the stateless responder alone (pre-signed answers from the database)."""
    sock = bind(host, port)
    if workers > 1:
        metrics.prepare_multiprocess(settings.home / f"metrics-ocsp-{port}")
    log.info("serving OCSP/CRL on http://%s:%d with %d worker(s)", host, port, workers)
    balance = shared_balance(workers)
    run_workers(_serve_ocsp, lambda i: (settings.home, sock, log_level, with_signer, balance(i)), workers,
                server="ocsp", on_exit=lambda i: balance(i).retire())


def _serve_ocsp(home: Path, sock: socket.socket, log_level: str, with_signer: bool,
                balance: AcceptBalance) -> None:
    settings = load_settings(home)
    configure_for(settings, verbose=log_level == "info")
    store = Store(settings.database_url)
    service = load_ocsp_service(settings, store, with_signer=with_signer)
    issuer = load_ca_certificate(store, "sub")[0].public_bytes(serialization.Encoding.DER)
    responder = Responder(service, {
        f"/ca/{settings.ca.name}.cer".encode(): (b"application/pkix-cert", issuer),
        b"/healthz": (b"application/json", b'{"status":"ok"}')})

    async def main() -> None:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        await serve_forever(responder, sock, balance, stopping=stopping, grace=DRAIN_SECONDS)

    uvloop.run(main())


INTERRUPTED_AFTER = timedelta(seconds=60)  # on a shared database, older than any signing in progress


def resolve_interrupted_issuances(store: Store) -> None:
    """Reservations a killed process left `issuing` become `failed`, their tokens usable again. On
    SQLite this machine's service is the only issuer and nothing is in progress before it starts; a
    shared PostgreSQL may have other instances signing, so only reservations older than a minute."""
    started_before = datetime.now(UTC) - (INTERRUPTED_AFTER if store.is_postgres else timedelta(0))
    resolved = store.resolve_interrupted(started_before, "vpnca-serve")
    if resolved:
        emit("issuance.interrupted", logging.WARNING, serials=resolved, count=len(resolved))


def serve(settings: Settings, *, host: str, https_port: int, http_port: int, workers: int = 1,
          log_level: str = "info") -> None:
    """Prepare the server certificate, bind both listeners, then run `workers` processes."""
    check_proxy_listener(settings, host)
    restrict_state_files(settings.home, settings.database_url)
    store = Store(settings.database_url)
    store.require_current_schema()  # an outdated schema: `vpnca db upgrade` first
    resolve_interrupted_issuances(store)
    ensure_server_certificate(settings, Authority.open(settings, store))
    store.dispose()
    https_sock, http_sock = bind(host, https_port), bind(host, http_port)
    if workers > 1:
        metrics.prepare_multiprocess(settings.home / "metrics")
    log.info("serving EST on https://%s:%d and HTTP on http://%s:%d with %d worker(s)",
             host, https_port, host, http_port, workers)
    # the scheduler runs once, in the first worker (and in its replacement); the others only serve
    balance = shared_balance(workers)
    run_workers(_serve, lambda i: (settings.home, https_sock, http_sock, log_level, i == 0, balance(i)),
                workers, server="serve", on_exit=lambda i: balance(i).retire())
