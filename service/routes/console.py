"""The web console at `/` and the API documentation at `/docs` and `/redoc`, all from `service/static`.

Static files only: the console is HTML, CSS and JavaScript modules that use the public JSON API
with the user's key (never one rendered by the server), and `/docs` and `/redoc` load Swagger UI and
ReDoc from the vendored copies in `static/vendor/`, so nothing is fetched from the internet. These
paths need no key, so the page can ask for one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
STATIC_PATH = "/static"
_PAGES = {"/": "index.html", "/docs": "docs/swagger.html", "/redoc": "docs/redoc.html"}
_NO_CACHE = {"Cache-Control": "no-cache"}  # revalidate: a new release shows at the next load


def install_console(app: FastAPI) -> None:
    """Serve the console's page, the documentation pages and `/static/...` on `app`."""
    for path, page in _PAGES.items():
        app.add_api_route(path, _page_route(STATIC_DIR / page), methods=["GET"], include_in_schema=False,
                          response_class=FileResponse)
    app.mount(STATIC_PATH, StaticFiles(directory=STATIC_DIR), name="static")


def _page_route(page: Path) -> Callable[[], Awaitable[FileResponse]]:
    async def serve_page() -> FileResponse:
        return FileResponse(page, media_type="text/html", headers=_NO_CACHE)

    serve_page.__name__ = f"page_{page.stem}"
    return serve_page
