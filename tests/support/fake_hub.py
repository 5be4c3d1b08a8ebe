"""A small fake Hugging Face Hub on 127.0.0.1, for offline push tests.

It answers the endpoints ``huggingface_hub`` uses to create a repo and upload a folder in one commit:
``POST /api/repos/create``, ``POST /api/validate-yaml``, ``POST /api/{models,datasets}/<org>/<name>/preupload/<rev>``
(every file "regular", so contents arrive inline, except ``*.parquet``, which go through LFS as on the real
Hub), ``POST /api/{models,datasets}/<org>/<name>/commit/<rev>`` (NDJSON: header + base64 files, LFS
pointers, deletions), and 404 for anything else (e.g. an existing README).

For ``DatasetDict.push_to_hub`` it also answers ``GET /api/datasets/<org>/<name>[/revision/<rev>]`` (repo
info; 404 RepoNotFound before the repo is created), ``GET /api/datasets/<org>/<name>/tree/<rev>[/<folder>]``
(the stored files; 404 EntryNotFound for a missing folder), the LFS batch endpoint
``POST /[datasets/]<org>/<name>.git/info/lfs/objects/batch`` and its upload action ``PUT /fake-lfs/<sha256>``
(rejected unless the content has that sha256).

Uploaded files are kept in memory: ``server.repos["org/name"]["README.md"] -> bytes``; ``server.created``
holds each create request (``{"name", "type", "private", ...}``); ``server.requests`` lists what was called.

Usage (HF_ENDPOINT must be set before ``huggingface_hub`` is imported by the process that pushes, with any
HF_TOKEN and HF_HUB_DISABLE_XET=1, since the fake server speaks only the plain LFS upload protocol)::

    with FakeHub() as hub:
        env = {**os.environ, **hub.environment()}
        subprocess.run([...push...], env=env)
        hub.repos["org/name"]
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _repo_api(path: str) -> str:
    """The ``/api/models/`` or ``/api/datasets/`` prefix of ``path`` ("" for other paths)."""
    for prefix in ("/api/models/", "/api/datasets/"):
        if path.startswith(prefix):
            return prefix
    return ""


def _upload_mode(path: str) -> str:
    """The upload mode the Hub assigns: LFS for Parquet files (datasets' push relies on it), regular otherwise."""
    return "lfs" if path.endswith(".parquet") else "regular"


def _tree(stored: dict[str, bytes], folder: str) -> list[dict]:
    """The entries directly under ``folder`` of a stored repo, as ``GET .../tree/<rev>/<folder>`` lists them."""
    prefix = f"{folder}/" if folder else ""
    entries = {}
    for name, content in stored.items():
        if not name.startswith(prefix):
            continue
        head, _, tail = name[len(prefix) :].partition("/")
        if tail:
            entries[prefix + head] = {"type": "directory", "path": prefix + head, "oid": "0" * 40, "size": 0}
        else:
            oid = hashlib.sha1(content).hexdigest()
            entries[name] = {"type": "file", "path": name, "oid": oid, "size": len(content)}
    return [entries[name] for name in sorted(entries)]


class _Handler(BaseHTTPRequestHandler):
    server: FakeHubServer

    def log_message(self, *args) -> None:  # keep test output clean
        return

    def _reply(self, status: int, body: dict | list | None = None, error_code: str | None = None) -> None:
        data = json.dumps({} if body is None else body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if error_code:
            self.send_header("X-Error-Code", error_code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":  # how httpx streams an LFS file upload
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.server.requests.append(("GET", self.path))
        path = urllib.parse.unquote(self.path.split("?")[0])
        if path.startswith("/api/datasets/"):
            self._dataset_get(path[len("/api/datasets/") :].split("/"))
            return
        self._reply(404, {"error": "Entry not found"})

    def _dataset_get(self, parts: list[str]) -> None:
        """What DatasetDict.push_to_hub reads: repo info (before create_repo too) and the tree of stored files."""
        repo_id, rest = "/".join(parts[:2]), parts[2:]
        stored = self.server.repos.get(repo_id)
        if stored is None:
            self._reply(404, {"error": "Repository not found"}, error_code="RepoNotFound")
        elif rest in ([], [""]) or (len(rest) == 2 and rest[0] == "revision"):
            siblings = [{"rfilename": name} for name in sorted(stored)]
            self._reply(200, {"id": repo_id, "private": True, "sha": "0" * 40, "siblings": siblings})
        elif len(rest) >= 2 and rest[0] == "tree":
            folder = "/".join(rest[2:]).strip("/")
            entries = _tree(stored, folder)
            if folder and not entries:  # the Hub's answer for a folder that does not exist
                self._reply(404, {"error": f"{folder} not found"}, error_code="EntryNotFound")
            else:
                self._reply(200, entries)
        else:
            self._reply(404, {"error": "Entry not found"}, error_code="EntryNotFound")

    def do_HEAD(self) -> None:  # noqa: N802
        self.server.requests.append(("HEAD", self.path))
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_PUT(self) -> None:  # noqa: N802
        """The LFS upload action of ``.../objects/batch``: the content must hash to the announced sha256."""
        body = self._body()
        self.server.requests.append(("PUT", self.path))
        oid = self.path[len("/fake-lfs/") :] if self.path.startswith("/fake-lfs/") else ""
        if not oid or hashlib.sha256(body).hexdigest() != oid:
            self._reply(
                400, {"error": f"fake hub: PUT {self.path} with content of sha256 {hashlib.sha256(body).hexdigest()}"}
            )
            return
        self.server.lfs_objects[oid] = body
        self._reply(200)

    def do_POST(self) -> None:  # noqa: N802
        body = self._body()
        path = self.path.split("?")[0]
        self.server.requests.append(("POST", path))
        if path == "/api/repos/create":
            request = json.loads(body or b"{}")
            repo_id = f"{request.get('organization') or 'user'}/{request['name']}"
            self.server.repos.setdefault(repo_id, {})
            self.server.created[repo_id] = request
            self._reply(200, {"url": f"{self.server.url}/{repo_id}", "name": repo_id})
        elif path == "/api/validate-yaml":
            self._reply(200, {"errors": [], "warnings": []})
        elif _repo_api(path) and "/preupload/" in path:
            files = json.loads(body)["files"]
            modes = [_upload_mode(f["path"]) for f in files]
            self._reply(
                200,
                {"files": [{"path": f["path"], "uploadMode": m, "shouldIgnore": False} for f, m in zip(files, modes)]},
            )
        elif path.endswith(".git/info/lfs/objects/batch"):
            objects = json.loads(body)["objects"]
            for item in objects:
                item["actions"] = {"upload": {"href": f"{self.server.url}/fake-lfs/{item['oid']}"}}
            self._reply(200, {"transfer": "basic", "objects": objects})
        elif _repo_api(path) and "/commit/" in path:
            repo_id = path[len(_repo_api(path)) :].split("/commit/")[0]
            stored = self.server.repos.setdefault(repo_id, {})
            for line in body.decode().splitlines():
                if not line.strip():
                    continue
                item = json.loads(line)
                value = item.get("value", {})
                if item.get("key") == "file":
                    stored[value["path"]] = base64.b64decode(value["content"])
                elif item.get("key") == "lfsFile":
                    if value["oid"] not in self.server.lfs_objects:
                        self._reply(400, {"error": f"fake hub: LFS object {value['oid']} was never uploaded"})
                        return
                    stored[value["path"]] = self.server.lfs_objects[value["oid"]]
                elif item.get("key") == "deletedFile":
                    stored.pop(value["path"], None)
            oid = hashlib.sha1(body).hexdigest()
            self._reply(200, {"commitUrl": f"{self.server.url}/{repo_id}/commit/{oid}", "commitOid": oid})
        else:
            self._reply(404, {"error": f"fake hub: no endpoint {path}"})


class FakeHubServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.repos: dict[str, dict[str, bytes]] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.created: dict[str, dict] = {}
        self.requests: list[tuple[str, str]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class FakeHub:
    """Context manager running :class:`FakeHubServer` in a thread; ``environment()`` gives the env vars."""

    def __enter__(self) -> FakeHubServer:
        self.server = FakeHubServer()
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.server.environment = lambda: {
            "HF_ENDPOINT": self.server.url,
            "HF_TOKEN": "hf_fake_token_for_tests",
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_OFFLINE": "0",
            "HF_HUB_DISABLE_TELEMETRY": "1",
        }
        return self.server

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
