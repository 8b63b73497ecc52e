"""What the :class:`~spangraph.server._hub.StreamHub` fans out: a :class:`Channel` gathers
what Redis published into :class:`Batch` es, each queued on every :class:`Subscriber` of
the channel and turned into WebSocket frames or server-sent events.

A batch is built once per channel and shared by every client of it, frames and event
encodings included; a subscriber keeps the highest ``seq`` it has been sent and cuts
whatever a replay or a refill repeats.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Sequence
from typing import Any, Final

from ..processors.live import STREAM_MAXLEN

_log = logging.getLogger("spangraph.server")

TOO_SLOW: Final = 4008
"""Close code for a client whose queue overflowed (it may reconnect with ``since``)."""
GOING_AWAY: Final = 1001
"""Close code when the service shuts down."""

FRAME_CHARS: Final = 256 * 1024
"""Largest WebSocket frame the hub builds, in characters (unless one message is larger)."""


def control(type_: str, **fields: Any) -> str:
    """A message of the service's own (``subscribed``, ``heartbeat``, ``error`` …)."""
    return json.dumps({"type": type_, **fields}, separators=(",", ":"))


def seq_and_workflow(text: str) -> tuple[int, str] | None:
    """``(seq, workflow_id)`` of a wire message; ``None`` if it has neither.

    spangraph writes ``{"type":"…","seq":N,"workflow_id":"…",…`` (keys in this order,
    compact): read those two without parsing the whole message; anything else is parsed.
    """
    if text.startswith('{"type":"'):
        i = text.find('","seq":', 9) + 8
        j = text.find(',"workflow_id":"', i)
        k = text.find('"', j + 16)
        if i > 8 and j > 0 and k > 0 and text[i:j].isdigit():
            workflow_id = text[j + 16 : k]
            if "\\" not in workflow_id:
                return int(text[i:j]), workflow_id
    try:
        obj = json.loads(text)
        seq, workflow_id = obj["seq"], obj["workflow_id"]
    except (ValueError, TypeError, KeyError):
        return None
    if type(seq) is not int or not isinstance(workflow_id, str):
        return None
    return seq, workflow_id


class Batch:
    """Messages published together: serialised once, sent to every client as is.

    ``seqs`` holds each message's ``seq`` for a workflow channel (ascending), ``None``
    for control messages and project channels (their messages belong to many runs).
    """

    __slots__ = ("_sse", "_ws", "born", "heartbeat", "msgs", "seqs")

    def __init__(
        self,
        msgs: list[str],
        seqs: list[int] | None = None,
        *,
        heartbeat: bool = False,
        born: float | None = None,
    ) -> None:
        self.msgs: list[str] = msgs
        self.seqs: list[int] | None = seqs
        self.heartbeat: bool = heartbeat
        # when the first message arrived
        self.born: float = time.monotonic() if born is None else born
        self._ws: list[str] | None = None
        self._sse: bytes | None = None

    def ws_frames(self) -> list[str]:
        """WebSocket text frames: JSON arrays of the messages (see :func:`ws_frames`)."""
        if self._ws is None:
            self._ws = ws_frames(self.msgs)
        return self._ws

    def sse_bytes(self) -> bytes:
        """Server-sent events: ``id: <seq>`` (events only) and ``data: <json>`` each."""
        if self._sse is None:
            if self.heartbeat:
                self._sse = b": heartbeat\n\n"
            else:
                ids: Sequence[int | None] = self.seqs or [None] * len(self.msgs)
                self._sse = "".join(map(sse_event, ids, self.msgs)).encode()
        return self._sse


def ws_frames(msgs: list[str]) -> list[str]:
    """``msgs`` as JSON arrays of at most :data:`FRAME_CHARS` characters each (a longer
    message goes alone), so clients with a frame size limit (1 MiB by default in the
    ``websockets`` library) can take them."""
    if sum(map(len, msgs)) + len(msgs) < FRAME_CHARS:
        return ["[" + ",".join(msgs) + "]"] if msgs else []
    frames: list[str] = []
    part: list[str] = []
    size = 0
    for msg in msgs:
        if part and size + len(msg) > FRAME_CHARS:
            frames.append("[" + ",".join(part) + "]")
            part, size = [], 0
        part.append(msg)
        size += len(msg) + 1
    frames.append("[" + ",".join(part) + "]")
    return frames


def sse_event(seq: int | None, msg: str) -> str:
    data = "data: " + msg if "\n" not in msg and "\r" not in msg else _multiline(msg)
    return f"id: {seq}\n{data}\n\n" if seq is not None else f"{data}\n\n"


def _multiline(msg: str) -> str:
    # every line end SSE knows, a lone \r too (else the rest of the line would be a
    # field of its own: an id or an event name of the message's choosing)
    return "\n".join("data: " + line for line in _LINES.split(msg))


_LINES: Final = re.compile(r"\r\n|\r|\n")


HEARTBEAT: Final = Batch([control("heartbeat")], heartbeat=True)


class Subscriber:
    """One client's place on a channel: a bounded queue of batches and, on a workflow
    channel, ``last_sent``, the highest ``seq`` it has been sent (older ones are dropped).

    The hub calls :meth:`push` and :meth:`end`; the connection calls :meth:`take` and
    turns what it gets into frames with :meth:`select`.
    """

    __slots__ = (
        "_loop",
        "_pending",
        "_queue",
        "_waiter",
        "channel",
        "close_code",
        "close_reason",
        "gone",
        "idle",
        "last_sent",
        "max_queue",
        "quiet",
        "workflow_id",
    )

    def __init__(
        self,
        channel: str,
        *,
        max_queue: int,
        workflow_id: str | None = None,
        last_sent: int | None = None,
    ) -> None:
        self.channel: str = channel
        self.workflow_id: str | None = workflow_id
        self.last_sent: int | None = last_sent
        self.max_queue: int = max_queue
        self.close_code: int | None = None
        self.close_reason: str = ""
        self.gone: asyncio.Event = asyncio.Event()
        # nothing queued since the hub's last heartbeat tick: not so for a new client,
        # which was just sent `subscribed` (its heartbeat was up to a tick early)
        self.idle: bool = False
        self.quiet: int = 0  # ticks in a row without anything queued
        self._queue: list[Batch] = []
        self._pending = 0
        # What take() waits on: a bare future of the loop. An asyncio.Event costs more per
        # wait (it asks for the running loop each time: a getpid() call on Python 3.11).
        self._waiter: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def push(self, batch: Batch) -> bool:
        """Queue ``batch``; ``False`` (and nothing queued) when that would overflow."""
        n = len(batch.msgs)
        if self._pending and self._pending + n > self.max_queue:
            return False
        self._queue.append(batch)
        self._pending += n
        self.idle = False
        if self._waiter is not None:  # take() is waiting
            self._wake()
        return True

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def end(self, code: int, reason: str) -> None:
        """Stop this subscriber: :meth:`take` returns ``None`` from now on."""
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        self._queue.clear()
        self.gone.set()
        self._wake()

    async def take(self) -> list[Batch] | None:
        """Every batch queued so far (waits for one); ``None`` once ended."""
        while not self._queue and self.close_code is None:
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            self._waiter = self._loop.create_future()
            await self._waiter
        if self.close_code is not None:
            return None
        out, self._queue, self._pending = self._queue, [], 0
        return out

    def select(self, batches: list[Batch]) -> list[Batch]:
        """The part of ``batches`` this client has not been sent. Batches that follow on
        are kept whole, so their shared frames are sent as they are; a batch that overlaps
        what was sent is cut, and a gap in ``seq`` is reported. A heartbeat next to other
        messages is left out."""
        if len(batches) == 1:  # the usual case: one batch, sent whole if it follows on
            seqs, last = batches[0].seqs, self.last_sent
            if seqs is None:
                return batches
            if last is None or seqs[0] == last + 1:
                self.last_sent = seqs[-1]
                return batches
        out: list[Batch] = []
        for batch in batches:
            seqs, last = batch.seqs, self.last_sent
            if seqs is None:
                if not (batch.heartbeat and len(batches) > 1):
                    out.append(batch)
            elif last is None or seqs[0] == last + 1:
                out.append(batch)
                self.last_sent = seqs[-1]
            elif seqs[-1] > last:
                keep = [i for i, seq in enumerate(seqs) if seq > last]
                if seqs[keep[0]] > last + 1:
                    out.append(self._gap(seqs[keep[0]]))
                if len(keep) == len(seqs):
                    out.append(batch)
                else:
                    out.append(Batch([batch.msgs[i] for i in keep], [seqs[i] for i in keep]))
                self.last_sent = seqs[-1]
        return out

    def _gap(self, seq: int) -> Batch:
        assert self.last_sent is not None
        detail = (
            f"events {self.last_sent + 1}..{seq - 1} of this run are no longer available "
            f"(the stream keeps about the last {STREAM_MAXLEN})"
        )
        return Batch([control("error", detail=detail)])


def frames_of(batches: list[Batch]) -> list[str]:
    """WebSocket frames for ``batches`` (one batch: its shared, cached frames)."""
    if len(batches) == 1:
        return batches[0].ws_frames()
    return ws_frames([msg for batch in batches for msg in batch.msgs])


def sse_of(batches: list[Batch]) -> bytes:
    """Server-sent events for ``batches`` (each batch's encoding is shared and cached)."""
    return b"".join(batch.sse_bytes() for batch in batches)


class Channel:
    """One Redis channel of the hub: its subscribers, the messages read for its next batch,
    and the highest ``seq`` fanned out (per run on a project channel), to drop repeats."""

    __slots__ = (
        "first_at",
        "inbox",
        "last_by_workflow",
        "last_seq",
        "name",
        "ready",
        "subs",
        "workflow_id",
    )

    def __init__(self, name: str, workflow_id: str | None) -> None:
        self.name = name
        self.workflow_id = workflow_id  # None: a project channel
        self.subs: set[Subscriber] = set()
        self.ready = asyncio.Event()  # set once Redis confirmed the subscription
        self.inbox: list[str] = []
        self.first_at = 0.0  # when the oldest message of the inbox arrived
        self.last_seq: int | None = None  # workflow channel: highest seq fanned out
        self.last_by_workflow: dict[str, int] = {}  # project channel: the same, per run

    def batch(self, texts: list[str], born: float | None = None) -> Batch | None:
        """The new messages of ``texts`` (repeats and unreadable ones dropped)."""
        msgs: list[str] = []
        seqs: list[int] = []
        last_by = self.last_by_workflow
        for text in texts:
            found = seq_and_workflow(text)
            if found is None:
                _log.warning("live: dropped a message without seq/workflow_id on %s", self.name)
                continue
            seq, workflow_id = found
            if self.workflow_id is None:
                if seq <= last_by.get(workflow_id, 0):
                    continue
                last_by[workflow_id] = seq
            else:
                if self.last_seq is not None and seq <= self.last_seq:
                    continue
                self.last_seq = seq
                seqs.append(seq)
            msgs.append(text)
        if len(last_by) > 100_000:  # runs of a long-lived project: forget the oldest
            for key in list(last_by)[:50_000]:
                del last_by[key]
        if not msgs:
            return None
        return Batch(msgs, seqs if self.workflow_id is not None else None, born=born)
