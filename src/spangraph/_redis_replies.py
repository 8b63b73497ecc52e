"""Redis error replies that say the server cannot take writes for now, not that a write
is wrong: worth retrying, never a reason to drop what was accepted."""

from __future__ import annotations

from typing import Final

PASSING_CODES: Final = frozenset(
    {
        "MISCONF",  # persistence failed (a full disk): writes refused until it works again
        "OOM",  # maxmemory reached with noeviction
        "LOADING",  # the dataset is being loaded at start
        "BUSY",  # a script or module command is running past its time limit
        "READONLY",  # a replica
        "MASTERDOWN",
        "TRYAGAIN",
        "NOREPLICAS",
        "CLUSTERDOWN",
    }
)


def error_code(exc: BaseException) -> str:
    """The error code of a Redis error reply (``MISCONF``, ``ERR`` …), or ``""``."""
    code = getattr(exc, "status_code", None)
    if isinstance(code, str) and code:
        return code
    first = str(exc).split(" ", 1)[0]
    return first if first.isupper() else ""


def is_passing(exc: BaseException) -> bool:
    """Whether the error reply ``exc`` names a state the server leaves by itself (space
    freed, memory released, a load finished …)."""
    return error_code(exc) in PASSING_CODES


def is_unknown_command(exc: BaseException) -> bool:
    """Whether the error reply ``exc`` is Redis's own ``ERR unknown command ...``: a Redis
    without the module that a FalkorDB has, where a FalkorDB was. (Not any reply that
    says those words: FalkorDB quotes a statement it refuses, values included.)"""
    text = str(exc)
    if text.startswith("ERR "):  # a client that left the code in the text
        text = text[4:]
    return error_code(exc) in ("ERR", "") and text.startswith("unknown command ")
