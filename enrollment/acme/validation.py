"""Challenge validation (RFC 8555 section 8, RFC 8738): http-01 and dns-01, through the resolver
and to the port the configuration names (so a test can validate on loopback)."""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import logging
from dataclasses import dataclass

import dns.exception
import dns.resolver

from enrollment.acme.jose import b64url
from enrollment.acme.problems import AcmeProblem
from vpnca.config import AcmeSettings
from vpnca.errors import ConfigError

log = logging.getLogger("vpnca.acme")

MAX_RESPONSE_BYTES = 8 * 1024


@dataclass(frozen=True)
class Identifier:
    type: str  # dns | ip
    value: str


def dns01_value(key_authorization: str) -> str:
    """The TXT record content dns-01 expects (RFC 8555 8.4)."""
    return b64url(hashlib.sha256(key_authorization.encode()).digest())


class Validator:
    """Checks that the account controls an identifier, as the configuration says to reach it."""

    def __init__(self, settings: AcmeSettings) -> None:
        self.port = settings.http01_port
        self.timeout = settings.validation_timeout_seconds
        self.resolver = dns.resolver.Resolver(configure=not settings.dns_resolver)
        if settings.dns_resolver:
            host, port = resolver_address(settings.dns_resolver)
            self.resolver.nameservers = [host]
            self.resolver.port = port
        self.resolver.lifetime = self.timeout

    def validate(self, challenge_type: str, identifier: Identifier, token: str,
                 key_authorization: str) -> None:
        """Return if the challenge is met; raise AcmeProblem (connection, dns, incorrectResponse) if not."""
        if challenge_type == "http-01":
            self._http01(identifier, token, key_authorization)
        elif challenge_type == "dns-01":
            self._dns01(identifier, key_authorization)
        else:
            raise AcmeProblem("malformed", f"unknown challenge type {challenge_type}")

    def _addresses(self, identifier: Identifier) -> list[str]:
        if identifier.type == "ip":
            return [identifier.value]
        addresses: list[str] = []
        for rdtype in ("A", "AAAA"):
            try:
                addresses += [r.to_text() for r in self.resolver.resolve(identifier.value, rdtype)]
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            except dns.exception.DNSException as exc:
                raise AcmeProblem("dns", f"resolving {identifier.value} {rdtype}: {exc}") from exc
        if not addresses:
            raise AcmeProblem("dns", f"{identifier.value} has no A or AAAA record")
        return addresses

    def _http01(self, identifier: Identifier, token: str, key_authorization: str) -> None:
        address = self._addresses(identifier)[0]
        bracketed = identifier.type == "ip" and ":" in identifier.value
        host = f"[{identifier.value}]" if bracketed else identifier.value
        path = f"/.well-known/acme-challenge/{token}"
        connection = http.client.HTTPConnection(address, self.port, timeout=self.timeout)
        try:
            connection.request("GET", path, headers={"Host": host, "User-Agent": "vpnca-acme-validator",
                                                      "Accept": "*/*"})
            response = connection.getresponse()
            body = response.read(MAX_RESPONSE_BYTES + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise AcmeProblem("connection",
                              f"fetching http://{host}:{self.port}{path} from {address}: {exc}") from exc
        finally:
            connection.close()
        if response.status != 200:
            raise AcmeProblem("unauthorized",
                              f"http://{host}:{self.port}{path} answered {response.status}", 403)
        if len(body) > MAX_RESPONSE_BYTES or body.strip() != key_authorization.encode():
            raise AcmeProblem("incorrectResponse", f"http://{host}:{self.port}{path} did not return the key "
                              "authorization")

    def _dns01(self, identifier: Identifier, key_authorization: str) -> None:
        if identifier.type != "dns":
            raise AcmeProblem("malformed", "dns-01 cannot validate an IP address (RFC 8738)")
        name = f"_acme-challenge.{identifier.value}"
        expected = dns01_value(key_authorization)
        try:
            answers = self.resolver.resolve(name, "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer) as exc:
            raise AcmeProblem("unauthorized", f"no TXT record at {name}", 403) from exc
        except dns.exception.DNSException as exc:
            raise AcmeProblem("dns", f"resolving {name} TXT: {exc}") from exc
        found = [b"".join(r.strings).decode(errors="replace") for r in answers]
        if expected not in found:
            raise AcmeProblem("incorrectResponse",
                              f"the TXT records at {name} do not hold the expected value")


def resolver_address(text: str) -> tuple[str, int]:
    """ "192.0.2.53", "192.0.2.53:5353", "2001:db8::53" or "[2001:db8::53]:5353" -> (address, port)."""
    host, port = text, "53"
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":") or "53"
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    try:
        return str(ipaddress.ip_address(host)), int(port)
    except ValueError as exc:
        raise ConfigError("acme.dns_resolver must be an IP address with an optional port, "
                          f"not {text!r}") from exc


__all__ = ["Identifier", "Validator", "dns01_value", "resolver_address"]
