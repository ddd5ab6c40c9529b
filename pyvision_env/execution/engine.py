"""The execution engine: sandboxed, stateful kernels for model-written code, started ahead of demand.

:class:`AsyncEngine` is the asyncio core; :class:`Engine` is a synchronous facade that runs the core on
a private event-loop thread. An engine hands out *sessions* — one per episode, each with a fresh
kernel, its inputs (PIL images loaded from read-only files, small JSON values) and its budgets.

Example (synchronous):
    >>> from pyvision_env.execution import Engine
    >>> with Engine(spare_kernels=1) as engine:                                   # doctest: +SKIP
    ...     with engine.session(values={"n": 3}) as session:
    ...         print(session.run("print(n * 2)").stdout)
    6

Example (asyncio):
    >>> async def main():                                                      # doctest: +SKIP
    ...     async with AsyncEngine() as engine:
    ...         async with engine.session(images={"image_clue_0": "cat.png"}) as session:
    ...             result = await session.run("image_clue_0.size")
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import dataclasses
import json
import keyword
import logging
import os
import resource
import secrets
import shutil
import tempfile
import threading
import warnings
import weakref
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

import zmq.asyncio
from PIL import Image

from ..deprecation import REMOVED_IN, renamed_keywords
from ..video import reader as video_reader
from ..video.reader import VideoOptions
from .factory import FactoryError, InputTemplate, KernelFactory
from .kernel import Kernel, KernelDiedError, KernelStartError, run_on_spawner
from .limits import ExecutionLimits, SandboxConfig
from .loop import LoopThread
from .records import CellResult, CellStatus, EngineStatus
from .sandbox import CgroupManager, SandboxUnavailableError, pid_exists, probe_bubblewrap
from .supply import KernelSupply
from .templates import InputTemplates, stage_inputs

VIDEO_READER_SOURCE = Path(video_reader.__file__).read_text()
"""Sent into kernels that hold videos, where it becomes the module ``pyvision_video``."""

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_VALUES_BYTES = 1 << 20
SOCKET_PATH_LIMIT = 107
KERNEL_RECONNECT_MS = 5
"""How soon a client retries a kernel socket that is not bound yet (ZMQ's default, 100 ms, would be most of a
forked kernel's start)."""
RESERVED_PREFIX = "_pyvision"


LOAD_ATTEMPTS = 3
"""Kernels a session tries in a row when each dies while its inputs load (see ``AsyncSession._new_kernel``)."""


class InputError(ValueError):
    """An input image or value cannot be put into a kernel (the message names which and why)."""


class EpisodeLimitError(RuntimeError):
    """The episode used up a per-episode budget (cells or execution time); no cell was run."""


class ForkError(RuntimeError):
    """An episode could not be forked: a replayed cell ended otherwise than it did in the original (the message
    names the cell), so the fork would not be at the same point."""


class WeakIsolationWarning(RuntimeWarning):
    """Kernels run without bubblewrap: model code can reach the network and the host's files."""


@renamed_keywords(pool_size="spare_kernels")
class AsyncEngine:
    """Starts, isolates and cleans up kernels. Use as ``async with AsyncEngine(...) as engine``.

    Args:
        limits: default budgets of every session (a session may override them).
        sandbox: isolation settings.
        spare_kernels: kernels kept started and waiting (hides the ~1 s start-up).
        max_kernels: global cap on live kernels; :meth:`session` waits while it is reached.
    """

    def __init__(self, limits: ExecutionLimits | None = None, sandbox: SandboxConfig | None = None,
                 spare_kernels: int = 2, max_kernels: int = 64) -> None:
        self.limits = limits or ExecutionLimits()
        self.sandbox = sandbox or SandboxConfig()
        self.isolation, self.isolation_reason = self._choose_isolation(self.sandbox)
        self._spare_kernels = spare_kernels
        self._max_kernels = max_kernels
        self._root: Path | None = None
        self._context: zmq.asyncio.Context | None = None
        self._cgroups: CgroupManager | None = None
        self._supply: KernelSupply | None = None
        self._factory: KernelFactory | None = None
        self._templates: InputTemplates | None = None
        self.start_method = "exec"
        self.start_method_reason = "the engine has not started"
        self._finalizer: weakref.finalize | None = None

    @staticmethod
    def _choose_isolation(config: SandboxConfig) -> tuple[str, str]:
        if config.isolation == "none":
            reason = "isolation='none' was requested"
        else:
            works, reason = probe_bubblewrap()
            if works:
                return "bubblewrap", reason
            if config.isolation == "bubblewrap":
                raise SandboxUnavailableError(reason)
        warnings.warn(f"PyVision kernels run WITHOUT a sandbox ({reason}): model code can use the network and "
                      "read the host's files. Only resource limits apply.", WeakIsolationWarning, stacklevel=3)
        log.warning("weak isolation: %s", reason)
        return "none", reason

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> AsyncEngine:
        """Create the engine's directory, cgroups and kernel supply; begin starting spare kernels."""
        if self._supply is not None:
            return self
        _raise_open_file_limit()
        parent = Path(self.sandbox.root_dir or tempfile.gettempdir())
        _sweep_dead_engines(parent)
        self._root = Path(tempfile.mkdtemp(prefix=f"pyvision-{os.getpid()}-", dir=parent))
        longest_socket = len(str(self._root / "k-000000000000" / "ipc-5"))
        if longest_socket > SOCKET_PATH_LIMIT:
            shutil.rmtree(self._root, ignore_errors=True)
            raise ValueError(f"SandboxConfig.root_dir is too long for IPC sockets ({longest_socket} > "
                             f"{SOCKET_PATH_LIMIT} bytes): choose a shorter directory such as /tmp")
        self._context = zmq.asyncio.Context()
        self._context.setsockopt(zmq.RECONNECT_IVL, KERNEL_RECONNECT_MS)
        self._cgroups = CgroupManager() if self.sandbox.use_cgroups else None
        await self._start_factory()
        self._supply = KernelSupply(self._start_kernel, self._spare_kernels, self._max_kernels)
        self._finalizer = weakref.finalize(self, _emergency_cleanup, self._supply.live, self._root, self._cgroups,
                                           os.getpid(), self._factory)
        atexit.register(self._finalizer)
        self._supply.fill()
        return self

    async def _start_factory(self) -> None:
        """Start the kernel factory unless kernels are to be started as interpreters; fall back (``"auto"``) or
        raise (``"fork"``) when it cannot work here."""
        assert self._root is not None
        if self.sandbox.start_method == "exec":
            self.start_method, self.start_method_reason = "exec", "start_method='exec' was requested"
            return
        factory = KernelFactory(self._root, self.sandbox, isolate=self.isolation == "bubblewrap")
        try:
            await run_on_spawner(factory.start)
        except FactoryError as exc:
            if self.sandbox.start_method == "fork":
                await self.close()
                raise
            log.warning("kernels start as new interpreters (about a second each): %s", exc)
            self.start_method, self.start_method_reason = "exec", str(exc).splitlines()[0]
            return
        self._factory = factory
        self._templates = InputTemplates(factory, self.sandbox.input_templates, self._root)
        self.start_method, self.start_method_reason = "fork", f"forked by the kernel factory (pid {factory.pid})"

    async def _start_kernel(self, template: InputTemplate | None = None) -> Kernel:
        assert self._root is not None and self._context is not None
        return await Kernel.start(root=self._root, config=self.sandbox, limits=self.limits, context=self._context,
                                  cgroups=self._cgroups, sandboxed=self.isolation == "bubblewrap",
                                  factory=self._factory, template=template)

    async def _acquire_kernel(self, images: Mapping[str, Any]) -> Kernel:
        """A fresh kernel for a session with ``images``: forked by their input template where there is one, else
        a spare kernel."""
        supply = self._running_supply()
        template = await self._templates.lease(images) if self._templates is not None else None
        if template is not None:
            assert self._templates is not None
            try:
                return await supply.start_dedicated(lambda: self._start_kernel(template))  # the kernel keeps the lease
            except KernelStartError as exc:
                log.warning("a kernel forked by an input template failed to start (its episode loads its images "
                            "itself): %s", exc)
                self._templates.release(template)
                if not template.alive:
                    self._templates.drop(template)
        return await supply.acquire()

    async def _release_kernel(self, kernel: Kernel) -> None:
        """Kill a session's kernel (and close its input template if that was evicted and this was its last)."""
        await self._running_supply().release(kernel)
        if kernel.template is not None and self._templates is not None:
            self._templates.release(kernel.template)

    async def close(self) -> None:
        """Kill every kernel and remove every file the engine made. Safe to call twice."""
        if self._context is None:
            return
        if self._supply is not None:
            await self._supply.close()
        if self._templates is not None:
            self._templates.close()
        if self._factory is not None:
            self._factory.stop()  # not on the spawner: at exit its thread pool no longer takes work
        if self._cgroups is not None:
            self._cgroups.close()
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
        if self._context is not None:
            self._context.destroy(linger=0)
        if self._finalizer is not None:
            self._finalizer.detach()
            atexit.unregister(self._finalizer)
        self._supply = None
        self._factory = None
        self._templates = None
        self._context = None

    async def __aenter__(self) -> AsyncEngine:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def warm_up(self, count: int | None = None) -> None:
        """Wait until ``count`` kernels (default: ``spare_kernels``) are started and waiting."""
        await self._running_supply().wait_ready(count)

    def status(self) -> EngineStatus:
        supply = self._supply
        return EngineStatus(
            isolation=self.isolation, isolation_reason=self.isolation_reason,
            cgroups=self._cgroups.version if self._cgroups is not None else "none",
            live_kernels=supply.live_count if supply else 0, ready_kernels=supply.ready_count if supply else 0,
            max_kernels=self._max_kernels, kernels_started=supply.started if supply else 0,
            kernels_failed=supply.failed if supply else 0, start_method=self.start_method,
            start_method_reason=self.start_method_reason,
            factory_starts=self._factory.starts if self._factory is not None else 0,
            input_templates=self._templates.count if self._templates is not None else 0)

    # --- sessions --------------------------------------------------------------------------------

    def session(self, images: Mapping[str, str | os.PathLike | Image.Image] | None = None,
                values: Mapping[str, Any] | None = None, limits: ExecutionLimits | None = None,
                videos: Mapping[str, str | os.PathLike] | None = None,
                video_options: VideoOptions | None = None, seed: int | None = None) -> AsyncSession:
        """A new episode (started on ``async with`` or :meth:`AsyncSession.start`). Inputs are checked now.

        ``videos`` are bound as decord-style readers (see :mod:`pyvision_env.video.reader`), opened as
        ``video_options`` say, with the helpers ``get_frames`` and ``show_frames``. ``random`` and NumPy's global
        generator are seeded with ``seed`` (random when None) in every kernel of the session."""
        return AsyncSession(self, images or {}, values or {}, limits or self.limits, videos or {},
                            video_options or VideoOptions(), seed)

    async def open_session(self, images: Mapping[str, str | os.PathLike | Image.Image] | None = None,
                           values: Mapping[str, Any] | None = None, limits: ExecutionLimits | None = None,
                           videos: Mapping[str, str | os.PathLike] | None = None,
                           video_options: VideoOptions | None = None, seed: int | None = None) -> AsyncSession:
        """Like :meth:`session`, already started."""
        return await self.session(images, values, limits, videos, video_options, seed).start()

    def _running_supply(self) -> KernelSupply:
        if self._supply is None:
            raise RuntimeError("the engine is not running: use 'async with AsyncEngine()' or await start()")
        return self._supply


class AsyncSession:
    """One episode: a fresh kernel with its inputs, per-episode budgets, and restarts after a kill or crash.

    After a cell whose result has ``state_lost``, the next cell runs in a new kernel with the inputs
    loaded again (variables the code made are gone, which the result's notes say).

    :meth:`fork` makes a second session at the same point: a new kernel with the same inputs and seed, in which
    the cells this kernel ran are replayed (see its docstring for what survives).
    """

    def __init__(self, engine: AsyncEngine, images: Mapping[str, Any], values: Mapping[str, Any],
                 limits: ExecutionLimits, videos: Mapping[str, Any] | None = None,
                 video_options: VideoOptions | None = None, seed: int | None = None) -> None:
        self.engine = engine
        self.limits = limits
        self._images = dict(images)
        self._videos = dict(videos or {})
        self._video_options = video_options or VideoOptions()
        self._values = dict(values)
        self._values_json = _check_inputs(self._images, self._values, self._videos)
        if seed is not None and not (isinstance(seed, int) and 0 <= seed < 2**32):
            raise InputError(f"seed must be an int in [0, 2**32), got {seed!r}")
        self.seed = secrets.randbits(32) if seed is None else seed
        self._replay_log: list[tuple[str, CellStatus]] = []
        """The cells the current kernel ran, with how each ended: what :meth:`fork` replays."""
        self._kernel: Kernel | None = None
        self._closed = False
        self._lost_since_last_cell = False
        self.cells_run = 0
        self.execution_time = 0.0
        self.images_shown = 0
        self.restarts = 0

    async def start(self) -> AsyncSession:
        if self._kernel is None and not self._closed:
            await self._new_kernel()
        return self

    async def _new_kernel(self) -> None:
        """A kernel with this session's inputs loaded. One that dies while they load — a spare whose factory has
        just died, or a template's kernel killed with it — is replaced, up to :data:`LOAD_ATTEMPTS` kernels."""
        for attempt in range(1, LOAD_ATTEMPTS + 1):
            kernel = await self.engine._acquire_kernel(self._images)
            try:
                await self._load_inputs(kernel)
            except KernelDiedError as died:
                await self.engine._release_kernel(kernel)
                if attempt == LOAD_ATTEMPTS:
                    raise InputError(f"could not load the inputs into the kernel: KernelDied: {died} "
                                     f"({LOAD_ATTEMPTS} kernels in a row)") from None
                continue
            except BaseException:
                await self.engine._release_kernel(kernel)
                raise
            self._kernel = kernel
            return

    async def _load_inputs(self, kernel: Kernel) -> None:
        code = f"_pyvision_seed({self.seed})"
        if self._images or self._values_json != "{}":
            paths = await asyncio.to_thread(stage_inputs, self._images, kernel.inputs_dir)
            code += f"\n_pyvision_load_inputs({json.dumps(json.dumps(paths))}, {json.dumps(self._values_json)})"
        if self._videos:
            videos = await asyncio.to_thread(stage_inputs, self._videos, kernel.inputs_dir)
            options = json.dumps(dataclasses.asdict(self._video_options))
            code += (f"\n_pyvision_load_videos({json.dumps(json.dumps(videos))}, {json.dumps(VIDEO_READER_SOURCE)}, "
                     f"{json.dumps(options)})")
        outcome = await kernel.execute(code, self.limits, silent=True)
        if outcome.result.status is CellStatus.CRASHED:
            raise KernelDiedError(outcome.result.error_value)
        if not outcome.result.ok:
            raise InputError(f"could not load the inputs into the kernel: {outcome.result.error_name}: "
                             f"{outcome.result.error_value}")

    @property
    def kernel_pid(self) -> int | None:
        """Process id of the current kernel (of bubblewrap when sandboxed); for diagnostics."""
        return self._kernel.process.pid if self._kernel is not None else None

    async def run(self, code: str, cell_timeout: float | None = None,
                  expressions: Mapping[str, str] | None = None) -> CellResult:
        """Execute one cell (``cell_timeout`` can only shorten the limits' ``cell_timeout``). ``expressions``
        are evaluated after a successful cell, their text in ``result.expressions``. Raises
        :class:`EpisodeLimitError` when an episode budget is used up."""
        if self._closed:
            raise RuntimeError("this session is closed")
        self.engine._running_supply()  # a clear error if the engine was closed under the session
        if not isinstance(code, str):
            raise TypeError(f"code must be a str, got {type(code).__name__}")
        limits = self.limits
        if limits.max_cells is not None and self.cells_run >= limits.max_cells:
            raise EpisodeLimitError(f"the episode already ran its {limits.max_cells} cells")
        timeout = limits.cell_timeout if cell_timeout is None else min(cell_timeout, limits.cell_timeout)
        if limits.max_execution_time is not None:
            left = limits.max_execution_time - self.execution_time
            if left <= 0:
                raise EpisodeLimitError(f"the episode used its {limits.max_execution_time:g} s of execution time")
            timeout = min(timeout, left)
        notes = []
        if self._kernel is not None and self._kernel.exited:
            await self._discard_kernel()
            self._lost_since_last_cell = True
        if self._kernel is None:
            await self._new_kernel()
            if self._lost_since_last_cell:
                notes.append("the previous kernel was lost: this cell runs in a fresh kernel (inputs re-loaded, "
                             "other variables gone)")
                self._lost_since_last_cell = False
        images_allowed = None
        if limits.max_images_per_session is not None:
            images_allowed = max(0, limits.max_images_per_session - self.images_shown)
        assert self._kernel is not None
        try:
            outcome = await self._kernel.execute(code, limits, timeout=timeout, images_allowed=images_allowed,
                                                 expressions=expressions)
        except KernelDiedError:
            outcome = None
        except asyncio.CancelledError:
            self._lost_since_last_cell = True
            await asyncio.shield(self._discard_kernel())
            raise
        if outcome is None:  # died between the check above and the send
            await self._discard_kernel()
            self._lost_since_last_cell = True
            return CellResult(CellStatus.CRASHED, error_name="KernelDied", error_value="the kernel died",
                              state_lost=True, notes=["kernel restarted, state lost"])
        result = outcome.result
        result.notes[:0] = notes
        if outcome.pending_images:
            result.images, failures = await asyncio.to_thread(_decode_all, outcome.pending_images)
            if failures:
                result.truncated = True
                result.notes.extend(failures)
        self.cells_run += 1
        self.execution_time += result.duration
        self.images_shown += len(result.images)
        if result.state_lost:
            await self._discard_kernel()
            self._lost_since_last_cell = True
        else:
            self._replay_log.append((code, result.status))
        return result

    async def fork(self) -> AsyncSession:
        """A new session at this session's point: a new kernel with the same inputs and seed, in which the cells
        the current kernel ran are replayed in order; its counters (cells, execution time, images) are this
        session's. The two then evolve independently.

        What survives is what the replayed cells rebuild: variables, imports, files they wrote, and the state
        of ``random`` and NumPy's global generator. What does not: anything that depends on the clock, the
        process id, ``os.urandom``/``uuid4``/``secrets``, other threads' progress, or data fetched from outside.
        A cell that was interrupted at its deadline is replayed up to its deadline again. Raises
        :class:`ForkError` when a replayed cell ends otherwise than the original did.

        >>> with Engine() as engine, engine.session() as s:                       # doctest: +SKIP
        ...     s.run("x = np.random.rand()")
        ...     with s.fork() as twin:
        ...         twin.run("print(x)").stdout == s.run("print(x)").stdout
        True
        """
        if self._closed:
            raise RuntimeError("this session is closed")
        twin = AsyncSession(self.engine, self._images, self._values, self.limits, self._videos, self._video_options,
                            self.seed)
        if self._kernel is None:
            return twin
        await twin.start()
        try:
            for index, (code, status) in enumerate(self._replay_log):
                assert twin._kernel is not None
                outcome = await twin._kernel.execute(code, self.limits)
                if outcome.result.status is not status or outcome.result.state_lost:
                    raise ForkError(f"cell {index + 1} of {len(self._replay_log)} ended {outcome.result.status.value} "
                                    f"when replayed, {status.value} originally ({outcome.result.summary()}): "
                                    f"the episode does not replay the same way\n{code[:500]}")
        except BaseException:
            await twin.close()
            raise
        twin._replay_log = list(self._replay_log)
        twin.cells_run, twin.execution_time, twin.images_shown = self.cells_run, self.execution_time, self.images_shown
        return twin

    async def _discard_kernel(self) -> None:
        self._replay_log = []  # the next kernel starts from the inputs alone
        kernel, self._kernel = self._kernel, None
        if kernel is not None:
            self.restarts += 1
            await self.engine._release_kernel(kernel)

    async def close(self) -> None:
        """Kill the episode's kernel (never reused). Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        kernel, self._kernel = self._kernel, None
        if kernel is not None and self.engine._supply is not None:
            await self.engine._release_kernel(kernel)

    async def __aenter__(self) -> AsyncSession:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


# --- synchronous facade ---------------------------------------------------------------------------

@renamed_keywords(pool_size="spare_kernels")
class Engine:
    """Synchronous facade over :class:`AsyncEngine`; runs it on a private event-loop thread.

    Takes the same arguments as :class:`AsyncEngine`. Thread-safe: sessions may be used from several
    threads (each session from one thread at a time).
    """

    def __init__(self, limits: ExecutionLimits | None = None, sandbox: SandboxConfig | None = None,
                 spare_kernels: int = 2, max_kernels: int = 64) -> None:
        self._async = AsyncEngine(limits, sandbox, spare_kernels, max_kernels)
        self._loop = LoopThread("pyvision-engine", owner_label="this engine")
        try:
            self._call(self._async.start())
        except BaseException:
            self._loop.close()
            raise

    def _call(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return self._loop.run_coroutine(coroutine, timeout)

    def __deepcopy__(self, memo: dict[int, Any]) -> Engine:
        """The engine itself: it is a shared resource (kernels, an event loop), so copies of what holds it — a
        Gymnasium spec whose ``kwargs`` name it — share it."""
        return self

    @property
    def core(self) -> AsyncEngine:
        """The asyncio engine this facade drives; use it from coroutines passed to :meth:`run_coroutine`."""
        return self._async

    def run_coroutine(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run a coroutine on the engine's event loop and wait for its result (from any other thread)."""
        return self._call(coroutine, timeout)

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule a coroutine on the engine's event loop without waiting; from another event loop, await
        ``asyncio.wrap_future(engine.submit(coroutine))``."""
        return self._loop.submit(coroutine)

    @property
    def closed(self) -> bool:
        return self._loop.closed

    @property
    def isolation(self) -> str:
        return self._async.isolation

    @property
    def limits(self) -> ExecutionLimits:
        return self._async.limits

    def status(self) -> EngineStatus:
        return self._async.status()

    def warm_up(self, count: int | None = None) -> None:
        self._call(self._async.warm_up(count))

    def session(self, images: Mapping[str, str | os.PathLike | Image.Image] | None = None,
                values: Mapping[str, Any] | None = None, limits: ExecutionLimits | None = None,
                videos: Mapping[str, str | os.PathLike] | None = None,
                video_options: VideoOptions | None = None, seed: int | None = None) -> Session:
        """Start an episode with a fresh kernel and its inputs; use as a context manager (see
        :meth:`AsyncEngine.session`)."""
        return Session(self, self._call(self._async.open_session(images, values, limits, videos, video_options,
                                                                 seed)))

    def close(self) -> None:
        if self._loop.closed or os.getpid() != self._loop.owner:
            return
        try:
            self._call(self._async.close())
        finally:
            self._loop.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Session:
    """Synchronous handle on an :class:`AsyncSession`."""

    def __init__(self, engine: Engine, session: AsyncSession) -> None:
        self._engine = engine
        self._session = session

    def run(self, code: str, timeout: float | None = None, cell_timeout: float | None = None,
            expressions: Mapping[str, str] | None = None) -> CellResult:
        """Execute one cell (see :meth:`AsyncSession.run`). ``timeout`` bounds the caller's wait: past it the
        cell is cancelled (its kernel killed) and TimeoutError is raised.

        >>> with Engine() as engine, engine.session() as s:                       # doctest: +SKIP
        ...     s.run("x = 6 * 7", expressions={"x": "x"}).expressions
        {'x': '42'}
        """
        return self._engine._call(self._session.run(code, cell_timeout, expressions), timeout)

    def fork(self) -> Session:
        """A new session at this one's point (see :meth:`AsyncSession.fork`)."""
        return Session(self._engine, self._engine._call(self._session.fork()))

    def close(self) -> None:
        self._engine._call(self._session.close())

    def __getattr__(self, name: str) -> Any:  # cells_run, execution_time, images_shown, restarts, kernel_pid, seed
        return getattr(self._session, name)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --- helpers ----------------------------------------------------------------------------------------

def _check_inputs(images: dict[str, Any], values: dict[str, Any], videos: dict[str, Any]) -> str:
    """Validate input names and values now, in the caller's thread; returns the values as JSON."""
    for name in list(images) + list(values) + list(videos):
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise InputError(f"input name {name!r} is not a valid Python identifier")
        if name.startswith(RESERVED_PREFIX):
            raise InputError(f"input name {name!r} uses the reserved prefix {RESERVED_PREFIX!r}")
    clash = (set(images) & set(values)) | (set(videos) & (set(images) | set(values)))
    if clash:
        raise InputError(f"names used for more than one input: {sorted(clash)}")
    for name, video in videos.items():
        if not Path(video).is_file():
            raise InputError(f"video input {name!r}: no such file {str(video)!r}")
    for name, image in images.items():
        if isinstance(image, Image.Image):
            continue
        path = Path(image)
        if not path.is_file():
            raise InputError(f"image input {name!r}: no such file {str(path)!r}")
        try:
            with Image.open(path) as opened:
                opened.verify()
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad files
            raise InputError(f"image input {name!r}: {str(path)!r} is not a readable image "
                             f"({type(exc).__name__}: {exc})") from None
    try:
        encoded = json.dumps(values, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InputError(f"values must be JSON-serialisable (str, numbers, bools, None, lists, dicts): {exc}") \
            from None
    if len(encoded) > MAX_VALUES_BYTES:
        raise InputError(f"values are {len(encoded)} bytes as JSON; the limit is {MAX_VALUES_BYTES}")
    return encoded


def _decode_all(pending: list) -> tuple[list[Image.Image], list[str]]:
    images, failures = [], []
    for item in pending:
        try:
            images.append(item.decode())
        except Exception as exc:  # noqa: BLE001 - a bad PNG from the kernel is a note, not a crash
            failures.append(f"image rejected: could not be decoded ({type(exc).__name__}: {exc})")
    return images, failures


def _raise_open_file_limit() -> None:
    """Each kernel client needs ~20 descriptors; the usual soft limit of 1024 runs out near 40 kernels."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def _sweep_dead_engines(parent: Path) -> None:
    """Remove directories left by engines whose process was killed (``pyvision-<pid>-*``, pid gone)."""
    for leftover in parent.glob("pyvision-*-*"):
        owner = leftover.name.split("-")[1]
        if owner.isdigit() and not pid_exists(int(owner)) and leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)


def _emergency_cleanup(kernels: set[Kernel], root: Path, cgroups: CgroupManager | None, owner: int,
                       factory: KernelFactory | None) -> None:
    """Finalizer / atexit: kill whatever is left without an event loop (only in the process that started
    the kernels: a forked child inherits this handler but must not kill its parent's kernels)."""
    if os.getpid() != owner:
        return
    for kernel in list(kernels):
        kernel.kill_now()
    if factory is not None:
        factory.stop()
    if cgroups is not None:
        cgroups.close()
    shutil.rmtree(root, ignore_errors=True)


# --- the process-wide default engine ----------------------------------------------------------------

_default_engine: Engine | None = None
_default_lock = threading.Lock()


def default_engine() -> Engine:
    """The engine environments use when none is given: started on first use, closed at exit.

    It keeps ``$PYVISION_SPARE_KERNELS`` spare kernels (default 2). Replace it with :func:`set_default_engine`.
    """
    global _default_engine
    with _default_lock:
        if _default_engine is None or _default_engine.closed:
            spares = os.environ.get("PYVISION_SPARE_KERNELS")
            if spares is None and "PYVISION_POOL_SIZE" in os.environ:
                warnings.warn(f"$PYVISION_POOL_SIZE is deprecated and goes in {REMOVED_IN}; set "
                              "$PYVISION_SPARE_KERNELS", DeprecationWarning, stacklevel=2)
                spares = os.environ["PYVISION_POOL_SIZE"]
            _default_engine = Engine(spare_kernels=int(spares or 2))
            atexit.register(_close_at_exit, _default_engine, os.getpid())
        return _default_engine


def _close_at_exit(engine: Engine, owner: int) -> None:
    if os.getpid() == owner:
        engine.close()


def _forget_default_engine() -> None:
    global _default_engine
    _default_engine = None  # a forked child cannot use its parent's engine (its loop thread is not copied)


os.register_at_fork(after_in_child=_forget_default_engine)


def set_default_engine(engine: Engine | None) -> Engine | None:
    """Make ``engine`` the default (``None``: start a new one on next use); returns the previous default.

    The caller keeps ownership of both engines (the previous one is not closed).
    """
    global _default_engine
    with _default_lock:
        previous, _default_engine = _default_engine, engine
        return previous
