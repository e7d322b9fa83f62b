"""The ACME HTTP edge: `/acme/...` on the HTTPS listener. Every answer carries a fresh
Replay-Nonce and the directory link; every error is an RFC 8555 problem document, never a 500
for bad input."""

from __future__ import annotations

import json
import logging

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from enrollment.acme.problems import PROBLEM_JSON, AcmeProblem, malformed, problem_for
from enrollment.acme.service import AcmeService, Reply, Urls
from enrollment.http import BodyTooLarge, read_limited_body
from vpnca import metrics
from vpnca.errors import SigningUnavailable, Unavailable, new_error_id
from vpnca.events import emit
from vpnca.outage import OUTAGES
from vpnca.refusals import record_refusal

log = logging.getLogger("vpnca.acme")

JOSE_JSON = "application/jose+json"


def _record(problem: AcmeProblem, path: str, client: str | None) -> str:
    """Log and count the refusal once; its correlation id. A core error or a bug goes through the
    core's record (a bug with its traceback, an outage said once); the protocol's own problems here."""
    if problem.cause is not None:
        return record_refusal(problem.cause, protocol="acme", event="acme.refused", problem=problem.type,
                              path=path, client=client)
    error_id = new_error_id()
    level = logging.ERROR if problem.status >= 500 else logging.WARNING
    emit("acme.refused", level, problem=problem.type, detail=problem.detail, path=path, client=client,
         error_id=error_id)
    metrics.refused("acme", problem.type)
    return error_id


def _nonce_failed(exc: Exception) -> None:
    """No nonce for an answer that goes out anyway: an outage is said once by OUTAGES, a bug logged;
    nothing is counted as a refusal (the request was answered)."""
    if isinstance(exc, Unavailable):
        OUTAGES.down("token" if isinstance(exc, SigningUnavailable) else "database", exc.__cause__ or exc)
    else:
        log.error("ACME: no nonce for an answer", exc_info=exc)


def make_router(service: AcmeService) -> APIRouter:
    router = APIRouter(prefix="/acme")
    limit = service.settings.max_body_bytes

    def urls_for(request: Request) -> Urls:
        return Urls(str(request.base_url).rstrip("/") + "/acme")

    async def nonce_headers(urls: Urls) -> dict[str, str]:
        nonce = await run_in_threadpool(service.new_nonce)
        return {"Replay-Nonce": nonce, "Cache-Control": "no-store", "Link": f'<{urls.directory}>;rel="index"'}

    async def problem_response(problem: AcmeProblem, urls: Urls, request: Request, path: str) -> Response:
        error_id = _record(problem, path, request.client.host if request.client else None)
        problem.detail = f"{problem.detail} (id {error_id})"
        try:
            headers = {**await nonce_headers(urls), **problem.headers}
        except Exception as exc:  # noqa: BLE001 - no nonce key (the database is away): the problem goes out
            _nonce_failed(exc)
            headers = {"Cache-Control": "no-store", **problem.headers}
        headers["X-Request-ID"] = error_id
        return Response(problem.to_json(), status_code=problem.status, media_type=PROBLEM_JSON,
                        headers=headers)

    @router.get("/directory")
    async def directory(request: Request) -> Response:
        return Response(json.dumps(service.directory(urls_for(request))), media_type="application/json")

    @router.api_route("/new-nonce", methods=["HEAD", "GET"])
    async def new_nonce(request: Request) -> Response:
        urls = urls_for(request)
        try:
            headers = await nonce_headers(urls)
        except Exception as exc:  # noqa: BLE001 - a problem document, never a bare 500
            return await problem_response(problem_for(exc), urls, request, "new-nonce")
        return Response(status_code=200 if request.method == "HEAD" else 204, headers=headers)

    @router.get("/renewal-info/{cert_id}")
    async def renewal_info(request: Request, cert_id: str) -> Response:
        """RFC 9773: unauthenticated GET of a certificate's suggested renewal window."""
        urls = urls_for(request)
        try:
            body, retry_after = await run_in_threadpool(service.renewal_info, cert_id)
        except Exception as exc:  # noqa: BLE001 - a problem document, never a bare 500
            return await problem_response(problem_for(exc), urls, request, "renewal-info")
        return Response(json.dumps(body), media_type="application/json",
                        headers={"Retry-After": str(retry_after), "Link": f'<{urls.directory}>;rel="index"'})

    @router.api_route("/{path:path}", methods=["GET", "HEAD", "PUT", "DELETE", "PATCH"])
    async def not_post(request: Request, path: str) -> Response:
        """RFC 8555 6.3: resources are read with POST-as-GET; anything else is a problem document."""
        problem = malformed(f"{request.method} is not supported here: use POST (POST-as-GET to read)", 405)
        problem.headers["Allow"] = "POST"
        return await problem_response(problem, urls_for(request), request, path)

    @router.post("/{path:path}")
    async def post(request: Request, path: str) -> Response:
        urls = urls_for(request)
        try:
            if request.headers.get("content-type", "").split(";")[0].strip().lower() != JOSE_JSON:
                raise malformed(f"Content-Type must be {JOSE_JSON}", 415)
            try:
                body = await read_limited_body(request, limit)
            except BodyTooLarge as exc:
                raise malformed(str(exc), 413) from exc
            url = str(request.url.replace(query=""))
            client = request.client.host if request.client else None
            reply: Reply = await run_in_threadpool(service.handle, path, body, url, urls, client)
        except ClientDisconnect:
            raise  # the client went away mid-upload: said at INFO by the edge, nothing to answer
        except Exception as exc:  # noqa: BLE001 - every failure becomes a problem document
            return await problem_response(problem_for(exc), urls, request, path)
        try:
            headers = await nonce_headers(urls)
        except Exception as exc:  # noqa: BLE001 - done: the answer goes out, without a nonce
            _nonce_failed(exc)
            headers = {"Cache-Control": "no-store", "Link": f'<{urls.directory}>;rel="index"'}
        if reply.location:
            headers["Location"] = reply.location
        if reply.links:
            headers["Link"] = ", ".join([headers["Link"], *reply.links])
        if reply.body is None:
            return Response(status_code=reply.status, headers=headers)
        content = json.dumps(reply.body) if isinstance(reply.body, dict) else reply.body
        return Response(content, status_code=reply.status, media_type=reply.content_type, headers=headers)

    return router


__all__ = ["make_router", "problem_for"]
