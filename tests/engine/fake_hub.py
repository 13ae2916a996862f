"""A local stand-in for the Hugging Face Hub's HTTP API, serving folders as repos.

It answers the requests huggingface_hub makes to list and download a repo:
``GET /api/models/{repo}[/revision/{rev}]`` and ``.../tree/{rev}`` (listings with file sizes), ``HEAD`` / ``GET``
``/{repo}/resolve/{rev}/{path}`` (a file's metadata, then its bytes). Every file request is
recorded, so a test can check what was downloaded. Loopback only, one thread per request.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


class FakeHub:
    def __init__(self, repos: dict[str, Path], commits: dict[str, str]) -> None:
        self.repos = repos
        self.commits = commits
        self.downloads: list[str] = []  # "repo/path" of every file GET
        self.listings: list[str] = []

    def files(self, repo: str) -> dict[str, Path]:
        root = self.repos[repo]
        return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # quiet
            return

        def _send(self, status: int, body: bytes, headers: dict[str, str], *, head: bool = False) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _route(self, head: bool) -> None:
            path = unquote(urlparse(self.path).path)
            parts = path.strip("/").split("/")
            if parts[:2] == ["api", "models"] and (len(parts) == 4 or (len(parts) >= 6 and parts[4] == "revision")):
                repo = "/".join(parts[2:4])
                if repo not in hub.repos:
                    self._send(404, b'{"error":"Repository not found"}', {"X-Error-Code": "RepoNotFound"}, head=head)
                    return
                hub.listings.append(repo)
                siblings = [{"rfilename": name, "size": p.stat().st_size} for name, p in hub.files(repo).items()]
                body = json.dumps({"id": repo, "modelId": repo, "sha": hub.commits[repo], "siblings": siblings})
                self._send(200, body.encode(), {"Content-Type": "application/json"}, head=head)
                return
            if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "tree":
                repo = "/".join(parts[2:4])
                hub.listings.append(repo)
                entries: list[dict[str, object]] = []
                folders = sorted({name.rsplit("/", 1)[0] for name in hub.files(repo) if "/" in name})
                entries += [{"type": "directory", "path": folder, "oid": "0" * 40} for folder in folders]
                for name, file in hub.files(repo).items():
                    digest = hashlib.sha1(file.read_bytes()).hexdigest()
                    entries.append({"type": "file", "path": name, "size": file.stat().st_size, "oid": digest})
                self._send(200, json.dumps(entries).encode(), {"Content-Type": "application/json"}, head=head)
                return
            if len(parts) >= 5 and parts[2] == "resolve":
                repo, name = "/".join(parts[:2]), "/".join(parts[4:])
                found = hub.files(repo).get(name) if repo in hub.repos else None
                if found is None:
                    self._send(404, b"", {"X-Error-Code": "EntryNotFound"}, head=head)
                    return
                data = found.read_bytes()
                headers = {
                    "X-Repo-Commit": hub.commits[repo],
                    "ETag": '"' + hashlib.sha256(data).hexdigest() + '"',
                    "Content-Type": "application/octet-stream",
                }
                if not head:
                    hub.downloads.append(f"{repo}/{name}")
                self._send(200, data, headers, head=head)
                return
            self._send(404, b"", {}, head=head)

        def do_GET(self) -> None:
            self._route(head=False)

        def do_HEAD(self) -> None:
            self._route(head=True)

    return Handler


@contextmanager
def serve(repos: dict[str, Path], commits: dict[str, str]) -> Iterator[tuple[FakeHub, str]]:
    """Serve ``repos`` (repo id → folder) on a free loopback port; yields the hub and its URL."""
    hub = FakeHub(repos, commits)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
