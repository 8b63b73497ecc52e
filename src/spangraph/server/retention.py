"""Retention in the service: ``spangraph serve --retention AGE`` (``SPANGRAPH_RETENTION``)
deletes the runs whose last activity is older than AGE, soon after it starts and then
every tenth of AGE (at most hourly), as ``spangraph prune`` does."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, Final

from starlette.concurrency import run_in_threadpool

from .._prune import compact_at, forget_live, parse_age, prune
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
        age = parse_age(text)
    except ValueError as exc:
        raise ConfigurationError(ENV_RETENTION, str(exc)) from None
    if age <= 0:
        raise ConfigurationError(
            ENV_RETENTION, f"must be more than 0 (it would delete runs as they end), got {text!r}"
        )
    return age


def every_s(age_s: float) -> float:
    """Seconds between rounds: a tenth of the age, from 1 s to an hour."""
    return min(3600.0, max(1.0, age_s / 10))


async def keep_within(
    store: Any,
    age_s: float,
    *,
    redis_url: str | None,
    embedded_redis_url: str | None,
    first_round_s: float = FIRST_ROUND_S,
) -> None:
    """Delete runs older than ``age_s`` now and then, until cancelled; each round's
    failure is logged and the next round tries again. ``redis_url``: where the runs' live
    streams are (deleted with them); ``embedded_redis_url``: the embedded server that
    holds the graph, whose append-only file is rewritten after a round that deleted."""
    delay = first_round_s
    while True:
        await asyncio.sleep(delay)
        delay = every_s(age_s)
        try:
            result = await run_in_threadpool(prune, store, older_than_s=age_s)
        except Exception as exc:
            _log.warning("retention: runs older than %g s not deleted this time: %s", age_s, exc)
            continue
        if not result.runs:
            continue
        ids = [run.workflow_id for run in result.runs]
        live = ""
        if redis_url is not None:
            try:
                keys = await run_in_threadpool(forget_live, redis_url, ids)
                live = f", {keys} live stream key{'s' * (keys != 1)}"
            except Exception as exc:
                _log.warning("retention: live streams not deleted (they expire): %s", exc)
        if embedded_redis_url is not None:
            await run_in_threadpool(compact_at, embedded_redis_url)
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
