"""`vpnca gateway render`: the IKE identity in swanctl.conf is never empty."""

from __future__ import annotations

import re
import sys

from tests.conftest import CaHome
from tests.helpers import run

VPNCA = [sys.executable, "-m", "vpnca.cli"]


def local_id(swanctl_conf: str) -> str:
    found = re.search(r"^\s*local \{\n(?:.*\n)*?\s*id = (.*)$", swanctl_conf, re.MULTILINE)
    assert found, swanctl_conf
    return found.group(1).strip()


def test_render_without_gateway_id_or_enrolment_refuses_and_says_what_to_do(ca_home: CaHome) -> None:
    result = run([*VPNCA, "gateway", "render"], env=ca_home.env, check=False)
    assert result.returncode == 1 and result.stdout == ""
    assert "set gateway.id in vpnca.toml or run `vpnca gateway enroll --id ...`" in result.stderr
    assert "id = \n" not in result.stdout


def test_render_without_gateway_id_uses_the_enrolled_certificate_identity(ca_home: CaHome) -> None:
    run([*VPNCA, "gateway", "enroll", "--id", "vpn.example.com"], env=ca_home.env)
    rendered = run([*VPNCA, "gateway", "render"], env=ca_home.env).stdout
    assert local_id(rendered) == "vpn.example.com"


def test_render_uses_gateway_id_when_set(ca_home: CaHome) -> None:
    config = ca_home.home / "vpnca.toml"
    config.write_text(config.read_text() + '\n[gateway]\nid = "10.0.0.1"\n')
    rendered = run([*VPNCA, "gateway", "render"], env=ca_home.env).stdout
    assert local_id(rendered) == "10.0.0.1"
