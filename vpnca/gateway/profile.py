"""The gateway's connection, built once from the crypto policy and used twice: rendered as
swanctl.conf and loaded over VICI (`load-conn`), so the file and the daemon never disagree."""

from __future__ import annotations

from typing import Any

from vpnca.config import Settings
from vpnca.errors import ConfigError
from vpnca.gateway.credentials import GatewayFiles
from vpnca.identities import identities_of_certificate

CONNECTION = "vpnca-gateway"
AUTHORITY = "vpnca"


def gateway_identity(settings: Settings) -> str:
    """The gateway's IKE identity: `gateway.id`, or else the identity of the enrolled gateway certificate
    (its first SAN; its subject DN when it has none), which `vpnca gateway enroll --id` chose."""
    if settings.gateway.id:
        return settings.gateway.id
    files = GatewayFiles.of(settings)
    if files.cert.exists():
        identities = identities_of_certificate(files.certificate())
        chosen = [i for i in identities if i.kind != "dn"] or list(identities)
        if chosen:
            return str(chosen[0])
    raise ConfigError("no gateway identity: set gateway.id in vpnca.toml or run "
                      "`vpnca gateway enroll --id ...`")


def connection(settings: Settings, *, gateway_cert: Any = "gateway.pem",
               ca_cert: Any = "sub.pem") -> dict[str, Any]:
    """The IKEv2 connection. Certificates are file names for swanctl.conf and DER blobs over VICI."""
    gw = settings.gateway
    return {
        "version": "2",
        "local_addrs": list(gw.local_addrs),
        "proposals": [gw.ike_proposals],
        "rekey_time": gw.rekey_time,
        "reauth_time": gw.reauth_time,
        "dpd_delay": gw.dpd_delay,
        "mobike": "yes",
        "send_certreq": "yes",
        "send_cert": "always",
        "local": {"auth": "pubkey", "certs": [gateway_cert], "id": gateway_identity(settings)},
        "remote": {"auth": "pubkey", "revocation": "strict", "cacerts": [ca_cert]},
        "children": {
            "api": {
                "local_ts": list(gw.local_ts),
                "remote_ts": list(gw.remote_ts),
                "esp_proposals": [gw.esp_proposals],  # with a DH group: PFS on every rekey
                "rekey_time": gw.child_rekey_time,
                "dpd_action": "clear",
            },
        },
    }


def authority(settings: Settings, *, ca_cert: Any = "sub.pem") -> dict[str, Any]:
    """Our sub-CA with the revocation URIs charon checks peers against."""
    return {"cacert": ca_cert, "ocsp_uris": [settings.ocsp_url], "crl_uris": [settings.crl_url]}


def _value(value: Any) -> str:
    return ", ".join(value) if isinstance(value, list) else str(value)


def _render(name: str, body: dict[str, Any], indent: int) -> list[str]:
    pad = "    " * indent
    lines = [f"{pad}{name} {{"]
    for key, value in body.items():
        if isinstance(value, dict):
            lines += _render(key, value, indent + 1)
        else:
            lines.append(f"{pad}    {key} = {_value(value)}")
    lines.append(f"{pad}}}")
    return lines


def render_swanctl(settings: Settings) -> str:
    """swanctl.conf for the gateway: the same connection and authority that `vpnca gateway push` loads."""
    lines = [("# Rendered by `vpnca gateway render` from the crypto policy; "
              "`vpnca gateway push` loads the same."),
             "# Files beside it: x509/gateway.pem, private/gateway.pem, x509ca/sub.pem, x509ca/root.pem."]
    lines += _render("connections", {CONNECTION: connection(settings)}, 0)
    lines += _render("authorities", {AUTHORITY: authority(settings)}, 0)
    return "\n".join(lines) + "\n"
