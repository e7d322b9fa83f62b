"""Several gateways and groups in vpnca.toml: what is refused, and the connections rendered from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from vpnca import vici_transport
from vpnca.config import Settings, load_settings
from vpnca.errors import ConfigError
from vpnca.gateway import fleet
from vpnca.gateway.profile import connections, render_swanctl

GROUPS = """
[gateway]
id = "vpn.example.com"
groups = ["shop-a", "shop-b"]

[groups.shop-a]
identities = ["*.a.example.com", "CN=*, OU=A, O=Example"]
local_ts = ["10.0.1.0/24[tcp/443]"]

[groups.shop-b]
identities = ["*.b.example.com"]
local_ts = ["10.0.2.0/24"]
remote_ts = ["10.8.0.0/16"]

[[gateways]]
name = "vpn2"
id = "vpn2.example.com"
vici_socket = "tls://vpn2.example.com:4502"
credentials = "agent"
groups = ["shop-b"]
"""


def load(tmp_path: Path, text: str) -> Settings:
    (tmp_path / "vpnca.toml").write_text(text)
    return load_settings(tmp_path)


@pytest.mark.parametrize(("text", "message"), [
    ('[gateway]\nid = "vpn.example.com"\ngroups = ["nope"]\n', "invalid gateway.groups"),
    ('[[gateways]]\nid = "vpn2.example.com"\n', "needs a name and an id"),
    ('[[gateways]]\nname = "a"\nid = "x.example.com"\n[[gateways]]\nname = "a"\nid = "y.example.com"\n',
     "gateway name 'a' is used twice"),
    ('[[gateways]]\nname = "default"\nid = "x.example.com"\n', "gateway name 'default' is used twice"),
    ('[groups.a]\nidentities = []\nlocal_ts = ["10.0.0.0/8"]\n', "at least one identity pattern"),
    ('[[gateways]]\nname = "b"\nid = "b.example.com"\ncredentials = "someone"\n',
     "invalid gateways.0..credentials.*expected 'ca' or 'agent'"),
])
def test_bad_gateway_and_group_tables_are_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load(tmp_path, text)


def test_one_connection_per_group_and_identity_pattern_with_the_groups_selectors(tmp_path: Path) -> None:
    settings = load(tmp_path, GROUPS)
    conns = connections(settings)
    assert list(conns) == ["vpnca-shop-a-1", "vpnca-shop-a-2", "vpnca-shop-b"]
    assert [c["remote"]["id"] for c in conns.values()] == ["*.a.example.com", "CN=*, OU=A, O=Example",
                                                           "*.b.example.com"]
    assert conns["vpnca-shop-a-1"]["children"]["api"]["local_ts"] == ["10.0.1.0/24[tcp/443]"]
    assert conns["vpnca-shop-b"]["children"]["api"]["remote_ts"] == ["10.8.0.0/16"]
    child = conns["vpnca-shop-b"]["children"]["api"]
    assert (child["rekey_time"], child["rand_time"], child["life_time"]) == ("90m", "15m", "2h")
    assert (conns["vpnca-shop-b"]["rekey_time"], conns["vpnca-shop-b"]["rand_time"]) == ("9h", "45m")
    assert conns["vpnca-shop-b"]["local"]["certs"] == ["gateway.pem"]


def test_a_gateway_whose_agent_holds_the_key_is_pushed_no_certificate(tmp_path: Path) -> None:
    settings = load(tmp_path, GROUPS)
    second = fleet.find(settings, "vpn2")
    conns = connections(settings, second)
    assert list(conns) == ["vpnca-shop-b"] and "certs" not in conns["vpnca-shop-b"]["local"]
    assert conns["vpnca-shop-b"]["local"]["id"] == "vpn2.example.com"
    assert "vpnca-shop-a" not in render_swanctl(settings, second)
    assert [fleet.name_of(settings, gw) for gw in fleet.managed(settings)] == ["vpn.example.com", "vpn2"]
    assert fleet.directory(settings, second) == tmp_path.resolve() / "gateways" / "vpn2"
    with pytest.raises(ConfigError, match="no gateway 'vpn3'"):
        fleet.find(settings, "vpn3")


def test_without_groups_there_is_one_connection_for_everyone(tmp_path: Path) -> None:
    settings = load(tmp_path, '[gateway]\nid = "vpn.example.com"\n')
    assert list(connections(settings)) == ["vpnca-gateway"]
    assert "id" not in connections(settings)["vpnca-gateway"]["remote"]  # any peer of the CA


@pytest.mark.parametrize("uri", ["tcp://127.0.0.1:4502", "tls://vpn.example.com", "/run/charon.vici", "unix://"])
def test_a_vici_uri_is_unix_or_tls_with_a_port(uri: str) -> None:
    with pytest.raises(ValueError, match="VICI socket URI"):
        vici_transport.parse(uri)
