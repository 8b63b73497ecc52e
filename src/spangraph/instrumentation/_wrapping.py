"""Taking spangraph's own wrapper out of a wrapped method (shared by the instrumentors)."""

from __future__ import annotations

import logging
from typing import Any

import wrapt

_log = logging.getLogger("spangraph")


def unwrap_ours(owner: Any, name: str, wrapper: Any) -> None:
    """Take spangraph's ``wrapper`` out of ``owner.name`` (wrapt 1 and 2 alike), wherever
    it is in the chain. Another library may have wrapped the method after spangraph (a
    tracer of its own, a test double); unwrapping the outermost wrapper, as
    OpenTelemetry's ``unwrap`` does, would remove that one and leave spangraph's."""
    outer: Any = None
    current = vars(owner).get(name)
    while isinstance(current, wrapt.FunctionWrapper):
        if getattr(current, "_self_wrapper", None) is wrapper:
            if outer is None:
                setattr(owner, name, current.__wrapped__)
            else:
                outer.__wrapped__ = current.__wrapped__
            return
        outer, current = current, current.__wrapped__
    _log.debug("spangraph: %r.%s is no longer wrapped by spangraph", owner, name)
