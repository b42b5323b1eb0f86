"""The web interface's pages: each has its own URL, served as one HTML shell.

Every page is ``web/page.html`` with the page's name and what the browser cannot get
from the JSON API embedded as JSON (a shop entry's README rendered to HTML by
markdown-it-py, the stored description an execution may be submitted again from); the
page's script (``web/*.js``, no external asset) reads the rest from ``/api/v1`` and
follows ``/api/v1/events``. A path that is no page and no route gets an HTML 404 page
(JSON under ``/api/``). The proxy to the executions' interactive services
(services/api/proxy.py) is mounted with the pages. docs/web.md describes the pages.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from aiohttp import web
from markdown_it import MarkdownIt

from common.errors import NotFound
from services.api import auth, proxy
from services.api.limits import ascii_int
from services.api.shop import SHOP

WEB = Path(__file__).parent / "web"
SHELL = WEB / "page.html"

# CommonMark with tables and strikethrough; raw HTML in a README is shown as text.
_MARKDOWN = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable(
    ["table", "strikethrough"]
)

# the pages a signed-in user may open: path pattern -> the page's name for the script
PAGES = {
    "/shop": "shop",
    "/shop/{zapp:.+}": "zapp",
    "/executions": "executions",
    "/executions/{id}": "execution",
    "/executions/{id}/logs/{instance}": "logs",
    "/nodes": "nodes",
    "/queue": "queue",
    "/users": "users",
}
_API_PREFIXES = ("/api/", "/proxy/", "/ui/", "/metrics", "/healthz", "/readyz")


def render_markdown(text: str) -> str:
    """A README as HTML: CommonMark, tables and code; raw HTML escaped."""
    return str(_MARKDOWN.render(text))


def _json_for_html(value: Any) -> str:
    """JSON safe inside ``<script type="application/json">`` (no ``</script>``)."""
    text = json.dumps(value, ensure_ascii=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def shell(page: str, title: str, data: dict[str, Any], status: int = 200) -> web.Response:
    """The HTML shell of ``page`` with ``data`` for its script."""
    text = SHELL.read_text(encoding="utf-8")
    text = text.replace("{{title}}", html.escape(title)).replace("{{page}}", html.escape(page))
    text = text.replace("{{data}}", _json_for_html(data))
    response = web.Response(text=text, content_type="text/html", status=status)
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self';"
        " frame-ancestors 'none'"
    )
    return response


def not_found_page(path: str) -> web.Response:
    """The HTML page of an unknown path (a 404)."""
    return shell("notfound", "Not found", {"path": path}, status=404)


def _handler(page: str) -> Any:
    async def handle(request: web.Request) -> web.StreamResponse:
        return await _page(request, page)

    return handle


async def _page(request: web.Request, page: str) -> web.StreamResponse:
    """One page's shell; ``/shop/{zapp}`` with its README, an unknown ZApp a 404."""
    data: dict[str, Any] = dict(request.match_info)
    title = {"zapp": "ZApp", "execution": "Execution", "logs": "Log"}.get(page, page.title())
    if page == "zapp":
        try:
            entry = request.app[SHOP].get(request.match_info["zapp"], auth.caller(request))
        except NotFound:
            return not_found_page(request.path)
        data.update(readme_html=render_markdown(entry.readable_descr), name=entry.name)
        title = entry.name
    elif page in ("execution", "logs"):
        execution_id = ascii_int(request.match_info["id"])
        if execution_id is None:
            return not_found_page(request.path)
        data["id"] = execution_id
        title = f"Execution {execution_id}"
        if page == "execution":
            data["description"] = await _description(request, execution_id)
    return shell(page, title, data)


async def _description(request: web.Request, execution_id: int) -> Any:
    """The stored description of an execution the caller may see, for "submit again"
    (None for another user's or none: the page then says it does not exist)."""
    from services.api.http import DEPS  # http mounts these pages: imported when called

    return await request.app[DEPS].pool.fetchval(
        "SELECT description FROM executions WHERE id = $1 AND ($2::text IS NULL OR user_name = $2)",
        execution_id,
        auth.caller(request).owner_filter(),
    )


def may_see(request: web.Request, owner: str) -> bool:
    """Whether the caller may see an execution of ``owner`` (its own, or any for admins)."""
    caller = auth.caller(request)
    return caller.sees_all or caller.name == owner


@auth.public
async def _login(request: web.Request) -> web.Response:
    """The sign-in page (``?next=`` the page to go to after)."""
    # all the query after ``next=``: the page to return to may have a query of its own,
    # quoted or not
    raw = request.rel_url.raw_query_string.partition("next=")[2]
    return shell("login", "Sign in", {"next": _safe_next(unquote(raw))})


@auth.public  # a redirect only: the page it leads to needs a session
async def _root(_: web.Request) -> web.Response:
    raise web.HTTPFound("/executions")


def _safe_next(raw: str) -> str:
    """A local path to go to after signing in (never another site)."""
    if raw.startswith("/") and not raw.startswith("//") and "\\" not in raw:
        return raw
    return "/executions"


@web.middleware
async def not_found_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """An unknown page path gets the HTML 404 page; the API's paths keep their JSON."""
    try:
        return await handler(request)
    except web.HTTPNotFound:
        if request.method not in ("GET", "HEAD") or request.path.startswith(_API_PREFIXES):
            raise
        return not_found_page(request.path)


def add_routes(app: web.Application) -> None:
    """Mount the pages on ``app`` (before it is frozen)."""
    app.middlewares.append(not_found_middleware)
    proxy.add_routes(app)
    app.router.add_get("/", _root)
    app.router.add_get("/login", _login)
    for path, page in PAGES.items():
        app.router.add_get(path, _handler(page))


__all__ = ["PAGES", "add_routes", "render_markdown", "shell"]
