"""``/docs`` (Swagger UI) and ``/redoc`` load their scripts and styles from the API itself, never a
CDN, and need no token (engine/api/docs.py)."""

from __future__ import annotations

import re

import httpx
import pytest

from connectors.topics import Topics
from engine.settings import Settings
from tests.integration.api_harness import make_app, served

_ASSET_URL = re.compile(r'(?:src|href)="([^"]*)"')
_SPEC_URL = re.compile(r"""(?:url: '|spec-url=")([^'"]+)""")


@pytest.mark.parametrize(
    ("page", "wanted"),
    [
        ("/docs", {"javascript", "text/css", "image/png"}),
        ("/redoc", {"javascript", "image/png"}),
    ],
)
def test_docs_page_loads_its_assets_from_the_api(settings: Settings, page: str, wanted: set[str]) -> None:
    app = make_app(settings, Topics())
    with served(app) as base_url, httpx.Client(base_url=base_url, timeout=10) as http:
        resp = http.get(page)  # no Authorization header: the docs are public
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-type"].startswith("text/html")
        html = resp.text
        for cdn in ("cdn.jsdelivr", "unpkg", "googleapis", "tiangolo.com"):
            assert cdn not in html, f"{page} names {cdn}"
        assets = _ASSET_URL.findall(html)
        assert assets, html
        found: set[str] = set()
        for url in assets:
            assert url.startswith("/") and not url.startswith("//"), f"{page} loads {url} from elsewhere"
            asset = http.get(url)
            assert asset.status_code == 200, url
            kind = asset.headers["content-type"]
            found |= {k for k in wanted if k in kind}
            if "javascript" in kind:
                # the real bundle, not an error page served as a script
                assert (b"SwaggerUIBundle" if page == "/docs" else b"Redoc") in asset.content
        assert found == wanted, f"{page}: {assets}"
        (spec_url,) = _SPEC_URL.findall(html)
        spec = http.get(spec_url)
        assert spec.status_code == 200 and spec.json()["openapi"].startswith("3.")
