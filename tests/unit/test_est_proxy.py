"""The client-certificate header mode is only possible behind a proxy on the same machine."""

from pathlib import Path

import pytest

from enrollment.est import check_proxy_listener
from vpnca.config import settings_from_dict
from vpnca.errors import ConfigError


def test_proxy_header_mode_needs_a_loopback_listener(tmp_path: Path) -> None:
    behind_proxy = settings_from_dict(tmp_path, {"est": {"trusted_proxies": ["127.0.0.1"]}})
    check_proxy_listener(behind_proxy, "127.0.0.1")
    check_proxy_listener(behind_proxy, "::1")
    with pytest.raises(ConfigError, match="bound to loopback"):
        check_proxy_listener(behind_proxy, "0.0.0.0")
    with pytest.raises(ConfigError, match="bound to loopback"):
        check_proxy_listener(behind_proxy, "192.0.2.10")


def test_trusted_proxies_must_be_on_this_machine(tmp_path: Path) -> None:
    remote = settings_from_dict(tmp_path, {"est": {"trusted_proxies": ["192.0.2.1"]}})
    with pytest.raises(ConfigError, match=r"192\.0\.2\.1"):
        check_proxy_listener(remote, "127.0.0.1")


def test_without_a_proxy_any_listener_is_fine(tmp_path: Path) -> None:
    check_proxy_listener(settings_from_dict(tmp_path, {}), "0.0.0.0")
