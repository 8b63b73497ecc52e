"""Span processors: the graph writer and the live publisher."""

from .graph import GraphSpanProcessor
from .live import LiveEventProcessor, RedisPublisher

__all__ = ["GraphSpanProcessor", "LiveEventProcessor", "RedisPublisher"]
