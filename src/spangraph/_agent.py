"""``python -m spangraph._agent``: the agent process of ``configure(offload=True)``.

It reads span records on stdin and writes the graph and live events; see
:mod:`spangraph.processors.offload`.
"""

from __future__ import annotations

import sys

from .processors.offload import agent_main

if __name__ == "__main__":  # pragma: no cover - the agent process
    sys.exit(agent_main())
