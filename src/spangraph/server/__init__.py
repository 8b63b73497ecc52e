"""The HTTP service (``spangraph serve``): query API, live streams, OTLP receiver, web UI.

``create_app(settings)`` builds the FastAPI app; nothing connects until its lifespan
starts. Needs the ``server`` extra: ``pip install 'spangraph[server]'``.
"""

from .app import create_app

__all__ = ["create_app"]
