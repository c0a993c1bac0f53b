"""relay: provider webhooks and polls in, one normalised job model out over SSE and HTTP.

The version has one source, `pyproject.toml`, read back from the installed distribution
(`jobrelay` on PyPI; the import name and the command are `relay`).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "jobrelay"

try:
    __version__ = version(DISTRIBUTION)
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"
