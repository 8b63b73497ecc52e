"""Span processors: the graph writer, the live publisher, and the offloading one."""

from .graph import GraphSpanProcessor
from .live import LiveEventProcessor, RedisPublisher
from .offload import OffloadSpanProcessor

__all__ = ["GraphSpanProcessor", "LiveEventProcessor", "OffloadSpanProcessor", "RedisPublisher"]
