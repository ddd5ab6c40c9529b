"""``pyvision serve``: an OpenAI-compatible chat endpoint backed by a local Hugging Face model.

``GET /v1/models`` and ``POST /v1/chat/completions`` (text and ``image_url`` parts with ``data:`` URLs, tool
messages and tool calls, ``max_tokens`` / ``max_completion_tokens``, ``temperature``, ``top_p``, ``stop``,
``seed`` ignored, ``stream`` as server-sent events with one content chunk). Concurrent requests with the same
sampling settings are generated together in one batch. Errors come back in OpenAI's shape
(``{"error": {"message", "type", "code"}}``) with 400 for bad requests and context overflow, 404 for
unknown paths or models, 413 for oversized bodies and 500 otherwise.

Example::

    pyvision make-tiny-model /tmp/tiny && pyvision serve /tmp/tiny --port 8000
    # then any OpenAI client: OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none")
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import astuple
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pyvision_env.messages import from_openai

from .hf import Generation, HFChatModel, Sampling

MAX_BODY_BYTES = 64 * 1024 * 1024


class RequestError(ValueError):
    """A request the server refuses (status 400 unless given)."""

    def __init__(self, message: str, status: int = 400, code: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.code = status, code


def parse_request(body: dict[str, Any], model_name: str) -> tuple[list, Sampling, bool]:
    """``(messages, sampling, stream)`` of a chat-completions request; raises :class:`RequestError`."""
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
        raise RequestError("'messages' must be a non-empty list")
    if body.get("model") not in (None, model_name):
        raise RequestError(f"model {body.get('model')!r} is not served here; this server has {model_name!r}",
                           404, "model_not_found")
    if body.get("n", 1) != 1:
        raise RequestError("only n=1 is supported")
    for message in body["messages"]:
        for part in message.get("content") or [] if isinstance(message, dict) else []:
            if isinstance(part, dict) and part.get("type") == "image_url" \
                    and not str(part.get("image_url", {}).get("url", "")).startswith("data:"):
                raise RequestError("images must be data: URLs (this server does not fetch remote images)")
    try:
        messages = from_openai(body["messages"])
    except (KeyError, TypeError, ValueError, OSError) as error:
        raise RequestError(f"cannot read the messages: {error}") from None
    stop = body.get("stop") or ()
    sampling = Sampling(max_new_tokens=int(body.get("max_completion_tokens") or body.get("max_tokens") or 512),
                        temperature=float(body.get("temperature", 1.0)), top_p=float(body.get("top_p", 1.0)),
                        stop=(stop,) if isinstance(stop, str) else tuple(stop))
    if sampling.max_new_tokens < 1 or sampling.temperature < 0 or not 0 < sampling.top_p <= 1:
        raise RequestError("max_tokens must be >= 1, temperature >= 0 and 0 < top_p <= 1")
    return messages, sampling, bool(body.get("stream"))


class Batcher:
    """Runs generation on one thread, batching the waiting requests that share sampling settings."""

    def __init__(self, model: HFChatModel, max_batch: int = 8) -> None:
        self.model, self.max_batch = model, max_batch
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="pyvision-serve-batcher", daemon=True)
        self._thread.start()

    def submit(self, messages: list, sampling: Sampling) -> Future:
        future: Future = Future()
        self._queue.put((messages, sampling, future))
        return future

    def _loop(self) -> None:
        while True:
            batch = [self._queue.get()]
            deferred = []
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                (batch if astuple(item[1]) == astuple(batch[0][1]) else deferred).append(item)
            for item in deferred:
                self._queue.put(item)
            try:
                results: list = self.model.generate([messages for messages, _, _ in batch], batch[0][1])
            except ValueError:  # context overflow or a rendering problem: each alone, to blame the right one
                results = [self._alone(messages, sampling) for messages, sampling, _ in batch]
            except Exception as error:  # noqa: BLE001  (reported to every waiting request as a 500)
                results = [error] * len(batch)
            for (_, _, future), result in zip(batch, results):
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)


    def _alone(self, messages: list, sampling: Sampling) -> Generation | BaseException:
        try:
            return self.model.generate([messages], sampling)[0]
        except Exception as error:  # noqa: BLE001  (becomes this request's error response)
            return error


def completion_body(generation: Generation, model_name: str) -> dict[str, Any]:
    return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": generation.text},
                         "finish_reason": generation.finish_reason}],
            "usage": {"prompt_tokens": generation.prompt_tokens, "completion_tokens": generation.completion_tokens,
                      "total_tokens": generation.prompt_tokens + generation.completion_tokens}}


def make_server(model: HFChatModel, host: str = "127.0.0.1", port: int = 8000, max_batch: int = 8,
                request_timeout: float = 600.0) -> ThreadingHTTPServer:
    """An HTTP server for ``model`` (call ``serve_forever()``; ``server_address`` has the bound port)."""
    batcher = Batcher(model, max_batch)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str, code: str) -> None:
            kind = "invalid_request_error" if status < 500 else "server_error"
            self._send(status, {"error": {"message": message, "type": kind, "code": code}})

        def do_GET(self) -> None:
            if self.path.rstrip("/") in ("/v1/models", "/models"):
                self._send(200, {"object": "list", "data": [{"id": model.name, "object": "model", "created": 0,
                                                             "owned_by": "pyvision"}]})
            elif self.path.rstrip("/") in ("/health", "/v1/health"):
                self._send(200, {"status": "ok"})
            else:
                self._error(404, f"no route {self.path}", "not_found")

        def do_POST(self) -> None:
            if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
                self._error(404, f"no route {self.path}", "not_found")
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self._error(413, f"the request body is {length} bytes; at most {MAX_BODY_BYTES}", "too_large")
                return
            try:
                body = json.loads(self.rfile.read(length) or b"null")
                messages, sampling, stream = parse_request(body, model.name)
                generation = batcher.submit(messages, sampling).result(timeout=request_timeout)
            except json.JSONDecodeError as error:
                self._error(400, f"the body is not valid JSON: {error}", "invalid_json")
                return
            except RequestError as error:
                self._error(error.status, str(error), error.code)
                return
            except ValueError as error:  # context overflow, image placeholders
                self._error(400, str(error), "context_length_exceeded" if "context" in str(error) else "invalid")
                return
            except Exception as error:  # noqa: BLE001  (an internal failure is a 500, not a dropped connection)
                self._error(500, f"{type(error).__name__}: {error}", "internal_error")
                return
            completion = completion_body(generation, model.name)
            if stream:
                self._stream(completion)
            else:
                self._send(200, completion)

        def _stream(self, completion: dict[str, Any]) -> None:
            choice = completion["choices"][0]
            chunks = [{"delta": {"role": "assistant", "content": choice["message"]["content"]}, "finish_reason": None},
                      {"delta": {}, "finish_reason": choice["finish_reason"]}]
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            for chunk in chunks:
                event = {"id": completion["id"], "object": "chat.completion.chunk", "created": completion["created"],
                         "model": completion["model"], "choices": [{"index": 0, **chunk}]}
                self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")
            self.close_connection = True

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server
