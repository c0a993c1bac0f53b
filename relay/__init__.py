"""relay: provider webhooks and polls in, one normalised job model out over SSE and HTTP.

The version has one source, `pyproject.toml`, read back from the installed distribution
(`jobrelay` on PyPI; the import name and the command are `relay`) when first asked for:
importing `importlib.metadata` takes tens of milliseconds, which the `relay` command would
otherwise spend before it can take Ctrl-C over.
"""

from __future__ import annotations

DISTRIBUTION = "jobrelay"


def __getattr__(name: str) -> str:
    if name != "__version__":
        raise AttributeError(f"module 'relay' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version(DISTRIBUTION)
    except PackageNotFoundError:  # a source tree on sys.path that was never installed
        found = "0+unknown"
    globals()["__version__"] = found
    return found
