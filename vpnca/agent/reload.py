"""Hand a new credential to the endpoint's own charon over VICI (or to a command).

load-key (a file key) or load-token (a key on the token, by its CKA_ID), load-cert for the certificate
and the CA certificates. Established SAs stay up; new IKE SAs find the newest certificate first (charon
lists certificates loaded over VICI newest first) and with it the new key. The previous key is unloaded
afterwards, so its certificate can no longer authenticate anything new.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import vici
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from vpnca import vici_transport
from vpnca.agent.errors import AgentError
from vpnca.agent.state import KeyRef


@contextmanager
def vici_session(uri: str) -> Iterator[vici.Session]:
    try:
        with vici_transport.session(uri, timeout=30) as session:
            yield session
    except vici_transport.ViciUnreachable as exc:
        raise AgentError(str(exc)) from exc
    except vici.exception.CommandException as exc:
        raise AgentError(f"charon refused: {exc}") from exc
    except (OSError, vici.exception.SessionException) as exc:
        raise AgentError(f"VICI session with charon failed: {exc}") from exc
    except ValueError as exc:
        raise AgentError(str(exc)) from exc


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def load_into_charon(uri: str, key: KeyRef, key_der: bytes | None, pin: str | None, cert: x509.Certificate,
                     cas: list[x509.Certificate], previous_key_id: str | None) -> str:
    """Load key, certificate and CA certificates; unload the previous key. Returns charon's key id."""
    with vici_session(uri) as session:
        if key.kind == "file":
            assert key_der is not None
            answer = session.load_key({"type": "any", "data": key_der})
        else:
            assert key.key_id is not None
            token: dict[str, str] = {"handle": key.key_id}
            if pin is not None:
                token["pin"] = pin
            answer = session.load_token(token)
        key_id = _text(answer.get("id", "")) if answer else ""
        session.load_cert({"type": "X509", "flag": "NONE", "data": cert.public_bytes(Encoding.DER)})
        for ca in cas:
            session.load_cert({"type": "X509", "flag": "CA", "data": ca.public_bytes(Encoding.DER)})
        if previous_key_id and previous_key_id != key_id:
            # already gone, if charon restarted or an operator cleared the credentials
            with contextlib.suppress(vici.exception.CommandException):
                session.unload_key({"id": previous_key_id})
    return key_id


def loaded_serials(uri: str) -> list[str]:
    """The serials of the end-entity certificates charon holds."""
    with vici_session(uri) as session:
        return [format(x509.load_der_x509_certificate(bytes(c["data"])).serial_number, "x")
                for c in session.list_certs({"type": "X509", "flag": "NONE"})]


def run_hook(command: str, directory: Path, serial: str) -> None:
    """`--exec CMD` after a renewal, with the file names in its environment; a failure is an error."""
    env = {**os.environ, "VPNCA_AGENT_DIR": str(directory), "VPNCA_AGENT_CERT": str(directory / "cert.pem"),
           "VPNCA_AGENT_CHAIN": str(directory / "chain.pem"), "VPNCA_AGENT_KEY": str(directory / "key.pem"),
           "VPNCA_AGENT_SERIAL": serial}
    try:
        result = subprocess.run(command, shell=True, env=env, capture_output=True, text=True, timeout=300,
                                check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AgentError(f"--exec {command!r} failed: {exc}") from exc
    if result.returncode != 0:
        raise AgentError(f"--exec {command!r} exited {result.returncode}: {result.stderr.strip()[-300:]}")
