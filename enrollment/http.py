"""What the enrollment protocols' HTTP edges share."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import ClientDisconnect, Request

log = logging.getLogger("vpnca.http")

Asgi = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


class BodyTooLarge(Exception):
    """The request body is over the protocol's limit; each edge answers 413 in its own format."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body larger than {limit} bytes")


async def read_limited_body(request: Request, limit: int) -> bytes:
    """The body, refused (BodyTooLarge) as soon as it is declared or read past `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise BodyTooLarge(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def quiet_on_client_disconnect(app: Asgi) -> Asgi:
    """An aborted upload is the client's doing: one INFO line, no traceback, no answer to send."""

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            await app(scope, receive, send)
        except ClientDisconnect:
            client = scope.get("client") or ("-", 0)
            log.info("client %s closed the connection during %s %s", client[0], scope.get("method"),
                     scope.get("path"))

    return wrapped


__all__ = ["BodyTooLarge", "quiet_on_client_disconnect", "read_limited_body"]
