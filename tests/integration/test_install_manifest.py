"""scripts/debian-packages.txt names every Debian package the code, the tests and the benchmarks need.

On a fresh Debian 12, `apt-get install --no-install-recommends` of that list must give every program the
code and tests run, every shared object they load, and every strongSwan plugin charon and `pki` load:
a Recommends (libstrongswan-standard-plugins, the openssl plugin) counts for nothing. The test finds the
package owning each of them with `dpkg -S` and fails naming any package the manifest does not list.
"""

from __future__ import annotations

import glob
import os
import platform
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import require_tool, run
from tests.integration.strongswan import Charon

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "scripts/debian-packages.txt"
SOURCE_DIRS = ("vpnca", "enrollment", "ocsp", "hsm", "tests")
PLUGIN_DIR = "/usr/lib/ipsec/plugins"

# Packages that are on every Debian system (Essential: yes, or Priority: required), so the manifest need
# not list them. The test checks each one really is, so this cannot hide a missing package.
BASE_SYSTEM = {
    "util-linux": "Essential: unshare (private /run for charon), runuser (PostgreSQL as postgres)",
    "mount": "Priority: required: mount -t tmpfs inside charon's private mount namespace",
    "dash": "Essential: /bin/sh, the shell that mounts /run and execs charon",
}

# Programs run from inside a command string or derived from another path, which the scan cannot see.
INDIRECT_PROGRAMS = {
    "sh": "tests/integration/strongswan.py (unshare -m sh -c ...)",
    "mount": "tests/integration/strongswan.py (mount -t tmpfs tmpfs /run)",
    "pg_ctl": "tests/conftest.py (beside initdb)",
}

_TOOL_CALL = re.compile(r"""(?:require_tool|shutil\.which)\(\s*["']([\w.+-]+)["']""")
_ABSOLUTE_PATH = re.compile(r"""["'](/usr/(?:s?bin|lib|libexec)/[\w.+/-]+)["']""")
_PKI_FAILED = re.compile(r"plugin '([\w-]+)': failed to load")


@dataclass(frozen=True)
class Use:
    """A file something needs at run time: a program, a shared object or a strongSwan plugin."""

    path: str
    user: str  # who runs or loads it


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def read_manifest(path: Path) -> set[str]:
    """The package names in a manifest: one or more per line, '#' starts a comment."""
    return {word for line in path.read_text().splitlines() for word in line.split("#", 1)[0].split()}


def locate_program(name: str) -> str | None:
    """Where the code and tests find `name`: the newest PostgreSQL's bin (conftest.py's initdb, pg_ctl),
    PATH, then /usr/sbin and /usr/lib/ipsec (tests/helpers.py's require_tool)."""
    postgres = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    candidates = [*postgres, shutil.which(name), f"/usr/sbin/{name}", f"/usr/lib/ipsec/{name}"]
    return next((p for p in candidates if p and os.access(p, os.X_OK)), None)


def _dpkg_candidates(path: str) -> list[str]:
    """`path` resolved first (alternatives symlinks), then as given, each also under its merged-/usr alias
    (dpkg on Debian 12 still records /bin/ip, /sbin/runuser, /lib/...)."""
    out: list[str] = []
    for p in (os.path.realpath(path), path):
        out.append(p)
        for usr, bare in (("/usr/bin/", "/bin/"), ("/usr/sbin/", "/sbin/"), ("/usr/lib/", "/lib/")):
            if p.startswith(usr):
                out.append(bare + p.removeprefix(usr))
            elif p.startswith(bare):
                out.append(usr + p.removeprefix(bare))
    return list(dict.fromkeys(out))


def owning_packages(paths: Iterable[str]) -> dict[str, list[str]]:
    """The Debian packages that own each of `paths` (one `dpkg -S` for all); [] when none does."""
    candidates = {path: _dpkg_candidates(path) for path in paths}
    queried = sorted({c for found in candidates.values() for c in found})
    result = subprocess.run([shutil.which("dpkg") or "/usr/bin/dpkg", "-S", *queried], capture_output=True,
                            text=True, check=False) if queried else None
    owned: dict[str, set[str]] = {}
    for line in result.stdout.splitlines() if result else []:
        if line.startswith("diversion by") or ": " not in line:
            continue
        names, path = line.split(": ", 1)
        owned.setdefault(path.strip(), set()).update(n.strip().split(":", 1)[0] for n in names.split(","))
    return {path: sorted(next((owned[c] for c in found if c in owned), set()))
            for path, found in candidates.items()}


def is_base_system(package: str) -> bool:
    fields = run(["dpkg-query", "-W", "-f=${Essential} ${Priority}", package], check=False).stdout.split()
    return "yes" in fields[:1] or "required" in fields


def check_manifest(manifest: Path, uses: Iterable[Use]) -> None:
    """Raise AssertionError naming every package that owns something in `uses` but is not in `manifest`."""
    listed = read_manifest(manifest)
    unowned: list[str] = []
    needed: dict[str, list[Use]] = {}
    needs = list(uses)
    owners_of = owning_packages(use.path for use in needs)
    for use in needs:
        owners = owners_of[use.path]
        if not owners:
            unowned.append(f"{use.path} ({use.user}) belongs to no Debian package")
        elif not any(o in listed or o in BASE_SYSTEM for o in owners):
            for owner in owners:
                needed.setdefault(owner, []).append(use)
    problems = [
        f"{package} (owns {'; '.join(f'{u.path}, {u.user}' for u in found)}) is not in "
        f"{manifest.relative_to(ROOT) if manifest.is_relative_to(ROOT) else manifest}"
        for package, found in sorted(needed.items())
    ]
    assert not problems and not unowned, "\n".join(problems + unowned)


def scanned_programs() -> Iterator[tuple[str, str]]:
    """(program name or absolute path, the file that runs it) for every require_tool / shutil.which call
    and every absolute /usr path in the code and the tests."""
    this = Path(__file__).resolve()
    for top in SOURCE_DIRS:
        for source in sorted((ROOT / top).rglob("*.py")):
            if source.resolve() == this:
                continue
            text = source.read_text()
            where = str(source.relative_to(ROOT))
            for name in _TOOL_CALL.findall(text):
                yield name, where
            for path in _ABSOLUTE_PATH.findall(text):
                yield path, where
    for name, where in INDIRECT_PROGRAMS.items():
        yield name, where


def program_uses() -> tuple[list[Use], list[str]]:
    """Uses of programs and shared objects, and what could not be found on this machine."""
    users: dict[str, list[str]] = {}
    missing: list[str] = []
    for name, where in scanned_programs():
        if name.startswith("/"):
            if os.path.isdir(name) or name.endswith("/"):
                continue  # a directory the code globs under (its files are scanned by name)
            path: str | None = name if os.path.exists(name) else None
        else:
            path = locate_program(name)
        if path is None:
            missing.append(f"{name} (run by {where})")
        elif where not in users.setdefault(path, []):
            users[path].append(where)
    return ([Use(path, f"{'loaded' if '.so' in Path(path).name else 'run'} by {', '.join(found)}")
             for path, found in users.items()], sorted(set(missing)))


def plugin_path(name: str) -> str:
    return f"{PLUGIN_DIR}/libstrongswan-{name}.so"


def charon_plugins(base: Path) -> list[str]:
    """The plugins a real charon loads with the configuration the gateway tests give it."""
    ip = require_tool("ip")
    netns = f"vpnca-manifest-{secrets.token_hex(3)}"
    run([ip, "netns", "add", netns])
    charon = Charon("manifest", netns, base / "charon", "10.99.0.1", "10.200.1.1")
    try:
        run([ip, "-n", netns, "link", "set", "lo", "up"])
        charon.start()
        with charon.session() as session:
            stats = session.stats()
    finally:
        charon.stop()
        subprocess.run([ip, "netns", "del", netns], capture_output=True, check=False)
    names = [p.decode() if isinstance(p, bytes) else str(p) for p in stats["plugins"]]
    return [n for n in names if n != "charon"]  # "charon" is the daemon's own feature set, not a file


def _blocked_reading_stdin(pid: int) -> bool:
    read_syscall = {"x86_64": "0", "aarch64": "63"}.get(platform.machine())
    try:
        syscall = Path(f"/proc/{pid}/syscall").read_text().split()
        wchan = Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return False
    return (syscall[:2] == [read_syscall, "0x0"]) or wchan.endswith("pipe_read")


def pki_plugins() -> list[str]:
    """The plugins `pki` loads as the tests run it (the system strongswan.conf): start `pki --print`, which
    loads its plugins and then waits on stdin, and read the plugin files mapped into it; minus those it
    reports it failed to load (their files stay mapped)."""
    pki = require_tool("pki")
    process = subprocess.Popen([pki, "--print", "--type", "x509"], stdin=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not _blocked_reading_stdin(process.pid):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("pki --print did not reach reading its input")
            time.sleep(0.02)
        maps = Path(f"/proc/{process.pid}/maps").read_text()
    finally:
        _, stderr = process.communicate(input="", timeout=30)
    mapped = set(re.findall(re.escape(PLUGIN_DIR) + r"/libstrongswan-([\w-]+)\.so", maps))
    return sorted(mapped - set(_PKI_FAILED.findall(stderr)))


@dataclass
class Needs:
    uses: list[Use]
    missing: list[str]  # programs not installed here (a failure in CI)


@pytest.fixture(scope="module")
def needs(tmp_path_factory: pytest.TempPathFactory) -> Needs:
    """Everything the code and tests need, found on this machine: missing programs fail in CI (CI=true)
    and skip elsewhere, after the manifest check of everything present."""
    found, missing = program_uses()
    if missing and in_ci():
        pytest.fail("not installed: " + "; ".join(missing) + " (run `make deps`)")
    plugins: dict[str, list[str]] = {}
    for user, names in (("charon", charon_plugins(tmp_path_factory.mktemp("manifest"))),
                        ("pki", pki_plugins())):
        for name in names:
            plugins.setdefault(name, []).append(user)
    for name, users in sorted(plugins.items()):
        path = plugin_path(name)
        if not os.path.exists(path):
            pytest.fail(f"plugin {name} loaded by {' and '.join(users)} is not at {path}")
        found.append(Use(path, f"loaded by {' and '.join(users)}"))
    return Needs(found, missing)


def test_every_package_the_code_and_tests_use_is_in_the_manifest(needs: Needs) -> None:
    check_manifest(MANIFEST, needs.uses)
    if needs.missing:
        pytest.fail("not installed (run `make deps`), so their packages cannot be checked: "
                    + "; ".join(needs.missing))


def test_base_system_exceptions_are_essential_or_required() -> None:
    for package in BASE_SYSTEM:
        assert is_base_system(package), f"{package} is neither Essential nor Priority: required"


@pytest.mark.parametrize("removed, owned", [
    ("libstrongswan-standard-plugins", "libstrongswan-openssl.so"),
    ("libsofthsm2", "libsofthsm2.so"),
    ("iproute2", "/ip"),
    ("libcharon-extra-plugins", "libstrongswan-kernel-libipsec.so"),
])
def test_manifest_without_a_needed_package_fails_naming_it(needs: Needs, tmp_path: Path, removed: str,
                                                            owned: str) -> None:
    lines = MANIFEST.read_text().splitlines()
    kept = [line for line in lines if line.split("#", 1)[0].split() != [removed]]
    assert len(kept) == len(lines) - 1, f"{removed} is not on a line of its own in {MANIFEST}"
    manifest = tmp_path / "debian-packages.txt"
    manifest.write_text("\n".join(kept) + "\n")
    with pytest.raises(AssertionError) as failure:
        check_manifest(manifest, needs.uses)
    message = str(failure.value)
    assert f"{removed} (owns " in message and owned in message
    assert f"is not in {manifest}" in message
