"""Make the ``kumo`` package importable when it is not installed in the environment.

A bare ``pytest`` from the repository root puts only this test directory on
``sys.path`` (there is no ``tests/__init__.py``), so without an editable install
``import kumo`` would fail. Once ``pip install -e .`` has been run this does nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

_REPO = str(Path(__file__).resolve().parents[2])
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)
