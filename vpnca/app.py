"""The app factory: the HTTPS app (EST, ACME) and the plain-HTTP app (CA certificates; OCSP, CRL, SCEP)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding
from fastapi import FastAPI, Response
from starlette.concurrency import run_in_threadpool

from enrollment.acme.routes import make_router as acme_router
from enrollment.acme.service import AcmeService
from enrollment.est import EST_PREFIX, EstContext
from enrollment.est import make_app as est_app
from enrollment.http import quiet_on_client_disconnect
from enrollment.scep import ScepContext
from enrollment.scep import make_router as scep_router
from ocsp.app import revocation_app
from ocsp.service import OcspService
from vpnca import metrics
from vpnca.authority import Authority
from vpnca.config import Settings
from vpnca.errors import ConfigError
from vpnca.issuer import open_settings_token, token_key
from vpnca.ports import CaDoor, GuardedRsaKey
from vpnca.revocation import Publisher
from vpnca.store import Store


@dataclass
class Apps:
    https: Any  # ASGI: EST's own app in front of FastAPI (ACME)
    http: Any  # ASGI: the lean OCSP/CRL front over the FastAPI app


def load_bootstrap_cas(paths: tuple[Path, ...]) -> list[x509.Certificate]:
    cas: list[x509.Certificate] = []
    for path in paths:
        try:
            cas += x509.load_pem_x509_certificates(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"est.bootstrap_ca_files: cannot load {path}: {exc}") from exc
    return cas


def scep_context(settings: Settings, store: Store, door: CaDoor) -> ScepContext | None:
    """The SCEP RA (certificate and token key), when this CA has one (`vpnca init`, `vpnca scep init`)."""
    record = store.current_ca("scep-ra")
    if record is None or record.key_label is None:
        return None
    ra_key = token_key(open_settings_token(settings), record.key_label)
    assert isinstance(ra_key, rsa.RSAPrivateKey)
    return ScepContext(door, x509.load_der_x509_certificate(record.der), GuardedRsaKey(ra_key),
                       frozenset(settings.scep.legacy_des3_profiles))


def create_apps(settings: Settings, store: Store, authority: Authority, ocsp: OcspService) -> Apps:
    door = CaDoor(authority, Publisher(authority, ocsp))
    est = est_app(EstContext(door, settings.est, load_bootstrap_cas(settings.est.bootstrap_ca_files)))
    https_api = FastAPI(title="vpnca", docs_url=None, redoc_url=None, openapi_url=None)
    if settings.acme.enabled:
        https_api.include_router(acme_router(AcmeService(door, settings.acme, settings.http_base_url)))

    async def https(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith(EST_PREFIX):
            await est(scope, receive, send)
        else:
            await https_api(scope, receive, send)

    http = FastAPI(title="vpnca-http", docs_url=None, redoc_url=None, openapi_url=None)
    scep = scep_context(settings, store, door)
    if scep is not None:
        http.include_router(scep_router(scep))
    ca_der = authority.certificate.public_bytes(Encoding.DER)

    @http.get(f"/ca/{settings.ca.name}.cer")
    async def ca_certificate() -> Response:
        """The AIA caIssuers URL of every leaf: the sub-CA certificate, DER."""
        return Response(ca_der, media_type="application/pkix-cert",
                        headers={"Cache-Control": "public, max-age=3600"})

    @http.get("/metrics")
    async def metrics_endpoint() -> Response:
        body = await run_in_threadpool(metrics.render, store, settings.ca.name)
        return Response(body, media_type=metrics.CONTENT_TYPE)

    @http.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return Apps(https=quiet_on_client_disconnect(https),
                http=quiet_on_client_disconnect(revocation_app(ocsp, http)))

