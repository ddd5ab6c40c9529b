"""Generation backends of the trainer: token ids in, sampled ids and their log-probs out.

* :class:`HFBackend` — Hugging Face ``generate`` on the policy model itself (CPU default; no weight sync), or on
  a copy of it that each update's weights are loaded into (data-parallel ranks, whose trained model is sharded).
* :class:`VLLMBackend` — a colocated vLLM engine (GPU); the trainer's weights are loaded into it after each
  update, under a timeout, and the time it took is reported.
* :class:`SharedEngine` — one engine over a block of ranks (vLLM tensor parallel under torchrun, a shard on each
  rank), which all send their prompts together.

Both take :class:`~trainers.tokens.Encoded` prompts (ids with expanded image placeholders, plus the images)
and return :class:`Sampled` continuations. A log-prob is the sampled token's under the model's
temperature-scaled distribution (before top-p/top-k truncation, and before the greedy choice inside code blocks of
``HFBackend(greedy_between=...)``): what the trainer recomputes.

Example::

    backend = HFBackend(model, chat)
    [sampled] = backend.generate([chat.prompt(observation)], Sampling(max_new_tokens=64, temperature=1.0))
    sampled.ids, sampled.logprobs, sampled.finished
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image

from agents.hf import Sampling
from pyvision_env.wrappers.recording import image_digest

from .tokens import ChatTokenizer, Encoded

if TYPE_CHECKING:
    from .distributed import Ranks


@dataclass
class Sampled:
    """One continuation: its token ids (ending with the end token when ``finished``) and their log-probs."""

    ids: list[int]
    logprobs: list[float]
    finished: bool
    """The model ended its turn (else it hit ``max_new_tokens``)."""


class WeightSyncTimeout(RuntimeError):
    """Loading the trainer's weights into the generation engine took longer than allowed."""


class GenerationBackend(ABC):
    """Samples continuations of token prompts."""

    @abstractmethod
    def generate(self, prompts: Sequence[Encoded], sampling: Sampling) -> list[Sampled]:
        """One continuation per prompt."""

    shares_trainer_weights: bool = False
    """The backend samples from the trained model object itself, so it needs no weights loaded after an update
    (the trainer skips gathering them)."""

    def sync_weights(self, weights: Iterable[tuple[str, Any]], timeout: float) -> float:
        """Make the engine sample from ``weights`` (the trained model's whole weights, ``(name, tensor)`` one at
        a time, as :meth:`~trainers.modeling.PolicyModel.plain_weights` gives them; the iterator must be
        consumed to its end) and wake it if it sleeps; returns the seconds it took."""
        return 0.0

    def sleep(self) -> None:  # noqa: B027  (optional: most backends hold no memory worth releasing)
        """Release the engine's memory (weights and cache) until the next :meth:`sync_weights`: while the
        trainer updates, the GPU is the trainer's."""

    def finish_requests(self) -> None:  # noqa: B027  (optional: only an engine shared by ranks waits for them)
        """This rank has nothing more to generate for now (the end of a collection). An engine shared with other
        ranks (:class:`SharedEngine`) keeps serving their requests until every rank has said the same."""

    def close(self) -> None:  # noqa: B027  (optional: most backends hold nothing to free)
        """Free the engine."""


class PixelCache:
    """The image processor's output per image, for the images of live conversations (LRU, by the hash of their
    pixels, so an image changed in place is processed again)."""

    def __init__(self, image_processor: Any, size: int = 4096) -> None:
        self.image_processor, self.size = image_processor, size
        self._cache: OrderedDict[str, tuple[Any, Any]] = OrderedDict()

    def __call__(self, images: Sequence[Image.Image]) -> dict[str, Any]:
        """``pixel_values`` and ``image_grid_thw`` of ``images`` concatenated in order (empty: ``{}``)."""
        import torch

        if not images:
            return {}
        parts = []
        for image in images:
            key = image_digest(image)
            if key not in self._cache:
                out = self.image_processor(images=[image.convert("RGB")], return_tensors="pt")
                self._cache[key] = (out["pixel_values"], out["image_grid_thw"])
                while len(self._cache) > self.size:
                    self._cache.popitem(last=False)
            self._cache.move_to_end(key)
            parts.append(self._cache[key])
        return {"pixel_values": torch.cat([p[0] for p in parts]), "image_grid_thw": torch.cat([p[1] for p in parts])}


def token_logprobs(logits: Any, ids: Any, temperature: float) -> Any:
    """Log-probs of ``ids`` under ``softmax(logits / temperature)`` (``temperature`` 0 counts as 1).

    >>> import torch
    >>> token_logprobs(torch.zeros(1, 4), torch.tensor([2]), 1.0).exp()
    tensor([0.2500])
    """
    import torch

    scaled = logits.float() / (temperature if temperature > 0 else 1.0)
    return torch.log_softmax(scaled, dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)


def inside_code(text: str, opening: str, closing: str) -> bool:
    """Whether ``text`` ends inside a code block: its last ``opening`` marker is not followed by a ``closing`` one.

    >>> [inside_code(text, "<code>", "</code>") for text in ("Look: <co", "Look: <code> print(1)", "<code>x</code",
    ...                                                       "<code>x</code> done", "<code>x</code> and <code>")]
    [False, True, True, False, True]
    """
    def end(marker: str) -> int:
        at = text.rfind(marker)
        return -1 if at < 0 else at + len(marker)

    return end(opening) > end(closing)


class SampledLogProbs:
    """A ``generate`` logits processor, first in the list: it keeps the log-prob of each sampled token under
    ``softmax(logits / temperature)`` of the model's own logits (what the trainer recomputes), then masks the
    tokens that must never be sampled. Only one step's log-probs are held at a time: ``output_logits`` would keep
    every step's full-vocabulary logits (64 responses of 512 tokens with Qwen2.5-VL's 152K vocabulary: 20 GB).

    >>> import torch
    >>> record = SampledLogProbs(temperature=1.0, never_sampled=[3])
    >>> masked = record(torch.tensor([[5]]), torch.zeros(1, 4))     # step 1: four equally likely tokens
    >>> _ = record(torch.tensor([[5, 2]]), torch.zeros(1, 4))        # step 2 (token 2 was sampled)
    >>> masked[0, 3].item(), record.logprobs(torch.tensor([[2, 0]])).exp().tolist()
    (-inf, [[0.25, 0.25]])
    """

    def __init__(self, temperature: float, never_sampled: Sequence[int]) -> None:
        self.temperature = temperature if temperature > 0 else 1.0
        self.never_sampled = list(never_sampled)
        self._never: Any = None
        """``never_sampled`` as a tensor on the scores' device (made at the first step)."""
        self._steps: list[Any] = []
        """Each earlier step's sampled-token log-probs (one per row)."""
        self._last: Any = None
        """The last step's log-probs over the vocabulary (its token is known only at the next step)."""

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        if self._last is not None:
            self._steps.append(self._last.gather(-1, input_ids[:, -1:]).squeeze(-1))
        self._last = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        if self.never_sampled:
            if self._never is None:
                self._never = torch.tensor(self.never_sampled, device=scores.device)
            scores = scores.index_fill(-1, self._never, float("-inf"))
        return scores

    def logprobs(self, new_tokens: Any) -> Any:
        """``[rows, steps]`` log-probs of the generated ``new_tokens`` (``[rows, steps]``), once generation ended."""
        import torch

        last = self._last.gather(-1, new_tokens[:, -1:].to(self._last.device)).squeeze(-1)
        return torch.stack([*self._steps, last], dim=1).cpu()


class GreedyInsideCode:
    """A ``generate`` logits processor for Thyme's GRPO-ATS: in each row whose response so far is inside a code
    block (:func:`inside_code`, on the response decoded token by token), every token but the most likely one is
    masked out, so that sampling takes the argmax; the other rows pass unchanged (sampled at the temperature).
    ``generate`` applies it after its token suppression and before temperature and top-p/top-k, which never drop
    the argmax.

    Args:
        decode: token ids to text (``ChatTokenizer.decode``).
        markers: the strings that open and close a code block (``Protocol.code_markers``).
        prompt_length: the (padded) prompt length of the batch: the response starts after it.
    """

    def __init__(self, decode: Callable[[list[int]], str], markers: tuple[str, str], prompt_length: int) -> None:
        self.decode, self.markers, self.prompt_length = decode, markers, prompt_length
        self.responses: list[str] = []
        """Each row's response so far (the tokens of ``decoded`` steps)."""
        self.decoded = 0

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        new = input_ids[:, self.prompt_length + self.decoded:].tolist()
        self.responses = [text + self.decode(ids) for text, ids in zip(self.responses or [""] * len(new), new)]
        self.decoded = input_ids.shape[1] - self.prompt_length
        inside = torch.tensor([inside_code(text, *self.markers) for text in self.responses], device=scores.device)
        best = scores.argmax(dim=-1, keepdim=True)
        greedy = torch.full_like(scores, float("-inf")).scatter(-1, best, scores.gather(-1, best))
        return torch.where(inside[:, None], greedy, scores)


class HFBackend(GenerationBackend):
    """Batched, left-padded Hugging Face ``generate`` on ``model``, under ``autocast()`` (the policy's compute
    dtype; none by default). ``model`` is the trained model itself (``shares_trainer_weights``, the default), or
    a copy of it that :meth:`sync_weights` loads each update's weights into. ``greedy_between``: the markers of the
    protocol's code blocks, inside which sampled generations choose greedily (:class:`GreedyInsideCode`)."""

    def __init__(self, model: Any, chat: ChatTokenizer, autocast: Callable[[], Any] = contextlib.nullcontext,
                 shares_trainer_weights: bool = True, greedy_between: tuple[str, str] | None = None) -> None:
        self.model, self.chat, self.autocast = model, chat, autocast
        self.shares_trainer_weights = shares_trainer_weights
        self.greedy_between = greedy_between
        self.pixels = PixelCache(chat.image_processor)

    def sync_weights(self, weights: Iterable[tuple[str, Any]], timeout: float) -> float:
        if self.shares_trainer_weights:
            return 0.0
        import torch

        started = time.perf_counter()
        own = self.model.state_dict()
        missing = set(own)
        with torch.no_grad():
            for name, value in weights:
                if name not in own:
                    raise KeyError(f"the engine's model has no weight {name!r}")
                own[name].copy_(value)
                missing.discard(name)
        if missing:
            raise KeyError(f"weights missing from the sync: {sorted(missing)[:5]}")
        return time.perf_counter() - started

    def generate(self, prompts: Sequence[Encoded], sampling: Sampling) -> list[Sampled]:
        import torch
        from transformers import LogitsProcessorList

        device = next(self.model.parameters()).device
        longest = max(len(p.ids) for p in prompts)
        input_ids = torch.full((len(prompts), longest), self.chat.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), longest), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            input_ids[row, longest - len(prompt.ids):] = torch.tensor(prompt.ids)
            attention[row, longest - len(prompt.ids):] = 1
        extra = self.pixels([image for prompt in prompts for image in prompt.images])
        inputs = {"input_ids": input_ids, "attention_mask": attention, **extra,
                  **self.chat.token_type_inputs(input_ids)}
        record = SampledLogProbs(sampling.temperature, self.chat.never_sampled)
        processors = [record]
        if self.greedy_between and sampling.temperature > 0:
            processors.append(GreedyInsideCode(self.chat.decode, self.greedy_between, longest))
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), self.autocast():
                sequences = self.model.generate(**{k: v.to(device) for k, v in inputs.items()},
                                                **sampling.generate_kwargs(),
                                                logits_processor=LogitsProcessorList(processors),
                                                eos_token_id=self.chat.end_token_id,
                                                pad_token_id=self.chat.pad_token_id)
        finally:
            self.model.train(was_training)
        new = sequences[:, longest:].cpu()
        logprobs = record.logprobs(new)
        results = []
        for row in range(len(prompts)):
            ids = new[row].tolist()
            finished = self.chat.end_token_id in ids
            end = ids.index(self.chat.end_token_id) + 1 if finished else len(ids)
            results.append(Sampled(ids[:end], logprobs[row, :end].tolist(), finished))
        return results


VLLM_FLOOR = "0.16"
"""The first vLLM whose workers' ``reload_weights`` takes weights from memory (``weights_iterator``); the
``vllm`` extra asks for it."""


class VLLMBackend(GenerationBackend):
    """A colocated vLLM engine (``vllm.LLM``, in this process) sampling from token prompts with images.

    Args:
        model_path: the model folder the engine starts from (the trainer's initial weights).
        chat: the trainer's tokenizer (its image placeholder: vLLM expands each single placeholder itself, so
            runs are collapsed before sending and the expanded prompt it reports is checked against ours; and
            the vision tokens a sampler must never produce).
        **engine_options: further ``vllm.LLM`` arguments (``gpu_memory_utilization``, ``max_model_len``...).

    Log-probs are vLLM's ``processed_logprobs`` (temperature applied, as the trainer recomputes them). Weights
    are synced with ``collective_rpc("reload_weights")`` straight from the trainer's iterator (a sharded
    model's tensors are gathered one at a time as the engine loads them) and the prefix cache is reset (its keys
    and values were computed with the old weights), under a timeout. Reloading from weights in memory needs vLLM
    :data:`VLLM_FLOOR` or newer (before it, ``reload_weights`` only re-read the files on disk).

    :meth:`sleep` (``LLM.sleep(level=2)``: weights and KV cache released; the engine needs
    ``enable_sleep_mode=True``, which vLLM allows on GPUs only — on CPU the call is accepted and frees nothing)
    is followed by :meth:`sync_weights`, which wakes the weights, loads the new ones, then wakes the cache.

    Tensor parallel: under torchrun, ``tensor_parallel_size=k`` with ``distributed_executor_backend=
    "external_launcher"`` makes each rank hold one shard of an engine that k consecutive ranks share; they must
    make the same calls with the same seed, which :class:`SharedEngine` arranges.
    """

    def __init__(self, model_path: str, chat: ChatTokenizer, seed: int = 0, **engine_options: Any) -> None:
        import os

        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        import vllm
        from packaging.version import Version
        from vllm import LLM

        if Version(vllm.__version__).release < Version(VLLM_FLOOR).release:
            raise ImportError(f"the vLLM backend needs vllm>={VLLM_FLOOR} (reload_weights from memory); this is "
                              f"{vllm.__version__}")

        if engine_options.get("pipeline_parallel_size", 1) != 1:
            raise ValueError(f"pipeline_parallel_size {engine_options['pipeline_parallel_size']}: pipeline-parallel "
                             "engines are not supported by the trainer; use tensor_parallel_size")
        if (engine_options.get("tensor_parallel_size", 1) != 1
                and engine_options.get("distributed_executor_backend") != "external_launcher"):
            raise ValueError(f"tensor_parallel_size {engine_options['tensor_parallel_size']}: the trainer runs a "
                             "tensor-parallel engine inside its torchrun ranks, one shard per rank "
                             "(distributed_executor_backend='external_launcher', wrapped in a SharedEngine), never "
                             "in worker processes of its own: the weight sync streams tensors inside this process. "
                             "Launch with `pyvision train CONFIG --nproc N`, N a multiple of the size")
        self.image_token_id = chat.image_token_id
        self.never_sampled = dict.fromkeys(chat.never_sampled, -100.0)
        engine_options.setdefault("logprobs_mode", "processed_logprobs")
        self.llm = LLM(model=str(model_path), seed=seed, **engine_options)
        self.asleep = False

    def _collapsed(self, ids: Sequence[int]) -> list[int]:
        """One placeholder per image run (vLLM's processor expands each one again)."""
        out: list[int] = []
        for token in ids:
            if not (token == self.image_token_id and out and out[-1] == self.image_token_id):
                out.append(token)
        return out

    def generate(self, prompts: Sequence[Encoded], sampling: Sampling) -> list[Sampled]:
        from vllm import SamplingParams, TokensPrompt

        if self.asleep:
            raise RuntimeError("the vLLM engine is asleep (its weights were released); sync_weights wakes it")

        params = SamplingParams(max_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
                                top_p=sampling.top_p, top_k=sampling.top_k or -1, logprobs=0,
                                logit_bias=self.never_sampled or None, skip_special_tokens=False)
        requests = []
        for prompt in prompts:
            request = TokensPrompt(prompt_token_ids=self._collapsed(prompt.ids))
            if prompt.images:
                request["multi_modal_data"] = {"image": [image.convert("RGB") for image in prompt.images]}
            requests.append(request)
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        results = []
        for prompt, output in zip(prompts, outputs):
            if list(output.prompt_token_ids) != list(prompt.ids):
                raise ValueError(f"vLLM expanded the prompt to {len(output.prompt_token_ids)} tokens, the trainer has "
                                 f"{len(prompt.ids)}: image placeholder counts disagree")
            completion = output.outputs[0]
            ids = list(completion.token_ids)
            logprobs = [step[token].logprob for step, token in zip(completion.logprobs, ids)]
            results.append(Sampled(ids, logprobs, completion.finish_reason == "stop"))
        return results

    def sync_weights(self, weights: Iterable[tuple[str, Any]], timeout: float) -> float:
        """Load ``weights`` into the engine (waking it first if it sleeps); raises :class:`WeightSyncTimeout`
        past ``timeout`` s."""
        started = time.perf_counter()

        def load() -> None:
            if self.asleep:
                self.llm.wake_up(tags=["weights"])
            self.llm.collective_rpc("reload_weights", kwargs={
                "weights_iterator": ((name, tensor.detach()) for name, tensor in weights),
                "is_checkpoint_format": True})
            if self.asleep:
                self.llm.wake_up(tags=["kv_cache"])
                self.asleep = False
            self.llm.reset_prefix_cache()

        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pyvision-weight-sync")
        try:
            pool.submit(load).result(timeout=timeout)
        except concurrent.futures.TimeoutError as error:
            raise WeightSyncTimeout(f"loading weights into vLLM took over {timeout} s") from error
        finally:
            pool.shutdown(wait=False)
        return time.perf_counter() - started

    def sleep(self) -> None:
        self.llm.sleep(level=2)
        self.asleep = True

    def close(self) -> None:
        del self.llm


class SharedEngine(GenerationBackend):
    """One generation engine shared by a block of ranks: a tensor-parallel vLLM engine under torchrun, each rank
    holding one shard, which needs every rank of the block to make the same calls in the same order.

    Each rank still plays its own episodes. Every :meth:`generate` is one round: the ranks of the block exchange
    their prompts (over the block's own gloo group), each runs the engine on all of them in rank order, and keeps
    its own results. A rank that has finished its collection (:meth:`finish_requests`) takes part in the other
    ranks' rounds with no prompts until they have all finished. Prompts of different :class:`Sampling` go to
    the engine in separate calls (in order of first appearance), so evaluation (greedy) and training rounds may
    meet. A request the engine refuses fails the round of every rank that sent a prompt with that sampling,
    each of which asks again prompt by prompt (:class:`~trainers.rollout.GenerationBatcher`).

    Example (under ``torchrun --nproc-per-node 4``; ranks 0-1 share one engine, ranks 2-3 another)::

        block = ranks.blocks(2)
        engine = SharedEngine(VLLMBackend(path, chat, seed=ranks.rank // 2, tensor_parallel_size=2,
                                          distributed_executor_backend="external_launcher"), block)
        mine = engine.generate(my_prompts, sampling)   # a round: the block's other rank sends its prompts too
        engine.finish_requests()                       # serves the other rank's rounds until it finishes too

    Args:
        engine: this rank's side of the shared engine.
        block: the ranks sharing it, over a process group of their own (:meth:`~trainers.distributed.Ranks.blocks`).
    """

    def __init__(self, engine: GenerationBackend, block: Ranks) -> None:
        self.engine, self.block = engine, block
        self.rounds = 0
        """Rounds this rank took part in (the same on every rank of the block)."""

    def generate(self, prompts: Sequence[Encoded], sampling: Sampling) -> list[Sampled]:
        mine = self._round(list(prompts), sampling)
        if isinstance(mine, Exception):
            raise mine
        return mine

    def finish_requests(self) -> None:
        while self._round([], None) is not None:
            pass

    def _round(self, prompts: list[Encoded], sampling: Sampling | None) -> list[Sampled] | Exception | None:
        """One exchange and the engine's runs; this rank's results (or the engine's error for them); None once
        every rank of the block has finished (``sampling`` None: this rank has)."""
        everyone = self.block.gather((prompts, sampling))
        if all(each is None for _, each in everyone):
            return None
        self.rounds += 1
        results: list[list[Sampled] | Exception] = [[] for _ in everyone]
        settings: list[Sampling] = []
        for asked, each in everyone:
            if asked and each not in settings:
                settings.append(each)
        for setting in settings:
            senders = [rank for rank, (asked, each) in enumerate(everyone) if asked and each == setting]
            try:
                sampled = self.engine.generate([p for rank in senders for p in everyone[rank][0]], setting)
            except Exception as error:  # noqa: BLE001  (every rank ran the same request: each raises its own)
                for rank in senders:
                    results[rank] = error
                continue
            for rank in senders:
                results[rank], sampled = sampled[:len(everyone[rank][0])], sampled[len(everyone[rank][0]):]
        return results[self.block.rank]

    @property
    def shares_trainer_weights(self) -> bool:  # type: ignore[override]
        return self.engine.shares_trainer_weights

    def sync_weights(self, weights: Iterable[tuple[str, Any]], timeout: float) -> float:
        return self.engine.sync_weights(weights, timeout)

    def sleep(self) -> None:
        self.engine.sleep()

    def close(self) -> None:
        self.engine.close()
