"""The verl agent loop, driven through verl's own worker, config and data types, on real kernels.

verl's ``AgentLoopWorker`` runs a ``DataProto`` batch made by verl's ``RLHFDataset`` from our parquet rows, under
the example config composed by Hydra. Only the GPU server is stood in for: :class:`ScriptedTinyServer` answers
verl's token requests with the suite's scripted responses (so episodes are right and rewards known) and scores
them with the tiny Qwen2.5-VL, whose forward pass consumes the prompt's image placeholders with the images.
"""

from __future__ import annotations

import asyncio
import re
import types
from pathlib import Path
from typing import Any, NamedTuple

import pytest

pytest.importorskip("verl", reason="verl is not installed here (make test-verl builds .venv-verl)")
pytestmark = [pytest.mark.verl, pytest.mark.usefixtures("framework_engine")]

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from transformers import AutoConfig  # noqa: E402
from transformers.models.qwen2_5_vl import Qwen2_5_VLModel  # noqa: E402
from verl.experimental.agent_loop.agent_loop import AgentLoopWorker  # noqa: E402
from verl.protocol import DataProto  # noqa: E402
from verl.trainer.main_ppo import validate_config  # noqa: E402
from verl.trainer.ppo.utils import need_critic, need_reference_policy  # noqa: E402
from verl.utils.config import omega_conf_to_dataclass  # noqa: E402
from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn  # noqa: E402
from verl.workers.rollout.llm_server import LLMServerClient  # noqa: E402
from verl.workers.rollout.replica import TokenOutput  # noqa: E402

from agents.scripted import scripted_policy  # noqa: E402
from agents.tiny_model import MAX_PIXELS, load_tiny_model, load_tiny_processor, make_tiny_model  # noqa: E402
from pyvision_env.integrations import verl as adapter  # noqa: E402
from pyvision_env.make import make_env  # noqa: E402
from pyvision_env.messages import Message, to_hf  # noqa: E402

from .conftest import kernel_processes, wait_until  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "verl"
SUITE, TASKS, GROUP = "zoom", 2, 2
MERGE = 4
"""Image patches per placeholder token (Qwen2.5-VL merges 2 x 2)."""
VISION = re.compile(r"<\|vision_start\|>(?:<\|image_pad\|>)+<\|vision_end\|>")


class ScriptedTinyServer(LLMServerClient):
    """The GPU server's stand-in: per request id (one per episode), the suite's scripted policy reads the last
    user message of the prompt and answers; the tiny model scores the answer's tokens (their log-probs) in one
    forward pass over the prompt's tokens and images, which fails unless each image's placeholders match it."""

    def __init__(self, config, model, processor):
        super().__init__(config)
        self.model, self.processor, self.tokenizer = model, processor, processor.tokenizer
        self.episodes: dict[str, tuple] = {}

    async def generate(self, request_id, *, prompt_ids, sampling_params, image_data=None, **kwargs):
        policy, turn = self.episodes.get(request_id) or (scripted_policy(SUITE), 0)
        self.episodes[request_id] = (policy, turn + 1)
        last_user = self.tokenizer.decode(prompt_ids).rsplit("<|im_start|>user\n", 1)[1]
        response = policy.act([Message.text("user", VISION.sub("", last_user))], {"turn": turn})
        ids = self.tokenizer(response, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
        ids = ids[:sampling_params["max_tokens"]]
        pixels = dict(self.processor.image_processor(images=image_data, return_tensors="pt")) if image_data else {}
        with torch.no_grad():
            logits = self.model(input_ids=torch.tensor([prompt_ids + ids]), **pixels).logits[0, len(prompt_ids) - 1:-1]
        logprobs = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(ids)[:, None])[:, 0]
        return TokenOutput(token_ids=ids, log_probs=logprobs.tolist() if sampling_params["logprobs"] else None,
                           stop_reason="completed")


class Tiny(NamedTuple):
    path: Path
    model: Any
    processor: Any


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Tiny:
    """The tiny model, and its image-only processor (transformers' video processor needs torchvision, which has no
    build for the CPU torch on PyPI) fitted out as verl's ``hf_processor`` fits out Qwen2.5-VL's."""
    path = make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")
    model = load_tiny_model(path)[0]
    processor = load_tiny_processor(path)
    processor.config = AutoConfig.from_pretrained(path)
    for method in ("get_rope_index", "get_vision_position_ids"):
        setattr(processor, method, types.MethodType(getattr(Qwen2_5_VLModel, method), processor))
    return Tiny(path, model, processor)


def config_for(tiny, tmp_path, response_length=6144, **env):
    """The example config, composed by Hydra, for the tiny model: its agent loops file with ``env`` options and
    the tiny processor's pixel budget (so the env counts the visual tokens the processor makes)."""
    loops = yaml.safe_load((EXAMPLE / "agent_loops.yaml").read_text())
    loops[0]["env"].update(max_pixels=MAX_PIXELS, **env)
    (tmp_path / "agent_loops.yaml").write_text(yaml.safe_dump(loops))
    with initialize_config_dir(config_dir=str(EXAMPLE), version_base=None):
        return compose(config_name="pyvision_qwen2_5_vl_7b", overrides=[
            f"actor_rollout_ref.model.path={tiny.path}", f"actor_rollout_ref.rollout.n={GROUP}",
            "data.max_prompt_length=2048", f"data.max_response_length={response_length}",
            f"actor_rollout_ref.rollout.agent.agent_loop_config_path={tmp_path / 'agent_loops.yaml'}"])


def rollout(tiny, config, rows: Path, count: int) -> DataProto:
    """verl's path from parquet rows to trajectories: RLHFDataset, collate, repeat by rollout.n, the worker."""
    dataset = RLHFDataset(str(rows), tiny.processor.tokenizer, config.data)
    batch = DataProto.from_single_dict(collate_fn([dataset[i] for i in range(count)]))
    batch = batch.repeat(config.actor_rollout_ref.rollout.n, interleave=True)
    return asyncio.run(worker_for(tiny, config).generate_sequences(batch))


def worker_for(tiny: Tiny, config) -> AgentLoopWorker:
    """verl's agent loop worker, its LLM server client the scripted stand-in."""
    worker = AgentLoopWorker(config, ScriptedTinyServer(config, tiny.model, tiny.processor))
    worker.processor = tiny.processor  # verl's hf_processor cannot build Qwen2.5-VL's without torchvision
    return worker


def reference(task_id: str) -> tuple[list[dict], float, dict]:
    """The same episode played on PyVisionEnv directly (the options of the example's agent loop, for the tiny
    model): its conversation, reward and last info."""
    env = make_env(SUITE, reward="accumulative", protocol="pyvision", kernel_start="first-call", max_turns=5,
                   max_pixels=MAX_PIXELS)
    policy = scripted_policy(SUITE)
    try:
        observation, info = env.reset(options={"task_id": task_id})
        total, done = 0.0, False
        while not done:
            observation, reward, terminated, truncated, info = env.step(policy.act(observation, info))
            total, done = total + reward, terminated or truncated
        return to_hf(env.unwrapped.conversation()), total, info
    finally:
        env.close()


def unpadded(output: DataProto, i: int) -> tuple[list[int], list[int], list[int]]:
    """Sample ``i``'s prompt ids, response ids and response mask without verl's padding."""
    prompt_length = output.batch["prompts"].shape[1]
    attention = output.batch["attention_mask"][i]
    prompt = output.batch["prompts"][i][attention[:prompt_length].bool()].tolist()
    length = int(attention[prompt_length:].sum())
    return (prompt, output.batch["responses"][i][:length].tolist(),
            output.batch["response_mask"][i][:length].tolist())


def no_kernel_left() -> bool:
    """Every kernel this process started has exited (the engine has no spare kernels)."""
    return not [p for p in kernel_processes() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def runs(values: list[int], mask: list[int], bit: int) -> list[list[int]]:
    """The maximal runs of ``values`` where ``mask`` is ``bit``."""
    found, current = [], []
    for value, flag in zip(values, mask):
        if flag == bit:
            current.append(value)
        elif current:
            found, current = found + [current], []
    return found + [current] if current else found


def test_episodes_through_verls_worker_keep_tokens_images_masks_and_rewards(tiny, tmp_path):
    rows = adapter.write_dataset(SUITE, tmp_path / "zoom.parquet", split=None)
    config = config_for(tiny, tmp_path)
    output = rollout(tiny, config, rows, TASKS)

    processor = tiny.processor
    tokenizer, image_pad = processor.tokenizer, processor.image_token_id
    assert len(output) == TASKS * GROUP and output.batch["position_ids"].shape[1] == 4  # M-RoPE: text + 3 axes
    extra = output.non_tensor_batch
    for i in range(len(output)):
        task_id = extra["extra_info"][i]["task_id"]
        messages, reward, info = reference(task_id)
        prompt, response, mask = unpadded(output, i)

        # the tokens are the conversation, rendered by the processor's chat template
        text = VISION.sub("<|vision_start|><|image_pad|><|vision_end|>", tokenizer.decode(prompt + response))
        assert text + "\n" == processor.apply_chat_template(messages, tokenize=False)
        # mask 1 exactly on the sampled responses (each with its end token), 0 on every observation
        responses = [m["content"][0]["text"] + "<|im_end|>" for m in messages if m["role"] == "assistant"]
        assert [tokenizer.decode(run) for run in runs(response, mask, 1)] == responses
        observations = [tokenizer.decode(run) for run in runs(response, mask, 0)]
        assert len(observations) == len(responses) - 1
        assert all(o.startswith("\n<|im_start|>user\n") and o.endswith("<|im_start|>assistant\n")
                   for o in observations)
        logprobs = output.batch["rollout_log_probs"][i][:len(mask)]
        assert ((logprobs != 0) == torch.tensor(mask, dtype=torch.bool)).all()  # the server's, where sampled

        # each image's placeholders are its grid's tokens, in order; the env counted the same visual tokens
        grids = extra["multi_modal_inputs"][i]["image_grid_thw"]
        sizes = [len(run) for run in runs(prompt + response, [t == image_pad for t in prompt + response], 1)]
        assert sizes == (grids.prod(dim=1) // MERGE).tolist()
        assert len(sizes) == 1 + info["images_shown"] >= 2 and sum(sizes) == info["visual_tokens"]

        # the reward is PyVisionEnv's for the same episode; the counters come along
        assert float(output.batch["rm_scores"][i].sum()) == pytest.approx(reward) and reward > 1.0
        assert extra["end_reason"][i] == "answered" and extra["task_id"][i] == task_id
        assert extra["acc"][i] == 1.0 and extra["tool_calls"][i] == info["tool_calls"] >= 1
        assert extra["reward_components"][i]["tool_bonus"] == info["reward_components"]["tool_bonus"]
        assert extra["__num_turns__"][i] == 2 * info["turn"]  # the prompt, then a response and an observation...
    assert wait_until(no_kernel_left, timeout=10)


@pytest.mark.parametrize("room", [-100, 2], ids=["response-cut", "no-room-for-the-observation"])
def test_a_response_budget_spent_mid_episode_ends_it_with_no_reward_and_consistent_images(tiny, tmp_path, room):
    rows = adapter.write_dataset(SUITE, tmp_path / "zoom.parquet")
    env = make_env(SUITE, kernel_start="first-call")
    try:
        observation, info = env.reset(options={"task_id": "zoom-0000"})
    finally:
        env.close()
    tokenizer = tiny.processor.tokenizer
    first = len(tokenizer(scripted_policy(SUITE).act(observation, info))["input_ids"]) + 1  # with its end token
    config = config_for(tiny, tmp_path, response_length=first + room)
    config.actor_rollout_ref.rollout.n = 1
    output = rollout(tiny, config, rows, 1)

    prompt, response, mask = unpadded(output, 0)
    extra = output.non_tensor_batch
    assert extra["end_reason"][0] == "over_length" and extra["acc"][0] == 0.0
    assert float(output.batch["rm_scores"][0].sum()) == 0.0
    assert len(response) == min(first, first + room) and all(mask)  # the first response alone, cut or whole
    assert extra["tool_calls"][0] == (1 if room > 0 else 0)  # a whole response runs; its observation is left out
    grids = extra["multi_modal_inputs"][0]["image_grid_thw"]  # so the first view is the only image
    assert len(grids) == 1 and (prompt + response).count(tokenizer.convert_tokens_to_ids("<|image_pad|>")) == (
        int(grids.prod()) // MERGE)
    assert wait_until(no_kernel_left, timeout=10)


def test_bad_rows_are_refused_with_a_clear_error(tiny, tmp_path):
    config = config_for(tiny, tmp_path)
    config.actor_rollout_ref.rollout.n = 1
    worker = worker_for(tiny, config)
    for extra_info, error in (({"suite": SUITE}, "extra_info with 'suite' and 'task_id'"),
                              ({"suite": SUITE, "task_id": "missing"}, "missing")):
        batch = DataProto.from_single_dict({"agent_name": np.array(["pyvision"], dtype=object),
                                            "raw_prompt": np.array([[]], dtype=object),
                                            "extra_info": np.array([extra_info], dtype=object)})
        with pytest.raises(ValueError, match=error):
            asyncio.run(worker.generate_sequences(batch))


def test_the_example_config_passes_verls_checks_and_mirrors_pyvision_rl():
    with initialize_config_dir(config_dir=str(EXAMPLE), version_base=None):
        example = compose(config_name="pyvision_qwen2_5_vl_7b")
    validate_config(example, use_reference_policy=need_reference_policy(example), use_critic=need_critic(example))
    actor = omega_conf_to_dataclass(example.actor_rollout_ref.actor)
    rollout_config = omega_conf_to_dataclass(example.actor_rollout_ref.rollout)
    algorithm = omega_conf_to_dataclass(example.algorithm)
    assert actor.optim.lr == 1e-6 and actor.clip_ratio_high == 0.28 and not actor.use_kl_loss
    assert rollout_config.n == 8 and rollout_config.multi_turn.max_assistant_turns == 5
    assert rollout_config.agent.default_agent_loop == "pyvision" and rollout_config.calculate_log_probs
    assert algorithm.adv_estimator == "grpo" and not algorithm.norm_adv_by_std_in_grpo
    assert algorithm.filter_groups.enable and algorithm.filter_groups.metric == "reward"
    assert yaml.safe_load((EXAMPLE / "agent_loops.yaml").read_text())[0]["_target_"] == (
        f"{adapter.__name__}.{adapter.PyVisionAgentLoop.__name__}")
