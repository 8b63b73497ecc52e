"""Live streams (placeholder until the hub lands)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()


class StreamHub:
    def __init__(self, redis_url: str | None) -> None:
        self.redis_url = redis_url

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None
