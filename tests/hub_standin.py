"""A local stand-in for the Hugging Face Hub's HTTP API, enough for huggingface_hub's and datasets' real code
paths to resolve revisions and download a dataset or model repo (point HF_ENDPOINT, or `constants.ENDPOINT`,
at it).

It serves dataset repos held in memory: commits (sha → {path: bytes}) and refs (branch or tag → sha), over the
endpoints `HfApi.dataset_info` and `datasets.load_dataset` call: `/api/datasets/{repo}/revision/{rev}`,
`/api/datasets/{repo}/tree/{rev}/{path}`, `/api/datasets/{repo}/paths-info/{rev}` and
`/datasets/{repo}/resolve/{rev}/{path}`, with the Hub's error codes (`X-Error-Code: RepoNotFound`,
`RevisionNotFound`, `EntryNotFound`) and headers (`X-Repo-Commit`, `ETag`). Every request is logged, so a
test can tell which revision a client asked for.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


@dataclass
class DatasetRepo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)

    def commit(self, sha: str, files: dict[str, bytes], *refs: str) -> None:
        self.commits[sha] = files
        for ref in refs:
            self.refs[ref] = sha

    def resolve(self, revision: str) -> str | None:
        if revision in self.refs:
            return self.refs[revision]
        return revision if revision in self.commits else None


class HubStandIn:
    """`with HubStandIn() as hub:` serves `hub.repos` at `hub.url` until the block ends."""

    def __init__(self) -> None:
        self.repos: dict[str, DatasetRepo] = {}
        self.requests: list[tuple[str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> HubStandIn:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def paths_asked(self, prefix: str = "/") -> list[str]:
        """The paths requested so far that start with `prefix` (huggingface_hub also asks for others, such as
        /api/agent-harnesses)."""
        return [path for _, path in self.requests if path.startswith(prefix)]


# Dataset repos under /datasets and /api/datasets, model repos at the root and under /api/models (one namespace
# here: a test names each repo once).
_RESOLVE = re.compile(r"(?:/datasets)?/([^/]+/[^/]+)/resolve/([^/]+)/(.+)")
_INFO = re.compile(r"/api/(?:datasets|models)/([^/]+/[^/]+)(?:/revision/([^/]+))?")
_TREE = re.compile(r"/api/(?:datasets|models)/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?")
_PATHS_INFO = re.compile(r"/api/(?:datasets|models)/([^/]+/[^/]+)/paths-info/([^/]+)")


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _handler(hub: HubStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # the test reads hub.requests instead
            pass

        def _send(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            self.send_response(code)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, payload: object, headers: dict[str, str] | None = None) -> None:
            self._send(
                200, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})}
            )

        def _error(self, code: str, message: str) -> None:
            body = json.dumps({"error": message}).encode()
            self._send(404, body, {"Content-Type": "application/json", "X-Error-Code": code})

        def _commit(self, repo_id: str, revision: str) -> tuple[str, dict[str, bytes]] | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error("RepoNotFound", f"Repository {repo_id} not found")
                return None
            sha = repo.resolve(revision)
            if sha is None:
                self._error("RevisionNotFound", f"Invalid rev id: {revision}")
                return None
            return sha, repo.commits[sha]

        def _entries(
            self, files: dict[str, bytes], prefix: str, recursive: bool = False
        ) -> list[dict[str, object]]:
            """The Hub's tree listing: a folder's files and sub-folders, or (`recursive`) every file under it."""
            prefix = prefix.strip("/")
            entries: list[dict[str, object]] = []
            folders: set[str] = set()
            for path, data in sorted(files.items()):
                parent = path.rsplit("/", 1)[0] if "/" in path else ""
                inside = not prefix or path.startswith(prefix + "/")
                if parent == prefix or (recursive and inside):
                    entries.append({"type": "file", "path": path, "size": len(data), "oid": _git_oid(data)})
                elif inside and not recursive:
                    folders.add(path[len(prefix) + 1 if prefix else 0 :].split("/", 1)[0])
            entries += [
                {"type": "directory", "path": f"{prefix}/{name}" if prefix else name, "oid": "0" * 40}
                for name in sorted(folders)
            ]
            return entries

        def _route(self) -> None:
            path = unquote(urlparse(self.path).path)
            hub.requests.append((self.command, path))
            if match := _RESOLVE.fullmatch(path):
                found = self._commit(match[1], match[2])
                if found is None:
                    return
                sha, files = found
                if match[3] not in files:
                    return self._send(404, b"{}", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": sha})
                data = files[match[3]]
                headers = {"X-Repo-Commit": sha, "ETag": f'"{_git_oid(data)}"'}
                return self._send(200, data, {"Content-Type": "application/octet-stream", **headers})
            if match := _INFO.fullmatch(path):
                found = self._commit(match[1], match[2] or "main")
                if found is not None:
                    sha, files = found
                    siblings = [{"rfilename": name} for name in sorted(files)]
                    self._json({"id": match[1], "sha": sha, "private": False, "siblings": siblings})
                return None
            if match := _TREE.fullmatch(path):
                found = self._commit(match[1], match[2])
                if found is not None:
                    recursive = "recursive=true" in urlparse(self.path).query.lower()
                    entries = self._entries(found[1], match[3] or "", recursive)
                    if match[3] and not entries:
                        return self._error("EntryNotFound", f"{match[3]} does not exist")
                    self._json(entries)
                return None
            if match := _PATHS_INFO.fullmatch(path):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                found = self._commit(match[1], match[2])
                if found is not None:
                    self._json(self._entries(found[1], ""))
                return None
            return self._send(404, b"{}")

        do_GET = do_HEAD = do_POST = _route

    return Handler
