"""OTLP ingest pipeline (placeholder)."""

from __future__ import annotations

from typing import Any


class OTLPIngest:
    def __init__(self, settings: Any, store: Any, redis_url: str | None) -> None:
        self.settings = settings

    def shutdown(self) -> None:
        return None
