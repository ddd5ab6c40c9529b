"""Rollout collection: one asyncio loop per episode over a vector environment's sub-environments.

Each episode runs on the engine's event loop, in its own coroutine: reset, then sample / step until the
episode ends. Episodes never wait for each other's code to run; their generation requests meet in a
:class:`GenerationBatcher`, which sends whoever is waiting to the backend as one batch, in a worker thread
(the event loop never does model work). A batch the backend refuses is asked again one request at a time, so
a bad request ends its own episode (``end_reason="error"``) and no other. Token ids are kept as sampled (:mod:`trainers.tokens`).
An episode can branch (:attr:`EpisodeSpec.forks`): forked after a given turn, each branch samples on by itself.
It can also replay recorded responses first and sample on from there (:attr:`EpisodeSpec.prefix`, AXPO's
resampling of all-wrong tool-using groups: :func:`resampling_specs`).

Example::

    envs = PyVisionVectorEnv(8, "tally", reward="accumulative", system_prompt=DEMO_PROMPT)
    collector = RolloutCollector(envs, HFBackend(model, chat), chat, Sampling(max_new_tokens=96))
    trajectories = collector.collect([EpisodeSpec(task_index=3, seed=7, group="g0")] * 4)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from PIL import Image

from agents.hf import Sampling
from pyvision_env.pools import WorkerLost
from pyvision_env.vector import PyVisionVectorEnv

from .backends import GenerationBackend, Sampled
from .tokens import ChatTokenizer, Encoded, ImageRecord


@dataclass(frozen=True)
class EpisodeSpec:
    """Which task an episode plays, with which env seed, in which group (rollouts of one prompt).

    ``forks`` > 0 makes a tree: after the episode's ``fork_at``-th response has been run, the episode is forked
    ``forks`` times (:meth:`~pyvision_env.env.PyVisionEnv.afork`: the kernel's cells replayed, the conversation
    and counters copied) and every branch samples on from that point on its own. The spec then gives
    ``1 + forks`` trajectories (``branch`` 0 is the original), all in the spec's group. An episode that ends
    before ``fork_at`` does not branch.

    ``prefix`` replays recorded responses before sampling (AXPO's resampling, :func:`resampling_specs`): each but
    the last is a whole response (its ids, end token included), stepped in the environment as it was played; the
    last is the start of the next response, which sampling continues. Replayed tokens are outside the loss (mask 0,
    log-prob 0): only what is sampled after them is trained on.
    """

    task_index: int
    seed: int
    group: Any
    fork_at: int = 1
    forks: int = 0
    prefix: tuple[tuple[int, ...], ...] = ()


@dataclass
class Trajectory:
    """One episode as the trainer sees it: token ids, which of them were sampled, their log-probs, the
    images in placeholder order, and the outcome."""

    spec: EpisodeSpec
    task_id: str
    ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    """1 on sampled tokens (each response and its end token), 0 on prompts and observations."""
    logprobs: list[float] = field(default_factory=list)
    """The sampler's log-prob of each sampled token (0.0 elsewhere)."""
    images: list[Image.Image] = field(default_factory=list)
    image_records: list[ImageRecord] = field(default_factory=list)
    """Each image as the rollout saw it (checked before every forward pass: :func:`check_visual_parity`)."""
    reward: float = 0.0
    correct: bool = False
    end_reason: str = "running"
    """The env's end reason, or ``over_length`` (the response or the context hit its limit), or ``error`` (the
    generation backend failed; :attr:`error` says why)."""
    turns: int = 0
    tool_calls: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    """The last step's info (``episode``, ``reward_components``, ``visual_tokens``...)."""
    responses: list[str] = field(default_factory=list)
    """The decoded responses (for logs and reports; training uses the ids)."""
    error: str | None = None
    branch: int = 0
    """0, or which fork of its spec's episode this is (see :attr:`EpisodeSpec.forks`)."""

    def extend(self, encoded: Encoded | Sampled, sampled: bool) -> None:
        self.ids += encoded.ids
        self.loss_mask += [int(sampled)] * len(encoded.ids)
        self.logprobs += encoded.logprobs if isinstance(encoded, Sampled) else [0.0] * len(encoded.ids)
        if isinstance(encoded, Encoded):
            self.images += encoded.images
            self.image_records += encoded.records

    @property
    def sampled_tokens(self) -> int:
        return sum(self.loss_mask)

    @property
    def label(self) -> str:
        """How errors name this trajectory."""
        branch = f", branch {self.branch}" if self.branch else ""
        resampled = f", resampled after {len(self.spec.prefix) - 1} replayed responses" if self.spec.prefix else ""
        return (f"trajectory of task {self.task_id!r} (group {self.spec.group}, seed {self.spec.seed}{branch}"
                f"{resampled})")

    def branched(self, branch: int) -> Trajectory:
        """A copy of this trajectory so far, as fork ``branch`` of its episode."""
        return replace(self, ids=list(self.ids), loss_mask=list(self.loss_mask), logprobs=list(self.logprobs),
                       images=list(self.images), image_records=list(self.image_records), info=dict(self.info),
                       responses=list(self.responses), branch=branch)


def resampling_specs(trajectories: Sequence[Trajectory], decode: Callable[[Sequence[int]], str], opening: str,
                     continuations: int) -> list[EpisodeSpec]:
    """AXPO's tool-call resampling (Agent Explorative Policy Optimization, arXiv 2605.28774): for every group whose
    tool-using trajectories all failed, ``continuations`` specs that replay the most uncertain of them up to just
    before its first tool call and sample on from there (:attr:`EpisodeSpec.prefix`; same task, seed and group).

    Uncertainty is the sampler's surprisal (−log-prob) of the first token cut off (:func:`tool_call_prefix`): a
    one-sample estimate of the policy's entropy where the resampling starts; ties go to the earlier trajectory.
    Trajectories that ended in ``error`` count as neither tool-using nor failed.
    """
    groups: dict[Any, list[Trajectory]] = defaultdict(list)
    for trajectory in trajectories:
        groups[trajectory.spec.group].append(trajectory)
    specs: list[EpisodeSpec] = []
    for members in groups.values():
        tool_users = [t for t in members if t.tool_calls and t.end_reason != "error"]
        if not tool_users or any(t.correct for t in tool_users):
            continue
        cuts = [(cut, t.spec) for t in tool_users if (cut := tool_call_prefix(t, decode, opening))]
        if cuts:
            cut, spec = max(cuts, key=lambda pair: pair[0].surprisal)
            specs += [replace(spec, fork_at=1, forks=0, prefix=cut.responses)] * continuations
    return specs


class ToolCallPrefix(NamedTuple):
    """A trajectory up to just before its first tool call."""

    responses: tuple[tuple[int, ...], ...]
    """Its whole responses before the tool call's, then the tool call's response up to the cut (as
    :attr:`EpisodeSpec.prefix`)."""
    surprisal: float
    """The sampler's −log-prob of the first token cut off."""


def tool_call_prefix(trajectory: Trajectory, decode: Callable[[Sequence[int]], str], opening: str
                     ) -> ToolCallPrefix | None:
    """Where ``trajectory`` is cut for resampling; None if no response opens a code block.

    The tool call is the first response whose text holds ``opening`` (the protocol's code marker); the cut is before
    the token in which that marker begins.
    """
    responses: list[tuple[int, ...]] = []
    for start, end in _sampled_runs(trajectory.loss_mask):
        ids = trajectory.ids[start:end]
        if opening in decode(ids):
            stop = next(j for j in range(1, len(ids) + 1) if opening in decode(ids[:j]))
            cut = next(i for i in range(stop - 1, -1, -1) if opening in decode(ids[i:stop]))
            return ToolCallPrefix((*responses, tuple(ids[:cut])), -trajectory.logprobs[start + cut])
        responses.append(tuple(ids))
    return None


def _sampled_runs(loss_mask: Sequence[int]) -> list[tuple[int, int]]:
    """``(start, end)`` of each run of sampled tokens: one per response, its end token included.

    >>> _sampled_runs([0, 0, 1, 1, 0, 1])
    [(2, 4), (5, 6)]
    """
    runs: list[tuple[int, int]] = []
    for position, (before, now) in enumerate(zip([0, *loss_mask], loss_mask)):
        if now and not before:
            runs.append((position, position))
        if now:
            runs[-1] = (runs[-1][0], position + 1)
    return runs


class GenerationBatcher:
    """Gathers the generation requests of concurrent episodes into batches for one backend.

    A batch goes out when every running episode is waiting for generation, when ``max_batch`` requests
    wait, or ``window`` seconds after the first of them arrived.
    """

    def __init__(self, backend: GenerationBackend, sampling: Sampling, max_batch: int = 64,
                 window: float = 0.05) -> None:
        self.backend, self.sampling, self.max_batch, self.window = backend, sampling, max_batch, window
        self.running = 0
        """Episodes in progress (maintained by the collector)."""
        self._pending: list[tuple[Encoded, asyncio.Future[Sampled]]] = []
        self._wake = asyncio.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pyvision-generate")
        self.generate_seconds = 0.0
        self.generated_tokens = 0
        self.batches = 0
        self._stopped = False

    async def generate(self, prompt: Encoded) -> Sampled:
        future: asyncio.Future[Sampled] = asyncio.get_running_loop().create_future()
        self._pending.append((prompt, future))
        self._wake.set()
        return await future

    async def serve(self) -> None:
        """Run batches until :meth:`stop`."""
        loop = asyncio.get_running_loop()
        while not self._stopped:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            deadline = loop.time() + self.window
            while (len(self._pending) < min(self.max_batch, max(1, self.running)) and not self._stopped
                   and loop.time() < deadline):
                self._wake.clear()
                # asyncio.wait, not wait_for: Python 3.11's wait_for can swallow a cancellation
                waiter = asyncio.ensure_future(self._wake.wait())
                done, _ = await asyncio.wait({waiter}, timeout=deadline - loop.time())
                if not done:
                    waiter.cancel()
                    break
            batch, self._pending = self._pending[:self.max_batch], self._pending[self.max_batch:]
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self.backend.generate,
                                                     [prompt for prompt, _ in batch], self.sampling)
            except Exception:  # noqa: BLE001  (one bad request must not fail the batch: ask again one by one)
                results = [await self._alone(prompt) for prompt, _ in batch]
            self.generate_seconds += time.perf_counter() - started
            self.batches += 1
            for (_, future), result in zip(batch, results):
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    self.generated_tokens += len(result.ids)
                    future.set_result(result)

    async def _alone(self, prompt: Encoded) -> Sampled | Exception:
        """The sample of one prompt, or the exception its request raised (which fails only its episode)."""
        try:
            (result,) = await asyncio.get_running_loop().run_in_executor(self._executor, self.backend.generate,
                                                                         [prompt], self.sampling)
        except Exception as error:  # noqa: BLE001  (handed to the episode that asked)
            return error
        return result

    def stop(self) -> None:
        """Let :meth:`serve` return (after the batch in flight, if any)."""
        self._stopped = True
        self._wake.set()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


@dataclass
class CollectStats:
    """Where a collection's time went (seconds) and how much was generated."""

    wall: float = 0.0
    generate: float = 0.0
    env: float = 0.0
    """Summed over episodes: time inside ``areset``/``astep`` (code execution, images, grading)."""
    generated_tokens: int = 0
    batches: int = 0


class RolloutCollector:
    """Plays episodes on a :class:`~pyvision_env.vector.PyVisionVectorEnv`'s sub-environments.

    Args:
        envs: the environments (their number bounds how many episodes run at once).
        backend: samples responses.
        chat: tokenizes observations.
        sampling: sampling parameters (``max_new_tokens`` per response).
        max_length: total token budget of an episode (prompt, responses, observations); an episode whose
            next response could exceed it ends with ``end_reason="over_length"``.
        episode_attempts: times an episode is played from its start while its Ray worker dies
            (:class:`~pyvision_env.pools.WorkerLost`; the pool's ``episode_attempts``); after the last, it ends
            with ``end_reason="error"`` and the reason.
    """

    def __init__(self, envs: PyVisionVectorEnv, backend: GenerationBackend, chat: ChatTokenizer,
                 sampling: Sampling, max_length: int = 4096, max_batch: int = 64, episode_attempts: int = 1) -> None:
        self.envs, self.backend, self.chat = envs, backend, chat
        self.sampling, self.max_length, self.max_batch = sampling, max_length, max_batch
        self.episode_attempts = episode_attempts
        self.stats = CollectStats()

    def collect(self, specs: Sequence[EpisodeSpec], sampling: Sampling | None = None) -> list[Trajectory]:
        """Play one episode per spec (in that order in the result; a spec with forks gives its branches in
        order); ``sampling`` overrides the default. A rank with no specs still calls it when its backend is
        shared with other ranks (:class:`~trainers.backends.SharedEngine`), which wait for it to finish."""
        return self.envs.engine.run_coroutine(self.acollect(specs, sampling))  # the envs' loop (engine or Ray pool)

    async def acollect(self, specs: Sequence[EpisodeSpec], sampling: Sampling | None = None) -> list[Trajectory]:
        started = time.perf_counter()
        batcher = GenerationBatcher(self.backend, sampling or self.sampling, self.max_batch)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(len(specs)):
            queue.put_nowait(i)
        results: list[list[Trajectory]] = [[] for _ in specs]
        env_seconds = [0.0]

        async def worker(slot: int) -> None:
            while not queue.empty():
                i = queue.get_nowait()
                batcher.running += 1
                try:
                    for attempt in range(1, self.episode_attempts + 1):
                        try:
                            results[i] = await self._episode(self.envs.envs[slot], specs[i], batcher, env_seconds)
                            break
                        except WorkerLost as lost:  # the episode starts again on a live worker, or fails
                            results[i] = [Trajectory(specs[i], "", end_reason="error",
                                                     error=f"WorkerLost: {lost} (attempt {attempt})")]
                except Exception as error:  # noqa: BLE001  (an environment failure ends this episode only)
                    results[i] = [Trajectory(specs[i], "", end_reason="error",
                                             error=f"{type(error).__name__}: {error}")]
                finally:
                    batcher.running -= 1
                    batcher._wake.set()

        server = asyncio.ensure_future(batcher.serve())
        try:
            await asyncio.gather(*(worker(slot) for slot in range(min(len(specs), self.envs.num_envs))))
        finally:
            batcher.stop()
            await asyncio.gather(server, return_exceptions=True)
            batcher.close()
        finishing = time.perf_counter()  # an engine shared with other ranks serves them until they finish too
        await asyncio.get_running_loop().run_in_executor(None, self.backend.finish_requests)
        generate_seconds = batcher.generate_seconds + time.perf_counter() - finishing
        self.stats = CollectStats(time.perf_counter() - started, generate_seconds, env_seconds[0],
                                  batcher.generated_tokens, batcher.batches)
        return [trajectory for branches in results for trajectory in branches]

    async def _episode(self, env: Any, spec: EpisodeSpec, batcher: GenerationBatcher,
                       env_seconds: list[float]) -> list[Trajectory]:
        clock = time.perf_counter()
        observation, info = await env.areset(seed=spec.seed, options={"task_index": spec.task_index})
        env_seconds[0] += time.perf_counter() - clock
        trajectory = Trajectory(spec, info["task_id"])
        trajectory.extend(self.chat.prompt(observation), sampled=False)
        *whole, opening = spec.prefix or ((),)
        for response in whole:
            trajectory.extend(Encoded(list(response), []), sampled=False)
            if await self._respond(env, trajectory, list(response), True, env_seconds):
                trajectory.end_reason, trajectory.error = "error", (
                    f"the replayed response {trajectory.turns} ended the episode ({trajectory.end_reason}), which "
                    "went on when it was played")
                return [trajectory]
        trajectory.extend(Encoded(list(opening), []), sampled=False)
        return await self._play(env, trajectory, batcher, env_seconds, opening)

    async def _play(self, env: Any, trajectory: Trajectory, batcher: GenerationBatcher, env_seconds: list[float],
                    opening: Sequence[int] = ()) -> list[Trajectory]:
        """Sample and step until the episode ends: this trajectory, then its forks' if it branches. ``opening``: the
        replayed start of the first response, which the first sample continues."""
        spec = trajectory.spec
        while True:
            if len(trajectory.ids) + batcher.sampling.max_new_tokens > self.max_length:
                trajectory.end_reason = "over_length"
                return [trajectory]
            try:
                sampled = await batcher.generate(Encoded(trajectory.ids, trajectory.images, trajectory.image_records))
            except Exception as error:  # noqa: BLE001  (the episode fails; the others go on)
                trajectory.end_reason, trajectory.error = "error", f"{type(error).__name__}: {error}"
                return [trajectory]
            trajectory.extend(sampled, sampled=True)
            if await self._respond(env, trajectory, [*opening, *sampled.ids], sampled.finished, env_seconds):
                return [trajectory]
            opening = ()
            if spec.forks and trajectory.branch == 0 and trajectory.turns == spec.fork_at:
                return await self._branch(env, trajectory, batcher, env_seconds)

    async def _respond(self, env: Any, trajectory: Trajectory, response_ids: list[int], finished: bool,
                       env_seconds: list[float]) -> bool:
        """Step the environment with a response already in the trajectory's ids and add the observation; returns
        whether the episode ended."""
        trajectory.turns += 1
        response = self.chat.decode(response_ids)
        trajectory.responses.append(response)
        if not finished:
            trajectory.end_reason = "over_length"
            return True
        clock = time.perf_counter()
        observation, reward, terminated, truncated, info = await env.astep(response)
        env_seconds[0] += time.perf_counter() - clock
        trajectory.reward += float(reward)
        trajectory.tool_calls = int(info.get("tool_calls", 0))
        trajectory.info = info
        if terminated or truncated:
            trajectory.correct = bool(info.get("correct"))
            trajectory.end_reason = info.get("end_reason") or ("answered" if terminated else "truncated")
            return True
        trajectory.extend(self.chat.continuation(observation), sampled=False)
        return False

    async def _branch(self, env: Any, trajectory: Trajectory, batcher: GenerationBatcher,
                      env_seconds: list[float]) -> list[Trajectory]:
        """Fork the episode ``spec.forks`` times and play every branch on; a fork that fails is an ``error``
        trajectory of its own (out of its group's baseline) and the others go on."""
        branches = [trajectory.branched(k) for k in range(1, trajectory.spec.forks + 1)]
        forks = await asyncio.gather(*(env.afork() for _ in branches), return_exceptions=True)
        original, *played = await asyncio.gather(
            self._play(env, trajectory, batcher, env_seconds),
            *(self._play_fork(fork, branch, batcher, env_seconds) for fork, branch in zip(forks, branches)),
            return_exceptions=True)
        if isinstance(original, BaseException):
            raise original  # the episode's own failure (e.g. its worker lost), once its forks have ended
        return [branch for results in (original, *played) for branch in results]

    async def _play_fork(self, fork: Any, branch: Trajectory, batcher: GenerationBatcher,
                         env_seconds: list[float]) -> list[Trajectory]:
        if isinstance(fork, BaseException):
            branch.end_reason, branch.error = "error", f"{type(fork).__name__}: {fork}"
            return [branch]
        batcher.running += 1
        try:
            return await self._play(fork, branch, batcher, env_seconds)
        except Exception as error:  # noqa: BLE001  (this branch fails; the original and the others go on)
            branch.end_reason, branch.error = "error", f"{type(error).__name__}: {error}"
            return [branch]
        finally:
            batcher.running -= 1
            batcher._wake.set()
            await fork.unwrapped.aclose()
