"""vpnca.toml is validated strictly: unknown keys, wrong types and out-of-range values are errors."""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import tomllib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from vpnca.cli import main
from vpnca.config import (
    DEFAULT_PROFILES,
    PolicySettings,
    Settings,
    dump_toml,
    effective_config,
    load_settings,
    render_config,
    settings_from_dict,
)
from vpnca.errors import ConfigError

ENV = ("VPNCA_DATABASE_URL", "VPNCA_PKCS11_MODULE", "VPNCA_TOKEN_LABEL", "VPNCA_PIN_FILE", "VPNCA_PIN")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """VPNCA_HOME in a temp dir; the root logger is put back as it was (vpnca's main() configures it)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("VPNCA_HOME", str(home))
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield home
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


def load(home: Path, text: str) -> Settings:
    (home / "vpnca.toml").write_text(text)
    return load_settings(home)


def rendered() -> str:
    return render_config(domains=["example.com"], ip_ranges=["10.0.0.0/8"], token_label="vpnca",
                         softhsm_conf="softhsm/softhsm2.conf", pin_file="softhsm/pin")


def test_an_empty_file_gives_the_defaults(home: Path) -> None:
    settings = load(home, "")
    assert settings.profiles == DEFAULT_PROFILES
    assert settings.database_url == f"sqlite:///{home / 'vpnca.db'}"
    assert settings.ca.root_lifetime == timedelta(days=3650)
    assert settings.est.bootstrap_profile == "device"
    assert settings.crl_url == "http://127.0.0.1:8080/crl/vpnca-sub.crl"


def test_unknown_key_is_named_with_the_closest_valid_key(home: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(home, "[ca]\nname_constraint = true\n")
    assert str(info.value) == (f"unknown key ca.name_constraint in {home / 'vpnca.toml'}; "
                               "did you mean ca.name_constraints?")


@pytest.mark.parametrize(("text", "message"), [
    ("[crls]\ndelta = true\n", "unknown section crls in .*; did you mean crl\\?"),
    ("[profiles.device]\napprove = true\n",
     "unknown key profiles.device.approve in .*; did you mean profiles.device.approval\\?"),
    ("[profiles.device]\nlifetime_day = 3\n", "did you mean profiles.device.lifetime_days\\?"),
    ("[server]\nport = 8443\n", "unknown key server.port in .*; did you mean server.http_port\\?"),
])
def test_unknown_sections_and_keys_are_errors(home: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(home, text)


@pytest.mark.parametrize(("text", "key", "expected"), [
    ('[server]\nhttps_port = "x"\n', "server.https_port", 'expected an integer, got "x"'),
    ('[profiles.gateway]\napproval = "yes"\n', "profiles.gateway.approval",
     'expected true or false, got "yes"'),
    ('[ca]\nname_constraints = "false"\n', "ca.name_constraints", "expected true or false"),
    ("[crl]\ndelta = 1\n", "crl.delta", "expected true or false"),
    ("[est]\nmax_body_bytes = 1.5\n", "est.max_body_bytes", "expected an integer"),
    ('[policy]\nallowed_domains = "example.com"\n', "policy.allowed_domains", "expected a list"),
    ('[policy]\nallowed_ip_ranges = ["10.0.0.1/8"]\n', "policy.allowed_ip_ranges[0]", "host bits set"),
    ('[profiles.device]\nlifetime_days = "7"\n', "profiles.device.lifetime_days",
     "expected a number of days"),
    ('[ca]\nroot_key = "hsm"\n', "ca.root_key", "expected 'software' or 'token'"),
    ("ca = 1\n", "ca", "expected a table"),
])
def test_wrong_types_name_the_key_and_what_was_expected(home: Path, text: str, key: str,
                                                        expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(home, text)
    assert str(info.value).startswith(f"invalid {key} in {home / 'vpnca.toml'}: ")
    assert expected in str(info.value)


@pytest.mark.parametrize(("text", "key", "expected"), [
    ("[server]\nhttps_port = 70000\n", "server.https_port", "port number from 1 to 65535"),
    ("[acme]\nhttp01_port = 0\n", "acme.http01_port", "port number from 1 to 65535"),
    ("[profiles.device]\nlifetime_days = -1\n", "profiles.device.lifetime_days", "positive number of days"),
    ("[ocsp]\npresign_every_seconds = 0\n", "ocsp.presign_every_seconds", "positive number of seconds"),
    ("[ocsp]\nmax_request_bytes = 0\n", "ocsp.max_request_bytes", "positive"),
    ("[gateway]\nrenewal_jitter = 0.9\n", "gateway.renewal_jitter", "from 0 to 0.5"),
    ("[gateway]\ncheck_every_seconds = -3\n", "gateway.check_every_seconds", "positive"),
    ('[urls]\nhttp_base = "ftp://ca.example.com"\n', "urls.http_base", "http:// or https://"),
])
def test_out_of_range_values_are_errors(home: Path, text: str, key: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=f"^invalid {key.replace('.', '[.]')} in .*{expected}"):
        load(home, text)


def test_a_duration_takes_exactly_one_unit(home: Path) -> None:
    with pytest.raises(ConfigError, match=r"profiles\.device\.lifetime .*several units .*lifetime_hours"):
        load(home, "[profiles.device]\nlifetime_days = 1\nlifetime_hours = 2\n")
    with pytest.raises(ConfigError, match=r"profiles\.device\.lifetime .*lifetime_days"):
        load(home, "[profiles.device]\nlifetime = 7\n")
    settings = load(home, "[profiles.device]\nlifetime_hours = 36\n")
    assert settings.profiles["device"].lifetime == timedelta(hours=36)


@pytest.mark.parametrize("text", [
    '[acme]\nprofile = "nope"\n',
    '[est]\ndefault_profile = "nope"\n',
    '[est]\nbootstrap_profile = "nope"\n',
    '[scep]\nlegacy_des3_profiles = ["nope"]\n',
])
def test_profile_references_must_name_a_profile(home: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="no profile 'nope' \\(profiles: device, gateway, service\\)"):
        load(home, text)


def test_a_new_profile_can_be_referenced_and_inherits_the_device_lifetime(home: Path) -> None:
    settings = load(home, '[profiles.kiosk]\napproval = true\n[est]\nbootstrap_profile = "kiosk"\n')
    assert settings.est.bootstrap_profile == "kiosk"
    assert settings.profiles["kiosk"].lifetime == DEFAULT_PROFILES["device"].lifetime
    assert settings.profiles["kiosk"].approval


def test_a_profile_table_changes_only_the_keys_it_gives(home: Path) -> None:
    settings = load(home, '[profiles.gateway]\nlifetime_hours = 12\n'
                          '[profiles.merchant]\nekus = ["serverAuth"]\n')
    gateway = settings.profiles["gateway"]
    assert gateway.lifetime == timedelta(hours=12)
    assert gateway.ekus == DEFAULT_PROFILES["gateway"].ekus
    assert gateway.key_types == DEFAULT_PROFILES["gateway"].key_types
    merchant = settings.profiles["merchant"]
    assert merchant.ekus == ("serverAuth",)
    assert merchant.protocols == DEFAULT_PROFILES["device"].protocols  # a new profile starts as the device


@pytest.mark.parametrize(("text", "key", "expected"), [
    ('[profiles.m]\nekus = ["serverAuthh"]\n', "profiles.m.ekus[0]", "dotted OID or one of serverAuth"),
    ('[profiles.m]\nekus = ["1.3.6..1"]\n', "profiles.m.ekus[0]", "dotted OID"),
    ("[profiles.m]\nekus = []\n", "profiles.m.ekus", "at least 1 item"),
    ('[profiles.m]\nekus = ["clientAuth", "clientAuth"]\n', "profiles.m.ekus", "each item once"),
    ('[profiles.m]\nkey_types = ["ec-p521"]\n', "profiles.m.key_types[0]", "expected 'ec-p256'"),
    ('[profiles.m]\nkey_usages = ["digital_signature"]\n', "profiles.m.key_usages[0]", "'digitalSignature'"),
    ('[profiles.m]\nprotocols = ["cmp"]\n', "profiles.m.protocols[0]", "'est', 'scep' or 'acme'"),
    ('[profiles.m]\nidentities = "any"\n', "profiles.m.identities", "'policy' or 'server_tls_names'"),
])
def test_profile_values_are_validated(home: Path, text: str, key: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=f"^invalid {re.escape(key)} in .*{expected}"):
        load(home, text)


def test_unknown_profile_keys_are_errors(home: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key profiles\.m\.eku in .*mean profiles\.m\.ekus"):
        load(home, '[profiles.m]\neku = ["clientAuth"]\n')


@pytest.mark.parametrize("text", [
    '[acme]\nprofile = "service"\n',
    '[profiles.m]\nprotocols = ["scep"]\n[est]\ndefault_profile = "m"\n',
])
def test_a_protocol_default_must_be_a_profile_that_allows_it(home: Path, text: str) -> None:
    with pytest.raises(ConfigError, match=r"profile '?\w+'? does not allow (acme|est)"):
        load(home, text)


def test_every_problem_is_reported_at_once(home: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(home, '[ca]\nname_constraint = true\n[server]\nhttps_port = 70000\n')
    assert len(str(info.value).splitlines()) == 2


def test_environment_overrides_the_file(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = rendered() + '\n[database]\nurl = "sqlite:////from/file.db"\n'
    settings = load(home, text)
    assert settings.database_url == "sqlite:////from/file.db"
    assert settings.token.pin_file == home / "softhsm/pin"
    monkeypatch.setenv("VPNCA_DATABASE_URL", "postgresql+psycopg://vpnca@db/vpnca")
    monkeypatch.setenv("VPNCA_PKCS11_MODULE", "/opt/hsm/libpkcs11.so")
    monkeypatch.setenv("VPNCA_TOKEN_LABEL", "prod")
    monkeypatch.setenv("VPNCA_PIN_FILE", "secrets/pin")
    settings = load_settings(home)
    assert settings.database_url == "postgresql+psycopg://vpnca@db/vpnca"
    assert settings.token.module == "/opt/hsm/libpkcs11.so"
    assert settings.token.label == "prod"
    assert settings.token.pin_file == home / "secrets/pin"  # relative to VPNCA_HOME, like the file's paths
    monkeypatch.setenv("VPNCA_TOKEN_LABEL", "")  # empty: not set
    assert load_settings(home).token.label == "vpnca"


def test_types_the_code_relies_on(home: Path) -> None:
    settings = load(home, rendered() + '\n[est]\nbootstrap_ca_files = ["bootstrap.pem", "/etc/x.pem"]\n'
                    'client_cert_header = "X-Client-Cert"\n')
    assert settings.policy.allowed_ip_ranges == (ipaddress.ip_network("10.0.0.0/8"),)
    assert settings.est.bootstrap_ca_files == (home / "bootstrap.pem", Path("/etc/x.pem"))
    assert settings.est.client_cert_header == "x-client-cert"
    assert settings.server.tls_names == ("localhost", "127.0.0.1")
    assert isinstance(settings.ocsp.presign_every, timedelta)
    with pytest.raises(ValueError):
        settings.ca.name = "other"
    assert settings.model_copy(update={"http_base_url": "http://x"}).ocsp_url == "http://x/ocsp"
    policy = PolicySettings(allowed_domains=("example.com",),
                            allowed_ip_ranges=(ipaddress.ip_network("::/0"),))
    assert policy.allow_dn_identities


def test_settings_from_dict_checks_like_the_file(tmp_path: Path) -> None:
    assert settings_from_dict(tmp_path, {"ca": {"name": "x"}}).ca.name == "x"
    with pytest.raises(ConfigError, match=r"unknown key ca\.nmae"):
        settings_from_dict(tmp_path, {"ca": {"nmae": "x"}})


def test_config_check_prints_the_effective_settings(home: Path, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    (home / "vpnca.toml").write_text(rendered())  # what `vpnca init` writes
    (home / "softhsm").mkdir()
    (home / "softhsm" / "pin").write_text("pin-4711-never-printed")
    monkeypatch.setenv("VPNCA_PIN", "env-pin-never-printed")
    assert main(["config", "check"]) == 0
    out = capsys.readouterr().out
    effective = tomllib.loads(out)
    assert effective["profiles"]["device"] == {
        "lifetime_days": 7, "approval": False, "ekus": ["clientAuth", "ipsecIKE"],
        "key_usages": ["digitalSignature"], "key_types": ["ec-p256", "ec-p384", "rsa"],
        "protocols": ["est", "scep", "acme"], "identities": "policy", "lint_accepted": []}
    assert effective["est"]["bootstrap_profile"] == "device"
    assert effective["ocsp"]["presign_every_minutes"] == 1  # readable units
    assert effective["crl"]["next_update_days"] == 1
    assert effective["token"]["pin_file"] == str(home / "softhsm" / "pin")
    assert "never-printed" not in out
    assert settings_from_dict(home, effective) == load_settings(home)

    assert main(["config", "check", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["valid"] and report["settings"] == effective


def test_config_check_fails_cleanly(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (home / "vpnca.toml").write_text(rendered().replace("name_constraints", "name_constraint"))
    assert main(["config", "check"]) == 1
    captured = capsys.readouterr()
    assert captured.err.strip() == (f"vpnca: error: unknown key ca.name_constraint in {home / 'vpnca.toml'}; "
                                    "did you mean ca.name_constraints?")
    assert "Traceback" not in captured.err and "pydantic" not in captured.err
    assert main(["config", "check", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["valid"] is False
    (home / "vpnca.toml").write_text("[ca\n")
    assert main(["config", "check"]) == 1
    assert "vpnca.toml" in capsys.readouterr().err


def test_the_database_password_is_not_printed(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (home / "vpnca.toml").write_text('[database]\nurl = "postgresql+psycopg://vpnca:hunter2@db/vpnca"\n')
    assert main(["config", "check"]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out and "postgresql+psycopg://vpnca:***@db/vpnca" in out


FULL = """\
[ca]
name = "corp-sub"
organization = "Corp"
root_common_name = "Corp Root"
sub_common_name = "Corp Issuing"
root_key = "token"
root_lifetime_days = 7300
sub_lifetime_days = 3650
ocsp_signer_lifetime_days = 14
root_crl_lifetime_days = 180
name_constraints = true

[token]
module = "/opt/hsm/lib.so"
label = "corp"
pin_file = "/etc/vpnca/pin"
softhsm_conf = "/etc/vpnca/softhsm2.conf"

[urls]
http_base = "https://pki.corp.example"

[database]
url = "postgresql+psycopg://vpnca@db.corp.example/vpnca"

[policy]
allowed_domains = ["corp.example", "corp.test"]
allowed_ip_ranges = ["10.0.0.0/8", "2001:db8::/32"]
allow_dn_identities = false

[profiles.device]
lifetime_days = 3
approval = false
ekus = ["clientAuth", "ipsecIKE"]
key_usages = ["digitalSignature"]
key_types = ["ec-p256", "ec-p384", "rsa"]
protocols = ["est", "scep", "acme"]
identities = "policy"
lint_accepted = []

[profiles.gateway]
lifetime_hours = 36
approval = true
ekus = ["serverAuth", "clientAuth", "ipsecIKE", "ikeIntermediate"]
key_usages = ["digitalSignature"]
key_types = ["ec-p384"]
protocols = ["est"]
identities = "policy"
lint_accepted = []

[profiles.service]
lifetime_days = 14
approval = false
ekus = ["serverAuth"]
key_usages = ["digitalSignature"]
key_types = ["ec-p256"]
protocols = []
identities = "server_tls_names"
lint_accepted = ["pkix.invalid_domain_name_syntax"]

[profiles.kiosk]
lifetime_minutes = 90
approval = true
ekus = ["clientAuth", "1.3.6.1.4.1.99999.1"]
key_usages = ["digitalSignature", "keyAgreement"]
key_types = ["ed25519", "ec-p256"]
protocols = ["est", "acme"]
identities = "policy"
lint_accepted = []

[server]
host = "0.0.0.0"
https_port = 9443
http_port = 9080
tls_names = ["pki.corp.example"]

[est]
default_profile = "kiosk"
bootstrap_profile = "kiosk"
bootstrap_ca_files = ["/etc/vpnca/mfg-ca.pem"]
trusted_proxies = ["10.0.0.5"]
client_cert_header = "x-client-cert"
max_body_bytes = 8192
retry_after_seconds = 30
reenroll_grace_hours = 12

[crl]
next_update_hours = 12
regenerate_every_minutes = 30
delta = true
delta_next_update_minutes = 15
shards = 8
shard_window_hours = 6

[ocsp]
validity_hours = 8
refresh_before_hours = 4
presign_every_seconds = 30
signer_key = "ec-p384"
max_request_bytes = 4096

[gateway]
name = ""
id = "vpn.corp.example"
vici_socket = "unix:///run/charon.vici"
credentials = "ca"
groups = ["shops"]
local_addrs = ["192.0.2.1"]
local_ts = ["10.0.1.0/24[tcp/443]"]
remote_ts = ["10.8.0.0/16"]
ike_proposals = "aes256gcm16-prfsha384-ecp384"
esp_proposals = "aes256gcm16-ecp384"
rekey_time = "10h"
rand_time = "1h"
reauth_time = "0"
child_rekey_time = "2h"
child_rand_time = "10m"
child_life_time = "3h"
dpd_delay = "10s"
renewal_jitter = 0.1
check_every_seconds = 30.0

[logging]
syslog_tls = "siem.corp.example:6514"
syslog_ca_file = "/etc/vpnca/siem-ca.pem"

[scep]
legacy_des3_profiles = ["kiosk"]

[acme]
enabled = false
profile = "kiosk"
external_account_required = false
http01_port = 8080
dns_resolver = "10.0.0.53:53"
validation_timeout_seconds = 5.0
nonce_lifetime_minutes = 30
order_lifetime_hours = 12
authorization_lifetime_days = 3
max_body_bytes = 32768

[groups.shops]
identities = ["*.shops.corp.example"]
local_ts = ["10.0.1.0/24[tcp/443]"]
remote_ts = ["0.0.0.0/0"]

[[gateways]]
name = "vpn2"
id = "vpn2.corp.example"
vici_socket = "tls://vpn2.corp.example:4502"
credentials = "agent"
groups = ["shops"]
local_addrs = ["%any"]
local_ts = ["10.200.1.0/24"]
remote_ts = ["0.0.0.0/0"]
ike_proposals = "aes256gcm16-prfsha384-ecp384"
esp_proposals = "aes256gcm16-ecp384"
rekey_time = "9h"
rand_time = "45m"
reauth_time = "0"
child_rekey_time = "90m"
child_rand_time = "15m"
child_life_time = "2h"
dpd_delay = "30s"
renewal_jitter = 0.05
check_every_seconds = 60.0
"""


def test_a_full_config_round_trips(home: Path) -> None:
    settings = load(home, FULL)
    assert settings.profiles["kiosk"].lifetime == timedelta(minutes=90)
    assert settings.crl.regenerate_every == timedelta(minutes=30)
    assert settings.policy.allowed_ip_ranges[1] == ipaddress.ip_network("2001:db8::/32")
    assert settings.http_base_url == "https://pki.corp.example"
    printed = dump_toml(effective_config(settings))
    assert tomllib.loads(printed) == tomllib.loads(FULL)  # every section and key, every value kept
    assert settings_from_dict(home, tomllib.loads(printed)) == settings
