"""The HTTP API: thin FastAPI routes over the ``tokenspool`` core."""

from .app import create_app

__all__ = ["create_app"]
