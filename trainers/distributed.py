"""Data parallelism on torch.distributed: one process per device (per CPU process on gloo in tests), started by
``torchrun`` — ``pyvision train CONFIG --nproc N`` is the shortcut on one machine; several machines use torchrun's
own ``--nnodes`` / ``--rdzv-endpoint`` with the same command.

* :class:`Ranks` — this process's place among the ranks and the few collectives the trainer needs. A process
  started without a launcher is a world of one with no process group, so the trainer has a single code path.
* :func:`shard_model` — FSDP2 (``fully_shard``): parameters, gradients and optimizer state sharded over the
  ranks, each decoder layer and vision block its own unit; forward passes in the compute dtype with gradients
  reduced in float32 over float32 master weights. Every forward runs the vision tower — on a blank image, its
  features multiplied by zero, when the batch holds no image — so that all ranks gather the same weights in the
  same order whatever their batches hold (a text-only batch on one rank would otherwise hang the others).
* :func:`load_from_main` — a sharded model built on the meta device gets the weights that rank 0 alone read:
  a node reads the checkpoint once, and only rank 0 holds it whole (in CPU memory), never a GPU.
* :func:`full_state_dict` — the whole weights on rank 0, for export; :func:`gathered` — one whole tensor on
  every rank, for the generation engines (:meth:`~trainers.modeling.PolicyModel.plain_weights`).
* :func:`spread` — which rank trains which trajectory: token budgets balanced, as few trajectories moved as
  possible.

Example (under ``torchrun --nproc_per_node 2``)::

    ranks = Ranks.from_environment(timeout_s=600)
    shard_model(policy, ranks)
    everyone = ranks.gather(my_groups)        # the same list on every rank
"""

from __future__ import annotations

import datetime
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

log = logging.getLogger(__name__)


class RankFailure(RuntimeError):
    """Another rank stopped answering (killed, crashed or hung past the timeout); the run cannot go on. Launch it
    again: it resumes from its last checkpoint."""


class Ranks:
    """This process's ``rank`` among ``size`` ranks, and the collectives of the trainer over them.

    >>> ranks = Ranks()                          # no launcher: a world of one
    >>> ranks.size, ranks.is_main, ranks.gather("mine"), ranks.sum({"loss": 1.5})
    (1, True, ['mine'], {'loss': 1.5})
    """

    def __init__(self, rank: int = 0, size: int = 1, local_rank: int = 0, device: str = "cpu",
                 group: Any = None, timeout_s: float | None = None) -> None:
        self.rank, self.size, self.local_rank, self.device = rank, size, local_rank, device
        self.group = group
        """The process group of the collectives (None: the default one)."""
        self.timeout_s = timeout_s
        """How long a collective waits for the other ranks (None: torch's default), here and in the groups made
        from these ranks."""

    @classmethod
    def from_environment(cls, timeout_s: float, device: str = "auto") -> Ranks:
        """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE``, ``RANK``,
        ``LOCAL_RANK``, ``MASTER_ADDR``...), on NCCL with one GPU per rank or gloo on CPU; a world of one when
        started without a launcher. A collective waits ``timeout_s`` for the other ranks."""
        import torch
        import torch.distributed as dist

        size = int(os.environ.get("WORLD_SIZE", "1"))
        cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
        if size == 1:
            return cls(device=("cuda" if cuda else "cpu") if device == "auto" else device)
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if cuda:
            torch.cuda.set_device(local_rank)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
        return cls(dist.get_rank(), dist.get_world_size(), local_rank, f"cuda:{local_rank}" if cuda else "cpu",
                   timeout_s=timeout_s)

    def subgroup(self) -> Ranks:
        """The same ranks over a process group of their own (gloo: the exchanges are of Python objects), for
        collectives made from another thread — two threads must never share a group, or their collectives
        interleave. Every rank must call it at the same point."""
        if self.size == 1:
            return Ranks(self.rank, 1, self.local_rank, self.device)
        return Ranks(self.rank, self.size, self.local_rank, "cpu", self._gloo_group(range(self.size)), self.timeout_s)

    def blocks(self, size: int) -> Ranks:
        """This rank's block of ``size`` consecutive ranks (ranks 0 to size - 1, then the next ``size``...), as
        ranks of their own over a gloo group of their own: the ranks that share one tensor-parallel engine
        (:class:`~trainers.backends.SharedEngine`). Every rank must call it at the same point.

        >>> Ranks().blocks(1).size
        1
        """
        if size < 1 or self.size % size:
            raise ValueError(f"blocks of {size} ranks cannot split {self.size} ranks: the size must divide it")
        if size == 1:
            return Ranks(0, 1, self.local_rank, self.device)
        groups = [self._gloo_group(range(first, first + size))
                  for first in range(0, self.size, size)]  # every rank makes every group, in the same order
        return Ranks(self.rank % size, size, self.local_rank, "cpu", groups[self.rank // size], self.timeout_s)

    def _gloo_group(self, ranks: range) -> Any:
        """A new gloo process group of ``ranks`` (global ranks), with these ranks' timeout."""
        import torch.distributed as dist

        timeout = datetime.timedelta(seconds=self.timeout_s) if self.timeout_s is not None else None
        return dist.new_group(list(ranks), timeout=timeout, backend="gloo")

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs, writes shared files and shows progress."""
        return self.rank == 0

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable), in rank order, on every rank."""
        if self.size == 1:
            return [value]
        import torch.distributed as dist

        out: list[Any] = [None] * self.size
        self._collective(dist.all_gather_object, out, value, group=self.group)
        return out

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        if self.size == 1:
            return value
        import torch.distributed as dist

        box = [value]
        self._collective(dist.broadcast_object_list, box, group=self.group, group_src=0)
        return box[0]

    def sum(self, values: Mapping[str, float]) -> dict[str, float]:
        """The sum over the ranks of each value (every rank must pass the same keys)."""
        if self.size == 1:
            return dict(values)
        import torch
        import torch.distributed as dist

        keys = sorted(values)
        tensor = torch.tensor([float(values[key]) for key in keys], dtype=torch.float64,
                              device=self.device if self.device.startswith("cuda") else "cpu")
        self._collective(dist.all_reduce, tensor, group=self.group)
        return dict(zip(keys, tensor.tolist()))

    def barrier(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            self._collective(dist.barrier, group=self.group)

    def _collective(self, operation: Any, *args: Any, **kwargs: Any) -> None:
        try:
            operation(*args, **kwargs)
        except (RuntimeError, ConnectionError) as error:
            raise RankFailure(f"rank {self.rank}: a collective with the other {self.size - 1} rank(s) failed — one "
                              f"stopped or did not answer in time ({error}). Launch the run again to resume from "
                              "its last checkpoint.") from error

    def close(self) -> None:
        """Leave the process groups (a world of one has none)."""
        if self.size > 1 and self.group is None:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def shard_model(model: Any, ranks: Ranks, compute_dtype: str, blank_image: Mapping[str, Any] | None,
                offload: bool = False) -> None:
    """Shard ``model`` in place over ``ranks`` with FSDP2: one unit per layer class the model names as not to
    be split (``_no_split_modules``: decoder layers, vision blocks) plus the root; forward passes in
    ``compute_dtype``, gradients reduced in float32, parameters kept in their own (master) dtype. ``offload``
    keeps parameters, gradients and optimizer state in CPU memory between uses (FSDP2's ``CPUOffloadPolicy``).

    A LoRA model's adapters (:mod:`trainers.lora`) are sharded apart from the frozen weights, since a unit's
    parameters share one dtype: each layer's adapters form one unit. ``blank_image``: the processor's
    ``pixel_values`` and ``image_grid_thw`` of a small blank image; forward passes without images run the vision
    tower on it (see the module docstring). None for a text-only model.
    """
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    from .lora import adapter_modules

    # the model's outputs are views (logits and hidden states); nothing here changes them in place
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    mesh = init_device_mesh(ranks.device.split(":")[0], (ranks.size,))
    settings = {"mesh": mesh, "offload_policy": CPUOffloadPolicy() if offload else OffloadPolicy(),
                "mp_policy": MixedPrecisionPolicy(param_dtype=getattr(torch, compute_dtype),
                                                  reduce_dtype=torch.float32)}
    unit_classes = set(getattr(model, "_no_split_modules", None) or ())
    units = [module for module in model.modules() if type(module).__name__ in unit_classes]
    if not units:
        log.warning("%s names no layer classes (_no_split_modules): it is sharded as one unit",
                    type(model).__name__)
    adapters = adapter_modules(model)  # in the master dtype, beside frozen weights in the compute dtype
    for unit in [*units, model]:  # a unit's adapters form one group, gathered at once; any others, one more
        inside = set(unit.modules())
        group = [adapter for adapter in adapters if adapter in inside]
        if group:
            fully_shard(group, **settings)
            adapters = [adapter for adapter in adapters if adapter not in inside]
    for unit in units:
        fully_shard(unit, **settings)
    fully_shard(model, **settings)
    if blank_image is not None:
        _run_vision_tower_in_every_forward(model, blank_image)


def load_from_main(model: Any, source: Any | None, ranks: Ranks) -> None:
    """Fill ``model``, sharded by :func:`shard_model` while still on the meta device, with the weights of
    ``source``: the same model, read by the main rank alone (None on the others). Parameters are broadcast from
    rank 0 and each rank keeps its shard; buffers (those not saved too, such as rotary frequencies) are copied
    whole. Every rank must call it at the same point.

    Example (every rank)::

        policy = load_policy(config.model, device=ranks.device, weights=False)   # on the meta device
        shard_model(policy.model, ranks, "bfloat16", blank)
        load_from_main(policy.model, load_policy(config.model, "cpu").model if ranks.is_main else None, ranks)
    """
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    if ranks.is_main and hasattr(source, "_weight_conversions"):
        model._weight_conversions = source._weight_conversions  # transformers saves under the names it read
    model.to_empty(device=ranks.device)
    state = source.state_dict() if ranks.is_main else {}
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    ranks._collective(set_model_state_dict, model, state, options=options)
    buffers = dict(source.named_buffers()) if ranks.is_main else {}
    for name, buffer in model.named_buffers():
        if ranks.is_main:
            buffer.copy_(buffers[name])
        ranks._collective(dist.broadcast, buffer, group=ranks.group, group_src=0)


def _run_vision_tower_in_every_forward(model: Any, blank_image: Mapping[str, Any]) -> None:
    """Hooks: a forward without ``pixel_values`` adds zero times the blank image's features to the token
    embeddings — where real image features join them, so that gradients flow back in the same order too."""
    import torch

    forward_has_images = [True]

    def remember(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        forward_has_images[0] = kwargs.get("pixel_values") is not None or kwargs.get("pixel_values_videos") is not None

    def add_blank_features(module: Any, args: Any, embeddings: Any) -> Any:
        if forward_has_images[0]:
            return embeddings
        device = embeddings.device
        out = model.get_image_features(pixel_values=blank_image["pixel_values"].to(device),
                                       image_grid_thw=blank_image["image_grid_thw"].to(device))
        features = getattr(out, "pooler_output", out)
        features = torch.cat(list(features)) if isinstance(features, (list, tuple)) else features
        return embeddings + 0.0 * features.sum().to(embeddings.dtype)

    model.register_forward_pre_hook(remember, with_kwargs=True)
    model.get_input_embeddings().register_forward_hook(add_blank_features)


def is_sharded(model: Any) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def model_class(model: Any) -> type:
    """The model's own class (sharding makes its instances an ``FSDP<Class>`` subclass)."""
    from torch.distributed.fsdp import FSDPModule

    return next(cls for cls in type(model).__mro__ if not issubclass(cls, FSDPModule))


def full_state_dict(model: Any) -> dict[str, Any]:
    """The model's whole weights by name: its own state dict when it is not sharded; when it is, gathered from
    the shards into rank 0's CPU memory (every rank must call it; the others get an empty dict)."""
    if not is_sharded(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def gathered(tensor: Any) -> Any:
    """The whole of a sharded tensor (a DTensor: an all-gather every rank makes at the same point), or
    ``tensor`` itself.

    >>> import torch
    >>> gathered(torch.ones(2)).tolist()
    [1.0, 1.0]
    """
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def state_bytes_per_parameter(model: Any, optimizer: Any) -> float:
    """The bytes of training state this rank holds per parameter of the model: its shards of the parameters,
    of their gradients and of the optimizer's state. Full fine-tuning with float32 AdamW holds 16 in one process
    (4 + 4 + 8) and 16 / N on each of N ranks; LoRA, about the frozen weights' dtype size.

    >>> import torch
    >>> layer = torch.nn.Linear(4, 4)
    >>> optimizer = torch.optim.AdamW(layer.parameters())
    >>> layer(torch.ones(1, 4)).sum().backward(); optimizer.step()
    >>> state_bytes_per_parameter(layer, optimizer)
    16.0
    """
    import torch

    def local_bytes(tensor: Any) -> int:
        tensor = tensor.to_local() if hasattr(tensor, "to_local") else tensor
        return tensor.numel() * tensor.element_size()

    parameters = list(model.parameters())
    held = sum(local_bytes(p) + (local_bytes(p.grad) if p.grad is not None else 0) for p in parameters)
    held += sum(local_bytes(value) for state in optimizer.state.values() for value in state.values()
                if isinstance(value, torch.Tensor) and value.dim() > 0)
    return held / sum(p.numel() for p in parameters)


def spread(lengths: Sequence[int], owners: Sequence[int], size: int) -> list[int]:
    """The rank that trains each item: every rank's total length near ``sum(lengths) / size``, an item staying
    on the rank that played it (its owner) unless that rank already holds its share. Longest items are placed
    first; items that leave their owner go to the least loaded rank.

    >>> spread([5, 5, 5, 5], owners=[0, 0, 0, 0], size=2)
    [0, 0, 1, 1]
    >>> spread([9, 1, 1], owners=[1, 0, 0], size=2)
    [1, 0, 0]
    """
    if len(lengths) != len(owners):
        raise ValueError(f"{len(lengths)} lengths for {len(owners)} owners")
    share = sum(lengths) / size
    load = [0] * size
    rank: list[int | None] = [None] * len(lengths)
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    for i in order:
        owner = owners[i]
        if load[owner] == 0 or load[owner] + lengths[i] <= share:
            rank[i] = owner
            load[owner] += lengths[i]
    for i in order:
        if rank[i] is None:
            least = min(range(size), key=lambda r: (load[r], r))
            rank[i] = least
            load[least] += lengths[i]
    return [int(r) for r in rank]  # type: ignore[arg-type]


__all__ = ["RankFailure", "Ranks", "full_state_dict", "gathered", "is_sharded", "model_class", "shard_model", "spread",
           "state_bytes_per_parameter"]
