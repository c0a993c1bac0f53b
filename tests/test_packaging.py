"""Packaging: the version has one source, and the wheel carries what users need."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import relay

ROOT = Path(__file__).parent.parent


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_relay_version_prints_the_version_of_the_installed_distribution():
    result = subprocess.run([sys.executable, "-m", "relay", "--version"], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"relay {project()['version']}"
    assert relay.__version__ == project()["version"]


def test_the_changelog_describes_this_version_and_the_previous_one():
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## {project()['version']} " in changelog
    assert "## 0.1.0 " in changelog


@pytest.mark.slow
def test_the_wheel_ships_py_typed_the_static_files_and_the_licence(tmp_path):
    # Built from a copy: setuptools leaves a build/ folder in the tree it builds from.
    source = tmp_path / "source"
    shutil.copytree(ROOT / "relay", source / "relay",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
         "-w", str(tmp_path), str(source)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    wheel, = tmp_path.glob("jobrelay-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "relay/py.typed" in names
    assert {"relay/static/client.js", "relay/static/docs.html"} <= names
    assert any(name.endswith("licenses/LICENSE") for name in names)
    metadata = zipfile.ZipFile(wheel).read(f"jobrelay-{project()['version']}.dist-info/METADATA")
    assert b"License-Expression: MIT" in metadata
    assert b"Requires-Dist: httpx-sse" in metadata
