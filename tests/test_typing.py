"""spangraph's public API as a type checker sees it: ``mypy --strict`` on a user's code."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = Path(__file__).parent / "typing_samples" / "public_api.py"


@pytest.fixture(scope="module")
def mypy(tmp_path_factory: pytest.TempPathFactory):
    cache = tmp_path_factory.mktemp("mypy-cache")

    def run(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            # no config file: the user's settings, not this repository's
            [
                *(sys.executable, "-m", "mypy", "--strict", "--config-file="),
                *("--cache-dir", str(cache), "--show-error-codes", "--no-color-output"),
                str(path),
            ],
            capture_output=True,
            text=True,
            cwd=path.parent,
            timeout=600,
        )

    return run


def test_decorators_keep_signatures_and_blocks_give_their_handle_types(mypy):
    # public_api.py asserts each type with assert_type: a decorator that lost a
    # function's signature, or a block that gave Any, fails the check
    result = mypy(SAMPLE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found in 1 source file" in result.stdout


def test_mistakes_in_user_code_are_reported(mypy, tmp_path):
    program = tmp_path / "mistakes.py"
    program.write_text(
        textwrap.dedent(
            """\
            import spangraph

            @spangraph.step
            def parse(text: str) -> list[str]:
                return text.split()

            def main() -> None:
                with spangraph.workflow("w") as run:
                    run.pause()
                parse(3)
                spangraph.step("s", retries="3")
                with spangraph.decision("route", options=["a", "b"]) as decision:
                    decision.choose(1)
                with spangraph.llm("gpt-4o") as call:
                    call.usage(input_tokens="many")
                from spangraph.instrumentation.openai import OpenAIInstrumentor
                OpenAIInstrumentor().instrument(captur_content=False)
            """
        )
    )
    result = mypy(program)
    found = set(re.findall(r"mistakes\.py:(\d+): error: .*\[([a-z-]+)\]", result.stdout))
    assert found == {
        ("9", "attr-defined"),  # WorkflowRun has paused(), not pause()
        ("10", "arg-type"),  # parse() takes text
        ("11", "call-overload"),  # retries is a number
        ("13", "arg-type"),  # an option is named by text
        ("15", "arg-type"),  # token counts are numbers
        ("17", "call-arg"),  # a misspelt instrument() option
    }, result.stdout


def _newest_toolchain() -> bool:
    """Whether mypy is of the major version the package is checked with (2): the lowest
    versions pyproject.toml admits (.ci/lowest.txt: mypy 1.13, redis 7.2, langgraph 0.6
    ...) type things differently, and the package is checked against one toolchain, the
    newest, which a fresh ``pip install -e ".[dev]"`` installs."""
    from importlib.metadata import version

    return int(version("mypy").split(".")[0]) >= 2


@pytest.mark.skipif(not _newest_toolchain(), reason="the package is type-checked with mypy 2")
def test_the_package_checks_with_the_repository_settings(tmp_path: Path) -> None:
    # pyproject.toml's [tool.mypy]: an annotation that no longer matches the code, or a
    # "type: ignore" that hides nothing any more, fails here
    result = subprocess.run(
        [
            *(sys.executable, "-m", "mypy", "--config-file", "pyproject.toml"),
            *("--cache-dir", str(tmp_path / "mypy-cache"), "--no-color-output"),
            "src/spangraph",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
