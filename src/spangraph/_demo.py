"""``spangraph demo``: a small research agent run on the embedded default, watched live,
then read back from the graph."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import Callable
from typing import Any, Final, TextIO

import redis

from . import _sdk, branching, genai, queries
from . import instrument as sg
from ._cli_query import divergence_text
from ._ids import uuid7
from ._terminal import interrupted, printable
from ._tree_text import print_tree
from .config import ENV_REDIS_URL, Settings, redact_url
from .exceptions import ConfigurationError
from .processors.live import workflow_channel

# -- the agent ------------------------------------------------------------------------------

_fetch_calls = {"n": 0}


@sg.step("plan")
def plan(question: str) -> list[str]:
    sg.event("agent.message.appended", role="user", content=question)
    return ["arxiv", "wikipedia", "news"]


@sg.step("search")
async def search(source: str) -> dict[str, Any]:
    await asyncio.sleep(0.02 + random.random() * 0.03)
    sg.event("tool.call", tool=f"search_{source}", query="graph databases for agent traces")
    return {"source": source, "hits": 3}


@sg.step("fetch-page", retries=2, backoff=0.05)
def fetch_page(url: str) -> str:
    _fetch_calls["n"] += 1
    if _fetch_calls["n"] == 1:
        raise ConnectionError(f"connection reset while fetching {url}")
    return "<html>…</html>"


@sg.step("summarize-with-large-model", timeout=0.15)
async def summarize_large(texts: list[str]) -> str:
    await asyncio.sleep(1.0)  # the large model is slow today: the timeout fires
    return "long summary"


@sg.step("summarize-with-small-model")
async def summarize_small(texts: list[str]) -> str:
    await asyncio.sleep(0.03)
    return "short summary"


async def summarize(texts: list[str]) -> str:
    """A decision with three options: two explored, one chosen, one never tried."""
    options = ["large-model", "small-model", "extractive"]
    with branching.decision("choose-summarizer", options=options) as choice:
        try:
            async with choice.option("large-model"):  # the option fails with its step
                summary = await summarize_large(texts)
        except TimeoutError:
            summary = None
        if summary is not None:
            choice.choose("large-model", reason="best quality", score=0.9)
            return summary
        async with choice.option("small-model"):
            summary = await summarize_small(texts)
        choice.choose("small-model", reason="large model timed out", score=0.7)
        return summary


@genai.tool("cite-sources")
def cite_sources(summary: str) -> list[str]:
    return ["arxiv:2401.00001", "wikipedia:Graph_database"]


async def write_draft(style: str, summary: str) -> branching.Branch:
    """One drafting branch: a streamed model answer, plus citations when detailed."""
    async with branching.branch(f"draft-{style}") as draft:
        with sg.step("outline"):
            sections = ["findings"] if style == "concise" else ["intro", "findings", "limits"]
        async with genai.llm("small-model", provider="local") as call:
            for token in f"A {style} answer about {summary}.".split(" "):
                call.token(token + " ")
                await asyncio.sleep(0.005)
            call.usage(input_tokens=120, output_tokens=len(sections) * 40)
        for section in sections:
            with sg.step(f"write-{section}"):
                await asyncio.sleep(0.01)
        if style == "detailed":
            cite_sources(summary)
        draft.set(sections=len(sections))
        return draft


async def review(target: branching.Branch) -> None:
    """A third branch that watches the detailed draft."""
    async with branching.branch("review"):
        with branching.monitor(target, name=f"watch {target.name}"), sg.step("check-claims"):
            await asyncio.sleep(0.02)


async def research(question: str, workflow_id: str) -> dict[str, Any]:
    async with sg.workflow("research-assistant", workflow_id=workflow_id) as run:
        run.set(question=question)
        sources = plan(question)
        with sg.step("gather"):
            results = await asyncio.gather(*(search(s) for s in sources))
        fetch_page("https://example.org/paper")
        summary = await summarize([str(r) for r in results])
        await sg.asleep(0.1, reason="rate limit")
        concise, detailed = await asyncio.gather(
            write_draft("concise", summary), write_draft("detailed", summary)
        )
        await review(detailed)
        return {
            "answer": f"answer based on {summary}",
            "branches": (concise.branch_id, detailed.branch_id),
        }


# -- watching and printing -------------------------------------------------------------------


class _LiveTail(threading.Thread):
    """Prints live events of one workflow as they arrive on its Redis channel."""

    def __init__(self, url: str, workflow_id: str, out: Callable[[str], None]) -> None:
        super().__init__(name="spangraph-demo-tail", daemon=True)
        self._client = redis.Redis.from_url(url)
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(workflow_channel(workflow_id))
        self._out = out
        self._t0 = time.monotonic()
        self.count = 0
        self.done = threading.Event()
        self.seqs: list[int] = []
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            self._tail()
        except (BrokenPipeError, KeyboardInterrupt):
            # output piped into e.g. `head`, which stopped reading; or the demo was
            # interrupted (``say`` raises it on any thread): the main thread says so
            self.done.set()
        except (redis.RedisError, OSError) as exc:  # the server went away (`spangraph down`)
            self.error = exc
            self.done.set()
        finally:
            self._pubsub.close()
            self._client.close()

    def _tail(self) -> None:
        while not self.done.is_set():
            message = self._pubsub.get_message(timeout=0.1)
            if not message:
                continue
            event = json.loads(message["data"])
            self.count += 1
            self.seqs.append(event["seq"])
            self._out(
                f"  +{time.monotonic() - self._t0:6.3f}s  #{event['seq']:<3} "
                f"{event['type']:<26} {event['kind']:<9} {event['name']}"
            )
            if event["type"] == "span.ended" and event["kind"] == "workflow":
                self.done.set()


_FLUSH_S: Final = 10.0
"""How long the demo waits for its run to be written (the store may have gone away)."""


def run_demo(out: TextIO, *, home: str | None = None) -> int:
    def say(line: str = "") -> None:
        if interrupted.is_set():  # a Ctrl-C lost on its way (see _terminal.interrupted)
            raise KeyboardInterrupt
        print(line, file=out, flush=True)

    if not Settings.from_env(home=home).live_enabled:
        raise ConfigurationError(
            ENV_REDIS_URL,
            "is 'off', but the demo shows live events: unset it, or set it to 'embedded' "
            "or a redis:// URL",
        )
    instance = _sdk.configure(home=home, service_name="spangraph-demo")
    store, redis_url = instance.store, instance.redis_url
    if store is None or redis_url is None:  # OTEL_SDK_DISABLED=true: nothing was opened
        _sdk.shutdown()
        raise ConfigurationError(
            "OTEL_SDK_DISABLED",
            "is true, so nothing is recorded and the demo has nothing to show: unset it",
        )
    workflow_id = uuid7()
    say(
        f"spangraph demo — graph store: {redact_url(instance.settings.graph_url)}, "
        f"live events: {redact_url(redis_url)}"
    )
    say(f"running workflow 'research-assistant' (workflow_id {workflow_id})\n")
    say("live events, as they arrive from Redis:")
    tail = _LiveTail(redis_url, workflow_id, say)
    tail.start()
    result = asyncio.run(research("How do agents branch?", workflow_id))
    if not _sdk.flush(timeout=_FLUSH_S):
        say(f"(not everything was written within {_FLUSH_S:g} s: see the stats below)")
    if tail.error is None:
        tail.done.wait(5.0)
    tail.done.set()
    tail.join(2.0)
    if tail.error is not None:
        say(f"(the live events stopped: {tail.error})")
    say(f"\nanswer: {result['answer']}")
    say(
        f"{tail.count} live events received, seq {min(tail.seqs, default=0)} to "
        f"{max(tail.seqs, default=0)}\n"
    )
    say("the run, read back from the graph:")
    roots = queries.tree(store, workflow_id)
    print_tree(roots, say)
    if roots:
        link = instance.settings.jaeger_link(roots[0].span.get("trace_id"))
        say(f"  open in Jaeger (when it receives your OTLP export): {link}")
    say("\ndecisions (spangraph query decisions):")
    for decision in queries.decisions(store, workflow_id):
        say(
            f"  {decision['name']}: chose {decision['chosen']!r} "
            f"(reason: {decision['reason']}, score {decision['score']})"
        )
        for option in decision["options"]:
            mark = "→" if option["chosen"] else " "
            explored = option["state"] if option["explored"] else "never explored"
            say(f"    {mark} {option['name']:<14} {explored}")
    say("\nbranches and monitors (spangraph query branches / monitors):")
    for b in queries.branches(store, workflow_id):
        say(f"  {b['name']:<16} {b['state']:<10} {b['nodes']} nodes, {b['failed']} failed")
    for m in queries.monitors(store, workflow_id):
        say(f"  {m['monitor']!r} watches {m['target_kind']} {m['target']!r}")
    concise, detailed = result["branches"]
    diff = queries.diff(store, concise, detailed, branches=True)
    say(
        f"\ndraft-concise vs draft-detailed (spangraph query diff --branches {concise} {detailed}):"
    )
    say(f"  {printable(divergence_text(diff['first_divergence']))}")
    say(f"  only in draft-detailed: {', '.join(diff['only_in_b']) or '-'}")
    say(f"  only in draft-concise: {', '.join(diff['only_in_a']) or '-'}")
    stats = instance.stats()
    say(
        f"\ngraph: {stats['graph']['sent']} span writes (starts and ends), "
        f"{stats['graph']['dropped']} dropped; live: {stats['live']['sent']} events sent, "
        f"{stats['live']['dropped']} dropped"
    )
    say('\nexplore it in Cypher (spangraph query cypher "…"):')
    say(
        f"  MATCH (w:Workflow {{workflow_id: '{workflow_id}'}})"
        f"-[:PARENT_OF*]->(s:Step {{workflow_id: '{workflow_id}'}})\n"
        f"  RETURN s.name, s.state, s.duration_ms ORDER BY s.start_ns"
    )
    say(
        f"  MATCH (s:Span {{workflow_id: '{workflow_id}', state: 'failed'}})-[:HAS_EVENT]->"
        f"(e:Event)\n  RETURN s.name, e.name, e.attributes ORDER BY e.time_ns"
    )
    say(
        f"  MATCH (d:Decision {{workflow_id: '{workflow_id}'}})-[:OPTION_OF]->(o:Option)\n"
        f"  RETURN d.name, o.name, o.state"
    )
    _sdk.shutdown()
    return 0
