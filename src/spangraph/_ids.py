"""Identifiers: UUIDv7 for workflow runs (RFC 9562), sortable by creation time."""

from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Final

MAX_ID_CHARS: Final = 1024
"""Longest ``workflow_id``, ``execution_id`` or ``branch_id`` accepted: longer ids would be
cut like any long value and could no longer be looked up."""

_lock = threading.Lock()
_last = [0, 0]  # [unix_ms, counter] keeps ids monotonic within one millisecond


def uuid7() -> str:
    """Return a new UUIDv7 as a lower-case string.

    The 48-bit millisecond timestamp comes first, so ids sort by creation time; a 12-bit
    counter keeps ids made in the same millisecond by this process in order.
    """
    ms = time.time_ns() // 1_000_000
    with _lock:
        if ms <= _last[0]:
            ms = _last[0]
            _last[1] += 1
            if _last[1] > 0xFFF:  # counter overflow: borrow the next millisecond
                ms += 1
                _last[1] = 0
        else:
            _last[1] = 0
        _last[0] = ms
        counter = _last[1]
    rand = int.from_bytes(os.urandom(8), "big") & 0x3FFF_FFFF_FFFF_FFFF
    value = (ms << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | rand
    return str(uuid.UUID(int=value))
