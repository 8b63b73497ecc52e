"""The wheel a user installs: built from the sources here (no download: the build
backend is the one the dev extra installs) and checked for what the package needs at run
time besides its Python modules."""

from __future__ import annotations

import shutil
import subprocess
import sys
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
        and path.suffix in (".py", ".js", ".css", ".html")
        and "__pycache__" not in path.parts
    }
    assert wanted - names == set()
    if shutil.which("cc") or shutil.which("gcc"):  # the extension is optional elsewhere
        assert any(n.startswith("spangraph/_speedups.") and n.endswith(".so") for n in names)
    assert "spangraph/py.typed" in names  # type checkers read the inline hints
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: Apache-2.0" in meta
    assert "Apache License" in (ROOT / "LICENSE").read_text()
