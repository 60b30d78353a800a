"""Imported first by every benchmark script, before anything else.

``python bench/X.py`` puts ``bench/`` at the front of ``sys.path``, where ``bench/http.py``
would stand for the standard library's ``http`` package (and break httpx, urllib, uvicorn).
This takes ``bench/`` off the path and puts the repository on it instead, so the scripts
import ``collector``, ``api`` and ``bench.*`` as the package does.
"""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
