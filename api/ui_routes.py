"""The browser page: ``GET /`` and ``GET /ui`` serve a static, build-free client of the job API.

The page and its assets ship inside the package (``api/static``, package data). It loads nothing
from any other origin, and its Content-Security-Policy tells the browser so.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter, HTTPException, Response

# the only files served, with their types: a fixed map, so no request path reaches the disk
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}

ui_router = APIRouter(include_in_schema=False)  # the page is not part of the API's schema


@cache
def _asset(name: str) -> bytes:
    return (resources.files("api") / "static" / name).read_bytes()


@ui_router.get("/")
@ui_router.get("/ui")
def page() -> Response:
    """The page: submit a job, watch its events, cancel it, drop and resume the stream."""
    headers = {**HEADERS, "Content-Security-Policy": CSP}
    return Response(_asset("index.html"), media_type=ASSETS["index.html"], headers=headers)


@ui_router.get("/ui/static/{name}")
def asset(name: str) -> Response:
    """The page's script and stylesheet."""
    if name not in ASSETS:
        raise HTTPException(404, f"no such asset: {name}")
    return Response(_asset(name), media_type=ASSETS[name], headers=HEADERS)
