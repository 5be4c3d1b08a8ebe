"""A small fake Hugging Face Hub on 127.0.0.1, for offline push tests.

It answers the endpoints ``huggingface_hub`` uses to create a repo and upload a folder in one commit:
``POST /api/repos/create``, ``POST /api/validate-yaml``, ``POST /api/models/<org>/<name>/preupload/<rev>``
(every file "regular", so contents arrive inline, no LFS), ``POST /api/models/<org>/<name>/commit/<rev>``
(NDJSON: header + base64 files), and 404 for anything else (e.g. an existing README). Uploaded files are
kept in memory: ``server.repos["org/name"]["README.md"] -> bytes``; ``server.requests`` lists what was
called.

Usage (HF_ENDPOINT must be set before ``huggingface_hub`` is imported by the process that pushes, with any
HF_TOKEN and HF_HUB_DISABLE_XET=1; REFERENCE.md 5)::

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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    server: FakeHubServer

    def log_message(self, *args) -> None:  # keep test output clean
        return

    def _reply(self, status: int, body: dict | None = None) -> None:
        data = json.dumps(body or {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.server.requests.append(("GET", self.path))
        self._reply(404, {"error": "Entry not found"})

    def do_HEAD(self) -> None:  # noqa: N802
        self.server.requests.append(("HEAD", self.path))
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:  # noqa: N802
        body = self._body()
        path = self.path.split("?")[0]
        self.server.requests.append(("POST", path))
        if path == "/api/repos/create":
            request = json.loads(body or b"{}")
            repo_id = f"{request.get('organization') or 'user'}/{request['name']}"
            self.server.repos.setdefault(repo_id, {})
            self._reply(200, {"url": f"{self.server.url}/{repo_id}", "name": repo_id})
        elif path == "/api/validate-yaml":
            self._reply(200, {"errors": [], "warnings": []})
        elif path.startswith("/api/models/") and "/preupload/" in path:
            files = json.loads(body)["files"]
            self._reply(
                200,
                {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]},
            )
        elif path.startswith("/api/models/") and "/commit/" in path:
            repo_id = path[len("/api/models/") :].split("/commit/")[0]
            stored = self.server.repos.setdefault(repo_id, {})
            for line in body.decode().splitlines():
                if not line.strip():
                    continue
                item = json.loads(line)
                if item.get("key") == "file":
                    value = item["value"]
                    stored[value["path"]] = base64.b64decode(value["content"])
            oid = hashlib.sha1(body).hexdigest()
            self._reply(200, {"commitUrl": f"{self.server.url}/{repo_id}/commit/{oid}", "commitOid": oid})
        else:
            self._reply(404, {"error": f"fake hub: no endpoint {path}"})


class FakeHubServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.repos: dict[str, dict[str, bytes]] = {}
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
