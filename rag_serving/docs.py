"""`/docs`: Swagger UI served by the app itself, from the `openapi-ui-bundles` package, so the interactive
API reference works on a machine with no internet (FastAPI's default page loads Swagger UI from a CDN).
"Authorize" takes an API key (the `X-API-Key` scheme the routes declare) and Try-it-out sends it."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from openapi_ui_bundles import swagger_ui

ASSETS = "/docs/assets"


def add_docs(app: FastAPI) -> None:
    """The app must be created with `docs_url=None, redoc_url=None` (no CDN pages)."""
    app.mount(ASSETS, StaticFiles(directory=swagger_ui.static_path), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    def swagger_page() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} — reference",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon-32x32.png",
            swagger_ui_parameters={"persistAuthorization": True, "displayRequestDuration": True},
        )
