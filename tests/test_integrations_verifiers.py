"""The verifiers environment, run by ``vf-eval``'s own entry point against ``pyvision serve`` on loopback, on real
kernels. The served model is the suite's scripted policy, so every rollout can be compared with the same policy
playing :class:`~pyvision_env.env.PyVisionEnv` directly: the same conversation (text, images and their
placeholders) and the same reward."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
from contextlib import contextmanager

import pytest

pytestmark = [pytest.mark.verifiers, pytest.mark.timeout(300), pytest.mark.usefixtures("framework_engine")]

pytest.importorskip("verifiers.v1", reason="verifiers is not installed here (make test-verifiers builds "
                                           ".venv-verifiers)")

from verifiers.v1.cli.eval.main import main as vf_eval_main  # noqa: E402

from agents.hf import Generation  # noqa: E402
from agents.scripted import scripted_policy  # noqa: E402
from agents.serve import make_server  # noqa: E402
from pyvision_env.execution import default_engine  # noqa: E402
from pyvision_env.integrations.verifiers import ENV_ID, load_environment  # noqa: E402
from pyvision_env.make import make_env  # noqa: E402
from pyvision_env.messages import Message  # noqa: E402


class ScriptedModel:
    """A suite's scripted policy as the model ``pyvision serve`` serves: each request replays the conversation's
    turns through a fresh policy and answers the last one. Keeps every conversation and sampling it was sent."""

    name = "scripted"

    def __init__(self, suite: str, protocol: str) -> None:
        self.suite, self.protocol = suite, protocol
        self.requests: list[list[Message]] = []
        self.samplings: list = []

    def generate(self, conversations, sampling) -> list[Generation]:
        self.samplings.append(sampling)
        replies = []
        for messages in conversations:
            self.requests.append(list(messages))
            observations: list[list[Message]] = [[]]
            for message in messages:
                if message.role == "assistant":
                    observations.append([])
                else:
                    observations[-1].append(message)
            policy = scripted_policy(self.suite, self.protocol)
            for turn, observation in enumerate(observations):
                text = policy.act(observation, {"turn": turn})
            replies.append(Generation(text, "stop", 0, 0))
        return replies


@contextmanager
def served(model):
    """``pyvision serve``'s server for ``model`` on a free loopback port; yields its API root."""
    server = make_server(model, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def vf_eval(out, url: str, *args: str, model: str = "scripted") -> list[dict]:
    """Run ``vf-eval pyvision-verifiers ARGS`` in this process; the episodes it wrote."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        vf_eval_main([ENV_ID, *args, "-m", model, "--client.base-url", url, "--no-push", "--no-rich", "-o", str(out)])
    finally:
        for sig, handler in handlers.items():  # vf-eval routes Ctrl-C through its own handler
            signal.signal(sig, handler)
    [traces] = out.glob("*/traces.jsonl")
    return [json.loads(line) for line in traces.read_text().splitlines()]


def play_directly(suite: str, task_id: str, protocol: str, reward: str | None) -> tuple[float, list[Message], dict]:
    """The scripted policy on the same task in PyVisionEnv itself: total reward, conversation, last info."""
    env = make_env(suite, protocol=protocol, reward=reward)
    policy = scripted_policy(suite, env.unwrapped.protocol)
    try:
        observation, info = env.reset(options={"task_id": task_id})
        total = 0.0
        while True:
            observation, reward_, terminated, truncated, info = env.step(policy.act(observation, info))
            total += reward_
            if terminated or truncated:
                return total, env.unwrapped.conversation(), info
    finally:
        env.close()


def same_episode(request: list[Message], conversation: list[Message]) -> bool:
    """Whether ``request`` continues the episode of ``conversation`` (the same system prompt, question and image)."""
    return request[:2] == conversation[:2]


def live_kernels() -> int:
    return default_engine().status().live_kernels


@pytest.mark.parametrize(("suite", "protocol", "reward"), [("zoom", "pyvision", "accumulative"),
                                                           ("count", "codevision", "codevision"),
                                                           ("contrast", "pyvision", None)])
def test_vf_eval_against_pyvision_serve_matches_playing_the_env(suite, protocol, reward, tmp_path):
    model = ScriptedModel(suite, protocol)
    before = live_kernels()
    options = ["--env.taskset.suite", suite, "--env.taskset.protocol", protocol, "-n", "2", "-c", "2",
               "--sampling.max-tokens", "3000"]
    options += ["--env.taskset.reward", reward] if reward else []
    with served(model) as url:
        episodes = vf_eval(tmp_path, url, *options)
    assert len(episodes) == 2 and all(episode["ok"] for episode in episodes)
    assert {sampling.max_new_tokens for sampling in model.samplings} == {3000}  # vf-eval's sampling arrives
    for episode in episodes:
        [trace] = episode["traces"]
        task_id = trace["task"]["data"]["task_id"]
        total, conversation, info = play_directly(suite, task_id, protocol, reward)
        assert trace["rewards"] == {"pyvision": {"score": pytest.approx(total), "weight": 1.0}}
        assert info["correct"] and total >= 1.0
        metrics = trace["metrics"]
        assert metrics["correct"] == 1.0 and trace["info"]["end_reason"] == "answered"
        assert {key: metrics[key] for key in ("turn", "tool_calls", "images_shown", "visual_tokens")} == \
            {key: info[key] for key in ("turn", "tool_calls", "images_shown", "visual_tokens")}
        # What the model saw last, through verifiers, is the direct episode's conversation up to its answer:
        # the same text, images (pixel for pixel) and order.
        last = next(request for request in reversed(model.requests) if same_episode(request, conversation))
        assert last == conversation[:-1]
        assert sum(len(message.images) for message in last) == 1 + info["images_shown"]
        if protocol == "pyvision":  # each image sits inside its own <image_clue_k> placeholder, k in order
            shown = [int(k) for message in last for k in re.findall(r"<image_clue_(\d+)>", message.plain_text)]
            assert shown == list(range(sum(len(message.images) for message in last)))
    assert live_kernels() <= before  # every rollout's kernel is gone


def test_vf_eval_against_the_pyvision_serve_command_with_the_tiny_model(tmp_path):
    """The real `pyvision serve` command over a local model folder: rollouts run to their end (a random model
    earns nothing) and leave no kernel."""
    from agents.tiny_model import make_tiny_model

    model_dir = make_tiny_model(tmp_path / "tiny")
    server = subprocess.Popen([sys.executable, "-m", "pyvision_env.cli", "serve", str(model_dir), "--port", "0",
                               "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    before = live_kernels()
    try:
        serving = re.match(r"serving (\S+) at (\S+) ", server.stdout.readline())
        assert serving, server.stderr.read()[-3000:] if server.poll() is not None else "no 'serving' line"
        episodes = vf_eval(tmp_path / "out", serving[2], "--env.taskset.suite", "zoom", "-n", "2",
                           "--env.taskset.max-turns", "2", "--sampling.max-tokens", "24", model=serving[1])
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert len(episodes) == 2 and all(episode["ok"] for episode in episodes)
    for episode in episodes:
        [trace] = episode["traces"]
        assert trace["info"]["end_reason"] in ("max_turns", "answered", "format_error")
        assert 1 <= trace["metrics"]["turn"] <= 2 and "pyvision" in trace["rewards"]
    assert live_kernels() <= before


def test_a_failed_or_timed_out_rollout_frees_its_kernel(tmp_path):
    before = live_kernels()
    with served(ScriptedModel("zoom", "pyvision")) as url:
        [episode] = vf_eval(tmp_path / "refused", url, "--env.taskset.suite", "zoom", "-n", "1", model="unknown")
    [trace] = episode["traces"]
    assert not episode["ok"] and "unknown" in json.dumps(trace["errors"])  # the server's 404 reached the trace
    assert trace["rewards"]["pyvision"]["score"] == 0.0 and trace["info"]["end_reason"] is None
    assert live_kernels() <= before

    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts connections, never answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        [episode] = vf_eval(tmp_path / "timeout", url, "--env.taskset.suite", "zoom", "-n", "1",
                            "--env.timeout.episode", "3")
    assert episode["is_timeout"] and not episode["ok"]  # the episode was cancelled mid-turn
    assert live_kernels() <= before


def test_bad_settings_are_clear_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"unknown suite 'nope'; registered: .*zoom"):
        load_environment("nope")
    with pytest.raises(ValueError, match="protocol 'openai-tools' is not supported"):
        load_environment("zoom", protocol="openai-tools")
    with pytest.raises(ValueError, match="unknown reward 'bogus'"):
        load_environment("zoom", reward="bogus")
    with pytest.raises(SystemExit):
        vf_eval(tmp_path, "http://127.0.0.1:9/v1", "--env.taskset.suite", "nope")
    assert "unknown suite 'nope'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="name the suite to play"):
        vf_eval(tmp_path, "http://127.0.0.1:9/v1")
    env = load_environment("zoom", split="held-out", reward="accumulative", max_turns=3, max_images=4)
    [task, *_] = env.taskset
    assert task.data.task_id.startswith("zoom-") and task.data.split == "held-out"
    assert task.data.episode == {"reward": "accumulative", "protocol": "pyvision", "max_turns": 3, "max_images": 4}
