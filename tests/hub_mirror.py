"""A tiny Hugging Face hub the tests serve on 127.0.0.1, for the real ``huggingface_hub``
client (``HF_ENDPOINT``): no test reaches the internet.

It answers what ``hf_hub_download`` and ``HfApi.model_info`` ask (huggingface_hub 0.36 to 2.x):

- ``GET /api/models/{org}/{name}[/revision/{rev}]``: ``id``, ``sha`` and ``siblings``
  (``rfilename``; ``size`` and ``blobId`` with ``?blobs=true``);
- ``HEAD`` / ``GET /{org}/{name}/resolve/{rev}/{file}``: ``X-Repo-Commit``, ``ETag``,
  ``Content-Length`` (``X-Linked-Size`` / ``X-Linked-Etag`` for weights, as the hub's LFS
  files), ``Accept-Ranges`` and ``Range: bytes=N-`` (206) so that a download resumes;
- errors as the hub words them: 404 + ``X-Error-Code: RepoNotFound`` (also a private repo
  asked without its token: 401), ``RevisionNotFound``, ``EntryNotFound``; a gated repo lists
  its files but serves them only with its token (401 + ``X-Error-Code: GatedRepo``).

Every request is logged (method, path, Authorization header) so that a test can count what
was fetched; :meth:`Mirror.drop_once` makes the next GET of a file stop half-way (the
connection is closed), as a network that fails mid-download.

Use the ``hub_mirror`` fixture (``from hub_mirror import hub_mirror``): it points
``HF_ENDPOINT`` at the mirror and ``HF_HUB_CACHE`` at an empty folder, and unsets ``HF_TOKEN``,
``HF_HUB_OFFLINE``, ``HF_HOME`` and ``PRUNELENS_HUB_*``.
"""
from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

LFS_SUFFIXES = (".safetensors", ".bin")


@dataclass
class Repo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # sha → files
    refs: dict[str, str] = field(default_factory=dict)                  # branch/tag → sha
    private: bool = False
    gated: bool = False
    token: str = ""  # the token that may read it (private or gated)


@dataclass
class Request:
    method: str
    path: str
    authorization: str | None
    range: str | None


class Mirror:
    """The hub's repositories (files held in memory) and the server that serves them."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.log: list[Request] = []
        self._drop: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                        daemon=True, name="hub-mirror")
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ------------------------------------------------------------------ repositories
    def add(self, repo_id: str, files: dict[str, bytes] | Path, revision: str = "main", *,
            private: bool = False, gated: bool = False, token: str = "") -> str:
        """A commit of ``files`` (name → bytes, or every file of a folder) on ``revision``
        of ``repo_id`` (created); returns the commit's sha (40 hex digits)."""
        if isinstance(files, Path):
            files = {p.name: p.read_bytes() for p in sorted(files.iterdir()) if p.is_file()}
        digest = hashlib.sha1(repo_id.encode() + revision.encode())
        for name, data in sorted(files.items()):
            digest.update(name.encode() + hashlib.sha256(data).digest())
        sha = digest.hexdigest()
        with self._lock:
            repo = self.repos.setdefault(repo_id, Repo())
            repo.commits[sha] = dict(files)
            repo.refs[revision] = sha
            repo.private, repo.gated = repo.private or private, repo.gated or gated
            repo.token = token or repo.token
        return sha

    def drop_once(self, repo_id: str, filename: str) -> None:
        """The next GET of ``filename`` sends half the file, then closes the connection."""
        with self._lock:
            self._drop.add((repo_id, filename))

    def fetched(self, method: str = "GET") -> list[str]:
        """Paths of the file downloads (``/resolve/``) made with ``method``, in order."""
        return [r.path for r in self.log if r.method == method and "/resolve/" in r.path]

    # ------------------------------------------------------------------ answers
    def _commit(self, repo: Repo, rev: str) -> str | None:
        return rev if rev in repo.commits else repo.refs.get(rev)


def _blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _handler(mirror: Mirror) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one request per connection: simple to drop

        def log_message(self, *args) -> None:  # quiet
            pass

        # ---------------------------------------------------------- plumbing
        def _error(self, status: int, code: str, message: str) -> None:
            body = json.dumps({"error": message}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _repo(self, repo_id: str, files: bool) -> Repo | None:
            """The repository if this request may see it (and, ``files``, read its files);
            else the error is sent and None returned."""
            repo = mirror.repos.get(repo_id)
            auth = self.headers.get("Authorization")
            allowed = repo is not None and (not (repo.private or (repo.gated and files))
                                            or auth == f"Bearer {repo.token}")
            if repo is None or (repo.private and not allowed):
                self._error(401 if auth is None and repo is not None else 404, "RepoNotFound",
                            "Repository not found")
                return None
            if not allowed:
                self._error(401 if auth is None else 403, "GatedRepo",
                            f"Access to model {repo_id} is restricted.")
                return None
            return repo

        def do_GET(self) -> None:
            self._serve()

        def do_HEAD(self) -> None:
            self._serve()

        def _serve(self) -> None:
            url = urlsplit(self.path)
            path = unquote(url.path)
            with mirror._lock:
                mirror.log.append(Request(self.command, path, self.headers.get("Authorization"),
                                         self.headers.get("Range")))
            parts = path.strip("/").split("/")
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                self._info("/".join(parts[2:4]), "/".join(parts[5:]) if len(parts) > 5
                           and parts[4] == "revision" else "main", "blobs=" in url.query.lower())
            elif len(parts) >= 5 and parts[2] == "resolve":
                self._file("/".join(parts[:2]), parts[3], "/".join(parts[4:]))
            else:
                self._error(404, "NotFound", "no such endpoint")

        # ---------------------------------------------------------- endpoints
        def _info(self, repo_id: str, rev: str, blobs: bool) -> None:
            repo = self._repo(repo_id, files=False)
            if repo is None:
                return
            sha = mirror._commit(repo, rev)
            if sha is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            siblings = []
            for name, data in sorted(repo.commits[sha].items()):
                entry = {"rfilename": name}
                if blobs:
                    entry.update(size=len(data), blobId=_blob_id(data))
                    if name.endswith(LFS_SUFFIXES):
                        entry["lfs"] = {"size": len(data), "pointerSize": 134,
                                        "sha256": hashlib.sha256(data).hexdigest()}
                siblings.append(entry)
            body = json.dumps({"id": repo_id, "modelId": repo_id, "sha": sha,
                               "private": repo.private, "gated": "auto" if repo.gated else False,
                               "siblings": siblings}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _file(self, repo_id: str, rev: str, name: str) -> None:
            repo = self._repo(repo_id, files=True)
            if repo is None:
                return
            sha = mirror._commit(repo, rev)
            if sha is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            data = repo.commits[sha].get(name)
            if data is None:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("X-Repo-Commit", sha)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            lfs = name.endswith(LFS_SUFFIXES)
            etag = hashlib.sha256(data).hexdigest() if lfs else _blob_id(data)
            start = 0
            ranged = self.headers.get("Range", "")
            if self.command == "GET" and ranged.startswith("bytes=") and ranged.endswith("-"):
                start = min(int(ranged[6:-1]), len(data))
            self.send_response(206 if start else 200)
            self.send_header("X-Repo-Commit", sha)
            self.send_header("ETag", f'"{etag}"')
            if lfs:
                self.send_header("X-Linked-Etag", f'"{etag}"')
                self.send_header("X-Linked-Size", str(len(data)))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(data) - start))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if self.command == "HEAD":
                return
            with mirror._lock:
                drop = (repo_id, name) in mirror._drop
                mirror._drop.discard((repo_id, name))
            body = data[start:]
            if drop:  # half the bytes, then the connection goes away
                self.wfile.write(body[:len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self.wfile.write(body)

    return Handler


ENV_CLEARED = ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_HOME", "HF_HUB_CACHE", "HF_ENDPOINT",
               "PRUNELENS_HUB_DOWNLOADS", "PRUNELENS_HUB_MAX_MB")


@pytest.fixture
def hub_mirror(tmp_path, monkeypatch):
    """A started :class:`Mirror` with ``HF_ENDPOINT`` at it and an empty cache
    (``HF_HUB_CACHE`` = ``tmp_path/hub-cache``, the mirror's ``cache`` attribute)."""
    for name in ENV_CLEARED:
        monkeypatch.delenv(name, raising=False)
    mirror = Mirror()
    mirror.cache = tmp_path / "hub-cache"
    monkeypatch.setenv("HF_ENDPOINT", mirror.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(mirror.cache))
    try:  # a huggingface_hub imported with HF_HUB_OFFLINE=1 refuses every request
        from huggingface_hub import constants
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    except ImportError:
        pass
    yield mirror
    mirror.close()
