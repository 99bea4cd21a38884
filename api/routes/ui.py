"""The dashboard: pages under ``/ui/`` that only call the v1 API from the browser (no server-side data).

Each page is the shell (``api/ui/shell.html``) around one body fragment (``api/ui/pages``) and one script
module (``api/ui/static``); the key lives in the browser's sessionStorage and goes out as the Bearer header
of the page's own fetch calls. ``UiSecurityHeaders`` gives every ``/ui`` response a strict
Content-Security-Policy: scripts and styles from this server only, nothing inline, no framing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
                           "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
                           "frame-ancestors 'none'")
SECURITY_HEADERS = {"content-security-policy": CONTENT_SECURITY_POLICY, "x-content-type-options": "nosniff",
                    "referrer-policy": "no-referrer", "x-frame-options": "DENY"}

router = APIRouter(include_in_schema=False)


@dataclass(frozen=True)
class Page:
    title: str
    body: str  # api/ui/pages/<body>.html
    scripts: tuple[str, ...] = ()  # extra classic scripts under /ui/static (vendored libraries)


PAGES = {"signin": Page("Sign in", "signin"), "jobs": Page("Jobs", "jobs"), "job": Page("Job", "job"),
         "sweeps": Page("Sweeps", "sweeps"), "sweep": Page("Sweep", "sweep"),
         "submit": Page("Submit a job", "submit", scripts=("vendor/js-yaml.min.js",))}


@cache
def render(name: str) -> str:
    """The page's HTML: the shell with the page's title, body and script (read once per process)."""
    page = PAGES[name]
    scripts = "".join(f'<script src="/ui/static/{src}" defer></script>\n' for src in page.scripts)
    values = {"title": page.title, "page": name, "scripts": scripts,
              "body": (UI_DIR / "pages" / f"{page.body}.html").read_text()}
    html = (UI_DIR / "shell.html").read_text()
    for key, value in values.items():
        html = html.replace("{{" + key + "}}", value)
    return html


ROUTES = {"/ui/": "signin", "/ui/jobs": "jobs", "/ui/jobs/{job_id}": "job", "/ui/sweeps": "sweeps",
          "/ui/sweeps/{sweep_id}": "sweep", "/ui/submit": "submit"}  # a page's ids: its script reads the URL


def _serve(name: str) -> Callable[[], HTMLResponse]:
    def page() -> HTMLResponse:
        return HTMLResponse(render(name), headers={"Cache-Control": "no-cache"})

    page.__name__ = f"{name}_page"
    return page


for _path, _name in ROUTES.items():
    router.add_api_route(_path, _serve(_name), methods=["GET"])


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/ui/")


@router.get("/ui")
def ui_root() -> RedirectResponse:
    return RedirectResponse("/ui/")


static_files = StaticFiles(directory=UI_DIR / "static")


class UiSecurityHeaders:
    """Adds ``SECURITY_HEADERS`` to every response under ``/ui`` (pages and static files); the API's own
    responses are JSON and keep their headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not (scope["path"] == "/ui" or scope["path"].startswith("/ui/")):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers: list[Any] = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(name.encode(), value.encode()) for name, value in SECURITY_HEADERS.items()
                            if name.encode() not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
