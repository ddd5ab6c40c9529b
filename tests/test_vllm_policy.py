"""``VLLMPolicy`` on vLLM's real offline engine, on CPU (``make test-vllm`` runs these in ``.venv-vllm``).

vLLM cannot run the tiny Qwen2.5-VL on CPU (its processors need torchvision, unusable beside the CPU torch), so the model here is
the tiny *text-only* Qwen2 of :mod:`agents.tiny_text_model`, and the policy takes the explicit text-only path:
``context_images=0`` replaces every image of the suite by a text note; without it an image is a clear error.

One engine serves the whole module (start ~20-30 s on 2 cores). It runs in this process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``): the default starts an engine-core and a worker process that each
import vLLM again (spawn, ~20 s more) and would need a ``__main__`` guard in the caller; and the CPU worker
is not pinned to one core (``VLLM_CPU_OMP_THREADS_BIND=nobind``), since in-process the pin would apply to the
test process itself. The CLI test runs ``pyvision eval`` in a subprocess with the same settings.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(600)]

vllm = pytest.importorskip("vllm", reason="vLLM is not installed here (make test-vllm builds .venv-vllm)")

from PIL import Image  # noqa: E402
from vllm import SamplingParams  # noqa: E402

from agents.base import Conversation  # noqa: E402
from agents.episodes import play_episode  # noqa: E402
from agents.hf import ModelLoadError  # noqa: E402
from agents.tiny_text_model import make_tiny_text_model  # noqa: E402
from agents.vllm_policy import VLLMPolicy  # noqa: E402
from pyvision_env.cli import main  # noqa: E402
from pyvision_env.env import PyVisionEnv  # noqa: E402
from pyvision_env.messages import ImagePart, Message, TextPart  # noqa: E402

ENGINE_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_OMP_THREADS_BIND": "nobind", "HF_HUB_OFFLINE": "1",
              "TOKENIZERS_PARALLELISM": "false"}
ENGINE_ARGS = {"max_model_len": 2048, "kv_cache_memory_bytes": 64 << 20, "enforce_eager": True, "dtype": "float32"}
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    return make_tiny_text_model(tmp_path_factory.mktemp("tiny-qwen2-text"))


@pytest.fixture(scope="module")
def policy(text_model):
    """The module's one engine: greedy, ``MAX_TOKENS`` per response, text-only (``context_images=0``)."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in ENGINE_ENV.items():
            patch.setenv(key, value)
        started = time.perf_counter()
        policy = VLLMPolicy(str(text_model), temperature=0.0, max_tokens=MAX_TOKENS, seed=0, context_images=0,
                            **ENGINE_ARGS)
        print(f"\nvLLM engine start: {time.perf_counter() - started:.1f} s")
        yield policy
        del policy.llm


def reset_policy(policy):
    policy.usage.clear()
    policy.__dict__.pop("_conversations", None)


def test_text_model_is_text_only(policy):
    assert policy.multimodal is False
    assert policy.llm.model_config.hf_config.architectures == ["Qwen2ForCausalLM"]


def test_episodes_on_the_count_suite_text_only(policy, engine):
    """Two real episodes: the suite's images reach the model as the omitted-image note, the responses are the
    model's own greedy completions of the rendered prompts, and every step's usage is recorded."""
    reset_policy(policy)
    env = PyVisionEnv("count", max_turns=2, engine=engine)
    try:
        results = [play_episode(env, policy, options={"task_index": index}) for index in range(2)]
    finally:
        env.close()
    assert [r.task_id for r in results] == [task.id for task in env.tasks[:2]]
    assert all(r.error is None and r.end_reason in ("answered", "format_error", "max_turns") for r in results)
    steps = sum(r.turns for r in results)
    assert steps >= 2 and len(policy.usage) == steps
    for usage in policy.usage:
        assert usage["prompt_tokens"] > 0 and 0 < usage["completion_tokens"] <= MAX_TOKENS
        assert usage["finish_reason"] in ("stop", "length")

    visible = policy._conversations[0].visible()
    assert not any(message.images for message in visible)
    assert Conversation.OMITTED in "".join(message.plain_text for message in visible)
    # The last response is what the model generates for the rendered conversation (its own chat template).
    prompt = policy.llm.get_tokenizer().apply_chat_template(
        [{"role": m.role, "content": m.plain_text} for m in visible[:-1]], tokenize=False, add_generation_prompt=True)
    again = policy.llm.generate(prompt, SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS), use_tqdm=False)
    response = visible[-1].plain_text
    assert isinstance(response, str) and response == again[0].outputs[0].text


def test_greedy_twice_is_identical_and_max_tokens_holds(policy):
    reset_policy(policy)
    observation = [Message.text("user", "How many red circles are in the image? Answer with a number.")]
    first = policy.act_batch([observation, observation], [{"turn": 0}, {"turn": 0}])
    second = policy.act_batch([observation], [{"turn": 0}])
    assert first[0] == first[1] == second[0]
    assert all(isinstance(text, str) for text in first) and first[0].strip()   # text, not only whitespace
    for usage in policy.usage:
        assert 0 < usage["completion_tokens"] <= MAX_TOKENS
        assert usage["finish_reason"] == "stop" or usage["completion_tokens"] == MAX_TOKENS


def test_seeded_sampling_is_reproducible_and_differs_between_slots(policy):
    """Request k samples with seed ``seed + k``: a fresh count reproduces a batch; slots get different seeds."""
    reset_policy(policy)
    greedy = policy.act_batch([[Message.text("user", "hello")]], [{"turn": 0}])[0]
    sampling = policy.sampling
    policy.sampling = sampling.clone()
    policy.sampling.temperature = 1.0
    try:
        batches = []
        for _ in range(2):
            policy.requests = 0
            batches.append(policy.act_batch([[Message.text("user", "hello")]] * 3, [{"turn": 0}] * 3))
    finally:
        policy.sampling = sampling
    assert batches[0] == batches[1]
    assert len(set(batches[0])) > 1 and greedy not in batches[0]


def test_images_reach_a_text_only_model_only_as_a_clear_error(policy):
    conversation = [Message("user", (ImagePart(Image.new("RGB", (28, 28))), TextPart("How many?")))]
    with pytest.raises(ValueError, match=r"text-only model.*context_images=0"):
        policy.complete_batch([conversation])


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        VLLMPolicy(str(tmp_path / "missing"))
    with pytest.raises(SystemExit, match=r"cannot load .*missing.*no config\.json"):
        main(["eval", "--suite", "count", "--policy", "vllm", "--model", str(tmp_path / "missing"), "--no-record"])


def test_pyvision_eval_cli_text_only(text_model, tmp_path):
    """``pyvision eval --policy vllm`` end to end in a fresh process (its own engine, CPU defaults)."""
    command = [sys.executable, "-m", "pyvision_env.cli", "eval", "--suite", "count", "--policy", "vllm", "--model",
               str(text_model), "--limit", "2", "--max-turns", "2", "--max-tokens", str(MAX_TOKENS),
               "--temperature", "0", "--context-images", "0", "--out", str(tmp_path / "run")]
    done = subprocess.run(command, env={**os.environ, **ENGINE_ENV}, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| count | vllm | pyvision | 2 | 1 |" in done.stdout
    assert "failed:" not in done.stderr   # no failed episode
    episodes = (tmp_path / "run" / "episodes" / "episodes.jsonl").read_text().splitlines()
    assert len(episodes) == 2
