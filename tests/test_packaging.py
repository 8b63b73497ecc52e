"""The wheel a user installs: built from the sources here (no download: the build
backend is the one the dev extra installs) and checked for what the package needs at run
time besides its Python modules."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "spangraph"


def test_the_wheel_holds_the_modules_web_ui_type_marker_and_license(tmp_path: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(
        ROOT / "src",
        source / "src",
        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.egg-info"),
    )
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", str(source), "-w", str(tmp_path / "dist")),
            *("--no-deps", "--no-build-isolation", "--no-index", "-q"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    [wheel] = (tmp_path / "dist").glob("spangraph-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        [metadata] = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = archive.read(metadata).decode()
    wanted = {
        f"spangraph/{path.relative_to(PACKAGE).as_posix()}"
        for path in PACKAGE.rglob("*")
        if path.is_file()
        and path.suffix in (".py", ".pyi", ".js", ".css", ".html")
        and "__pycache__" not in path.parts
    }
    assert wanted - names == set()
    if shutil.which("cc") or shutil.which("gcc"):  # the extension is optional elsewhere
        assert any(n.startswith("spangraph/_speedups.") and n.endswith(".so") for n in names)
    assert "spangraph/py.typed" in names  # type checkers read the inline hints
    assert not [n for n in names if n.endswith(".c")]  # the extension's sources
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: Apache-2.0" in meta
    assert "Apache License" in (ROOT / "LICENSE").read_text()


def test_the_sdist_holds_what_its_tests_need(tmp_path: Path) -> None:
    """Built from it, the tests run: conftest, fixtures and the files they read were
    left out (only ``tests/test_*.py`` went in, by setuptools' default)."""
    source = tmp_path / "source"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", ".venv-lowest", "node_modules", "__pycache__", "*.so", "*.egg-info", "build",
            "dist", ".ruff_cache", ".pytest_cache",
        ),
    )  # fmt: skip
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from setuptools import build_meta as b; print(b.build_sdist('out'))",
        ],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    name = proc.stdout.split()[-1]
    with tarfile.open(source / "out" / name) as archive:
        names = {n.split("/", 1)[1] for n in archive.getnames() if "/" in n}
    tracked = {
        path.relative_to(ROOT).as_posix()
        for folder in ("tests", "docs", "bench", "dashboards", "collector-config")
        for path in (ROOT / folder).rglob("*")
        if path.is_file()
        and not {"__pycache__", "node_modules", "test-artifacts"} & set(path.parts)
        and path.suffix not in (".pyc", ".so")
    }
    assert tracked - names == set()
    assert {"tests/conftest.py", "tests/cypher_lint/package-lock.json", "setup.py"} <= names
    assert {"docker-compose.yml", "Dockerfile", ".ci/run", "src/spangraph/_speedups.c"} <= names
    assert {".ci/lowest", ".ci/lowest.txt"} <= names
    assert not [n for n in names if "node_modules" in n or n.endswith((".so", ".pyc"))]


def test_the_lowest_versions_file_pins_every_declared_lower_bound() -> None:
    """``.ci/lowest`` runs the suite on ``.ci/lowest.txt``: a bound raised or added in
    pyproject.toml without it would leave the lowest versions untested."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"])
    for requirements in project["optional-dependencies"].values():
        declared += [r for r in requirements if not r.startswith("spangraph[")]
    bounds: dict[str, Version] = {}
    for text in declared:
        requirement = Requirement(text)
        [lower] = [s.version for s in requirement.specifier if s.operator == ">="]
        bounds[canonicalize_name(requirement.name)] = Version(lower)
    pins: dict[str, Version] = {}
    for line in (ROOT / ".ci" / "lowest.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = Version(version)
    assert len(bounds) >= 24
    assert {name: pins.get(name) for name in bounds} == bounds
