"""Typed trainer configuration: dataclasses that mirror YAML files one to one, plus ``key.sub=value`` overrides.

Every field has a default and a docstring (shown by ``pyvision train --help-config``). Unknown keys and values of
the wrong type are refused with a message naming the key and the choices.

Example::

    config = load_config(GRPOConfig, "trainers/configs/demo_grpo.yaml", ["algorithm.lr=1e-4", "steps=10"])
    config.algorithm.lr
    # -> 0.0001
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pyvision_env.pools import PoolConfig
from pyvision_env.protocols import PROTOCOLS

from .ofr import OFRConfig

C = TypeVar("C")


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key."""


# --- sections -------------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    path: str = ""
    """The policy's model folder (``pyvision make-tiny-model OUT`` builds a tiny one)."""
    device: str = "auto"
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when available)."""
    dtype: str = "auto"
    """The compute dtype of forward passes: ``auto`` (bfloat16 on CUDA, float32 on CPU), ``float32``,
    ``bfloat16`` (autocast over ``master_dtype`` weights)."""
    master_dtype: str = "float32"
    """The dtype the weights, their gradients and the optimizer's state are kept in. ``float32`` (master
    weights): an update of 1e-6 moves a weight. ``bfloat16`` halves the memory but loses every update smaller than
    half an ulp of the weight — at 1e-6 nearly all of them, so such a model barely learns."""
    torch_threads: int = 1
    """CPU threads of torch (0: torch's default). On a small CPU machine, 1 leaves the cores to the kernels."""
    freeze_vision: bool = False
    """Train only the language model (the vision tower's parameters get no gradient; with LoRA, it gets no
    adapters)."""
    gradient_checkpointing: bool = False
    """Recompute each layer's activations in the backward pass instead of keeping them (less memory, about a
    third more compute)."""
    lora_rank: int = 0
    """Train LoRA adapters of this rank instead of the whole model (0: full fine-tuning); see
    :mod:`trainers.lora`."""
    lora_alpha: float = 32.0
    """The adapters' scale is ``lora_alpha / lora_rank``."""
    lora_targets: str = "all-linear"
    """The layers that get adapters: peft's ``target_modules`` (``all-linear``, or a regex of module names)."""


@dataclass
class EnvConfig:
    suite: str = "tally"
    """A registered suite (``pyvision tasks`` lists them)."""
    split: str | None = "train"
    """Training tasks: this split of the suite (``None``: all)."""
    eval_split: str | None = "held-out"
    """Evaluation tasks."""
    protocol: str = "pyvision"
    system_prompt: str | None = None
    """Replaces the protocol's system prompt."""
    max_turns: int = 5
    """Assistant turns per episode (PyVision-RL: 5 in training)."""
    num_envs: int = 16
    """Episodes played at once (each holds a kernel while it runs)."""
    reward: Any = "accumulative"
    """A reward wrapper (``accumulative``, ``codevision``, a ``{"name": ..., options}`` mapping) or ``None`` for
    the env's outcome reward."""
    on_tool_error: str = "continue"
    """``continue`` (the model sees the traceback) or ``end`` (PyVision-RL's training)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Further :class:`~pyvision_env.env.PyVisionEnv` arguments (``max_images``, ``max_visual_tokens``...)."""


@dataclass
class RolloutConfig:
    backend: str = "hf"
    """``hf`` (Hugging Face ``generate``; CPU or GPU) or ``vllm`` (colocated vLLM engine; GPU)."""
    group_size: int = 8
    """Rollouts per prompt (GRPO's group)."""
    max_new_tokens: int = 512
    """Tokens per response; a longer response ends the episode as ``over_length``."""
    max_length: int = 8192
    """Tokens per episode (prompt, responses, observations and image tokens)."""
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    """Sample among the ``top_k`` most likely tokens only (0: all of them), with either backend."""
    max_batch: int = 64
    """Generation requests per batch."""
    staleness: int = 0
    """Updates a batch may be trained after the weights that played it. 0: each update plays its own batch
    first (on-policy). 1: the next update's batch is played while this one trains (one-step-off; generation and
    training overlap); ``k``: up to ``k`` ahead. The ratio is then taken against the behaviour policy (see
    :mod:`trainers.offpolicy`)."""
    weight_sync_timeout: float = 300.0
    """Seconds allowed to load new weights into the vLLM engine (the run stops with an error past it)."""
    engine_sleep: str = "auto"
    """Release the generation engine's weights and KV cache during each update, waking it to load the new
    weights: ``on``, ``off``, or ``auto`` (on for vLLM on a GPU with ``staleness`` 0; a batch generated during
    the update needs the engine awake)."""
    vllm: dict[str, Any] = field(default_factory=dict)
    """``vllm.LLM`` options (``gpu_memory_utilization``, ``max_model_len``, ``enforce_eager``...).
    ``tensor_parallel_size: k`` shares each engine among k consecutive ranks of a node, one shard each (k must
    divide ``--nproc``; not with ``staleness``)."""
    greedy_code: bool = False
    """Thyme's GRPO-ATS: choose the tokens inside the protocol's code blocks greedily (temperature 0) and sample the
    rest at ``temperature``. The recorded log-probs stay those of the tempered policy, which the update recomputes.
    Needs the ``hf`` backend (vLLM takes no per-request logits processors) and a protocol that marks its code
    (``pyvision``: from ``<code>`` to ``</code>``)."""
    prefix_resamples: int = 0
    """AXPO's tool-call resampling: in every group whose tool-using rollouts all failed, replay the most uncertain of
    them up to just before its first tool call and sample this many new continuations from there, added to its
    group (the replayed prefix is not trained on). 0: off. Needs a protocol that marks its code (``pyvision``)."""

    def __post_init__(self) -> None:
        if self.prefix_resamples < 0:
            raise ValueError(f"prefix_resamples must be 0 (off) or more continuations, got {self.prefix_resamples}")
        if self.greedy_code and self.backend == "vllm":
            raise ValueError("greedy_code needs the hf backend: vLLM takes no per-request logits processors (only "
                             "engine-wide ones, whose interface changes between its versions), so it cannot switch "
                             "to greedy inside code blocks")


@dataclass
class AlgorithmConfig:
    lr: float = 1e-6
    """Learning rate (PyVision-RL: 1e-6)."""
    weight_decay: float = 0.0
    warmup_steps: int = 0
    """Linear learning-rate warm-up, in updates."""
    clip_low: float = 0.2
    clip_high: float = 0.2
    """Upper clip range of the ratio (CodeVision: 0.28)."""
    normalize_std: bool = False
    """Divide group advantages by the group's std (off: PyVision-RL found it unstable)."""
    kl_coef: float = 0.0
    """Weight of the KL to the initial policy (0: no reference model is kept)."""
    mask_truncated: bool = False
    """Leave episodes that hit the turn limit out of the loss (Mini-o3) instead of training on them."""
    mini_batch_size: int = 16
    """Trajectories per optimizer step (an update makes len(batch) / mini_batch_size steps)."""
    micro_batch_size: int = 8
    """Trajectories per forward/backward pass (gradient accumulation within a mini-batch)."""
    micro_batch_tokens: int | None = None
    """Instead of ``micro_batch_size``: pack each pass with trajectories up to this many tokens, back to back
    without padding (a trajectory, with its images, is never split; a longer one passes alone). Needs a model
    whose attention keeps packed sequences apart by their positions (transformers' SDPA, eager, FlashAttention 2)."""
    max_grad_norm: float = 1.0
    old_logprobs: str = "recompute"
    """``recompute`` (the trainer's own forward pass before the update, robust to sampler numerics) or
    ``rollout`` (the sampler's log-probs)."""
    importance_correction: str = "auto"
    """Weight each token's surrogate by ``min(pi_old / pi_sampler, importance_cap)``, the truncated
    importance-sampling correction for a sampler whose numerics differ from the trainer's: ``truncated``,
    ``none``, or ``auto`` (truncated with the vLLM backend or ``rollout.staleness`` > 0, none otherwise). Needs
    ``old_logprobs: recompute``."""
    importance_cap: float = 2.0
    """The truncation of the importance weights."""
    logprob_chunk_size: int | None = None
    """Compute log-probs this many positions at a time, recomputing each chunk's vocabulary logits in the
    backward pass (null: all at once). Long multi-turn sequences need it: full logits take
    length × vocabulary × 4 bytes (9.3 GiB for 16k tokens of Qwen2.5); 1024 keeps them to 0.6 GiB."""
    tool_efficiency_weight: float = 0.0
    """HDPO (Metis): add this weight times a tool-efficiency advantage, computed among each group's correct rollouts
    only (fewer tool calls than they make on average: positive; incorrect rollouts and groups with fewer than 2
    correct: 0), to the group advantage (:func:`~trainers.ofr.tool_efficiency_advantages`). 0: off; Metis: 0.15."""

    def __post_init__(self) -> None:
        _check_chunk_size(self.logprob_chunk_size)
        if not 0 <= self.tool_efficiency_weight < float("inf"):
            raise ValueError(f"tool_efficiency_weight must be a finite weight >= 0, got {self.tool_efficiency_weight}")
        if self.micro_batch_tokens is not None and self.micro_batch_tokens < 1:
            raise ValueError(f"micro_batch_tokens must be a positive number of tokens or null, got "
                             f"{self.micro_batch_tokens}")


@dataclass
class EvalConfig:
    every: int = 10
    """Evaluate every this many updates (and before the first and after the last); 0: never."""
    before_first: bool = True
    """Also evaluate before the first update (off: when runs share a start evaluated once)."""
    episodes: int = 64
    """Held-out tasks per evaluation (the first ones of the split), played greedily."""
    temperature: float = 0.0


@dataclass
class CheckpointConfig:
    every: int = 10
    """Save every this many updates (and after the last)."""
    keep: int = 2
    """Checkpoints kept (the newest)."""
    resume: bool = True
    """Continue from the newest checkpoint in the output folder when there is one."""


@dataclass
class LoggingConfig:
    tensorboard: bool = True
    progress: bool = True
    """A progress bar on the console."""
    collapse_window: int = 5
    collapse_ratio: float = 0.5
    """Warn when tool calls per episode (mean of the last ``collapse_window`` updates) fall below this share of
    their early level (interaction collapse: outcome-only RL makes agents stop calling tools)."""


@dataclass
class DistributedConfig:
    timeout_s: float = 1800.0
    """Seconds a rank waits for the others at a collective before the run fails; it must exceed the longest
    generation round, since ranks meet after each one (a killed rank fails the others at once)."""
    offload: bool = False
    """Keep the sharded parameters, gradients and optimizer state in CPU memory between uses (FSDP2's
    ``CPUOffloadPolicy``; several processes, GPUs): slower, for a model that does not fit otherwise."""


@dataclass
class GRPOConfig:
    """Multi-turn GRPO with OFR and the accumulative tool reward (``pyvision train CONFIG``)."""

    output_dir: str = "runs/grpo"
    seed: int = 0
    steps: int = 100
    """Policy updates."""
    prompts_per_round: int = 8
    """Groups (prompts) per update when ``ofr.enabled`` is false (with OFR, ``ofr.target_size`` and
    ``ofr.oversampling`` decide the rounds)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    ofr: OFRConfig = field(default_factory=OFRConfig)
    """Batch selection (:class:`~trainers.ofr.OFRConfig`): oversample, filter and rank."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    """Where the environments run: this process (``backend: local``) or Ray actors (``backend: ray``); under
    torchrun, each rank has its own pool."""
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    """Data parallelism over the ranks ``torchrun`` starts (``pyvision train CONFIG --nproc N``), FSDP2-sharded;
    one process without a launcher ignores it."""

    def __post_init__(self) -> None:
        for key, on in (("rollout.greedy_code", self.rollout.greedy_code),
                        ("rollout.prefix_resamples", self.rollout.prefix_resamples)):
            if on and code_markers(self.env.protocol) is None:
                raise ValueError(f"{key} needs a protocol that marks its code blocks (pyvision); env.protocol "
                                 f"{self.env.protocol!r} does not")


def code_markers(protocol: str) -> tuple[str, str] | None:
    """The strings that open and close a code block in the responses of a protocol given by name (None: unmarked).

    >>> code_markers("pyvision"), code_markers("openai-tools")
    (('<code>', '</code>'), None)
    """
    known = PROTOCOLS.get(protocol)
    return known.code_markers if known else None


@dataclass
class SFTData:
    episodes: list[str] = field(default_factory=list)
    """Recorded episode folders or ``episodes.jsonl`` files (``RecordEpisodes``; scripted policies make them)."""
    text: list[str] = field(default_factory=list)
    """JSONL files of text-only chats, one ``{"messages": [{"role": ..., "content": ...}]}`` per line."""
    only_finished: bool = True
    """Skip episodes abandoned before their end."""
    only_correct: bool = False
    """Keep only episodes graded correct (rejection sampling)."""


@dataclass
class SFTConfig:
    """Supervised cold start on recorded trajectories or text chats (``pyvision sft CONFIG``)."""

    output_dir: str = "runs/sft"
    seed: int = 0
    epochs: float = 1.0
    """Passes over the data (fractions allowed)."""
    batch_size: int = 8
    lr: float = 1e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    max_length: int = 8192
    """Longer examples are skipped (and counted)."""
    logprob_chunk_size: int | None = None
    """As ``algorithm.logprob_chunk_size`` of GRPO: log-probs this many positions at a time (null: all at once)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: SFTData = field(default_factory=SFTData)
    protocol: str = "pyvision"
    """The protocol the recorded responses are in (only for rendering tool messages)."""
    checkpoint: CheckpointConfig = field(default_factory=lambda: CheckpointConfig(every=50))
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def __post_init__(self) -> None:
        _check_chunk_size(self.logprob_chunk_size)


def _check_chunk_size(value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"logprob_chunk_size must be a positive number of positions or null, got {value}")


# --- loading ------------------------------------------------------------------------------------------


def load_config(cls: type[C], path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> C:
    """``cls`` from a YAML file (optional) with ``key.sub=value`` overrides (values parsed as YAML)."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            raise ConfigError(f"{path} is not valid YAML: {error}") from error
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of settings, not {type(loaded).__name__}")
        data = loaded or {}
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {override!r} is not of the form key.sub=value")
        target = data
        *parents, leaf = key.strip().split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise ConfigError(f"override {override!r}: {parent!r} is not a section")
        target[leaf] = yaml.safe_load(value)
    return from_dict(cls, data)


def from_dict(cls: type[C], data: Mapping[str, Any], where: str = "") -> C:
    """Build dataclass ``cls`` from a mapping, checking keys and types."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'the config'} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown setting {where + unknown[0]!r}; {where or 'top level'} settings are: "
                          f"{', '.join(fields)}")
    values = {name: _convert(hints[name], value, where + name) for name, value in data.items()}
    try:
        return cls(**values)
    except ValueError as error:  # a section's own check (PoolConfig's choices, ...)
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"{where.rstrip('.') or 'the config'}: {error}") from None


def _convert(hint: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, key + ".")
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(option, value, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0])
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        items = [_convert(args[0], item, f"{key}[{i}]") for i, item in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key} must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if hint is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            return float(value)  # YAML reads 1e-6 (no dot) as a string
        except ValueError:
            pass
    if hint in (int, str, bool) and type(value) is hint:
        return value
    raise ConfigError(f"{key} must be {getattr(hint, '__name__', hint)}, got {value!r}")


def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain data (what :func:`load_config` reads back). Settings only Python can give — functions,
    such as ``ofr.rank_key`` — are left out.

    >>> "rank_key" in to_dict(GRPOConfig())["ofr"], to_dict(GRPOConfig())["ofr"]["target_size"]
    (False, 32)
    """
    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items() if not _python_only(item)}
        if isinstance(value, (list, tuple)):
            return [plain(item) for item in value]
        return value

    return plain(dataclasses.asdict(config))


def _python_only(value: Any) -> bool:
    return callable(value) or (isinstance(value, (list, tuple)) and any(callable(item) for item in value))


def describe(cls: type, prefix: str = "") -> list[str]:
    """One line per setting: ``key (type, default): doc`` — the reference ``--help-config`` prints."""
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, following in itertools.pairwise(body):
        if isinstance(node, ast.AnnAssign) and isinstance(following, ast.Expr) and \
                isinstance(following.value, ast.Constant):
            docs[node.target.id] = " ".join(following.value.value.split())  # type: ignore[union-attr]
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            lines += describe(hints[f.name], prefix + f.name + ".")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        shown = getattr(default, "__name__", None) if callable(default) else repr(default)
        lines.append(f"{prefix}{f.name} = {shown}" + (f"  # {docs[f.name]}" if f.name in docs else ""))
    return lines
