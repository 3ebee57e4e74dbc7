"""A small Hugging Face Hub-compatible HTTP server for the tests, on 127.0.0.1 (stdlib only).

It implements what the installed ``huggingface_hub`` client calls (read from its source, version 2.x):

- ``POST /api/repos/create``                         create_repo (401 without a token, 403 outside your namespace,
                                                      409 if it exists: the client's ``exist_ok`` handles that)
- ``GET  /api/models/{repo}[/revision/{rev}]``       repo_info / model_info (``sha``, ``siblings``)
- ``GET  /api/models/{repo}/tree/{rev}``             list_repo_tree (snapshot_download lists files with it)
- ``POST /api/models/{repo}/preupload/{rev}``        every file is uploaded "regular" (inline in the commit, no LFS)
- ``POST /api/models/{repo}/commit/{rev}``           NDJSON commits (header, file, deletedFile), ``create_pr=1``
- ``POST /api/models/{repo}/discussions``, ``GET .../discussions/{n}``   pull requests: with ``hf_xet`` installed,
                                                      ``upload_folder(create_pr=True)`` opens one, then commits to
                                                      ``refs/pr/{n}``
- ``POST /api/models/{repo}/branch/{name}``, ``POST /api/models/{repo}/tag/{rev}``   branches and tags
- ``POST /api/validate-yaml``                        README front matter: a YAML mapping whose ``model-index``
                                                      huggingface_hub itself can parse into evaluation results
- ``HEAD|GET /{repo}/resolve/{rev}/{path}``          files, with ``X-Repo-Commit``, ``ETag`` and ``Content-Length``
- ``GET  /api/whoami-v2``

Errors carry the ``X-Error-Code`` header the client maps to its exceptions (``RepoNotFound``, ``RevisionNotFound``,
``EntryNotFound``). Tokens are given to :class:`HubServer` as ``{token: (user, write_namespaces)}``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass
class Commit:
    files: dict[str, bytes]
    message: str
    parent: str | None


@dataclass
class Repo:
    owner: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> commit sha

    def resolve(self, revision: str) -> str | None:
        if revision in self.refs:
            return self.refs[revision]
        return revision if revision in self.commits else None

    def commit(self, parent: str | None, files: dict[str, bytes], message: str) -> str:
        sha = hashlib.sha1(f"{parent}{message}{time.time_ns()}{sorted(files)}".encode()).hexdigest()
        self.commits[sha] = Commit(files, message, parent)
        return sha


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.code = status, code


class HubServer:
    """``with HubServer(tokens) as hub: hub.endpoint``; ``hub.repos`` is the state, for assertions."""

    def __init__(self, tokens: dict[str, tuple[str, set[str]]]):
        self.tokens = tokens
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, in order
        self.lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"hub": self})
        self.http = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.endpoint = f"http://127.0.0.1:{self.http.server_address[1]}"

    def __enter__(self) -> "HubServer":
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.http.shutdown()
        self.http.server_close()

    # -- permissions --------------------------------------------------------------------------------
    def user(self, authorization: str | None) -> tuple[str, set[str]] | None:
        if not authorization or not authorization.startswith("Bearer "):
            return None
        found = self.tokens.get(authorization[len("Bearer "):])
        if found is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return found

    def readable(self, repo_id: str, user) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None or repo.private and (user is None or repo.owner not in user[1] | {user[0]}):
            raise HubError(404 if user else 401, "Repository not found", "RepoNotFound")
        return repo

    def writable(self, repo_id: str, user) -> Repo:
        if user is None:
            raise HubError(401, "Authentication required")
        repo = self.readable(repo_id, user)
        if repo.owner not in user[1] | {user[0]}:
            raise HubError(403, f"You don't have the rights to write to {repo_id}")
        return repo


def _revision(repo: Repo, revision: str) -> str:
    sha = repo.resolve(revision)
    if sha is None:
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
    return sha


def _blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    # -- plumbing -------------------------------------------------------------------------------------
    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
               content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data, status: int = 200) -> None:
        self._reply(status, json.dumps(data).encode())

    def _body(self) -> bytes:
        return self.request_body

    def _dispatch(self) -> None:
        # Read the whole body first, whatever the answer: bytes left unread would be taken for the next request
        # on this kept-alive connection.
        self.request_body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.split("/") if p]
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        with self.hub.lock:
            self.hub.requests.append((self.command, url.path))
        try:
            user = self.hub.user(self.headers.get("Authorization"))
            with self.hub.lock:
                self._route(parts, query, user)
        except HubError as error:
            headers = {"X-Error-Message": str(error)}
            if error.code:
                headers["X-Error-Code"] = error.code
            self._reply(error.status, json.dumps({"error": str(error)}).encode(), headers)

    do_GET = do_HEAD = do_POST = _dispatch

    # -- routes -------------------------------------------------------------------------------------
    def _route(self, parts: list[str], query: dict, user) -> None:
        hub = self.hub
        if parts == ["api", "whoami-v2"]:
            if user is None:
                raise HubError(401, "Authentication required")
            return self._json({"name": user[0], "type": "user", "orgs": [{"name": o} for o in user[1]]})
        if parts == ["api", "repos", "create"]:
            return self._create(json.loads(self._body()), user)
        if parts == ["api", "validate-yaml"]:
            return self._validate_yaml(json.loads(self._body())["content"])
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo_id, action, rest = "/".join(parts[2:4]), parts[4] if len(parts) > 4 else "revision", parts[5:]
            revision = rest[0] if rest else "main"
            if action == "revision":
                repo = hub.readable(repo_id, user)
                sha = _revision(repo, revision)
                return self._json({"id": repo_id, "sha": sha, "private": repo.private,
                                   "siblings": [{"rfilename": p} for p in sorted(repo.commits[sha].files)]})
            if action == "tree":
                repo = hub.readable(repo_id, user)
                files = repo.commits[_revision(repo, revision)].files
                prefix = "/".join(rest[1:])
                return self._json([{"type": "file", "path": p, "size": len(d), "oid": _blob_id(d)}
                                   for p, d in sorted(files.items()) if p.startswith(prefix)])
            if action == "preupload":
                repo = hub.writable(repo_id, user)
                if not query.get("create_pr"):
                    _revision(repo, revision)
                files = json.loads(self._body())["files"]
                return self._json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                             for f in files]})
            if action == "commit":
                return self._commit(hub.writable(repo_id, user), repo_id, revision, query.get("create_pr") == "1")
            if action == "discussions":
                return self._pull_request(repo_id, user, int(rest[0]) if rest else None)
            if action in ("branch", "tag"):
                repo = hub.writable(repo_id, user)
                body = json.loads(self._body() or b"{}")
                name, start = (rest[0], body.get("startingPoint") or "main") if action == "branch" else (
                    body["tag"], revision)
                repo.refs[name] = _revision(repo, start)
                return self._json({})
        if len(parts) >= 5 and parts[2] == "resolve":
            repo = hub.readable("/".join(parts[:2]), user)
            sha = _revision(repo, parts[3])
            path = "/".join(parts[4:])
            data = repo.commits[sha].files.get(path)
            if data is None:
                raise HubError(404, f"{path} does not exist at {sha}", "EntryNotFound")
            return self._reply(200, data, {"X-Repo-Commit": sha, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'},
                               content_type="application/octet-stream")
        raise HubError(404, f"no route for {self.command} /{'/'.join(parts)}")

    def _create(self, body: dict, user) -> None:
        if user is None:
            raise HubError(401, "Authentication required")
        owner = body.get("organization") or user[0]
        repo_id = f"{owner}/{body['name']}"
        if owner not in user[1] | {user[0]}:
            raise HubError(403, f"You don't have the rights to create a repo under {owner}")
        url = f"{self.hub.endpoint}/{repo_id}"
        if repo_id in self.hub.repos:
            return self._json({"error": "You already created this model repo", "url": url}, 409)
        repo = Repo(owner=owner, private=body.get("visibility") == "private" or bool(body.get("private")))
        repo.refs["main"] = repo.commit(None, {".gitattributes": b"*.safetensors filter=lfs\n"}, "initial commit")
        self.hub.repos[repo_id] = repo
        self._json({"url": url, "name": repo_id})

    def _commit(self, repo: Repo, repo_id: str, revision: str, create_pr: bool) -> None:
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        header = next(line["value"] for line in lines if line["key"] == "header")
        parent = _revision(repo, revision)
        files = dict(repo.commits[parent].files)
        for line in lines:
            value = line["value"]
            if line["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif line["key"] == "deletedFile":
                files.pop(value["path"], None)
            elif line["key"] != "header":
                raise HubError(400, f"unsupported commit operation {line['key']!r} (this server takes regular files)")
        sha = repo.commit(parent, files, header["summary"])
        pr_url = None
        if create_pr:
            number = 1 + sum(ref.startswith("refs/pr/") for ref in repo.refs)
            repo.refs[f"refs/pr/{number}"] = sha
            pr_url = f"{self.hub.endpoint}/{repo_id}/discussions/{number}"
        else:
            repo.refs[revision] = sha
        self._json({"commitUrl": f"{self.hub.endpoint}/{repo_id}/commit/{sha}", "commitOid": sha,
                    "pullRequestUrl": pr_url})

    def _pull_request(self, repo_id: str, user, number: int | None) -> None:
        """``POST .../discussions`` opens a pull request (its branch ``refs/pr/N`` starts at main: upload_folder then
        commits to it); ``GET .../discussions/N`` describes it."""
        if number is None:
            repo = self.hub.writable(repo_id, user)
            number = 1 + sum(ref.startswith("refs/pr/") for ref in repo.refs)
            repo.refs[f"refs/pr/{number}"] = repo.refs["main"]
            return self._json({"num": number})
        self.hub.readable(repo_id, user)
        self._json({"title": "pull request", "num": number, "author": {"name": user[0] if user else "?"},
                    "createdAt": "2026-01-01T00:00:00.000Z", "status": "draft", "isPullRequest": True,
                    "repo": {"name": repo_id, "type": "model"}, "changes": {"base": "refs/heads/main"},
                    "filesWithConflicts": [], "events": []})

    def _validate_yaml(self, content: str) -> None:
        import yaml
        from huggingface_hub.repocard_data import model_index_to_eval_results

        errors = []
        if not content.startswith("---\n"):
            return self._json({"warnings": [{"message": "empty or missing yaml metadata in repo card"}]})
        try:
            metadata = yaml.safe_load(content[4:].split("\n---\n", 1)[0])
        except yaml.YAMLError as error:
            metadata, errors = None, [{"message": f"YAML: {error}"}]
        if not errors and not isinstance(metadata, dict):
            errors = [{"message": "the metadata is not a mapping"}]
        elif not errors and "model-index" in metadata:
            try:
                model_index_to_eval_results(metadata["model-index"])
            except (KeyError, TypeError, ValueError) as error:
                errors = [{"message": f'"model-index": {error!r}'}]
        self._json({"errors": errors} if errors else {"warnings": []}, 400 if errors else 200)
