"""The status page's rendering: Jinja templates with autoescape on (the headers of every response are
runner/ui_headers.py's).

The templates are ``runner/ui_templates/``, the assets ``runner/ui_static/`` (both in the wheel). Every value
a template shows is escaped unless the template says otherwise, and none does: refs, commit subjects and log
lines come from outside.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.requests import Request
from starlette.responses import HTMLResponse

from runner.timefmt import shown

TEMPLATES_DIR = Path(__file__).parent / "ui_templates"
STATIC_DIR = Path(__file__).parent / "ui_static"


class Renderer:
    """Renders the page's templates, with what every page shows: the user, the server, its links."""

    def __init__(self, ui_path: str, server_name: str) -> None:
        # "" for the root, so that url("/runs") is "/runs" there and "/runner/runs" under /runner.
        self.prefix = ui_path.rstrip("/")
        self.server_name = server_name
        self.environment = Environment(
            loader=FileSystemLoader(TEMPLATES_DIR),
            autoescape=True,
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.environment.globals.update(url=self.url, static=self.static, query=self.query)
        self.environment.filters["time"] = _time
        self.environment.filters["short"] = _short

    def url(self, path: str) -> str:
        """``path`` (from the page's root, starting with /) as the browser reaches it."""
        return self.prefix + path

    def static(self, name: str) -> str:
        return self.url("/static/" + name)

    def query(self, path: str, **parameters: Any) -> str:
        """``path`` with the parameters that are set (not None or empty) as its query string."""
        given = {key: value for key, value in parameters.items() if value not in (None, "")}
        return self.url(path) + ("?" + urlencode(given) if given else "")

    def render(self, request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        page = self.environment.get_template(template).render(
            user=request.scope.get("ui_user"), server_name=self.server_name, **context
        )
        return HTMLResponse(page, status_code=status_code)


def _time(value: Any) -> str:
    return shown(value)


def _short(commit: str | None) -> str:
    return (commit or "")[:12]
