"""What the children scripts share: start processes, wait for them, check they ended
well."""

from __future__ import annotations

from typing import Any


def run_all(children: list[Any]) -> None:
    """Start every process of ``children``, wait for each (a minute at most), and assert
    that all exited with 0."""
    for child in children:
        child.start()
    for child in children:
        child.join(60)
    codes = [child.exitcode for child in children]
    assert codes == [0] * len(children), codes
