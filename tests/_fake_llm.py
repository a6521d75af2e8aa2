"""A local HTTP server speaking the OpenAI chat-completions protocol, for the knowledge-base tool's tests (not
collected as tests)."""
from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TEST_PATTERN = r"CLASS=<([^>]*)>"  # the class name in the tests' short prompt template
DEFAULT_PATTERN = r"attributes of an? (.+?) as seen in photographs"  # ... in tse.llm.prompt_template of base.yaml


def good_answer(name: str, n: int) -> str:
    return "\n".join(f"{i + 1}. It has visible part number {i + 1} of this {name}" for i in range(n))


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that timed out has hung up: no news
            super().handle_error(request, client_address)


class FakeOpenAI:
    """A threaded HTTP server on 127.0.0.1 implementing POST /v1/chat/completions.

    ``script[class]`` is a list of (status, content) served in order for that class; afterwards a good answer.
    Status 0 means: stall for 0.5 s, then answer well (slower than the client's timeout in the test).
    ``counts`` counts requests per class; ``bodies`` and ``headers`` (lower-case names) keep every request's.
    ``pattern`` finds the class name in the first user message.
    """

    def __init__(self, n: int = 3, pattern: str = TEST_PATTERN):
        self.n = n
        self.headers: list[dict[str, str]] = []
        self.script: dict[str, list[tuple[int, str]]] = {}
        self.counts: Counter = Counter()
        self.bodies: list[dict] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                first_user = next(m["content"] for m in body["messages"] if m["role"] == "user")
                name = re.search(pattern, first_user).group(1)
                with fake.lock:
                    fake.bodies.append(body)
                    fake.headers.append({k.lower(): v for k, v in self.headers.items()})
                    fake.counts[name] += 1
                    queue = fake.script.get(name, [])
                    status, content = queue.pop(0) if queue else (200, good_answer(name, fake.n))
                if status == 0:
                    time.sleep(0.5)
                    status, content = 200, good_answer(name, fake.n)
                if self.path != "/v1/chat/completions":
                    status, content = 404, "no such route"
                if status == 200:
                    payload = {"id": "chatcmpl-test", "object": "chat.completion", "created": 0,
                               "model": body["model"],
                               "choices": [{"index": 0, "finish_reason": "stop",
                                            "message": {"role": "assistant", "content": content}}],
                               "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
                else:
                    payload = {"error": {"message": content, "type": "server_error", "code": None}}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()
