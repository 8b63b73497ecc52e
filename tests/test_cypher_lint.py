"""Lint every Cypher statement spangraph can send with Neo4j's own Cypher linter.

The linter is the npm package ``@neo4j-cypher/language-support`` (pinned in
``tests/cypher_lint/package.json``), run by ``tests/cypher_lint/lint.mjs`` under Node.js.
The test installs it on first use with ``npm ci --prefix tests/cypher_lint`` (from the
lock file); it is skipped only where Node.js is missing.

Warning policy: ``lint.mjs`` gives the linter no database schema, so it performs no
schema-based checks (unknown labels, relationship types, properties or functions) and
the only warnings left are Neo4j's own notifications: deprecations and performance hints
(cartesian products, unbounded shortest paths, ...). Errors and deprecations always
fail. Any other warning fails too unless its ``(statement name, message substring)`` is
listed in ``ALLOWED_WARNINGS`` — an intended hint must be acknowledged there explicitly.
Undeclared-parameter errors are dropped by ``lint.mjs``: the driver binds parameters.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from spangraph.stores.cypher import all_statements

LINT_DIR = Path(__file__).parent / "cypher_lint"
LINT_SCRIPT = LINT_DIR / "lint.mjs"
pytestmark = pytest.mark.timeout(900)  # the linter's run, on a busy machine (below)

LINT_TIMEOUT_S = 600
"""Only a bound on a linter that hangs: linting every statement takes 8-15 s on an idle
2-vCPU machine and passed 90 s on a busy one."""

Diagnostics = dict[str, list[dict[str, Any]]]

ALLOWED_WARNINGS: frozenset[tuple[str, str]] = frozenset()
"""``(statement name, message substring)`` pairs of non-deprecation warnings accepted on
purpose. Empty: no current statement triggers any warning."""


def _ensure_linter_installed() -> None:
    """Install the pinned linter from package-lock.json on first use (``npm ci``)."""
    if (LINT_DIR / "node_modules" / "@neo4j-cypher" / "language-support").is_dir():
        return
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail(
            f"{LINT_DIR}/node_modules is missing and npm is not on PATH: "
            "run `npm ci --prefix tests/cypher_lint`",
            pytrace=False,
        )
    proc = subprocess.run(
        [npm, "ci", "--prefix", str(LINT_DIR), "--no-audit", "--no-fund"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"`npm ci --prefix tests/cypher_lint` failed ({proc.returncode}):\n{proc.stderr}",
            pytrace=False,
        )


def run_linter(statements: dict[str, str]) -> Diagnostics:
    """Lint ``statements`` (name -> Cypher) in one Node process; name -> diagnostics."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js (`node`) is not on PATH: cannot run Neo4j's Cypher linter")
    _ensure_linter_installed()
    proc = subprocess.run(
        [node, str(LINT_SCRIPT)],
        input=json.dumps(statements),
        capture_output=True,
        text=True,
        timeout=LINT_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"lint.mjs exited with {proc.returncode}:\n{proc.stderr}", pytrace=False)
    result: Diagnostics = json.loads(proc.stdout)
    assert set(result) == set(statements), "lint.mjs did not report on every statement"
    return result


def failures(diagnostics: Diagnostics) -> dict[str, list[dict[str, Any]]]:
    """The diagnostics that fail a statement, per statement (see the module docstring)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for name, diags in diagnostics.items():
        bad = [
            d
            for d in diags
            if d["severity"] == "error"
            or d["deprecated"]
            or (
                d["severity"] == "warning"
                and not any(n == name and s in d["message"] for n, s in ALLOWED_WARNINGS)
            )
        ]
        if bad:
            out[name] = bad
    return out


def report(bad: dict[str, list[dict[str, Any]]], statements: dict[str, str]) -> str:
    lines = [f"Neo4j's Cypher linter flagged {len(bad)} statement(s):"]
    for name, diags in bad.items():
        lines.append(f"\n--- {name}")
        lines.extend(f"    {row}" for row in statements[name].splitlines())
        for d in diags:
            tag = " (deprecated)" if d["deprecated"] else ""
            lines.append(f"  {d['severity']}{tag} at {d['line']}:{d['column']}: {d['message']}")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def lint() -> Callable[[dict[str, str]], Diagnostics]:
    return run_linter


def test_all_statements_is_nonempty_dict_of_str() -> None:
    statements = all_statements()
    assert statements, "all_statements() is empty"
    for name, text in statements.items():
        assert isinstance(name, str)
        assert isinstance(text, str), f"{name}: {type(text).__name__}, not str"
        assert text.strip(), f"{name}: empty statement"


def test_every_statement_passes_neo4j_linter(lint: Callable[[dict[str, str]], Diagnostics]) -> None:
    statements = all_statements()
    bad = failures(lint(statements))
    assert not bad, report(bad, statements)


def test_linter_flags_broken_and_deprecated_statements(
    lint: Callable[[dict[str, str]], Diagnostics],
) -> None:
    broken = {
        "syntax_error": "MATCH (n RETURN n",
        "undefined_variable": "MATCH (n) RETURN m",
        "removed_exists": "MATCH (n) WHERE exists(n.x) RETURN n",  # removed in Neo4j 5
        "deprecated_id": "MATCH (n) RETURN id(n)",  # deprecated in Neo4j 5
        "cartesian_product": "MATCH (a:Span), (b:Span) RETURN a, b",
        "two_statements": "RETURN 1 AS x; RETURN 2 AS x",
    }
    diagnostics = lint(broken)
    bad = failures(diagnostics)
    assert set(bad) == set(broken), report(bad, broken)

    def severities(name: str) -> set[str]:
        return {d["severity"] for d in diagnostics[name]}

    assert "error" in severities("syntax_error")
    assert "error" in severities("undefined_variable")
    assert any(
        d["severity"] == "error" and "no longer supported" in d["message"]
        for d in diagnostics["removed_exists"]
    ), diagnostics["removed_exists"]
    assert any(
        d["severity"] == "warning" and d["deprecated"] for d in diagnostics["deprecated_id"]
    ), diagnostics["deprecated_id"]
    assert severities("cartesian_product") == {"warning"}


def test_linter_accepts_parameters_and_clean_statements(
    lint: Callable[[dict[str, str]], Diagnostics],
) -> None:
    ok = {"params": "UNWIND $rows AS row MERGE (s:Span {span_id: row.span_id}) SET s += row.props"}
    assert lint(ok) == {"params": []}
