#!/usr/bin/env python3
"""demo-echo: a stand-in for a model server, for the `demo` compose profile. NOT A MODEL.

It speaks the OpenAI chat completions wire format (plain and streamed, with usage, and
`stream_options.include_usage`) and always answers with a fixed text that says what it is and
echoes the last user message, so a first completion can travel nginx -> API -> LiteLLM ->
here and back on a machine with no model. Token counts are words, not a tokenizer's count.

Routes: GET /health, GET /v1/models, POST /v1/chat/completions. Standard library only.
"""

import json
import os
import sys
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL = "demo-echo"
PREFIX = "[demo-echo: a fixed reply from a stand-in, not a language model] You said: "
MAX_ECHO_CHARS = 2000


def words(text):
    return max(1, len(text.split()))


def last_user_text(messages):
    for message in reversed(messages if isinstance(messages, list) else []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):  # content parts: keep the text ones
                content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            return str(content or "")[:MAX_ECHO_CHARS]
    return ""


class Handler(BaseHTTPRequestHandler):
    server_version = "demo-echo/1"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # one line a request, to stderr (docker logs)
        sys.stderr.write("demo-echo: %s %s\n" % (self.address_string(), fmt % args))

    def send_json(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def error(self, status, message):
        self.send_json(status, {"error": {"message": message, "type": "invalid_request_error", "code": None}})

    def do_GET(self):
        if self.path == "/health":
            self.send_json(200, {"status": "ok", "model": MODEL, "note": "stand-in, not a model"})
        elif self.path == "/v1/models":
            self.send_json(200, {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "demo"}]})
        else:
            self.error(404, "no route " + self.path)

    def do_POST(self):
        if self.path != "/v1/chat/completions":
            return self.error(404, "no route " + self.path)
        try:
            length = int(self.headers.get("Content-Length") or 0)
            req = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            return self.error(400, "the body is not JSON")
        if not isinstance(req, dict) or not isinstance(req.get("messages"), list):
            return self.error(400, "messages must be a list")
        prompt = " ".join(
            str(m.get("content", "")) for m in req["messages"] if isinstance(m, dict)
        )
        reply = PREFIX + last_user_text(req["messages"])
        usage = {
            "prompt_tokens": words(prompt),
            "completion_tokens": words(reply),
            "total_tokens": words(prompt) + words(reply),
        }
        cid = "chatcmpl-demo-" + uuid.uuid4().hex[:16]
        created = int(time.time())
        if req.get("stream"):
            return self.stream(cid, created, reply, usage, req.get("stream_options") or {})
        self.send_json(200, {
            "id": cid, "object": "chat.completion", "created": created, "model": MODEL,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                         "finish_reason": "stop"}],
            "usage": usage,
        })

    def stream(self, cid, created, reply, usage, options):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

        def chunk(delta, finish=None, with_usage=False):
            body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": MODEL,
                    "choices": [] if with_usage else [{"index": 0, "delta": delta, "finish_reason": finish}]}
            if with_usage:
                body["usage"] = usage
            self.wfile.write(b"data: " + json.dumps(body).encode() + b"\n\n")
            self.wfile.flush()

        chunk({"role": "assistant", "content": ""})
        for i, word in enumerate(reply.split(" ")):
            chunk({"content": word if i == 0 else " " + word})
        chunk({}, finish="stop")
        if options.get("include_usage"):
            chunk(None, with_usage=True)
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def main():
    port = int(os.environ.get("DEMO_ECHO_PORT", "8000"))
    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    sys.stderr.write("demo-echo: a stand-in model server (fixed replies, not a model) on :%d\n" % port)
    server.serve_forever()


if __name__ == "__main__":
    main()
