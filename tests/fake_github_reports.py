"""The fake GitHub's commit statuses and deployments (with their statuses): what runner reports."""

from __future__ import annotations

import re
from typing import Any

from fake_github_base import NOT_FOUND, USER, Base, Call, Reply, error, invalid, iso

COMMIT_STATES = ("error", "failure", "pending", "success")
DEPLOYMENT_STATES = ("error", "failure", "inactive", "in_progress", "queued", "pending", "success")
TOO_LONG = "description is too long (maximum is 140 characters)"


class Reports(Base):
    def __init__(self, **clock: Any) -> None:
        super().__init__(**clock)
        # (repository in lower case, sha) -> its commit statuses, oldest first.
        self.statuses: dict[tuple[str, str], list[dict[str, Any]]] = {}
        # Repository in lower case -> its deployments, oldest first.
        self.deployments: dict[str, list[dict[str, Any]]] = {}
        # Deployment id -> its statuses, oldest first.
        self.deployment_statuses: dict[int, list[dict[str, Any]]] = {}

    def commit_statuses(self, repository: str, sha: str) -> list[dict[str, Any]]:
        """The statuses posted for a commit, oldest first."""
        with self.lock:
            return list(self.statuses.get((repository.lower(), sha), []))

    def create_status(self, call: Call) -> Reply:
        body = call.body or {}
        if body.get("state") not in COMMIT_STATES:
            return invalid("Status", "state")
        if len(body.get("description") or "") > 140:
            return invalid("Status", "description", TOO_LONG)
        repository, sha = call.match["repo"], call.match["sha"]
        number, stamp = self.next_id(), iso(self.now())
        status = {
            "url": f"{self.url}/repos/{repository}/statuses/{sha}",
            "avatar_url": "https://github.com/images/error/hubot_happy.gif",
            "id": number,
            "node_id": f"SC_{number}",
            "state": body["state"],
            "description": body.get("description"),
            "target_url": body.get("target_url"),
            "context": body.get("context") or "default",
            "created_at": stamp,
            "updated_at": stamp,
            "creator": USER,
        }
        self.statuses.setdefault((repository.lower(), sha), []).append(status)
        return Reply(201, status)

    def list_statuses(self, call: Call) -> Reply:
        """Newest first; ``ref`` is a commit, or a branch (``heads/NAME`` or ``NAME``)."""
        repository, ref = call.match["repo"], call.match["ref"]
        sha = self.branches.get((repository.lower(), ref.removeprefix("heads/")), ref)
        items = self.statuses.get((repository.lower(), sha), [])[::-1]
        return self.page(items, f"/repos/{repository}/commits/{ref}/statuses", call.query)

    def create_deployment(self, call: Call) -> Reply:
        repository, body = call.match["repo"], call.body or {}
        ref = body.get("ref")
        if not ref:
            return invalid("Deployment", "ref")
        sha = self.branches.get((repository.lower(), ref))
        if sha is None and re.fullmatch(r"[0-9a-f]{40}", ref):
            sha = ref
        if sha is None:
            return Reply(422, error(422, f"No ref found for: {ref}"))
        refused = self._required_contexts_refusal(repository, sha, ref, body)
        if refused is not None:
            return refused
        number, stamp = self.next_id(), iso(self.now())
        environment = body.get("environment") or "production"
        deployment = {
            "url": f"{self.url}/repos/{repository}/deployments/{number}",
            "id": number,
            "node_id": f"DE_{number}",
            "commit_sha": sha,
            "ref": ref,
            "task": body.get("task") or "deploy",
            "payload": body.get("payload") or {},
            "original_environment": environment,
            "environment": environment,
            "description": body.get("description") or "",
            "creator": USER,
            "created_at": stamp,
            "updated_at": stamp,
            "statuses_url": f"{self.url}/repos/{repository}/deployments/{number}/statuses",
            "repository_url": f"{self.url}/repos/{repository}",
            "transient_environment": bool(body.get("transient_environment", False)),
            "production_environment": bool(body.get("production_environment", environment == "production")),
        }
        self.deployments.setdefault(repository.lower(), []).append(deployment)
        self.deployment_statuses[number] = []
        return Reply(201, deployment)

    def _required_contexts_refusal(self, repository: str, sha: str, ref: str, body: Any) -> Reply | None:
        """GitHub's check before it creates a deployment: each required context's latest status is a
        success. Without ``required_contexts``, every context posted for the commit is required."""
        latest = {s["context"]: s["state"] for s in self.statuses.get((repository.lower(), sha), [])}
        required = body.get("required_contexts", list(latest))
        failed = [
            {"context": c, "state": latest.get(c, "missing")} for c in required if latest.get(c) != "success"
        ]
        if not failed:
            return None
        problem = {
            "contexts": failed,
            "resource": "Deployment",
            "field": "required_contexts",
            "code": "invalid",
        }
        return Reply(409, error(409, f"Conflict: Commit status checks failed for {ref}.", errors=[problem]))

    def list_deployments(self, call: Call) -> Reply:
        repository = call.match["repo"]
        wanted = {
            key: call.query[key][0] for key in ("sha", "ref", "task", "environment") if key in call.query
        }
        items = [
            deployment
            for deployment in self.deployments.get(repository.lower(), [])[::-1]
            if all(
                deployment["commit_sha" if key == "sha" else key] == value for key, value in wanted.items()
            )
        ]
        return self.page(items, f"/repos/{repository}/deployments", call.query)

    def _deployment(self, call: Call) -> dict[str, Any] | None:
        deployments = self.deployments.get(call.match["repo"].lower(), [])
        return next((d for d in deployments if d["id"] == int(call.match["id"])), None)

    def create_deployment_status(self, call: Call) -> Reply:
        deployment, body = self._deployment(call), call.body or {}
        if deployment is None:
            return NOT_FOUND
        if body.get("state") not in DEPLOYMENT_STATES:
            return invalid("DeploymentStatus", "state")
        if len(body.get("description") or "") > 140:
            return invalid("DeploymentStatus", "description", TOO_LONG)
        earlier = self.deployment_statuses[deployment["id"]]
        number, stamp = self.next_id(), iso(self.now())
        # log_url replaces target_url, which GitHub sets to the same.
        log_url = body.get("log_url") or body.get("target_url") or ""
        status = {
            "url": f"{deployment['url']}/statuses/{number}",
            "id": number,
            "node_id": f"DES_{number}",
            "state": body["state"],
            "creator": USER,
            "description": body.get("description") or "",
            "environment": body.get("environment") or (earlier[-1] if earlier else deployment)["environment"],
            "target_url": log_url,
            "created_at": stamp,
            "updated_at": stamp,
            "deployment_url": deployment["url"],
            "repository_url": deployment["repository_url"],
            "environment_url": body.get("environment_url") or "",
            "log_url": log_url,
        }
        earlier.append(status)
        return Reply(201, status)

    def list_deployment_statuses(self, call: Call) -> Reply:
        deployment = self._deployment(call)
        if deployment is None:
            return NOT_FOUND
        items = self.deployment_statuses[deployment["id"]][::-1]
        return self.page(
            items, f"/repos/{call.match['repo']}/deployments/{deployment['id']}/statuses", call.query
        )
