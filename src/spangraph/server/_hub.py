"""StreamHub: one Redis Pub/Sub subscription per channel, shared by every client of it.

The routes in :mod:`spangraph.server.streams` hand each connection a :class:`Subscriber`
and :meth:`StreamHub.attach` it to its channel. One reader task owns the hub's Pub/Sub
connection: it reads what Redis publishes, gathers what is already buffered into one
:class:`Batch` per channel (serialised once, shared by all clients) and appends it to each
subscriber's bounded queue. A subscriber whose queue would pass ``max_queue`` messages is
cut off (``4008 too slow``) instead of holding the others back.

When Redis goes away every subscriber gets an ``error`` message; the reader reconnects
with backoff, subscribes every channel again, reads what workflow channels missed from
the run's stream (``XRANGE``) and goes on (``resumed``). Each subscriber of a workflow
channel remembers the last ``seq`` it sent, so replays and refills never repeat or reorder
a message. Before each reconnect it calls :attr:`StreamHub.on_unavailable`, which may
:meth:`StreamHub.move_to` it to another port (the embedded server came back there); the
clients see the same ``error`` and ``resumed`` as after any outage.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry  # the asyncio client's own (no warning)
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import RedisError

from ..config import url_on_port
from ..exceptions import LiveUnavailableError
from ..processors.live import seq_key, stream_key
from ._subscriber import GOING_AWAY, HEARTBEAT, TOO_SLOW, Batch, Channel, Subscriber, control

_log = logging.getLogger("spangraph.server")

_CHUNK: Final = 500
"""Most messages in one batch (a refill from the stream, or one tick of the reader)."""
_HEARTBEAT_TICKS: Final = 5
"""Ticks of the heartbeat clock in ``heartbeat`` seconds (how late a heartbeat may be)."""
_COMMAND_CONNECTIONS: Final = 16
"""Connections for the hub's commands (GET, XRANGE): many clients connecting at once wait
for one of these instead of opening hundreds."""
_ERRORS: Final = (RedisError, OSError, asyncio.TimeoutError)
_RECANCEL_EVERY: Final = 0.1
"""Seconds between cancellations of a hub task that has not ended yet, while stopping."""
LAG_BOUNDS_MS: Final = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
"""Buckets of :meth:`StreamHub.stats` ``lag_ms``: from a batch's arrival from Redis to its
being written to a client's connection."""


class StreamHub:
    """Live messages from Redis to the service's clients.

    ``redis_url`` ``None`` means live events are off: :attr:`enabled` is false and the
    routes refuse. ``max_queue``: messages a client may fall behind before it is cut off;
    ``heartbeat``: seconds of silence after which a client gets a heartbeat;
    ``since_window``: seconds a WebSocket client has to send ``{"since": n}``;
    ``reconnect_min``/``reconnect_max``: backoff bounds while Redis is away;
    ``ping_interval``: seconds of silence on the Pub/Sub connection before the hub checks
    it with a PING (no answer within as long again: reconnect); ``timeout``: seconds for
    one Redis command and for a subscription to be confirmed; ``batch_window``: seconds
    during which messages that keep coming are gathered into one batch (one frame).

    :attr:`on_unavailable`, when set, is called on a worker thread before each reconnect
    while Redis is away (what it raises is logged); :meth:`move_to` points the hub at
    another port of the same host.
    """

    def __init__(
        self,
        redis_url: str | None,
        *,
        max_queue: int = 1000,
        heartbeat: float = 15.0,
        since_window: float = 0.5,
        reconnect_min: float = 0.1,
        reconnect_max: float = 5.0,
        ping_interval: float = 10.0,
        timeout: float = 5.0,
        batch_window: float = 0.005,
    ) -> None:
        for name, value in (
            ("max_queue", max_queue),
            ("heartbeat", heartbeat),
            ("reconnect_min", reconnect_min),
            ("ping_interval", ping_interval),
            ("timeout", timeout),
        ):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        if since_window < 0 or batch_window < 0:
            raise ValueError("since_window and batch_window must not be negative.")
        if reconnect_max < reconnect_min:
            raise ValueError("reconnect_max must be at least reconnect_min.")
        self.redis_url = redis_url
        self.max_queue = max_queue
        self.heartbeat = heartbeat
        self.since_window = since_window
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.ping_interval = ping_interval
        self.timeout = timeout
        self.batch_window = batch_window
        self._channels: dict[str, Channel] = {}
        self._dirty: dict[str, Channel] = {}
        self._acks: dict[str, int] = {}  # SUBSCRIBEs sent and not yet confirmed, per channel
        self._lock = asyncio.Lock()  # one (UN)SUBSCRIBE or reconnect at a time
        self._pubsub: Any = None  # the connected PubSub, None while away
        self._client: Any = None
        self._listener: Any = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._moved_to: int | None = None  # set by move_to, taken by the reader
        self.on_unavailable: Callable[[], None] | None = None
        """Called before each reconnect while Redis is away, on a worker thread: e.g. a
        follower of the embedded server (:meth:`~spangraph.embedded.EmbeddedServer.follower`)
        that calls :meth:`move_to` when the server came back on another port."""
        self.connect_check: Callable[[Any], Awaitable[None]] | None = None
        """Set before :meth:`start`: a ``redis_connect_func`` each new connection runs,
        e.g. :meth:`~spangraph.embedded.EmbeddedServer.async_connect_check`, which refuses
        another server that took the embedded server's port (the hub then follows)."""
        self._stats = dict.fromkeys(("messages", "batches", "too_slow", "outages", "refilled"), 0)
        self._lag = [0] * (len(LAG_BOUNDS_MS) + 1)

    @property
    def enabled(self) -> bool:
        return self.redis_url is not None

    @property
    def connected(self) -> bool:
        return self._pubsub is not None

    @property
    def client(self) -> Any:
        """The hub's ``redis.asyncio.Redis`` for commands (GET, XRANGE, PING): ``None``
        while live events are off or before :meth:`start`, another one after a move."""
        return self._client

    def move_to(self, port: int) -> None:
        """Use ``port`` of the same host from now on (the embedded server came back on
        another port). Thread-safe: the reader makes its connections there before it
        reconnects."""
        self._moved_to = port

    # -- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the reader (it connects in the background: Redis may come up later)."""
        if self.redis_url is None:
            return
        self._open_clients(self.redis_url)
        self._spawn(self._run())
        self._spawn(self._beat())

    def _open_clients(self, redis_url: str) -> None:
        """Make the command and Pub/Sub clients of ``redis_url`` (they connect on use)."""
        options: dict[str, Any] = {
            "socket_timeout": self.timeout,
            "socket_connect_timeout": self.timeout,
        }
        if self.connect_check is not None:
            options["redis_connect_func"] = self.connect_check
        # Commands (GET, XRANGE) of many clients connecting at once wait for one of a few
        # connections instead of opening hundreds.
        pool = aioredis.BlockingConnectionPool.from_url(
            redis_url,
            max_connections=_COMMAND_CONNECTIONS,
            timeout=self.timeout,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 1),
            **options,
        )
        self._client = aioredis.Redis.from_pool(pool)
        # Errors of the Pub/Sub connection must reach the reader at once: no retries.
        # RESP2: published messages come as plain replies, parsed with less work per
        # message than RESP3's push messages.
        self._listener = aioredis.Redis.from_url(
            redis_url, retry=Retry(NoBackoff(), 0), protocol=2, **options
        )

    def going_away(self) -> None:
        """End every client's stream (WebSocket close 1001, an SSE ``error`` event) and
        take no new ones: the service is shutting down. Called as the process is told
        to exit, so that open streams do not hold up its shutdown."""
        self._stopping = True
        for channel in list(self._channels.values()):
            for sub in list(channel.subs):
                sub.end(GOING_AWAY, "the service is shutting down")

    async def stop(self) -> None:
        """Tell every client the service is going away, then close the connections.

        Takes at most about twice ``timeout`` seconds: the reader and the heartbeat are
        cancelled, and cancelled again while they have not ended (a cancellation that
        meets a read's own timeout can be lost inside the Redis client, which then reads
        on), then left behind with a warning; closing each connection is bounded too."""
        self.going_away()
        self._channels.clear()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        pending = set(self._tasks)
        while pending and loop.time() < deadline:
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(
                pending, timeout=min(_RECANCEL_EVERY, max(deadline - loop.time(), 0))
            )
        if pending:
            _log.warning("live: %d hub tasks did not stop within %g s", len(pending), self.timeout)
        await self._close_clients(self._client, self._listener)

    async def _close_clients(self, *clients: Any) -> None:
        for client in clients:
            if client is not None:
                with contextlib.suppress(*_ERRORS):
                    async with asyncio.timeout(self.timeout):
                        await client.aclose()

    def stats(self) -> dict[str, Any]:
        """Counters: messages and batches fanned out, clients cut off as too slow,
        outages, messages refilled from streams; channels and subscribers now; ``lag_ms``,
        how many sends took how long from Redis to the client's connection (bucket upper
        bounds in ms)."""
        subs = sum(len(c.subs) for c in self._channels.values())
        labels = [f"<={b}" for b in LAG_BOUNDS_MS] + [f">{LAG_BOUNDS_MS[-1]}"]
        return {
            **self._stats,
            "channels": len(self._channels),
            "subscribers": subs,
            "connected": self.connected,
            "lag_ms": dict(zip(labels, self._lag, strict=True)),
        }

    def sent(self, batches: list[Batch]) -> None:
        """Count the lag of ``batches``, just written to a client (the oldest counts)."""
        first = batches[0]
        if len(batches) == 1:  # the usual case
            born = None if first.heartbeat else first.born
        else:
            born = min((b.born for b in batches if not b.heartbeat), default=None)
        if born is not None:
            lag_ms = (time.monotonic() - born) * 1000
            self._lag[bisect.bisect_left(LAG_BOUNDS_MS, lag_ms)] += 1

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- for the routes -------------------------------------------------------------------

    async def current_seq(self, workflow_id: str) -> int:
        """The run's last ``seq`` so far (0 before its first message)."""
        value = await self._client.get(seq_key(workflow_id))
        return int(value) if value is not None else 0

    async def whole_run(self, workflow_id: str) -> list[str] | None:
        """Every message of the run as its stream holds them (the live messages, ``seq``
        and tokens included), or ``None`` when the stream no longer starts at ``seq`` 1
        (trimmed, expired, never written), live events are off or Redis does not answer."""
        if self._client is None:
            return None
        try:
            async with asyncio.timeout(self.timeout):
                first = await self._client.xrange(stream_key(workflow_id), "-", "+", 1)
                if not first or first[0][0].split(b"-", 1)[0] != b"1":
                    return None
                texts: list[str] = []
                async for batch in self.backlog(workflow_id, 0):
                    texts.extend(batch.msgs)
        except _ERRORS:
            return None
        return texts

    async def backlog(self, workflow_id: str, after: int) -> AsyncIterator[Batch]:
        """The run's messages with ``seq > after`` still in its stream, in batches."""
        start = f"({after}-0"
        while True:
            rows = await self._client.xrange(stream_key(workflow_id), start, "+", _CHUNK)
            if not rows:
                return
            seqs = [int(entry_id.split(b"-", 1)[0]) for entry_id, _ in rows]
            yield Batch([fields[b"data"].decode() for _, fields in rows], seqs)
            if len(rows) < _CHUNK:
                return
            start = f"({seqs[-1]}-0"

    async def attach(self, sub: Subscriber) -> None:
        """Add ``sub`` to its channel, subscribing in Redis if it is the first; returns
        once Redis confirmed the subscription. Raises :class:`LiveUnavailableError`."""
        if self._stopping or self.redis_url is None:
            raise LiveUnavailableError("live events are off")
        channel = self._channels.get(sub.channel)
        new = channel is None
        if channel is None:
            channel = self._channels[sub.channel] = Channel(sub.channel, sub.workflow_id)
        # the client first: if anything below fails or is cancelled, detach() removes the
        # channel with its last client (a channel left without any stayed subscribed for good)
        channel.subs.add(sub)
        try:
            if new:
                async with self._lock:
                    if self._pubsub is not None and self._channels.get(sub.channel) is channel:
                        self._acks[channel.name] = self._acks.get(channel.name, 0) + 1
                        # any error: the reader reconnects and subscribes every channel (a
                        # connection that just died raises RuntimeError from redis-py's
                        # reconnect while the reader waits on it)
                        with contextlib.suppress(Exception):
                            await self._pubsub.subscribe(channel.name)
            async with asyncio.timeout(self.timeout):
                await channel.ready.wait()
        except BaseException as exc:
            self.detach(sub)
            if isinstance(exc, TimeoutError):
                raise LiveUnavailableError("Redis did not confirm the subscription") from None
            raise

    def detach(self, sub: Subscriber) -> None:
        """Remove ``sub``; the channel is unsubscribed when its last client leaves."""
        channel = self._channels.get(sub.channel)
        if channel is None or sub not in channel.subs:
            return
        channel.subs.discard(sub)
        if not channel.subs:
            del self._channels[channel.name]
            self._dirty.pop(channel.name, None)
            if not self._stopping:
                self._spawn(self._unsubscribe(channel.name))

    async def _unsubscribe(self, name: str) -> None:
        async with self._lock:
            if name in self._channels or self._pubsub is None:
                return  # a new client came back for it, or a reconnect will not resubscribe
            with contextlib.suppress(Exception):  # as in attach(): the reader resubscribes
                await self._pubsub.unsubscribe(name)

    # -- the reader -----------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            if failures:
                await self._follow()
            pubsub = self._listener.pubsub()
            try:
                await self._open(pubsub, refill=failures > 0)
                failures = 0
                await self._read(pubsub)
            except Exception as exc:
                if not isinstance(exc, _ERRORS):
                    _log.exception("live: the hub's reader failed; reconnecting")
                self._pubsub = None
                # what was read before the connection dropped goes out before its error:
                # held past the refill, it went out in a run's old numbering after the
                # `resumed` of a Redis that lost its data (and the new messages as repeats)
                self._flush()
                failures += 1
                if failures == 1:
                    self._stats["outages"] += 1
                    with contextlib.suppress(*_ERRORS):  # its pooled connections are dead too
                        await self._client.connection_pool.disconnect()
                    _log.warning("live: Redis unreachable (%s); reconnecting with backoff", exc)
                    self._broadcast(
                        control("error", detail=f"live events interrupted: {exc}; reconnecting")
                    )
                delay = min(self.reconnect_max, self.reconnect_min * 2 ** (failures - 1))
                await asyncio.sleep(delay)
            finally:
                self._pubsub = None
                with contextlib.suppress(*_ERRORS):
                    await pubsub.aclose()

    async def _follow(self) -> None:
        """Ask :attr:`on_unavailable` where Redis is now; after a :meth:`move_to`, replace
        the hub's connections with ones to the new port."""
        hook = self.on_unavailable
        if hook is not None:
            try:
                await asyncio.to_thread(hook)
            except Exception as exc:
                _log.warning("live: looking for where Redis went failed: %s", exc)
        port, self._moved_to = self._moved_to, None
        if port is None or self.redis_url is None:
            return
        old = (self._client, self._listener)
        self.redis_url = url_on_port(self.redis_url, port)
        self._open_clients(self.redis_url)
        await self._close_clients(*old)
        _log.warning("live: Redis moved to port %d; reconnecting there", port)

    async def _open(self, pubsub: Any, *, refill: bool) -> None:
        """Connect, subscribe every channel, wait for Redis to confirm them, refill the
        workflow channels from their streams after an outage, then pass on what arrived."""
        async with self._lock:
            await pubsub.connect()
            self._acks = dict.fromkeys(self._channels, 1)
            names = list(self._channels)
            for i in range(0, len(names), 1000):
                await pubsub.subscribe(*names[i : i + 1000])
            self._pubsub = pubsub
        arrived: list[dict[str, Any]] = []
        waiting = 0  # names before it are confirmed: each name is checked once (not all
        # of them again after every confirmation, which grew with the square of their number)
        async with asyncio.timeout(self.timeout):
            while True:
                while waiting < len(names) and not self._acks.get(names[waiting]):
                    waiting += 1
                if waiting == len(names):
                    break
                message = await pubsub.get_message(timeout=self.timeout)
                if message is None:
                    raise TimeoutError("Redis did not confirm the subscriptions")
                if message["type"] == "message":
                    arrived.append(message)
                else:
                    self._handle(message)
        if refill:
            await self._refill()
            _log.warning("live: Redis is back; %d channels resubscribed", len(names))
            self._broadcast(control("resumed", detail="live events resumed"))
        for message in arrived:
            self._handle(message)
        self._flush()

    async def _refill(self) -> None:
        """What each workflow channel missed while Redis was away, from its stream."""
        for channel in self._channels.values():
            if channel.workflow_id is None:
                # a project channel has no stream to refill from; it forgets the seqs it
                # saw, or a run Redis numbers from 1 again (it lost its data) would be
                # dropped there as repeats
                channel.last_by_workflow.clear()
        channels = [c for c in self._channels.values() if c.workflow_id is not None and c.subs]
        # the runs' counters in a few round trips, not one each (thousands of channels
        # took seconds): only the runs that moved on are then read from their streams
        currents: list[int] = []
        for i in range(0, len(channels), _CHUNK):
            keys = [seq_key(c.workflow_id or "") for c in channels[i : i + _CHUNK]]
            currents += [int(v) if v is not None else 0 for v in await self._client.mget(keys)]
        for channel, current in zip(channels, currents, strict=True):
            if not channel.subs:  # its clients left meanwhile
                continue
            after = channel.last_seq
            if after is None:
                after = min((s.last_sent or 0) for s in channel.subs)
            if current == after:
                continue  # nothing missed
            if current < after:  # Redis lost data: its counter went back
                _log.warning("live: seq of run %s went back to %d", channel.workflow_id, current)
                channel.last_seq = after = current
                detail = f"this run's seq went back to {current} (Redis lost its data)"
                went_back = Batch([control("resumed", detail=detail, since=current)])
                for sub in channel.subs:
                    sub.last_sent = min(sub.last_sent or 0, current)
                    sub.push(went_back)  # clients forget the seqs they saw above it
            assert channel.workflow_id is not None  # (channels: those of a run)
            async for batch in self.backlog(channel.workflow_id, after):
                fresh = channel.batch(batch.msgs)
                if fresh is not None:
                    self._stats["refilled"] += len(fresh.msgs)
                    self._fan_out(channel, fresh)

    async def _read(self, pubsub: Any) -> None:
        """Read and fan out. A message after a quiet spell goes out at once; while
        messages keep coming, what arrives within ``batch_window`` of the last batch joins
        the next one (fewer, larger frames: less work per message for everyone)."""
        loop = asyncio.get_running_loop()
        heard = flushed = loop.time()
        window = self.batch_window
        while not self._stopping:
            message = await pubsub.get_message(timeout=self.ping_interval)
            if message is None:
                if loop.time() - heard > 2 * self.ping_interval:
                    raise ConnectionError("Redis stopped answering the Pub/Sub connection")
                await pubsub.ping()
                continue
            heard = loop.time()
            self._handle(message)
            count = 1
            while count < _CHUNK and not self._stopping:
                wait = flushed + window - loop.time()
                message = await pubsub.get_message(timeout=max(wait, 0))
                if message is None:
                    if wait <= 0:
                        break
                    continue
                self._handle(message)
                count += 1
            self._flush()
            flushed = loop.time()

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "message":
            name = message["channel"].decode()
            channel = self._channels.get(name)
            if channel is not None:
                if not channel.inbox:
                    channel.first_at = time.monotonic()
                channel.inbox.append(message["data"].decode())
                self._dirty[name] = channel
        elif kind == "subscribe":
            name = message["channel"].decode()
            left = self._acks.pop(name, 0) - 1
            if left > 0:  # a later SUBSCRIBE of the same channel is still to be confirmed
                self._acks[name] = left
            elif (channel := self._channels.get(name)) is not None:
                channel.ready.set()

    def _flush(self) -> None:
        dirty, self._dirty = self._dirty, {}
        # Clients are written to in the order their batches are queued: the channels with
        # fewer clients first, so that a channel of a few clients does not wait for a
        # round of writes to hundreds on another (shortest job first).
        channels = (
            sorted(dirty.values(), key=_subscriber_count) if len(dirty) > 1 else dirty.values()
        )
        for channel in channels:
            texts, channel.inbox = channel.inbox, []
            batch = channel.batch(texts, channel.first_at)
            if batch is not None:
                self._fan_out(channel, batch)

    def _fan_out(self, channel: Channel, batch: Batch) -> None:
        self._stats["messages"] += len(batch.msgs)
        self._stats["batches"] += 1
        slow = [sub for sub in channel.subs if not sub.push(batch)]
        for sub in slow:
            self._stats["too_slow"] += 1
            _log.warning(
                "live: cut off a client of %s: over %d behind", channel.name, sub.max_queue
            )
            sub.end(TOO_SLOW, f"too slow: over {sub.max_queue} messages behind")
            self.detach(sub)

    def _broadcast(self, text: str) -> None:
        batch = Batch([text])
        for channel in list(self._channels.values()):
            for sub in list(channel.subs):
                sub.push(batch)  # a control message never cuts a client off

    async def _beat(self) -> None:
        """A heartbeat to each client that was sent nothing for ``heartbeat`` seconds:
        :meth:`_tick` every fifth of it."""
        while not self._stopping:
            await asyncio.sleep(self.heartbeat / _HEARTBEAT_TICKS)
            self._tick()

    def _tick(self) -> None:
        """One tick of the heartbeat clock. Each client is on its own clock: a heartbeat
        once it was sent nothing for ``_HEARTBEAT_TICKS`` ticks in a row, so after a
        silence of ``heartbeat`` to 1.2 times it. Nothing is timed per message: a push
        only marks its subscriber busy."""
        for channel in list(self._channels.values()):
            for sub in channel.subs:
                if not sub.idle:
                    sub.idle, sub.quiet = True, 0
                elif (quiet := sub.quiet + 1) < _HEARTBEAT_TICKS:
                    sub.quiet = quiet
                else:
                    sub.push(HEARTBEAT)
                    sub.idle, sub.quiet = True, 0  # counted again from this heartbeat


def _subscriber_count(channel: Channel) -> int:
    return len(channel.subs)
