"""The interactive API docs: ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc), served with their
scripts and styles from the API itself, so the pages load on a machine that cannot reach a CDN
(FastAPI's own pages fetch them from cdn.jsdelivr.net).

The bundles come from the ``fastapi-offline`` package's ``static`` folder (Swagger UI 5, which
renders OpenAPI 3.1, and ReDoc 2); nothing else of that package is used. Like ``/openapi.json``,
the pages and their assets need no token.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
#: Where the bundles are served: ``swagger-ui-bundle.js``, ``swagger-ui.css``,
#: ``redoc.standalone.js``, ``favicon.png``.
ASSETS_URL = "/docs/assets"

# The package's layout, not an API of it: tests/integration/api/test_api_docs.py fetches every
# asset the pages name, so a release that moves them fails there.
_ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"


def install_docs(app: FastAPI) -> None:
    """Serve ``/docs``, ``/redoc`` and their assets on ``app``, which must be built with
    ``docs_url=None, redoc_url=None`` (FastAPI's CDN pages) and keep its ``openapi_url``."""
    openapi_url = app.openapi_url
    if openapi_url is None:
        raise ValueError("the docs pages need the app's OpenAPI document (openapi_url is None)")
    app.mount(ASSETS_URL, StaticFiles(directory=_ASSETS_DIR), name="docs-assets")

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            with_google_fonts=False,  # fonts.googleapis.com is a CDN too
        )
