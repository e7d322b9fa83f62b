"""Typed settings: VPNCA_HOME/vpnca.toml plus VPNCA_* environment overrides.

Every section of vpnca.toml is a frozen pydantic model that forbids unknown keys and does not coerce
types (a string is not an integer, "false" is not a boolean). Durations are written in the file as
`<name>_seconds|_minutes|_hours|_days` (exactly one of them) and held as timedelta; relative paths are
resolved against VPNCA_HOME. Whatever is wrong in the file becomes one ConfigError that names the file
and the dotted key (`settings_from_dict` is the only place pydantic's ValidationError is converted).
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import os
import re
import tomllib
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from hsm.softhsm import DEFAULT_MODULE
from vpnca.errors import ConfigError

CONFIG_NAME = "vpnca.toml"
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
DURATION_UNITS = ("seconds", "minutes", "hours", "days")
_KEY = "toml_key"  # the ctx entry of our own errors that names the key below the error's location


# -- value types --------------------------------------------------------------------------------

def _error(kind: str, message: str, **ctx: Any) -> PydanticCustomError:
    return PydanticCustomError(kind, message, ctx or None)


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _as_path(value: Any, info: ValidationInfo) -> Any:
    """A string is a path; a relative one is relative to VPNCA_HOME (the validation context's home)."""
    if isinstance(value, Path):
        return value
    if not isinstance(value, str) or not value:
        raise _error("path_type", "expected a path (a non-empty string)")
    path = Path(value)
    home = (info.context or {}).get("home")
    return home / path if home is not None and not path.is_absolute() else path


def _as_optional_path(value: Any, info: ValidationInfo) -> Any:
    return None if value is None or value == "" else _as_path(value, info)


def _as_network(value: Any) -> Any:
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value
    if not isinstance(value, str):
        raise _error("network_type", "expected a network in CIDR notation, e.g. \"10.0.0.0/8\"")
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        raise _error("network_value", "expected a network in CIDR notation: {reason}",
                     reason=str(exc)) from None


def _domain(value: str) -> str:
    return value.lower().strip(".")


def _positive(value: float) -> float:
    if not (value > 0 and math.isfinite(value)):
        raise _error("not_positive", "expected a positive number")
    return value


def _port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise _error("port_range", "expected a port number from 1 to 65535")
    return value


def _jitter(value: float) -> float:
    if not 0 <= value <= 0.5:
        raise _error("jitter_range", "expected a fraction from 0 to 0.5")
    return value


def _positive_duration(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise _error("not_positive", "expected a positive duration")
    return value


def _non_empty(value: str) -> str:
    if not value.strip():
        raise _error("empty", "expected a non-empty string")
    return value


def _http_url(value: str) -> str:
    if not re.match(r"https?://[^/\s]+", value):
        raise _error("url", "expected an http:// or https:// URL")
    return value.rstrip("/")


Name = Annotated[str, AfterValidator(_non_empty)]
Port = Annotated[int, AfterValidator(_port)]
PositiveInt = Annotated[int, AfterValidator(_positive)]
PositiveFloat = Annotated[float, AfterValidator(_positive)]
Duration = Annotated[timedelta, AfterValidator(_positive_duration)]
StrTuple = Annotated[tuple[str, ...], BeforeValidator(_as_tuple)]
HomePath = Annotated[Path, BeforeValidator(_as_path)]
OptionalHomePath = Annotated[Path | None, BeforeValidator(_as_optional_path)]
Network = Annotated[IpNetwork, BeforeValidator(_as_network)]


# -- sections ---------------------------------------------------------------------------------

class Section(BaseModel):
    """A table of vpnca.toml: unknown keys are errors, no type coercion, immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    zero_durations: ClassVar[tuple[str, ...]] = ()  # durations where 0 is allowed (and means "off")

    @classmethod
    def duration_fields(cls) -> tuple[str, ...]:
        return tuple(name for name, f in cls.model_fields.items() if f.annotation is timedelta)

    @classmethod
    def toml_keys(cls) -> list[str]:
        """The keys this table accepts in vpnca.toml (a duration as its four unit keys)."""
        durations = cls.duration_fields()
        return [key for name in cls.model_fields
                for key in ([f"{name}_{unit}" for unit in DURATION_UNITS] if name in durations else [name])]

    @model_validator(mode="before")
    @classmethod
    def _durations(cls, data: Any) -> Any:
        """`lifetime_days = 7` in the file becomes `lifetime = timedelta(days=7)`."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name in cls.duration_fields():
            given = [f"{name}_{unit}" for unit in DURATION_UNITS if f"{name}_{unit}" in data]
            if name in data and not isinstance(data[name], timedelta):
                raise _error("duration_unit", "expected the unit in the key: one of {keys}",
                             keys=", ".join(f"{name}_{unit}" for unit in DURATION_UNITS), **{_KEY: name})
            if len(given) + (name in data) > 1:
                raise _error("duration_units", "given in several units ({keys}); keep one",
                             keys=", ".join(given), **{_KEY: name})
            if not given:
                continue
            key = given[0]
            unit = key.removeprefix(f"{name}_")
            value = data.pop(key)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _error("duration_type", "expected a number of {unit}, got {value}", unit=unit,
                             value=repr(value), **{_KEY: key})
            if not ((value > 0 or (value == 0 and name in cls.zero_durations)) and math.isfinite(value)):
                raise _error("duration_range", "expected a positive number of {unit}, got {value}", unit=unit,
                             value=repr(value), **{_KEY: key})
            try:
                data[name] = timedelta(**{unit: value})
            except OverflowError:
                raise _error("duration_range", "{value} {unit} is too long", unit=unit, value=repr(value),
                             **{_KEY: key}) from None
        return data


class TokenSettings(Section):
    module: str = DEFAULT_MODULE
    label: Name = "vpnca"
    pin_file: OptionalHomePath = None
    softhsm_conf: OptionalHomePath = None


class CaSettings(Section):
    name: Name = "vpnca-sub"
    organization: str = "vpnca"
    root_common_name: Name = "vpnca Root CA"
    sub_common_name: Name = "vpnca Issuing CA"
    root_key: Literal["software", "token"] = "software"  # encrypted PKCS#8 under home, or on the token
    root_lifetime: Duration = timedelta(days=3650)
    sub_lifetime: Duration = timedelta(days=1825)
    ocsp_signer_lifetime: Duration = timedelta(days=30)
    root_crl_lifetime: Duration = timedelta(days=365)  # the offline root signs its CRL this far ahead
    name_constraints: bool = False


class PolicySettings(Section):
    allowed_domains: Annotated[tuple[Annotated[str, AfterValidator(_domain)], ...],
                               BeforeValidator(_as_tuple)] = ()
    allowed_ip_ranges: Annotated[tuple[Network, ...], BeforeValidator(_as_tuple)] = ()
    allow_dn_identities: bool = True


EXTENDED_KEY_USAGES = {  # RFC 5280 4.2.1.12 names; id-kp-ipsecIKE (RFC 4945), IKE intermediate
    "serverAuth": "1.3.6.1.5.5.7.3.1",
    "clientAuth": "1.3.6.1.5.5.7.3.2",
    "codeSigning": "1.3.6.1.5.5.7.3.3",
    "emailProtection": "1.3.6.1.5.5.7.3.4",
    "timeStamping": "1.3.6.1.5.5.7.3.8",
    "OCSPSigning": "1.3.6.1.5.5.7.3.9",
    "ipsecIKE": "1.3.6.1.5.5.7.3.17",
    "ikeIntermediate": "1.3.6.1.5.5.8.2.2",  # macOS and Windows want it in gateway certificates
}
KeyUsageName = Literal["digitalSignature", "contentCommitment", "keyEncipherment", "dataEncipherment",
                       "keyAgreement", "keyCertSign", "cRLSign"]
KeyType = Literal["ec-p256", "ec-p384", "rsa", "ed25519"]
EnrollmentProtocol = Literal["est", "scep", "acme"]
_DOTTED_OID = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+")


def _extended_key_usage(value: str) -> str:
    if value not in EXTENDED_KEY_USAGES and not _DOTTED_OID.fullmatch(value):
        raise _error("eku", "expected a dotted OID or one of {names}", names=", ".join(EXTENDED_KEY_USAGES))
    return value


def _unique(value: tuple[Any, ...]) -> tuple[Any, ...]:
    if len(set(value)) != len(value):
        raise _error("duplicates", "expected each item once")
    return value


ExtendedKeyUsageName = Annotated[str, AfterValidator(_extended_key_usage)]
ProfileList = [BeforeValidator(_as_tuple), AfterValidator(_unique)]


class ProfileSettings(Section):
    """A leaf certificate profile, `[profiles.<name>]`; a new one starts from the device profile."""

    lifetime: Duration
    approval: bool = False  # enrollments wait for `vpnca approve`
    ekus: Annotated[tuple[ExtendedKeyUsageName, ...], *ProfileList, Field(min_length=1)]
    key_usages: Annotated[tuple[KeyUsageName, ...], *ProfileList, Field(min_length=1)] = ("digitalSignature",)
    # accepted subject keys; the first is what EST csrattrs asks for and serverkeygen makes
    key_types: Annotated[tuple[KeyType, ...], *ProfileList, Field(min_length=1)]
    # the enrollment protocols that may issue it (the CLI always may)
    protocols: Annotated[tuple[EnrollmentProtocol, ...], *ProfileList] = ()
    # "server_tls_names": only the names of server.tls_names (vpnca's own HTTPS certificate)
    identities: Literal["policy", "server_tls_names"] = "policy"
    lint_accepted: Annotated[tuple[Name, ...], *ProfileList] = ()  # pkilint codes that do not refuse it


class ServerSettings(Section):
    host: Name = "127.0.0.1"
    https_port: Port = 8443
    http_port: Port = 8080
    # SANs of the HTTPS server certificate
    tls_names: Annotated[StrTuple, Field(min_length=1)] = ("localhost", "127.0.0.1")


class EstSettings(Section):
    default_profile: Name = "device"
    # the only profile a TLS client certificate from a bootstrap CA (below) may enroll for
    bootstrap_profile: Name = "device"
    # manufacturer/bootstrap CAs for first enrollment
    bootstrap_ca_files: Annotated[tuple[HomePath, ...], BeforeValidator(_as_tuple)] = ()
    trusted_proxies: StrTuple = ()  # addresses allowed to pass the client certificate
    # URL-encoded PEM, as nginx's $ssl_client_escaped_cert
    client_cert_header: Annotated[Name, AfterValidator(str.lower)] = "x-ssl-client-cert"
    max_body_bytes: PositiveInt = 16 * 1024
    retry_after_seconds: PositiveInt = 60
    # simplereenroll accepts a vpnca certificate expired less than this ago (0: off; `vpnca agent`)
    reenroll_grace: timedelta = timedelta(0)
    zero_durations: ClassVar[tuple[str, ...]] = ("reenroll_grace",)


class CrlSettings(Section):
    next_update: Duration = timedelta(hours=24)
    regenerate_every: Duration = timedelta(hours=1)
    delta: bool = False
    delta_next_update: Duration = timedelta(hours=1)
    shards: Annotated[int, Field(ge=0, le=256)] = 0  # partitioned CRLs (0: one CRL); see vpnca/crlshards.py
    shard_window: Duration = timedelta(days=1)  # leaves expiring in the same window share a shard


class OcspSettings(Section):
    validity: Duration = timedelta(hours=24)  # nextUpdate - thisUpdate of a pre-signed response
    refresh_before: Duration = timedelta(hours=12)  # re-sign when less than this is left
    presign_every: Duration = timedelta(minutes=1)
    # the delegated signer's key, made on the token by `vpnca init` and `vpnca ocsp rotate-signer`: P-256
    # signs several times faster than P-384 on a token, and pre-signing is that key's work
    signer_key: Literal["ec-p256", "ec-p384"] = "ec-p256"
    max_request_bytes: PositiveInt = 16 * 1024


class GatewaySettings(Section):
    """A strongSwan gateway vpnca manages: `[gateway]` (the bundled one) or a `[[gateways]]` entry."""

    name: str = ""  # required in [[gateways]]; [gateway] is "default"
    id: str = ""  # the gateway's IKE identity (its certificate's SAN)
    vici_socket: Name = "unix:///var/run/charon.vici"  # or tls://host:port of `vpnca agent vici-relay`
    credentials: Literal["ca", "agent"] = "ca"  # who enrolls and renews its certificate and key
    groups: StrTuple = ()  # [groups.NAME] it serves, one connection each; empty: one for everyone
    local_addrs: StrTuple = ("%any",)
    local_ts: StrTuple = ("10.200.1.0/24",)  # the API subnets (and ports: "10.0.1.0/24[tcp/443]")
    remote_ts: StrTuple = ("0.0.0.0/0",)
    ike_proposals: Name = "aes256gcm16-prfsha384-ecp384"
    esp_proposals: Name = "aes256gcm16-ecp384"
    rekey_time: Name = "9h"  # swanctl.conf time values, passed through; IKE SA: 8h15m-9h, hard 9h54m
    rand_time: Name = "45m"  # rekeys jittered by up to this, so a fleet does not rekey in step
    reauth_time: Name = "0"
    child_rekey_time: Name = "90m"  # CHILD SA: 75-90 min, hard limit child_life_time
    child_rand_time: Name = "15m"
    child_life_time: Name = "2h"
    dpd_delay: Name = "30s"
    renewal_jitter: Annotated[float, AfterValidator(_jitter)] = 0.05  # of the lifetime, each way
    check_every_seconds: PositiveFloat = 60.0  # how often the scheduler checks whether renewal is due


class GroupSettings(Section):
    """`[groups.NAME]`: which peers (strongSwan identity patterns, e.g. "*.shop-a.example.com",
    "*@a.example.com", "CN=*, OU=A, O=Example") get which CHILD SA traffic selectors."""

    identities: Annotated[StrTuple, AfterValidator(lambda v: v or _no_identities())]
    local_ts: StrTuple  # the subnets (and ports: "10.0.1.0/24[tcp/443]") this group may reach
    remote_ts: StrTuple = ("0.0.0.0/0",)


def _no_identities() -> tuple[str, ...]:
    raise _error("empty", "expected at least one identity pattern")


class ScepSettings(Section):
    # profiles whose (legacy) SCEP clients may use 3DES; empty: AES only, 3DES gets badAlg
    legacy_des3_profiles: StrTuple = ()


class AcmeSettings(Section):
    """RFC 8555 on the HTTPS listener (`/acme/directory`)."""

    enabled: bool = True
    profile: Name = "gateway"  # what ACME certificates are issued as
    external_account_required: bool = True  # accounts need `vpnca acme eab create` keys
    http01_port: Port = 80  # where the validator fetches /.well-known/acme-challenge/<token>
    dns_resolver: str = ""  # "host[:port]" the validator asks (A/AAAA and TXT); empty: the system's
    validation_timeout_seconds: PositiveFloat = 10.0
    nonce_lifetime: Duration = timedelta(hours=1)
    order_lifetime: Duration = timedelta(days=1)  # pending orders and authorizations expire after this
    authorization_lifetime: Duration = timedelta(days=7)  # a valid authorization is reused this long
    max_body_bytes: PositiveInt = 64 * 1024


def _syslog_ca_file(value: str, info: ValidationInfo) -> str:
    return str(_as_path(value, info)) if value else ""


class LoggingSettings(Section):
    syslog_tls: str = ""  # "host:port" of an RFC 5425 syslog receiver; empty: off
    # CA bundle that verifies the receiver (default: the system's)
    syslog_ca_file: Annotated[str, AfterValidator(_syslog_ca_file)] = ""


class DatabaseSection(Section):
    url: Name | None = None  # default: SQLite in VPNCA_HOME


class UrlsSection(Section):
    http_base: Annotated[str, AfterValidator(_http_url)] = "http://127.0.0.1:8080"  # CRL, OCSP, AIA


_CLIENT_KEYS: tuple[KeyType, ...] = ("ec-p256", "ec-p384", "rsa")
DEFAULT_PROFILES = {
    "device": ProfileSettings(lifetime=timedelta(days=7), ekus=("clientAuth", "ipsecIKE"),
                              key_types=_CLIENT_KEYS, protocols=("est", "scep", "acme")),
    # clientAuth too: a gateway host renews its own certificate over EST with it (mutual TLS)
    "gateway": ProfileSettings(lifetime=timedelta(days=30),
                               ekus=("serverAuth", "clientAuth", "ipsecIKE", "ikeIntermediate"),
                               key_types=("ec-p384", "ec-p256", "rsa"), protocols=("est", "scep", "acme")),
    # vpnca's own HTTPS server; its names may be `localhost`, a single label pkilint's syntax check refuses
    "service": ProfileSettings(lifetime=timedelta(days=30), ekus=("serverAuth",), key_types=_CLIENT_KEYS,
                               identities="server_tls_names",
                               lint_accepted=("pkix.invalid_domain_name_syntax",)),
}


# -- the settings the code uses ---------------------------------------------------------------

class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    home: Path
    database_url: str
    http_base_url: str
    token: TokenSettings
    ca: CaSettings
    policy: PolicySettings
    profiles: dict[str, ProfileSettings] = Field(default_factory=lambda: dict(DEFAULT_PROFILES))
    server: ServerSettings = Field(default_factory=ServerSettings)
    est: EstSettings = Field(default_factory=EstSettings)
    crl: CrlSettings = Field(default_factory=CrlSettings)
    ocsp: OcspSettings = Field(default_factory=OcspSettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    gateways: Annotated[tuple[GatewaySettings, ...], BeforeValidator(_as_tuple)] = ()
    groups: dict[str, GroupSettings] = Field(default_factory=dict)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    scep: ScepSettings = Field(default_factory=ScepSettings)
    acme: AcmeSettings = Field(default_factory=AcmeSettings)

    @model_validator(mode="after")
    def _profile_references(self) -> Settings:
        references = [("acme.profile", self.acme.profile), ("est.default_profile", self.est.default_profile),
                      ("est.bootstrap_profile", self.est.bootstrap_profile)]
        references += [(f"scep.legacy_des3_profiles[{i}]", name)
                       for i, name in enumerate(self.scep.legacy_des3_profiles)]
        for key, name in references:
            if name not in self.profiles:
                raise _error("unknown_profile", "no profile {name} (profiles: {known})", name=repr(name),
                             known=", ".join(sorted(self.profiles)), **{_KEY: key})
        for key, name, protocol in [("acme.profile", self.acme.profile, "acme"),
                                    ("est.default_profile", self.est.default_profile, "est"),
                                    ("est.bootstrap_profile", self.est.bootstrap_profile, "est")]:
            if protocol not in self.profiles[name].protocols:
                raise _error("profile_protocol", "profile {name} does not allow {protocol} (profiles.{name}"
                             ".protocols)", name=name, protocol=protocol, **{_KEY: key})
        _check_gateways(self)
        return self

    @property
    def config_path(self) -> Path:
        return self.home / CONFIG_NAME

    @property
    def crl_url(self) -> str:
        return f"{self.http_base_url}/crl/{self.ca.name}.crl"

    @property
    def delta_crl_name(self) -> str:
        return f"{self.ca.name}-delta"

    @property
    def delta_crl_url(self) -> str:
        """Where the delta CRLs are (the Freshest CRL pointer of leaves and full CRLs, RFC 5280 5.2.6)."""
        return f"{self.http_base_url}/crl/{self.delta_crl_name}.crl"

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


def _check_gateways(settings: Settings) -> None:
    """[[gateways]] entries need a unique name and an id; every group a gateway names exists."""
    names = ["default"]
    for i, gw in enumerate(settings.gateways):
        if not gw.name or not gw.id:
            raise _error("gateway_entry", "a [[gateways]] entry needs a name and an id",
                         **{_KEY: f"gateways[{i}]"})
        if gw.name in names:
            raise _error("gateway_name", "gateway name {name} is used twice", name=repr(gw.name),
                         **{_KEY: f"gateways[{i}].name"})
        names.append(gw.name)
    entries = [("gateway", settings.gateway)]
    entries += [(f"gateways[{i}]", g) for i, g in enumerate(settings.gateways)]
    for key, gw in entries:
        for group in gw.groups:
            if group not in settings.groups:
                raise _error("unknown_group", "no [groups.{name}] (groups: {known})", name=group,
                             known=", ".join(sorted(settings.groups)) or "none", **{_KEY: f"{key}.groups"})


class ConfigFile(BaseModel):
    """vpnca.toml as written: its tables and nothing else."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    token: TokenSettings = Field(default_factory=TokenSettings)
    ca: CaSettings = Field(default_factory=CaSettings)
    urls: UrlsSection = Field(default_factory=UrlsSection)
    database: DatabaseSection = Field(default_factory=DatabaseSection)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    profiles: dict[str, ProfileSettings] = Field(default_factory=dict)
    server: ServerSettings = Field(default_factory=ServerSettings)
    est: EstSettings = Field(default_factory=EstSettings)
    crl: CrlSettings = Field(default_factory=CrlSettings)
    ocsp: OcspSettings = Field(default_factory=OcspSettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    gateways: Annotated[tuple[GatewaySettings, ...], BeforeValidator(_as_tuple)] = ()
    groups: dict[str, GroupSettings] = Field(default_factory=dict)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    scep: ScepSettings = Field(default_factory=ScepSettings)
    acme: AcmeSettings = Field(default_factory=AcmeSettings)

    @field_validator("profiles", mode="before")
    @classmethod
    def _inherit_defaults(cls, value: Any) -> Any:
        """A profile table changes only the keys it gives: of the built-in profile of its name, or of
        the device profile for a new one."""
        if not isinstance(value, dict):
            return value
        filled = {}
        lifetime_keys = {"lifetime", *(f"lifetime_{unit}" for unit in DURATION_UNITS)}
        for name, table in value.items():
            if isinstance(table, dict):
                default = dict(DEFAULT_PROFILES.get(name, DEFAULT_PROFILES["device"]))
                if lifetime_keys & set(table):
                    del default["lifetime"]
                filled[name] = {**default, **table}
            else:
                filled[name] = table
        return filled

    def settings(self, home: Path) -> Settings:
        return Settings(
            home=home, database_url=self.database.url or f"sqlite:///{home / 'vpnca.db'}",
            http_base_url=self.urls.http_base, token=self.token, ca=self.ca, policy=self.policy,
            profiles={**DEFAULT_PROFILES, **self.profiles}, server=self.server, est=self.est, crl=self.crl,
            ocsp=self.ocsp, gateway=self.gateway, logging=self.logging, scep=self.scep, acme=self.acme,
            gateways=self.gateways, groups=self.groups,
        )


# -- loading ----------------------------------------------------------------------------------

_ENV_OVERRIDES = {  # variable: (table, key)
    "VPNCA_DATABASE_URL": ("database", "url"),
    "VPNCA_PKCS11_MODULE": ("token", "module"),
    "VPNCA_TOKEN_LABEL": ("token", "label"),
    "VPNCA_PIN_FILE": ("token", "pin_file"),
}


def vpnca_home() -> Path:
    return Path(os.environ.get("VPNCA_HOME", ".vpnca")).resolve()


def load_settings(home: Path | None = None) -> Settings:
    """Read vpnca.toml under `home` (default VPNCA_HOME) and apply the environment overrides."""
    home = (home or vpnca_home()).resolve()
    path = home / CONFIG_NAME
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} not found: run `vpnca init` first") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return settings_from_dict(home, raw)


def settings_from_dict(home: Path, raw: dict[str, Any]) -> Settings:
    """The settings of a parsed vpnca.toml under `home`, with the VPNCA_* environment overrides."""
    raw = dict(raw)
    for variable, (table, key) in _ENV_OVERRIDES.items():
        if value := os.environ.get(variable):
            section = raw.get(table, {})
            if isinstance(section, dict):
                raw[table] = {**section, key: value}
    try:
        return ConfigFile.model_validate(raw, context={"home": home}).settings(home)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, home / CONFIG_NAME)) from None


# -- error messages ---------------------------------------------------------------------------

_EXPECTED = {
    "int_type": "expected an integer",
    "float_type": "expected a number",
    "bool_type": "expected true or false",
    "string_type": "expected a string",
    "tuple_type": "expected a list",
    "list_type": "expected a list",
    "model_type": "expected a table",
    "dict_type": "expected a table",
    "timedelta_type": "expected a duration",
    "missing": "required, not set",
}


def _dotted(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _keys_at(table: Sequence[str | int]) -> list[str]:
    """The keys vpnca.toml accepts in the table at `table` (() is the top level)."""
    if not table:
        return list(ConfigFile.model_fields)
    if table[0] == "profiles":
        return ProfileSettings.toml_keys() if len(table) == 2 else []
    field = ConfigFile.model_fields.get(str(table[0]))
    model = field.annotation if field else None
    if len(table) == 1 and isinstance(model, type) and issubclass(model, Section):
        return model.toml_keys()
    return []


def _unknown(loc: Sequence[str | int], value: Any, path: Path) -> str:
    table, key = loc[:-1], str(loc[-1])
    what = "section" if not table and isinstance(value, dict) else "key"
    message = f"unknown {what} {_dotted(loc)} in {path}"
    valid = _keys_at(table)
    if close := difflib.get_close_matches(key, valid, n=1):
        return f"{message}; did you mean {_dotted([*table, close[0]])}?"
    return f"{message}; valid: {', '.join(valid)}" if valid else message


def describe_errors(exc: ValidationError, path: Path) -> str:
    """One line per problem, each naming the file and the dotted key; no pydantic wording of types."""
    lines = []
    for err in exc.errors(include_url=False):
        loc: list[str | int] = list(err["loc"])
        ctx = err.get("ctx") or {}
        if _KEY in ctx:
            loc += str(ctx[_KEY]).split(".")
        if err["type"] == "extra_forbidden":
            lines.append(_unknown(loc, err.get("input"), path))
            continue
        expected = _EXPECTED.get(err["type"], err["msg"])
        value = err.get("input")
        shown = isinstance(value, str | int | float) and _dotted(loc) != "database.url" and _KEY not in ctx
        got = f", got {json.dumps(value)[:80]}" if shown else ""
        if err["type"] == "literal_error":
            expected = f"expected {ctx.get('expected', '')}"
        elif err["type"] == "too_short":
            expected = f"expected at least {ctx.get('min_length', 1)} item(s)"
        lines.append(f"invalid {_dotted(loc) or 'configuration'} in {path}: {expected}{got}")
    return "\n".join(lines)


# -- writing ----------------------------------------------------------------------------------

def _duration_entry(name: str, value: timedelta) -> tuple[str, int | float]:
    """The largest unit that states the duration exactly: `lifetime_days = 7`, `presign_every_minutes = 1`."""
    seconds = value.total_seconds()
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds % size == 0:
            return f"{name}_{unit}", int(seconds // size)
    return f"{name}_seconds", int(seconds) if seconds == int(seconds) else seconds


def _table(section: Section) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in type(section).model_fields:
        value = getattr(section, name)
        if isinstance(value, timedelta):
            key, number = _duration_entry(name, value)
            out[key] = number
        elif isinstance(value, tuple):
            out[name] = [str(v) if isinstance(v, Path | ipaddress.IPv4Network | ipaddress.IPv6Network) else v
                         for v in value]
        elif isinstance(value, Path):
            out[name] = str(value)
        elif value is not None:
            out[name] = value
    return out


def _masked_url(url: str) -> str:
    """The database URL without its password."""
    return re.sub(r"^([a-zA-Z0-9+.-]+://[^:/@]*:)[^@/]*@", r"\1***@", url)


def effective_config(settings: Settings) -> dict[str, Any]:
    """The settings in vpnca.toml's shape, every default filled in (secrets are not part of them)."""
    sections: dict[str, Any] = {
        "ca": _table(settings.ca), "token": _table(settings.token),
        "urls": {"http_base": settings.http_base_url},
        "database": {"url": _masked_url(settings.database_url)},
        "policy": _table(settings.policy),
        "profiles": {name: _table(profile) for name, profile in settings.profiles.items()},
    }
    for name in ("server", "est", "crl", "ocsp", "gateway", "logging", "scep", "acme"):
        sections[name] = _table(getattr(settings, name))
    if settings.groups:
        sections["groups"] = {name: _table(group) for name, group in settings.groups.items()}
    if settings.gateways:
        sections["gateways"] = [_table(gw) for gw in settings.gateways]
    return sections


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def dump_toml(config: dict[str, Any]) -> str:
    """TOML text of effective_config() (tables of scalars and lists; `profiles` one level deeper)."""
    lines: list[str] = []

    def table(header: str, values: dict[str, Any]) -> None:
        lines.extend(["", f"[{header}]"] if lines else [f"[{header}]"])
        lines.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in values.items())

    for name, values in config.items():
        if name in ("profiles", "groups"):
            for profile, profile_values in values.items():
                table(f"{name}.{_toml_key(profile)}", profile_values)
        elif name == "gateways":
            for entry in values:
                lines.extend(["", "[[gateways]]"])
                lines.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in entry.items())
        else:
            table(name, values)
    return "\n".join(lines) + "\n"


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
        "# Unknown keys are errors; `vpnca config check` prints the effective settings.",
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
