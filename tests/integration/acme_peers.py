"""What an ACME validator talks to, run on loopback for the tests: a DNS server (A, AAAA, TXT)
and an HTTP server answering /.well-known/acme-challenge/<token>."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset


class LoopbackDns:
    """An authoritative-style UDP DNS server: records[(name, type)] = [values]; NXDOMAIN otherwise."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], list[str]] = {}
        self.queries: list[tuple[str, str]] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            try:
                query = dns.message.from_wire(data)
            except Exception:  # noqa: BLE001 - a test server ignores garbage
                continue
            response = dns.message.make_response(query)
            response.flags |= dns.flags.AA
            question = query.question[0]
            name = question.name.to_text(omit_final_dot=True).lower()
            rdtype = dns.rdatatype.to_text(question.rdtype)
            self.queries.append((name, rdtype))
            values = self.records.get((name, rdtype))
            if values:
                quoted = [f'"{v}"' for v in values] if rdtype == "TXT" else values
                response.answer.append(dns.rrset.from_text_list(question.name, 5, "IN", rdtype, quoted))
            elif not any(key[0] == name for key in self.records):
                response.set_rcode(dns.rcode.NXDOMAIN)
            self.sock.sendto(response.to_wire(), peer)

    def close(self) -> None:
        self.sock.close()


class Http01Server:
    """Serves key authorizations at /.well-known/acme-challenge/<token>, as an ACME client's
    standalone responder does; records the Host header of every fetch."""

    def __init__(self) -> None:
        self.tokens: dict[str, str] = {}
        self.hosts: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hosts.append(self.headers.get("Host", ""))
                token = self.path.removeprefix("/.well-known/acme-challenge/")
                body = outer.tokens.get(token)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def acme_peers() -> Iterator[tuple[LoopbackDns, Http01Server]]:
    dns_server, http_server = LoopbackDns(), Http01Server()
    try:
        yield dns_server, http_server
    finally:
        dns_server.close()
        http_server.close()
