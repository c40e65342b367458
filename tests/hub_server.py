"""A small Hugging Face Hub-compatible HTTP server for offline tests, standard library only.

It answers the calls `huggingface_hub` 2.x makes to create a repo, upload a folder (every file is committed as a
regular base64 blob in the NDJSON commit body, never LFS or Xet), read repo info and file trees, and download files.
Repos live under a root folder; each commit is a snapshot `{path: blob oid}` with its own 40-hex commit sha, so any
branch or commit sha can be read back.

Run it as `python tests/hub_server.py --root DIR --port 0`: the first stdout line is `PORT <n>`, then it serves
on 127.0.0.1 until killed. Writes need `Authorization: Bearer <token>`; the accepted token is read from the
`HUB_SERVER_TOKEN` environment variable (any `hf_` token is accepted when it is unset). Logs go to stderr, one line
per request (method, path, status), and never contain a header or a token.

Endpoints:

- `POST /api/repos/create`: 200 `{"url": ...}`, or 409 with the same `url` when the repo exists.
- `POST /api/validate-yaml`: 200 `{"errors": [], "warnings": []}` (the Hub's YAML check is not reproduced).
- `POST /api/{type}s/{repo}/preupload/{rev}`: `uploadMode` "regular" for every file, with the remote blob oid.
- `POST /api/{type}s/{repo}/commit/{rev}`: NDJSON body of `header`, `file` (base64), `deletedFile`, `deletedFolder`.
  With `?create_pr=1` the commit opens a pull request instead (`HfApi.create_commit(..., create_pr=True)`): a new
  branch `refs/pr/{n}` from the head of `rev` (or from the header's `parentCommit`) receives the commit, `rev` is left
  as it was, and the answer's `pullRequestUrl` is `{repo url}/discussions/{n}`.
- `POST /api/{type}s/{repo}/discussions`: a discussion, or with `pullRequest` a draft pull request whose branch
  `refs/pr/{n}` starts at the head of main (`HfApi.create_discussion`, `create_pull_request`); answers `{"num"}`.
- `GET /api/{type}s/{repo}/discussions[/{n}]`: the list (`get_repo_discussions`) or one with its events
  (`get_discussion_details`: the opening comment, one `commit` event per commit on the pull request's branch).
  Pull request branches are read like any revision (`revision="refs/pr/1"`).
- `POST /api/{type}s/{repo}/branch/{branch}`: a new branch from `startingPoint` (or main); 409 if it exists.
- `GET /api/{type}s/{repo}` and `GET /api/{type}s/{repo}/revision/{rev}`: repo info with `sha` and `siblings`.
- `GET /api/{type}s/{repo}/tree/{rev}[/{path}]`: files and folders, `?recursive=true` for the whole subtree.
- `GET /api/{type}s/{repo}/commits/{rev}`: the commits reachable from `rev`, newest first (`HfApi.list_repo_commits`);
  each commit's files are read with `tree` or `list_repo_files(revision=<commit id>)`.
- `HEAD`/`GET /[{type}s/]{repo}/resolve/{rev}/{path}`: the file with `X-Repo-Commit`, `ETag`, `Content-Length`.
"""

import argparse
import base64
import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

HOST = "127.0.0.1"
REPO_TYPES = ("model", "dataset", "space")
DEFAULT_NAMESPACE = "user"
MAX_BODY_BYTES = 1 << 30
COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
TOKEN_LIKE = re.compile(r"hf_[A-Za-z0-9]+")


class HubError(Exception):
    """An HTTP error answered with the Hub's `X-Error-Code` / `X-Error-Message` headers and a JSON body."""

    def __init__(self, status: int, message: str, code: str | None = None, body: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.body = body


def git_blob_oid(content: bytes) -> str:
    """The git sha1 of a blob, which `huggingface_hub` compares with its local oid to skip unchanged files."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


class RepoStore:
    """Repos on disk: `root/{type}s/{namespace}/{name}/repo.json` (refs and commits) and `blobs/{oid}`.

    Args:
        root (`Path`): folder holding every repo.
    """

    def __init__(self, root: Path):
        self.root = root
        self.lock = threading.Lock()

    def _folder(self, repo_type: str, repo_id: str) -> Path:
        namespace, name = repo_id.split("/")
        return self.root / f"{repo_type}s" / namespace / name

    def load(self, repo_type: str, repo_id: str) -> dict:
        meta_path = self._folder(repo_type, repo_id) / "repo.json"
        if not meta_path.is_file():
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return json.loads(meta_path.read_text())

    def _save(self, repo_type: str, repo_id: str, meta: dict) -> None:
        meta_path = self._folder(repo_type, repo_id) / "repo.json"
        tmp_path = meta_path.with_suffix(".tmp")
        tmp_path.write_text(json.dumps(meta, indent=1))
        tmp_path.replace(meta_path)

    def exists(self, repo_type: str, repo_id: str) -> bool:
        return (self._folder(repo_type, repo_id) / "repo.json").is_file()

    def create(self, repo_type: str, repo_id: str, private: bool) -> bool:
        """Create a repo with an empty initial commit on `main`; returns `False` if it already exists."""
        with self.lock:
            if self.exists(repo_type, repo_id):
                return False
            (self._folder(repo_type, repo_id) / "blobs").mkdir(parents=True)
            meta = {"private": private, "created": now_iso(), "refs": {}, "commits": {}}
            sha = self._add_commit(meta, None, "initial commit", "", {})
            meta["refs"]["main"] = sha
            self._save(repo_type, repo_id, meta)
            return True

    @staticmethod
    def _add_commit(meta: dict, parent: str | None, title: str, description: str, files: dict) -> str:
        listing = json.dumps([parent, title, description, sorted(files.items()), time.time_ns()])
        sha = hashlib.sha1(listing.encode()).hexdigest()
        meta["commits"][sha] = {
            "parent": parent,
            "title": title,
            "description": description,
            "date": now_iso(),
            "files": files,
        }
        return sha

    @staticmethod
    def resolve(meta: dict, revision: str) -> str:
        """The commit sha a branch name or commit sha points to."""
        if revision in meta["refs"]:
            return meta["refs"][revision]
        if COMMIT_SHA.match(revision) and revision in meta["commits"]:
            return revision
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def blob(self, repo_type: str, repo_id: str, oid: str) -> Path:
        return self._folder(repo_type, repo_id) / "blobs" / oid

    def commit(self, repo_type: str, repo_id: str, branch: str, operations: list[dict], header: dict) -> str:
        """Apply NDJSON operations on top of `branch` and move the branch to the new commit."""
        with self.lock:
            meta = self.load(repo_type, repo_id)
            sha = self._apply(repo_type, repo_id, meta, branch, operations, header)
            self._save(repo_type, repo_id, meta)
            return sha

    def _apply(self, repo_type: str, repo_id: str, meta: dict, branch: str, operations: list[dict], header: dict):
        """`commit` on a loaded `meta`, saved by the caller."""
        if branch not in meta["refs"]:
            raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        head = meta["refs"][branch]
        parent_commit = header.get("parentCommit")
        if parent_commit and not head.startswith(parent_commit):
            raise HubError(412, f"Parent commit {parent_commit} is not the head of {branch} ({head})")
        files = dict(meta["commits"][head]["files"])
        for op in operations:
            key, value = op.get("key"), op.get("value", {})
            path = value.get("path", "").strip("/")
            if not path or ".." in path.split("/"):
                raise HubError(400, f"Invalid path in commit: {path!r}")
            if key == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, "Only base64-encoded regular files are supported")
                content = base64.b64decode(value["content"])
                oid = git_blob_oid(content)
                self.blob(repo_type, repo_id, oid).write_bytes(content)
                files[path] = oid
            elif key == "deletedFile":
                if files.pop(path, None) is None:
                    raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
            elif key == "deletedFolder":
                for existing in [p for p in files if p.startswith(path + "/")]:
                    del files[existing]
            else:
                raise HubError(400, f"Unsupported commit operation {key!r} (LFS and copies are not supported)")
        sha = self._add_commit(meta, head, header.get("summary", ""), header.get("description", ""), files)
        meta["refs"][branch] = sha
        return sha

    @staticmethod
    def _open_discussion(meta: dict, title: str, description: str, pull_request: bool, start: str, status: str) -> int:
        """Adds discussion number n (numbered from 1) to `meta`; a pull request also gets the branch `refs/pr/{n}`
        at commit `start`."""
        discussions = meta.setdefault("discussions", [])
        num = len(discussions) + 1
        created = now_iso()
        comment = {
            "id": hashlib.sha1(f"{num}-comment".encode()).hexdigest()[:24],
            "type": "comment",
            "createdAt": created,
            "author": {"name": DEFAULT_NAMESPACE},
            "data": {
                "edited": False,
                "hidden": False,
                "latest": {"raw": description, "html": description, "updatedAt": created},
                "history": [],
            },
        }
        discussions.append(
            {
                "num": num,
                "title": title,
                "status": status,
                "isPullRequest": pull_request,
                "createdAt": created,
                "author": {"name": DEFAULT_NAMESPACE},
                "events": [comment],
            }
        )
        if pull_request:
            meta["refs"][f"refs/pr/{num}"] = start
        return num

    def open_discussion(self, repo_type: str, repo_id: str, title: str, description: str, pull_request: bool) -> int:
        """A discussion or a draft pull request (from the head of main) opened on its own; returns its number."""
        with self.lock:
            meta = self.load(repo_type, repo_id)
            num = self._open_discussion(meta, title, description, pull_request, meta["refs"]["main"], "draft")
            self._save(repo_type, repo_id, meta)
            return num

    def commit_as_pull_request(
        self, repo_type: str, repo_id: str, base: str, operations: list[dict], header: dict
    ) -> tuple[str, int]:
        """Opens a pull request on `base` (from its head, or from the header's `parentCommit`) holding one commit of
        `operations`; `base` itself does not move. Returns the commit sha and the pull request's number."""
        with self.lock:
            meta = self.load(repo_type, repo_id)
            if base not in meta["refs"]:
                raise HubError(404, f"Invalid rev id: {base}", "RevisionNotFound")
            start = meta["refs"][base]
            parent_commit = header.get("parentCommit")
            if parent_commit:
                matches = [sha for sha in meta["commits"] if sha.startswith(parent_commit)]
                if len(matches) != 1:
                    raise HubError(404, f"Invalid rev id: {parent_commit}", "RevisionNotFound")
                start = matches[0]
            title, description = header.get("summary", ""), header.get("description", "")
            num = self._open_discussion(meta, title, description, True, start, "open")
            header = {**header, "parentCommit": None}
            sha = self._apply(repo_type, repo_id, meta, f"refs/pr/{num}", operations, header)
            self._save(repo_type, repo_id, meta)
            return sha, num

    def discussions(self, repo_type: str, repo_id: str) -> list[dict]:
        """Every discussion of the repo; a pull request's events end with one `commit` event per commit on its
        branch, oldest first."""
        meta = self.load(repo_type, repo_id)
        found = []
        for discussion in meta.get("discussions", []):
            discussion = dict(discussion, repo={"name": repo_id, "type": repo_type})
            if discussion["isPullRequest"]:
                ref = f"refs/pr/{discussion['num']}"
                commits, sha = [], meta["refs"][ref]
                while sha is not None and sha != meta["refs"]["main"] and not _reachable(meta, "main", sha):
                    commit = meta["commits"][sha]
                    commits.append(
                        {
                            "id": sha[:24],
                            "type": "commit",
                            "createdAt": commit["date"],
                            "author": {"name": DEFAULT_NAMESPACE},
                            "data": {"subject": commit["title"], "oid": sha},
                        }
                    )
                    sha = commit["parent"]
                discussion["events"] = discussion["events"] + commits[::-1]
                discussion["changes"] = {"base": "refs/heads/main"}
                discussion["filesWithConflicts"] = []
            found.append(discussion)
        return found

    def create_branch(self, repo_type: str, repo_id: str, branch: str, starting_point: str | None) -> None:
        with self.lock:
            meta = self.load(repo_type, repo_id)
            if branch in meta["refs"]:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            meta["refs"][branch] = self.resolve(meta, starting_point or "main")
            self._save(repo_type, repo_id, meta)


def _reachable(meta: dict, branch: str, sha: str) -> bool:
    """Whether commit `sha` is in the history of `branch`."""
    head = meta["refs"][branch]
    while head is not None:
        if head == sha:
            return True
        head = meta["commits"][head]["parent"]
    return False


class HubRequestHandler(BaseHTTPRequestHandler):
    """Routes Hub API, resolve and auth; the store and accepted token hang off the server object."""

    protocol_version = "HTTP/1.1"
    server_version = "hub-test-server"

    # ------------------------------------------------------------------ plumbing

    def log_message(self, format, *args):
        sys.stderr.write(TOKEN_LIKE.sub("hf_***", f"{self.address_string()} {format % args}") + "\n")

    @property
    def store(self) -> RepoStore:
        return self.server.store

    def _base_url(self) -> str:
        return f"http://{HOST}:{self.server.server_address[1]}"

    def _token(self) -> str | None:
        authorization = self.headers.get("Authorization", "")
        if authorization.lower().startswith("bearer "):
            return authorization[len("bearer ") :].strip()
        return None

    def _is_authorized(self) -> bool:
        token = self._token()
        if token is None:
            return False
        accepted = self.server.accepted_token
        return token == accepted if accepted else token.startswith("hf_")

    def _require_write(self) -> None:
        if self._token() is None:
            raise HubError(401, "Authorization header is required for writes")
        if not self._is_authorized():
            raise HubError(401, "Invalid credentials in Authorization header")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks, total = [], 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                total += size
                if total > MAX_BODY_BYTES:
                    raise HubError(413, "Request body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise HubError(413, "Request body too large")
        return self.rfile.read(length)

    def _json_body(self) -> dict:
        body = self._read_body()
        try:
            return json.loads(body or b"{}")
        except json.JSONDecodeError as error:
            raise HubError(400, f"Invalid JSON body: {error}") from error

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, send_body: bool = True) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _send_json(self, status: int, payload, headers: dict | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        segments = [segment for segment in parts.path.split("/") if segment]
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        try:
            if method == "POST" and segments == ["api", "repos", "create"]:
                self._create_repo()
            elif method == "POST" and segments == ["api", "validate-yaml"]:
                self._read_body()
                self._send_json(200, {"errors": [], "warnings": []})
            elif segments[:1] == ["api"] and len(segments) >= 4:
                self._repo_api(method, segments[1:], query)
            elif method in ("GET", "HEAD"):
                self._resolve(segments, send_body=method == "GET")
            else:
                raise HubError(404, f"No route for {method} {parts.path}")
        except Exception as error:
            if not isinstance(error, HubError):
                # Unexpected: answer 500 and log the error's type and message only (sanitised by `log_message`).
                self.log_message("internal error: %s: %s", type(error).__name__, error)
                error = HubError(500, f"Internal error: {type(error).__name__}")
            headers = {"X-Error-Message": error.message}
            if error.code:
                headers["X-Error-Code"] = error.code
            payload = {"error": error.message, **(error.body or {})}
            headers["Content-Type"] = "application/json"
            self._send(error.status, json.dumps(payload).encode(), headers, send_body=method != "HEAD")

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    # ------------------------------------------------------------------ routes

    def _readable(self, repo_type: str, repo_id: str) -> dict:
        meta = self.store.load(repo_type, repo_id)
        if meta["private"] and not self._is_authorized():
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return meta

    def _repo_url(self, repo_type: str, repo_id: str) -> str:
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        return f"{self._base_url()}/{prefix}{repo_id}"

    def _create_repo(self) -> None:
        self._require_write()
        payload = self._json_body()
        repo_type = payload.get("type") or "model"
        namespace = payload.get("organization") or DEFAULT_NAMESPACE
        name = payload.get("name") or ""
        if repo_type not in REPO_TYPES or not NAME.match(name) or not NAME.match(namespace):
            raise HubError(400, f"Invalid repo name or type: {namespace}/{name} ({repo_type})")
        repo_id = f"{namespace}/{name}"
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        url = self._repo_url(repo_type, repo_id)
        if not self.store.create(repo_type, repo_id, private):
            raise HubError(409, "You already created this model repo", body={"url": url})
        self._send_json(200, {"url": url, "name": repo_id, "id": repo_id})

    def _repo_api(self, method: str, segments: list[str], query: dict) -> None:
        # segments: [{type}s, namespace, name, (action, rev, path...)]
        repo_type = segments[0].removesuffix("s")
        if repo_type not in REPO_TYPES:
            raise HubError(404, f"Unknown repo type {segments[0]}")
        repo_id = f"{unquote(segments[1])}/{unquote(segments[2])}"
        action = segments[3] if len(segments) > 3 else None
        revision = unquote(segments[4]) if len(segments) > 4 else "main"
        path = "/".join(unquote(segment) for segment in segments[5:])
        if action == "discussions":
            self._discussions(method, repo_type, repo_id, segments[4:])
        elif method == "GET" and action in (None, "revision"):
            self._repo_info(repo_type, repo_id, revision)
        elif method == "GET" and action == "commits":
            self._commits(repo_type, repo_id, revision)
        elif method == "GET" and action == "tree":
            self._tree(repo_type, repo_id, revision, path, query.get("recursive", "").lower() in ("1", "true"))
        elif method == "POST" and action == "preupload":
            self._preupload(repo_type, repo_id, revision)
        elif method == "POST" and action == "commit":
            self._commit(repo_type, repo_id, revision, query)
        elif method == "POST" and action == "branch":
            self._require_write()
            self.store.create_branch(repo_type, repo_id, revision, self._json_body().get("startingPoint"))
            self._send_json(200, {})
        else:
            raise HubError(404, f"No route for {method} {self.path.split('?')[0]}")

    def _snapshot(self, repo_type: str, repo_id: str, revision: str) -> tuple[dict, str, dict]:
        meta = self._readable(repo_type, repo_id)
        sha = self.store.resolve(meta, revision)
        return meta, sha, meta["commits"][sha]

    def _file_entry(self, repo_type: str, repo_id: str, path: str, oid: str) -> dict:
        size = self.store.blob(repo_type, repo_id, oid).stat().st_size
        return {"type": "file", "path": path, "oid": oid, "size": size}

    def _repo_info(self, repo_type: str, repo_id: str, revision: str) -> None:
        meta, sha, commit = self._snapshot(repo_type, repo_id, revision)
        siblings = [
            {"rfilename": path, "blobId": oid, "size": self._file_entry(repo_type, repo_id, path, oid)["size"]}
            for path, oid in sorted(commit["files"].items())
        ]
        info = {
            "_id": repo_id,
            "id": repo_id,
            "author": repo_id.split("/")[0],
            "sha": sha,
            "private": meta["private"],
            "disabled": False,
            "gated": False,
            "createdAt": meta["created"],
            "lastModified": commit["date"],
            "tags": [],
            "siblings": siblings,
        }
        if repo_type == "model":
            info["modelId"] = repo_id
        self._send_json(200, info)

    def _commits(self, repo_type: str, repo_id: str, revision: str) -> None:
        meta, sha, _ = self._snapshot(repo_type, repo_id, revision)
        history = []
        while sha is not None:
            commit = meta["commits"][sha]
            history.append(
                {
                    "id": sha,
                    "title": commit["title"],
                    "message": commit["description"],
                    "authors": [{"user": repo_id.split("/")[0], "avatar": None}],
                    "date": commit["date"],
                }
            )
            sha = commit["parent"]
        self._send_json(200, history)

    def _tree(self, repo_type: str, repo_id: str, revision: str, folder: str, recursive: bool) -> None:
        _, _, commit = self._snapshot(repo_type, repo_id, revision)
        prefix = f"{folder}/" if folder else ""
        if folder and not any(path.startswith(prefix) for path in commit["files"]):
            raise HubError(404, f"Folder {folder} not found", "EntryNotFound")
        entries, folders = [], set()
        for path, oid in sorted(commit["files"].items()):
            if not path.startswith(prefix):
                continue
            relative_parts = path[len(prefix) :].split("/")
            depth = len(relative_parts) if recursive else 1
            for level in range(1, min(depth, len(relative_parts) - 1) + 1):
                folders.add(prefix + "/".join(relative_parts[:level]))
            if recursive or len(relative_parts) == 1:
                entries.append(self._file_entry(repo_type, repo_id, path, oid))
        tree_oid = hashlib.sha1(json.dumps(sorted(commit["files"].items())).encode()).hexdigest()
        entries += [{"type": "directory", "path": path, "oid": tree_oid, "size": 0} for path in sorted(folders)]
        self._send_json(200, entries)

    def _preupload(self, repo_type: str, repo_id: str, revision: str) -> None:
        self._require_write()
        payload = self._json_body()
        _, _, commit = self._snapshot(repo_type, repo_id, revision)
        files = [
            {
                "path": entry["path"],
                "uploadMode": "regular",
                "shouldIgnore": False,
                "oid": commit["files"].get(entry["path"]),
            }
            for entry in payload.get("files", [])
        ]
        self._send_json(200, {"files": files})

    def _commit(self, repo_type: str, repo_id: str, revision: str, query: dict) -> None:
        self._require_write()
        lines = [line for line in self._read_body().splitlines() if line.strip()]
        try:
            items = [json.loads(line) for line in lines]
        except json.JSONDecodeError as error:
            raise HubError(400, f"Invalid NDJSON commit body: {error}") from error
        if not items or items[0].get("key") != "header":
            raise HubError(400, "The first NDJSON line must be the commit header")
        self._readable(repo_type, repo_id)
        pull_request_url = None
        if query.get("create_pr") == "1":
            sha, num = self.store.commit_as_pull_request(
                repo_type, repo_id, revision, items[1:], items[0].get("value", {})
            )
            pull_request_url = f"{self._repo_url(repo_type, repo_id)}/discussions/{num}"
        else:
            sha = self.store.commit(repo_type, repo_id, revision, items[1:], items[0].get("value", {}))
        self._send_json(
            200,
            {
                "success": True,
                "commitOid": sha,
                "commitUrl": f"{self._repo_url(repo_type, repo_id)}/commit/{sha}",
                "pullRequestUrl": pull_request_url,
            },
        )

    def _discussions(self, method: str, repo_type: str, repo_id: str, rest: list[str]) -> None:
        if method == "POST" and not rest:
            self._require_write()
            self._readable(repo_type, repo_id)
            payload = self._json_body()
            title = (payload.get("title") or "").strip()
            if not 3 <= len(title) <= 200:
                raise HubError(400, "A discussion title must be 3 to 200 characters long")
            num = self.store.open_discussion(
                repo_type, repo_id, title, payload.get("description") or "", bool(payload.get("pullRequest"))
            )
            self._send_json(200, {"num": num, "url": f"{self._repo_url(repo_type, repo_id)}/discussions/{num}"})
            return
        if method != "GET" or len(rest) > 1:
            raise HubError(404, f"No route for {method} {self.path.split('?')[0]}")
        self._readable(repo_type, repo_id)
        discussions = self.store.discussions(repo_type, repo_id)
        if not rest:
            self._send_json(200, {"discussions": discussions[::-1], "count": len(discussions), "start": 0})
            return
        found = [d for d in discussions if str(d["num"]) == rest[0]]
        if not found:
            raise HubError(404, f"Discussion {rest[0]} not found")
        self._send_json(200, found[0])

    def _resolve(self, segments: list[str], send_body: bool) -> None:
        repo_type = "model"
        if segments and segments[0] in ("datasets", "spaces"):
            repo_type, segments = segments[0].removesuffix("s"), segments[1:]
        if len(segments) < 5 or segments[2] != "resolve":
            raise HubError(404, f"No route for {self.command} {self.path.split('?')[0]}")
        repo_id = f"{unquote(segments[0])}/{unquote(segments[1])}"
        revision = unquote(segments[3])
        path = "/".join(unquote(segment) for segment in segments[4:])
        _, sha, commit = self._snapshot(repo_type, repo_id, revision)
        oid = commit["files"].get(path)
        if oid is None:
            raise HubError(404, f"Entry {path} not found", "EntryNotFound")
        content = self.store.blob(repo_type, repo_id, oid).read_bytes()
        headers = {
            "Content-Type": "application/octet-stream",
            "X-Repo-Commit": sha,
            "ETag": f'"{oid}"',
        }
        self._send(200, content, headers, send_body=send_body)


class HubServer(ThreadingHTTPServer):
    """A `ThreadingHTTPServer` bound to 127.0.0.1 that carries the repo store and the accepted token.

    Args:
        root (`Path`): folder holding every repo.
        port (`int`): port to listen on, 0 for any free port.
        accepted_token (`str`, *optional*): the only token accepted for writes; any `hf_` token if `None`.
    """

    daemon_threads = True

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def __init__(self, root: Path, port: int, accepted_token: str | None = None):
        super().__init__((HOST, port), HubRequestHandler)
        self.store = RepoStore(root)
        self.accepted_token = accepted_token


@contextlib.contextmanager
def serve(root: Path, token: str | None = None):
    """Runs this server in a subprocess on a free port of 127.0.0.1 until the context exits.

    Args:
        root (`Path`): folder for the repos (created); the log is written next to it as `{root}.log`.
        token (`str`, *optional*): the only token accepted for writes (any `hf_` token if `None`).

    Yields:
        `tuple[str, Path]`: the endpoint URL (for `HF_ENDPOINT`) and the log file.
    """
    log_path = root.with_name(root.name + ".log")
    env = {**os.environ, "HUB_SERVER_TOKEN": token or ""}
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, __file__, "--root", str(root), "--port", "0"], stdout=subprocess.PIPE, stderr=log, env=env
        )
    try:
        first_line = process.stdout.readline().decode().split()
        if first_line[:1] != ["PORT"]:
            raise RuntimeError(f"The test Hub server did not start: {log_path.read_text()}")
        yield f"http://{HOST}:{first_line[1]}", log_path
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="Folder that stores the repos.")
    parser.add_argument("--port", type=int, default=0, help="Port on 127.0.0.1 (0 picks a free one).")
    args = parser.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    server = HubServer(args.root, args.port, os.environ.get("HUB_SERVER_TOKEN") or None)
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
