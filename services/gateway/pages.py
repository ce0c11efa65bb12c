"""The gateway's web pages beside the HTTP API: the tracker script, the example shop and the console."""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.responses import FileResponse, RedirectResponse
from starlette.routing import BaseRoute, Mount, Route

WEB = Path(__file__).resolve().parent / "web"


async def tracker(_request) -> FileResponse:
    # Cached for an hour by browsers and CDNs: pages load it on every view.
    return FileResponse(WEB / "tracker.js", media_type="text/javascript; charset=utf-8",
                        headers={"cache-control": "public, max-age=3600", "access-control-allow-origin": "*"})


async def example(_request) -> FileResponse:
    return FileResponse(WEB / "example.html", media_type="text/html; charset=utf-8")


async def example_slash(_request) -> RedirectResponse:
    return RedirectResponse("/example/", status_code=308)


def pages(console: Starlette | None = None) -> Starlette:
    """The routes served on the HTTP port besides the RPCs."""
    routes: list[BaseRoute] = [Route("/tracker.js", tracker), Route("/example/", example),
                               Route("/example", example_slash)]
    if console is not None:
        routes.append(Mount("/console", console))
    return Starlette(routes=routes)
