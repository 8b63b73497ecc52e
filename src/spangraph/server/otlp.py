"""OTLP/HTTP receiver (placeholder)."""

from fastapi import APIRouter

router = APIRouter()
