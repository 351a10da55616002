"""What the fake GitHub's endpoints share: a call, an answer, GitHub's error shape, pagination by page,
the clock and ids, and the repositories' branches (whose heads deployments and catch-up read)."""

from __future__ import annotations

import itertools
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

DOCS = "https://docs.github.com/rest"
USER = {
    "login": "octocat",
    "id": 1,
    "node_id": "MDQ6VXNlcjE=",
    "avatar_url": "https://github.com/images/error/octocat_happy.gif",
    "gravatar_id": "",
    "url": "https://api.github.com/users/octocat",
    "html_url": "https://github.com/octocat",
    "type": "User",
    "site_admin": False,
}


@dataclass(frozen=True)
class Call:
    """A call an endpoint answers: its path's parts, query and JSON body, and the App that made it (for
    the App's own endpoints)."""

    match: re.Match[str]
    query: dict[str, list[str]]
    body: Any
    app: Any = None


@dataclass
class Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


def error(status: int, message: str, **more: Any) -> dict[str, Any]:
    """GitHub's shape of an error's body."""
    return {"message": message, "documentation_url": DOCS, "status": str(status), **more}


def invalid(resource: str, field_name: str, message: str | None = None) -> Reply:
    """422 Validation Failed, for one field."""
    problem: dict[str, Any] = {"resource": resource, "field": field_name, "code": "invalid"}
    if message:
        problem.update(code="custom", message=message)
    return Reply(422, error(422, "Validation Failed", errors=[problem]))


NOT_FOUND = Reply(404, error(404, "Not Found"))


def iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


class Base:
    def __init__(self, *, now: Callable[[], float]) -> None:
        # The clock of timestamps, token expiry and JWT checks: a test may move it.
        self.now = now
        # Held while an endpoint runs, and by whatever reads or sets the state from a test.
        self.lock = threading.RLock()
        # (repository in lower case, branch) -> head commit.
        self.branches: dict[tuple[str, str], str] = {}
        self._ids = itertools.count(1)

    @property
    def url(self) -> str:
        raise NotImplementedError

    def next_id(self) -> int:
        return next(self._ids)

    def set_branch(self, repository: str, branch: str, sha: str) -> None:
        with self.lock:
            self.branches[(repository.lower(), branch)] = sha

    def get_branch(self, call: Call) -> Reply:
        repository, name = call.match["repo"], call.match["branch"]
        sha = self.branches.get((repository.lower(), name))
        if sha is None:
            return Reply(404, error(404, "Branch not found"))
        commit_url = f"{self.url}/repos/{repository}/commits/{sha}"
        return Reply(
            200,
            {
                "name": name,
                "commit": {
                    "sha": sha,
                    "node_id": f"C_{sha[:12]}",
                    "commit": {"message": "", "tree": {"sha": sha, "url": commit_url}, "url": commit_url},
                    "url": commit_url,
                    "html_url": f"https://github.com/{repository}/commit/{sha}",
                    "author": None,
                    "committer": None,
                    "parents": [],
                },
                "_links": {
                    "self": f"{self.url}/repos/{repository}/branches/{name}",
                    "html": f"https://github.com/{repository}/tree/{name}",
                },
                "protected": False,
                "protection": {
                    "enabled": False,
                    "required_status_checks": {"enforcement_level": "off", "contexts": [], "checks": []},
                },
                "protection_url": f"{self.url}/repos/{repository}/branches/{name}/protection",
            },
        )

    def list_branches(self, call: Call) -> Reply:
        """The repository's branches, by name, a page at a time, each as GitHub lists it."""
        repository = call.match["repo"]
        heads = sorted(
            (name, sha) for (repo, name), sha in self.branches.items() if repo == repository.lower()
        )
        items = [
            {
                "name": name,
                "commit": {"sha": sha, "url": f"{self.url}/repos/{repository}/commits/{sha}"},
                "protected": False,
            }
            for name, sha in heads
        ]
        return self.page(items, f"/repos/{repository}/branches", call.query)

    def page(self, items: list[Any], path: str, query: dict[str, list[str]]) -> Reply:
        """One page of ``items`` (``per_page``, ``page``), with GitHub's Link header to the others."""
        per_page = min(int(query.get("per_page", ["30"])[0]), 100)
        number = int(query.get("page", ["1"])[0])
        last = max(1, -(-len(items) // per_page))
        links = []
        for rel, target in (("next", number + 1), ("last", last), ("first", 1), ("prev", number - 1)):
            if (number < last) if rel in ("next", "last") else (number > 1):
                params = {**{key: values[0] for key, values in query.items()}, "page": str(target)}
                links.append(f'<{self.url}{path}?{urlencode(params)}>; rel="{rel}"')
        chunk = items[(number - 1) * per_page : number * per_page]
        return Reply(200, chunk, {"Link": ", ".join(links)} if links else {})
