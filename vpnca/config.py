"""Typed settings: VPNCA_HOME/vpnca.toml plus VPNCA_* environment overrides."""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from hsm.softhsm import DEFAULT_MODULE
from vpnca.errors import ConfigError

CONFIG_NAME = "vpnca.toml"
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class TokenSettings:
    module: str = DEFAULT_MODULE
    label: str = "vpnca"
    pin_file: Path | None = None
    softhsm_conf: Path | None = None


@dataclass(frozen=True)
class CaSettings:
    name: str = "vpnca-sub"
    organization: str = "vpnca"
    root_common_name: str = "vpnca Root CA"
    sub_common_name: str = "vpnca Issuing CA"
    root_key: str = "software"  # "software" (encrypted PKCS#8 under home) or "token"
    root_lifetime: timedelta = timedelta(days=3650)
    sub_lifetime: timedelta = timedelta(days=1825)
    ocsp_signer_lifetime: timedelta = timedelta(days=30)
    root_crl_lifetime: timedelta = timedelta(days=365)  # the offline root signs its CRL this far ahead
    name_constraints: bool = False


@dataclass(frozen=True)
class PolicySettings:
    allowed_domains: tuple[str, ...] = ()
    allowed_ip_ranges: tuple[IpNetwork, ...] = ()
    allow_dn_identities: bool = True


@dataclass(frozen=True)
class ProfileSettings:
    lifetime: timedelta
    approval: bool = False  # enrollments wait for `vpnca approve`


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    https_port: int = 8443
    http_port: int = 8080
    tls_names: tuple[str, ...] = ("localhost", "127.0.0.1")  # SANs of the HTTPS server certificate


@dataclass(frozen=True)
class EstSettings:
    default_profile: str = "device"
    bootstrap_ca_files: tuple[Path, ...] = ()  # manufacturer/bootstrap CAs for first enrollment
    trusted_proxies: tuple[str, ...] = ()  # addresses allowed to pass the client certificate
    client_cert_header: str = "x-ssl-client-cert"  # URL-encoded PEM, as nginx's $ssl_client_escaped_cert
    max_body_bytes: int = 16 * 1024
    retry_after_seconds: int = 60


@dataclass(frozen=True)
class CrlSettings:
    next_update: timedelta = timedelta(hours=24)
    regenerate_every: timedelta = timedelta(hours=1)
    delta: bool = False
    delta_next_update: timedelta = timedelta(hours=1)


@dataclass(frozen=True)
class OcspSettings:
    validity: timedelta = timedelta(hours=24)  # nextUpdate - thisUpdate of a pre-signed response
    refresh_before: timedelta = timedelta(hours=12)  # re-sign when less than this is left
    presign_every: timedelta = timedelta(minutes=1)
    max_request_bytes: int = 16 * 1024


@dataclass(frozen=True)
class GatewaySettings:
    """The bundled strongSwan gateway vpnca keeps credentials fresh for."""

    id: str = ""  # the gateway's IKE identity (its certificate's SAN)
    vici_socket: str = "unix:///var/run/charon.vici"
    local_addrs: tuple[str, ...] = ("%any",)
    local_ts: tuple[str, ...] = ("10.200.1.0/24",)  # the API subnets (and ports: "10.0.1.0/24[tcp/443]")
    remote_ts: tuple[str, ...] = ("0.0.0.0/0",)
    ike_proposals: str = "aes256gcm16-prfsha384-ecp384"
    esp_proposals: str = "aes256gcm16-ecp384"
    rekey_time: str = "4h"
    reauth_time: str = "0"
    child_rekey_time: str = "1h"
    dpd_delay: str = "30s"
    renewal_jitter: float = 0.05  # of the lifetime, each way, so renewals don't storm
    check_every_seconds: float = 60.0  # how often the scheduler checks whether renewal is due


@dataclass(frozen=True)
class ScepSettings:
    # profiles whose (legacy) SCEP clients may use 3DES; empty: AES only, 3DES gets badAlg
    legacy_des3_profiles: tuple[str, ...] = ()


@dataclass(frozen=True)
class AcmeSettings:
    """RFC 8555 on the HTTPS listener (`/acme/directory`)."""

    enabled: bool = True
    profile: str = "gateway"  # what ACME certificates are issued as
    external_account_required: bool = True  # accounts need `vpnca acme eab create` keys
    http01_port: int = 80  # where the validator fetches /.well-known/acme-challenge/<token>
    dns_resolver: str = ""  # "host[:port]" the validator asks (A/AAAA and TXT); empty: the system's
    validation_timeout_seconds: float = 10.0
    nonce_lifetime: timedelta = timedelta(hours=1)
    order_lifetime: timedelta = timedelta(days=1)  # pending orders and authorizations expire after this
    authorization_lifetime: timedelta = timedelta(days=7)  # a valid authorization is reused this long
    max_body_bytes: int = 64 * 1024


@dataclass(frozen=True)
class LoggingSettings:
    syslog_tls: str = ""  # "host:port" of an RFC 5425 syslog receiver; empty: off
    syslog_ca_file: str = ""  # CA bundle that verifies the receiver (default: the system's)


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    http_base_url: str
    token: TokenSettings
    ca: CaSettings
    policy: PolicySettings
    profiles: dict[str, ProfileSettings] = field(default_factory=dict)
    server: ServerSettings = field(default_factory=ServerSettings)
    est: EstSettings = field(default_factory=EstSettings)
    crl: CrlSettings = field(default_factory=CrlSettings)
    ocsp: OcspSettings = field(default_factory=OcspSettings)
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    scep: ScepSettings = field(default_factory=ScepSettings)
    acme: AcmeSettings = field(default_factory=AcmeSettings)

    @property
    def config_path(self) -> Path:
        return self.home / CONFIG_NAME

    @property
    def crl_url(self) -> str:
        return f"{self.http_base_url}/crl/{self.ca.name}.crl"

    @property
    def root_crl_name(self) -> str:
        return f"{self.ca.name}-root"

    @property
    def root_crl_url(self) -> str:
        """The root's CRL (an ARL: it lists CA certificates), in the sub-CA's CRL distribution point."""
        return f"{self.http_base_url}/crl/{self.root_crl_name}.crl"

    @property
    def ocsp_url(self) -> str:
        return f"{self.http_base_url}/ocsp"

    @property
    def ca_issuers_url(self) -> str:
        return f"{self.http_base_url}/ca/{self.ca.name}.cer"


DEFAULT_PROFILES = {
    "device": ProfileSettings(lifetime=timedelta(days=7)),
    "gateway": ProfileSettings(lifetime=timedelta(days=30)),
    "service": ProfileSettings(lifetime=timedelta(days=30)),  # vpnca's own HTTPS server
}


def vpnca_home() -> Path:
    return Path(os.environ.get("VPNCA_HOME", ".vpnca")).resolve()


def _resolve(home: Path, value: str | None) -> Path | None:
    if not value:
        return None
    path = Path(value)
    return path if path.is_absolute() else home / path


def _duration(section: dict[str, Any], key: str, default: timedelta) -> timedelta:
    if f"{key}_seconds" in section:
        return timedelta(seconds=float(section[f"{key}_seconds"]))
    if f"{key}_hours" in section:
        return timedelta(hours=float(section[f"{key}_hours"]))
    if f"{key}_minutes" in section:
        return timedelta(minutes=float(section[f"{key}_minutes"]))
    if f"{key}_days" in section:
        return timedelta(days=float(section[f"{key}_days"]))
    return default


def load_settings(home: Path | None = None) -> Settings:
    """Read vpnca.toml under `home` (default VPNCA_HOME) and apply the environment overrides."""
    home = (home or vpnca_home()).resolve()
    path = home / CONFIG_NAME
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{path} not found: run `vpnca init` first") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return settings_from_dict(home, raw)


def settings_from_dict(home: Path, raw: dict[str, Any]) -> Settings:
    env = os.environ
    tok = raw.get("token", {})
    token = TokenSettings(
        module=env.get("VPNCA_PKCS11_MODULE") or tok.get("module", DEFAULT_MODULE),
        label=env.get("VPNCA_TOKEN_LABEL") or tok.get("label", "vpnca"),
        pin_file=_resolve(home, env.get("VPNCA_PIN_FILE") or tok.get("pin_file")),
        softhsm_conf=_resolve(home, tok.get("softhsm_conf")),
    )
    ca_raw = raw.get("ca", {})
    defaults = CaSettings()
    ca = CaSettings(
        name=ca_raw.get("name", defaults.name),
        organization=ca_raw.get("organization", defaults.organization),
        root_common_name=ca_raw.get("root_common_name", defaults.root_common_name),
        sub_common_name=ca_raw.get("sub_common_name", defaults.sub_common_name),
        root_key=ca_raw.get("root_key", defaults.root_key),
        root_lifetime=_duration(ca_raw, "root_lifetime", defaults.root_lifetime),
        sub_lifetime=_duration(ca_raw, "sub_lifetime", defaults.sub_lifetime),
        ocsp_signer_lifetime=_duration(
            ca_raw, "ocsp_signer_lifetime", defaults.ocsp_signer_lifetime
        ),
        root_crl_lifetime=_duration(ca_raw, "root_crl_lifetime", defaults.root_crl_lifetime),
        name_constraints=bool(ca_raw.get("name_constraints", False)),
    )
    if ca.root_key not in ("software", "token"):
        raise ConfigError(f"ca.root_key must be 'software' or 'token', not {ca.root_key!r}")
    pol = raw.get("policy", {})
    try:
        ranges = tuple(ipaddress.ip_network(r, strict=True) for r in pol.get("allowed_ip_ranges", []))
    except ValueError as exc:
        raise ConfigError(f"policy.allowed_ip_ranges: {exc}") from exc
    policy = PolicySettings(
        allowed_domains=tuple(d.lower().strip(".") for d in pol.get("allowed_domains", [])),
        allowed_ip_ranges=ranges,
        allow_dn_identities=bool(pol.get("allow_dn_identities", True)),
    )
    profiles = dict(DEFAULT_PROFILES)
    for name, section in raw.get("profiles", {}).items():
        base = profiles.get(name, DEFAULT_PROFILES["device"])
        profiles[name] = ProfileSettings(
            lifetime=_duration(section, "lifetime", base.lifetime),
            approval=bool(section.get("approval", base.approval)),
        )
    db_url = env.get("VPNCA_DATABASE_URL") or raw.get("database", {}).get("url") or (
        f"sqlite:///{home / 'vpnca.db'}"
    )
    http_base = raw.get("urls", {}).get("http_base", "http://127.0.0.1:8080").rstrip("/")
    srv = raw.get("server", {})
    server = ServerSettings(
        host=srv.get("host", "127.0.0.1"),
        https_port=int(srv.get("https_port", 8443)),
        http_port=int(srv.get("http_port", 8080)),
        tls_names=tuple(srv.get("tls_names", ServerSettings.tls_names)),
    )
    est_raw = raw.get("est", {})
    est = EstSettings(
        default_profile=est_raw.get("default_profile", "device"),
        bootstrap_ca_files=tuple(
            p for p in (_resolve(home, f) for f in est_raw.get("bootstrap_ca_files", [])) if p
        ),
        trusted_proxies=tuple(est_raw.get("trusted_proxies", [])),
        client_cert_header=est_raw.get("client_cert_header", "x-ssl-client-cert").lower(),
        max_body_bytes=int(est_raw.get("max_body_bytes", 16 * 1024)),
        retry_after_seconds=int(est_raw.get("retry_after_seconds", 60)),
    )
    crl_raw, ocsp_raw = raw.get("crl", {}), raw.get("ocsp", {})
    crl = CrlSettings(
        next_update=_duration(crl_raw, "next_update", CrlSettings.next_update),
        regenerate_every=_duration(crl_raw, "regenerate_every", CrlSettings.regenerate_every),
        delta=bool(crl_raw.get("delta", False)),
        delta_next_update=_duration(crl_raw, "delta_next_update", CrlSettings.delta_next_update),
    )
    ocsp = OcspSettings(
        validity=_duration(ocsp_raw, "validity", OcspSettings.validity),
        refresh_before=_duration(ocsp_raw, "refresh_before", OcspSettings.refresh_before),
        presign_every=_duration(ocsp_raw, "presign_every", OcspSettings.presign_every),
        max_request_bytes=int(ocsp_raw.get("max_request_bytes", OcspSettings.max_request_bytes)),
    )
    gw = raw.get("gateway", {})
    defaults_gw = GatewaySettings()
    gateway = GatewaySettings(**{
        name: tuple(gw[name]) if isinstance(getattr(defaults_gw, name), tuple) else type(getattr(defaults_gw, name))(gw[name])
        for name in GatewaySettings.__dataclass_fields__ if name in gw
    })
    acme_raw = raw.get("acme", {})
    acme = AcmeSettings(
        enabled=bool(acme_raw.get("enabled", AcmeSettings.enabled)),
        profile=str(acme_raw.get("profile", AcmeSettings.profile)),
        external_account_required=bool(acme_raw.get("external_account_required",
                                                    AcmeSettings.external_account_required)),
        http01_port=int(acme_raw.get("http01_port", AcmeSettings.http01_port)),
        dns_resolver=str(acme_raw.get("dns_resolver", "")),
        validation_timeout_seconds=float(acme_raw.get("validation_timeout_seconds",
                                                      AcmeSettings.validation_timeout_seconds)),
        nonce_lifetime=_duration(acme_raw, "nonce_lifetime", AcmeSettings.nonce_lifetime),
        order_lifetime=_duration(acme_raw, "order_lifetime", AcmeSettings.order_lifetime),
        authorization_lifetime=_duration(acme_raw, "authorization_lifetime", AcmeSettings.authorization_lifetime),
        max_body_bytes=int(acme_raw.get("max_body_bytes", AcmeSettings.max_body_bytes)),
    )
    if acme.profile not in profiles:
        raise ConfigError(f"acme.profile: no profile {acme.profile!r}")
    return Settings(
        home=home, database_url=db_url, http_base_url=http_base, token=token, ca=ca,
        policy=policy, profiles=profiles, server=server, est=est, crl=crl, ocsp=ocsp, gateway=gateway,
        scep=ScepSettings(legacy_des3_profiles=tuple(raw.get("scep", {}).get("legacy_des3_profiles", []))),
        acme=acme,
        logging=LoggingSettings(
            syslog_tls=str(raw.get("logging", {}).get("syslog_tls", "")),
            syslog_ca_file=str(_resolve(home, raw.get("logging", {}).get("syslog_ca_file")) or ""),
        ),
    )


def render_config(
    *,
    domains: list[str],
    ip_ranges: list[str],
    token_label: str,
    softhsm_conf: str | None,
    pin_file: str | None,
    module: str = DEFAULT_MODULE,
    ca_name: str = "vpnca-sub",
    http_base: str = "http://127.0.0.1:8080",
    root_key: str = "software",
    name_constraints: bool = False,
) -> str:
    """The text of a new vpnca.toml."""

    def toml_list(items: list[str]) -> str:
        return "[" + ", ".join(f'"{i}"' for i in items) + "]"

    token_lines = [f'module = "{module}"', f'label = "{token_label}"']
    if pin_file:
        token_lines.append(f'pin_file = "{pin_file}"')
    if softhsm_conf:
        token_lines.append(f'softhsm_conf = "{softhsm_conf}"')
    return "\n".join([
        "# vpnca configuration. Relative paths are relative to VPNCA_HOME.",
        "[ca]",
        f'name = "{ca_name}"',
        f'root_key = "{root_key}"',
        f"name_constraints = {'true' if name_constraints else 'false'}",
        "",
        "[token]",
        *token_lines,
        "",
        "[urls]",
        f'http_base = "{http_base}"',
        "",
        "[policy]",
        f"allowed_domains = {toml_list(domains)}",
        f"allowed_ip_ranges = {toml_list(ip_ranges)}",
        "allow_dn_identities = true",
        "",
        "[profiles.device]",
        "lifetime_days = 7",
        "",
        "[profiles.gateway]",
        "lifetime_days = 30",
        "",
    ])
