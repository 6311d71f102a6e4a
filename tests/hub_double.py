"""A local test double of the Hugging Face Hub's HTTP API: the endpoints `HfApi.create_repo` and `HfApi.create_commit`
call (repo creation, YAML validation, preupload, commit), recording every request and the commits' NDJSON lines.

Point a subprocess at it with `HF_ENDPOINT`; huggingface_hub's real client does the rest.
"""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class HubDouble(BaseHTTPRequestHandler):
    """The few endpoints `HfApi.create_repo` and `HfApi.create_commit` call; `refuse` answers every call with it."""

    refuse: int | None = None
    requests: list = []
    commits: list = []

    def log_message(self, *args):  # keep pytest's output clean
        pass

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.requests.append((self.path, self.headers.get("Authorization")))
        if self.refuse or self.headers.get("Authorization") is None:  # the Hub refuses anonymous writes too
            return self._answer(self.refuse or 401, {"error": "refused by the test double"})
        if self.path == "/api/repos/create":
            request = json.loads(body)
            repo = f"{request['organization']}/{request['name']}"
            return self._answer(200, {"url": f"http://{self.headers['Host']}/{repo}", "name": repo})
        if self.path == "/api/validate-yaml":
            return self._answer(200, {})
        if "/preupload/" in self.path:
            files = json.loads(body)["files"]
            modes = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
            return self._answer(200, {"files": modes})
        if "/commit/" in self.path:
            self.commits.append([json.loads(line) for line in body.decode().splitlines() if line.strip()])
            repo = self.path.split("/api/models/")[1].split("/commit/")[0]
            oid = "0" * 40
            return self._answer(200, {"commitUrl": f"http://{self.headers['Host']}/{repo}/commit/{oid}",
                                      "commitOid": oid})  # fmt: skip
        return self._answer(404, {"error": f"unknown endpoint {self.path}"})


@pytest.fixture
def hub():
    HubDouble.refuse, HubDouble.requests, HubDouble.commits = None, [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), HubDouble)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", HubDouble
    server.shutdown()
