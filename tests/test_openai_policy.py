"""The OpenAI-compatible policy and ``pyvision serve`` on loopback: the tiny model behind a real HTTP server,
the official ``openai`` client against it, episodes in the environment, retries and clear errors."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from PIL import Image

from agents.hf import HFChatModel
from agents.openai_policy import OpenAIPolicy, PolicyError
from agents.serve import make_server
from agents.tiny_model import make_tiny_model
from pyvision_env import PyVisionEnv
from pyvision_env.messages import image_to_data_url


def start(server: ThreadingHTTPServer) -> str:
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address[:2]
    return f"http://{host}:{port}/v1"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    model = HFChatModel(make_tiny_model(tmp_path_factory.mktemp("tiny")), device="cpu", seed=0)
    server = make_server(model, "127.0.0.1", 0, max_batch=4)
    yield start(server), model.name
    server.shutdown()
    server.server_close()


def test_official_openai_client_against_pyvision_serve(served):
    openai = pytest.importorskip("openai")
    url, name = served
    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=60)
    assert [m.id for m in client.models.list().data] == [name]
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 100, 3), dtype=np.uint8))
    reply = client.chat.completions.create(model=name, max_tokens=6, temperature=0.0, messages=[
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_to_data_url(picture)}},
                                     {"type": "text", "text": "What is it?"}]}])
    assert reply.choices[0].finish_reason in ("stop", "length") and isinstance(reply.choices[0].message.content, str)
    assert reply.usage.completion_tokens <= 7 and reply.usage.prompt_tokens > 20  # the image's tokens count
    again = client.chat.completions.create(model=name, max_tokens=6, temperature=0.0, messages=[
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_to_data_url(picture)}},
                                     {"type": "text", "text": "What is it?"}]}])
    assert again.choices[0].message.content == reply.choices[0].message.content  # greedy is deterministic
    chunks = list(client.chat.completions.create(model=name, max_tokens=4, stream=True,
                                                 messages=[{"role": "user", "content": "hi"}]))
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-nothing", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="data: URLs"):
        client.chat.completions.create(model=name, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://example.com/a.png"}}]}])


def test_policy_plays_episodes_through_the_server(served, engine):
    url, name = served
    for protocol in ("pyvision", "openai-tools"):
        env = PyVisionEnv("zoom", engine=engine, max_turns=2, protocol=protocol)
        policy = OpenAIPolicy(name, base_url=url, protocol=env.protocol, max_tokens=12, temperature=1.0)
        observations, infos = [], []
        for seed in range(2):
            observation, info = env.reset(seed=seed)
            observations.append(observation)
            infos.append(info)
        responses = policy.act_batch(observations, infos)  # two conversations, concurrent requests
        assert len(responses) == 2 and all(isinstance(r, str) for r in responses)
        assert len(policy.usage) == 2 and all(u["prompt_tokens"] > 100 and u["retries"] == 0 for u in policy.usage)
        observation, info = env.reset(seed=0)
        done = False
        while not done:
            observation, _, terminated, truncated, info = env.step(policy.act(observation, info))
            done = terminated or truncated
        assert info["end_reason"] is not None
        env.close()


class Flaky(BaseHTTPRequestHandler):
    """Fails ``failures`` times with ``status`` then answers; records how many requests came."""

    plan: list = []
    seen: list = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        Flaky.seen.append(time.monotonic())
        status, body, headers = Flaky.plan.pop(0) if Flaky.plan else (200, None, {})
        if body is None:
            body = {"choices": [{"message": {"role": "assistant", "content": "<answer>\\boxed{1}</answer>"},
                                 "finish_reason": "stop"}], "usage": {"prompt_tokens": 5, "completion_tokens": 3}}
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def flaky():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    Flaky.plan, Flaky.seen = [], []
    yield start(server)
    server.shutdown()
    server.server_close()


def ask(url: str, **kwargs) -> tuple[str, dict]:
    from pyvision_env.messages import Message

    policy = OpenAIPolicy("m", base_url=url, backoff=0.01, timeout=5, **kwargs)
    return policy.complete([Message.text("user", "hi")])


def test_transient_failures_are_retried_with_backoff(flaky):
    error = {"error": {"message": "overloaded", "type": "server_error"}}
    Flaky.plan = [(503, error, {}), (429, error, {"Retry-After": "0"}), (200, b"not json", {})]
    text, usage = ask(flaky)
    assert text == "<answer>\\boxed{1}</answer>" and usage["retries"] == 3 and usage["prompt_tokens"] == 5
    assert len(Flaky.seen) == 4
    Flaky.plan = [(500, error, {})] * 3
    with pytest.raises(PolicyError, match=r"after 3 attempts.*overloaded"):
        ask(flaky, max_retries=2)


def test_permanent_errors_fail_at_once_with_the_servers_message(flaky):
    Flaky.plan = [(400, {"error": {"message": "context length exceeded by 900 tokens"}}, {})]
    with pytest.raises(PolicyError, match=r"HTTP 400\): context length exceeded"):
        ask(flaky)
    assert len(Flaky.seen) == 1
    Flaky.plan = [(200, {"choices": [{"message": {"role": "assistant", "content": None}}]}, {})]
    assert ask(flaky)[0] == ""  # an empty completion: the env answers it with a format-error observation


def test_unreachable_endpoint_is_a_clear_error():
    with ThreadingHTTPServer(("127.0.0.1", 0), Flaky) as closed:
        port = closed.server_address[1]
    with pytest.raises(PolicyError, match="cannot reach the endpoint"):
        ask(f"http://127.0.0.1:{port}/v1", max_retries=1)


def test_server_reports_context_overflow_as_a_bad_request(served, tmp_path):
    openai = pytest.importorskip("openai")
    model = HFChatModel(make_tiny_model(tmp_path / "tiny"), device="cpu", max_context=40)
    server = make_server(model, "127.0.0.1", 0)
    url = start(server)
    try:
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=60)
        with pytest.raises(openai.BadRequestError, match="context holds 40") as raised:
            client.chat.completions.create(model=model.name, messages=[{"role": "user", "content": "word " * 80}])
        assert raised.value.code == "context_length_exceeded"
        ok = client.chat.completions.create(model=model.name, max_tokens=2, messages=[{"role": "user", "content": "hi"}])
        assert ok.choices[0].finish_reason in ("stop", "length")  # the server goes on after a refused request
    finally:
        server.shutdown()
        server.server_close()
