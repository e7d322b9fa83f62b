"""Shared helpers for the test suite: real tools, real daemons, no skips."""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def require_tool(name: str) -> str:
    """The path of `name`; a missing tool fails the test (it never skips, in CI or out)."""
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/lib/ipsec/{name}") if os.access(p, os.X_OK)), None
    )
    if path is None:
        pytest.fail(f"required tool {name!r} is not installed (run `make deps`)")
    return path


def run(cmd: list[str], *, check: bool = True, input_: bytes | None = None,
        env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, input=input_.decode() if input_ else None, capture_output=True, text=True,
                            env=env, cwd=cwd, check=False, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Terminate, then kill if it has not gone in 10 s."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# Ports for the servers the tests start, below Linux's ephemeral range (32768-60999, where bind(0) and
# outgoing connections take theirs) and one block per pytest-xdist worker: a port handed out here is
# free when checked but only bound later by a server, so two workers drawing from one pool could both
# hand out the same port in between (it happened: "Address already in use").
_PORT_BLOCK = 1500
_PORT_BASE = 20000
_handed_out: set[int] = set()


def free_port() -> int:
    """A free TCP port on 127.0.0.1 that no other test of this run was given."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    first = _PORT_BASE + (int(worker) if worker.isdigit() else 0) % 8 * _PORT_BLOCK
    for port in range(first, first + _PORT_BLOCK):
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port left in {first}-{first + _PORT_BLOCK - 1}")


def openssl_key(path: Path, algorithm: str = "ec-p256") -> Path:
    """A private key made by openssl: ec-p256, ec-p384 or rsa-N."""
    openssl = require_tool("openssl")
    if algorithm.startswith("rsa-"):
        run([openssl, "genpkey", "-algorithm", "RSA", "-pkeyopt", f"rsa_keygen_bits:{algorithm[4:]}",
             "-out", str(path)])
    else:
        curve = {"ec-p256": "P-256", "ec-p384": "P-384"}[algorithm]
        run([openssl, "genpkey", "-algorithm", "EC", "-pkeyopt", f"ec_paramgen_curve:{curve}",
             "-out", str(path)])
    return path


def openssl_csr(directory: Path, *, subject: str, sans: list[str] | None = None,
                algorithm: str = "ec-p256", digest: str = "sha256", name: str = "req") -> Path:
    """A CSR made by `openssl req`, e.g. sans=["DNS:vpn.example.com", "IP:10.0.0.1"]."""
    openssl = require_tool("openssl")
    key = openssl_key(directory / f"{name}.key", algorithm)
    csr = directory / f"{name}.csr"
    cmd = [openssl, "req", "-new", "-key", str(key), "-subj", subject, f"-{digest}", "-out", str(csr)]
    if sans:
        cmd += ["-addext", "subjectAltName=" + ",".join(sans)]
    run(cmd)
    return csr


SECRETS: set[str] = set()  # secrets the tests handed out; none may appear in any log (see conftest)


def remember_secret(secret: str) -> str:
    SECRETS.add(secret)
    return secret


def est_csr_body(name: str) -> bytes:
    """An EST simpleenroll body: the base64 DER of a CSR for `name` (CN and dNSName) with a new P-256 key."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
           .sign(key, hashes.SHA256()))
    return base64.b64encode(csr.public_bytes(serialization.Encoding.DER))


def scep_post(scep_url: str, body: bytes) -> tuple[int, bytes]:
    """POST a pkiMessage to a SCEP endpoint as a client would; the HTTP status and the body."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"{scep_url}?operation=PKIOperation", data=body,
                                     headers={"Content-Type": "application/x-pki-message"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as error:
        return int(error.code), bytes(error.read())


def scep_status(reply: bytes) -> tuple[str, str | None]:
    """A CertRep's pkiStatus and failInfo, read from its signed attributes."""
    from asn1crypto import cms, core

    from enrollment import scep

    signer = cms.ContentInfo.load(reply)["content"]["signer_infos"][0]
    attrs = {a["type"].dotted: a["values"][0].dump() for a in signer["signed_attrs"]}
    fail = attrs.get(scep.OID_FAIL_INFO)
    return (core.PrintableString.load(attrs[scep.OID_PKI_STATUS]).native,
            core.PrintableString.load(fail).native if fail else None)
