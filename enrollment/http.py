"""What the enrollment protocols' HTTP edges share."""

from __future__ import annotations

from starlette.requests import Request


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


__all__ = ["BodyTooLarge", "read_limited_body"]
