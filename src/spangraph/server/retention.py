"""Retention in the service: ``spangraph serve --retention AGE`` (``SPANGRAPH_RETENTION``)
deletes the runs whose last activity is older than AGE, soon after it starts and then
every tenth of AGE (at most hourly), as ``spangraph prune`` does."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
from collections.abc import Callable
from typing import Any, Final

from starlette.concurrency import run_in_threadpool

from .._prune import PruneResult, compact_at, forget_live, parse_retention, prune
from ..exceptions import ConfigurationError
from ..mapping import iso_time

_log = logging.getLogger("spangraph.server")

ENV_RETENTION: Final = "SPANGRAPH_RETENTION"
"""Service only: delete runs with nothing newer than this age (``30d``, ``12h``, seconds);
unset: keep every run."""

FIRST_ROUND_S: Final = 1.0
"""Seconds after the start before the first round (the service answers first)."""


def retention_from_env() -> float | None:
    """The age ``SPANGRAPH_RETENTION`` gives, in seconds; ``None`` when unset or empty.
    :class:`~spangraph.exceptions.ConfigurationError` for anything that is no age, or 0."""
    text = os.environ.get(ENV_RETENTION, "").strip()
    if not text:
        return None
    try:
        return parse_retention(text)
    except ValueError as exc:
        raise ConfigurationError(ENV_RETENTION, str(exc)) from None


def every_s(age_s: float) -> float:
    """Seconds between rounds: a tenth of the age, from 1 s to an hour."""
    return min(3600.0, max(1.0, age_s / 10))


async def keep_within(
    store: Any,
    age_s: float,
    *,
    where: Callable[[], tuple[str | None, str | None]] = lambda: (None, None),
    first_round_s: float = FIRST_ROUND_S,
) -> None:
    """Delete runs older than ``age_s`` now and then, until cancelled; each round's
    failure is logged and the next round tries again. ``where()`` (called in a worker
    thread at each round that deleted: the embedded server may have moved) gives the URL
    of the Redis that holds the runs' live streams (deleted with them) and that of the
    embedded server that holds the graph (its append-only file is rewritten), each
    ``None`` when there is none. Cancelled during a round, it stops the round after the
    batch being deleted, and returns once that is done: the store is not closed under
    it."""
    delay = first_round_s
    while True:
        await asyncio.sleep(delay)
        delay = every_s(age_s)
        stop = threading.Event()
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(
            None, functools.partial(prune, store, older_than_s=age_s, stop=stop)
        )
        try:
            result = await asyncio.shield(work)
        except asyncio.CancelledError:
            stop.set()
            with contextlib.suppress(Exception):
                await work  # the batch being deleted
            raise
        except Exception as exc:
            _log.warning("retention: runs older than %g s not deleted this time: %s", age_s, exc)
            continue
        if not result.runs:
            continue
        await run_in_threadpool(_tidy, result, where)


def _tidy(result: PruneResult, where: Callable[[], tuple[str | None, str | None]]) -> None:
    """After a round that deleted: the runs' live streams, the append-only file, the log."""
    try:
        redis_url, embedded_url = where()
    except Exception as exc:
        _log.warning("retention: the embedded server was not found: %s", exc)
        redis_url = embedded_url = None
    live = ""
    if redis_url is not None:
        try:
            keys = forget_live(redis_url, [run.workflow_id for run in result.runs])
            live = f", {keys} live stream key{'s' * (keys != 1)}"
        except Exception as exc:
            _log.warning("retention: live streams not deleted (they expire): %s", exc)
    if embedded_url is not None and not compact_at(embedded_url):
        _log.warning("retention: the embedded server did not rewrite its append-only file")
    runs, spans = len(result.runs), result.spans
    _log.info(
        "retention: deleted %d run%s (%d span%s%s) last active before %s%s",
        runs,
        "s" * (runs != 1),
        spans,
        "s" * (spans != 1),
        live,
        iso_time(result.before_ns),
        f"; kept {result.kept} that went on meanwhile" if result.kept else "",
    )
