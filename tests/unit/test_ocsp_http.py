"""The responder's HTTP fast path: which requests it may answer without the full parser."""

from __future__ import annotations

import pytest

from ocsp.httpserver import MAX_HEAD, plain_ocsp_get, wire_bytes

PATH = b"/ocsp/MEowSDBGMEQwQjAJBgUrDgMCGgUABBQ%2Bx1hb%3D"


def head(*lines: bytes, request_line: bytes = b"GET " + PATH + b" HTTP/1.1") -> bytes:
    return b"\r\n".join((request_line, *lines)) + b"\r\n\r\n"


@pytest.mark.parametrize("data", [
    head(b"Host: ocsp.example"),
    head(b"Host: ocsp.example", b"User-Agent: strongSwan", b"Accept: */*"),
    head(),  # no headers at all
])
def test_a_plain_keep_alive_get_takes_the_fast_path(data: bytes) -> None:
    assert plain_ocsp_get(data) == PATH


@pytest.mark.parametrize("data", [
    head(b"Host: a", b"Connection: close"),  # must be answered with connection: close, then closed
    head(b"Host: a", b"connection : keep-alive"),  # any spelling of it goes to the full parser
    head(b"Host: a", b"Content-Length: 5"),  # a body follows
    head(b"Host: a", b"Transfer-Encoding: chunked"),  # refused with 411 by the full parser
    head(b"Host: a", request_line=b"GET " + PATH + b" HTTP/1.0"),  # closes unless keep-alive is asked
    head(b"Host: a", request_line=b"HEAD " + PATH + b" HTTP/1.1"),  # no body in the reply
    head(b"Host: a", request_line=b"POST /ocsp/ HTTP/1.1"),
    head(b"Host: a", request_line=b"GET " + PATH + b"?x=1 HTTP/1.1"),  # a query
    head(b"Host: a", request_line=b"GET /metrics HTTP/1.1"),
    head(b"Host: a", request_line=b"GET " + PATH + b" x HTTP/1.1"),  # a malformed request line
    head(b"Host: a") + head(b"Host: a"),  # two pipelined requests in one read
    head(b"Host: a")[:-2],  # a head not yet complete
    head(b"Host: a", b"X-Pad: " + b"a" * MAX_HEAD),  # over the head limit: 431 from the full parser
])
def test_anything_else_goes_to_the_full_parser(data: bytes) -> None:
    assert plain_ocsp_get(data) is None


def test_wire_bytes() -> None:
    reply = (200, [(b"content-type", b"application/ocsp-response")], b"\x30\x03\x0a\x01\x00")
    assert wire_bytes(reply) == (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n"
                                 b"content-type: application/ocsp-response\r\n\r\n\x30\x03\x0a\x01\x00")
    assert wire_bytes(reply, close=True, head_only=True) == (
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-type: application/ocsp-response\r\n"
        b"connection: close\r\n\r\n")
