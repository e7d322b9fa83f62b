"""The gateway's connection, built once from the crypto policy and used twice: rendered as
swanctl.conf and loaded over VICI (`load-conn`), so the file and the daemon never disagree."""

from __future__ import annotations

from typing import Any

from vpnca.config import GatewaySettings, GroupSettings, Settings
from vpnca.errors import ConfigError
from vpnca.gateway import fleet
from vpnca.gateway.credentials import GatewayFiles
from vpnca.identities import identities_of_certificate

CONNECTION = "vpnca-gateway"  # the one connection of a gateway without groups
PREFIX = "vpnca-"  # every connection vpnca loads; a push unloads those it no longer renders
AUTHORITY = "vpnca"


def gateway_identity(settings: Settings, gw: GatewaySettings | None = None) -> str:
    """The gateway's IKE identity: its `id`, or else the identity of the enrolled gateway certificate
    (its first SAN; its subject DN when it has none), which `vpnca gateway enroll --id` chose."""
    gw = gw or settings.gateway
    if gw.id:
        return gw.id
    files = GatewayFiles.of(settings, gw)
    if files.cert.exists():
        identities = identities_of_certificate(files.certificate())
        chosen = [i for i in identities if i.kind != "dn"] or list(identities)
        if chosen:
            return str(chosen[0])
    raise ConfigError("no gateway identity: set gateway.id in vpnca.toml or run "
                      "`vpnca gateway enroll --id ...`")


def _ike(settings: Settings, gw: GatewaySettings, gateway_cert: Any, ca_cert: Any, remote_id: str | None,
         local_ts: tuple[str, ...], remote_ts: tuple[str, ...]) -> dict[str, Any]:
    local: dict[str, Any] = {"auth": "pubkey", "id": gateway_identity(settings, gw)}
    if gw.credentials == "ca":  # else the agent on the gateway host loaded its own (charon finds it by id)
        local = {"auth": "pubkey", "certs": [gateway_cert], "id": local["id"]}
    remote: dict[str, Any] = {"auth": "pubkey", "revocation": "strict", "cacerts": [ca_cert]}
    if remote_id is not None:
        remote["id"] = remote_id  # a strongSwan identity pattern: only matching peers get this connection
    return {
        "version": "2",
        "local_addrs": list(gw.local_addrs),
        "proposals": [gw.ike_proposals],
        "rekey_time": gw.rekey_time,
        "rand_time": gw.rand_time,
        "reauth_time": gw.reauth_time,
        "dpd_delay": gw.dpd_delay,
        "mobike": "yes",
        "send_certreq": "yes",
        "send_cert": "always",
        "local": local,
        "remote": remote,
        "children": {
            "api": {
                "local_ts": list(local_ts),
                "remote_ts": list(remote_ts),
                "esp_proposals": [gw.esp_proposals],  # with a DH group: PFS on every rekey
                "rekey_time": gw.child_rekey_time,
                "rand_time": gw.child_rand_time,
                "life_time": gw.child_life_time,
                "dpd_action": "clear",
            },
        },
    }


def group_connections(name: str, group: GroupSettings) -> list[tuple[str, str]]:
    """(connection name, identity pattern): one connection per pattern of the group."""
    if len(group.identities) == 1:
        return [(f"{PREFIX}{name}", group.identities[0])]
    return [(f"{PREFIX}{name}-{i + 1}", pattern) for i, pattern in enumerate(group.identities)]


def connections(settings: Settings, gw: GatewaySettings | None = None, *, gateway_cert: Any = "gateway.pem",
                ca_cert: Any = "sub.pem") -> dict[str, dict[str, Any]]:
    """The gateway's IKEv2 connections: one for everyone, or one per group (and identity pattern) with
    that group's traffic selectors. Certificates are file names for swanctl.conf and DER blobs over VICI."""
    gw = gw or settings.gateway
    if not gw.groups:
        return {CONNECTION: _ike(settings, gw, gateway_cert, ca_cert, None, gw.local_ts, gw.remote_ts)}
    out = {}
    for group_name in gw.groups:
        group = settings.groups[group_name]
        for conn, pattern in group_connections(group_name, group):
            out[conn] = _ike(settings, gw, gateway_cert, ca_cert, pattern, group.local_ts, group.remote_ts)
    return out


def connection(settings: Settings, *, gateway_cert: Any = "gateway.pem", ca_cert: Any = "sub.pem",
               gw: GatewaySettings | None = None) -> dict[str, Any]:
    """The first connection (the only one without groups)."""
    return next(iter(connections(settings, gw, gateway_cert=gateway_cert, ca_cert=ca_cert).values()))


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


def render_swanctl(settings: Settings, gw: GatewaySettings | None = None) -> str:
    """swanctl.conf for a gateway: the same connections and authority that `vpnca gateway push` loads."""
    gw = gw or settings.gateway
    lines = [(f"# Rendered by `vpnca gateway render` for gateway {fleet.name_of(settings, gw) or 'default'} "
              "from the crypto policy; `vpnca gateway push` loads the same."),
             "# Files beside it: x509/gateway.pem, private/gateway.pem, x509ca/sub.pem, x509ca/root.pem."]
    lines += _render("connections", connections(settings, gw), 0)
    lines += _render("authorities", {AUTHORITY: authority(settings)}, 0)
    return "\n".join(lines) + "\n"
