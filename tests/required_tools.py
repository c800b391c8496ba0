"""The programs some tests start beside kumo (dnsmasq, Postfix's smtp-sink, redis-server).

Such a test skips, saying what to install, when its program is missing on a developer's
machine, and fails under CI (``CI=true``), which must run it: ``.ci/run`` installs them.
"""

from __future__ import annotations

import os

import pytest


def require_tool(path: str | None, what: str, package: str) -> str:
    """``path`` (the program's path) if the program is installed; else skip the test,
    naming the Debian ``package`` that brings it, or fail it under CI."""
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{what} is not installed, and CI must run these tests (.ci/run)")
        pytest.skip(f"{what} is not installed (Debian: apt-get install {package})")
    return path
